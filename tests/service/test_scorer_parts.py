"""The scorer facade's k-selection over the margins its actors keep: equal to select() on
all margins, and still equal when an actor loses its part between scoring and selection
(killed for good, or killed and restarted empty by Ray)."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import ray

from dynams_service import score, select
from dynams_service.core.data.shards import decode_samples, read_shards
from dynams_service.core.models.proxy import build_proxy, export_psp, records_to_state, spec_of
from dynams_service.core.selection.selection_rules import round_seed, rule_select_rows
from dynams_service.service.errors import Internal
from dynams_service.service.scorer import JobScorers

from .conftest import make_spec, with_resources


@pytest.fixture(scope="module")
def snapshot(trained_model):
    proxy = trained_model.make_proxy(0.25)
    state = records_to_state(export_psp(trained_model, 0.25), spec_of(proxy))
    return {name: t.numpy() for name, t in state.items()}


# Float32 margins from the actors' processes and this one differ by roundoff (thread counts
# change the convolutions' summation order: 2e-6 seen); the indices must be exact.
MARGIN_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def expected(small_shards, trained_model, per_class: bool, k: int):
    uri, manifest = small_shards
    rows = read_shards(uri, manifest=manifest)
    proxy = build_proxy("fmnist-cnn", 0.25, export_psp(trained_model, 0.25))
    margins = score(proxy, decode_samples(rows.samples, manifest), batch_size=256).numpy()
    return select(margins, rows.labels, k=k, per_class=per_class), margins


@pytest.mark.parametrize("per_class", [False, True])
def test_selection_over_kept_margins_survives_a_lost_part(ray_cluster, small_shards,
                                                          trained_model, snapshot, per_class):
    """Three scorers score once; the k-selection is then asked three times: with every part
    kept, after one actor is SIGKILLed (Ray restarts it holding nothing), and after another
    is killed for good (ray.kill). Each answer equals select() over all margins."""
    uri, manifest = small_shards
    spec = make_spec(small_shards, f"parts-{int(per_class)}",
                     class_balance="per_class" if per_class else "global")
    spec = with_resources(spec, num_cpus=0, num_scorers=3)
    chosen, margins = expected(small_shards, trained_model, per_class, 1200)
    scorers = JobScorers(spec, manifest)
    try:
        scored = scorers.score(snapshot, "distance")
        assert scored.rows == manifest.num_samples
        for loss in ("none", "SIGKILL", "ray.kill"):
            if loss == "SIGKILL":
                os.kill(ray.get(scorers.actors[1].pid.remote()), signal.SIGKILL)
            elif loss == "ray.kill":
                ray.kill(scorers.actors[2], no_restart=True)
            got = scorers.select(1200)
            np.testing.assert_array_equal(got.indices, chosen, err_msg=f"after {loss}")
            np.testing.assert_allclose(got.margins, margins[chosen], **MARGIN_TOLERANCE)
    finally:
        scorers.shutdown()


@pytest.mark.parametrize(("rule", "loss"), [
    ({"explore": 0.3}, "SIGKILL"),
    ({"coverage_strata": 8, "coverage_prune": 0.2}, "none"),
])
def test_selection_rules_on_the_actors_equal_the_in_process_rule(ray_cluster, small_shards,
                                                                trained_model, snapshot,
                                                                rule, loss):
    """Explore and coverage re-key each actor's part on its side; the result equals the
    rule run in one process over all margins, for the round's seed, after a lost part too."""
    uri, manifest = small_shards
    spec = make_spec(small_shards, f"rules-{'-'.join(rule)}".replace("_", "-"),
                     class_balance="global", **rule)
    spec = with_resources(spec, num_cpus=0)
    scorers = JobScorers(spec, manifest)
    try:
        scorers.score(snapshot, "distance")
        if loss == "SIGKILL":
            os.kill(ray.get(scorers.actors[0].pid.remote()), signal.SIGKILL)
        got = scorers.select(1200, round_=3)
    finally:
        scorers.shutdown()
    _, margins = expected(small_shards, trained_model, False, 1200)
    want = rule_select_rows(margins, k=1200, rule=spec.policy.rule,
                            seed=round_seed(spec.policy.seed, 3))
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.margins, margins[want.indices], **MARGIN_TOLERANCE)
    assert not np.array_equal(want.indices, select(margins, k=1200))  # not the hard cut


def test_a_release_during_a_round_fails_it_and_leaves_no_scorer(ray_cluster, small_shards,
                                                                 snapshot):
    """shutdown() while a round runs (the job deleted, the selector stopping): the round
    fails as released and re-creates no scorer. Before the release flag, a scorer killed
    by the release looked like a dead one: the round started a replacement (left running
    under the job's name) or hit an IndexError on the emptied actor list."""
    uri, manifest = small_shards
    for attempt in range(3):  # one scorer each: the release races the round, not the parts
        spec = make_spec(small_shards, f"release-{attempt}")
        spec = with_resources(spec, num_cpus=0, num_scorers=1)
        scorers = JobScorers(spec, manifest)
        outcome: dict[str, str] = {}

        def run(scorers: JobScorers = scorers, outcome: dict = outcome) -> None:
            try:
                scorers.score(snapshot, "distance")
                outcome["done"] = "scored before the release"
            except Internal as exc:
                outcome["internal"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - the test reports any other error
                outcome["unexpected"] = repr(exc)

        round_thread = threading.Thread(target=run)
        round_thread.start()
        ray.get([a.info.remote() for a in scorers.actors])  # alive; the round is queued
        scorers.shutdown()
        round_thread.join(timeout=300)
        assert not round_thread.is_alive() and "unexpected" not in outcome, outcome
        assert "released" in outcome.get("internal", "released"), outcome
        with pytest.raises(Internal, match="released"):  # a late restart starts nothing
            scorers._restart_actor(0, timeout=30)
        names = set(scorers.names)
        assert_no_scorer_left(names)

    # The window itself: a restart waiting for its name while the release runs. The
    # release kills the holder of the name, the restart's actor starts, sees the release
    # and is killed; before, it stayed up under the job's name.
    spec = make_spec(small_shards, "release-window")
    spec = with_resources(spec, num_cpus=0, num_scorers=1)
    scorers = JobScorers(spec, manifest)
    failures: list[BaseException] = []

    def restart() -> None:
        try:
            scorers._restart_actor(0, timeout=60)
        except BaseException as exc:  # noqa: BLE001 - checked below
            failures.append(exc)

    restarting = threading.Thread(target=restart)
    restarting.start()
    time.sleep(1.0)  # let it reach the name wait (a sequencing aid, not a bound)
    scorers.shutdown()
    restarting.join(timeout=120)
    assert len(failures) == 1 and isinstance(failures[0], Internal), failures
    assert "released" in str(failures[0])
    assert_no_scorer_left(set(scorers.names))


def assert_no_scorer_left(names: set[str]) -> None:
    """No actor of ``names`` is alive, once the killed ones have gone (a failure guard)."""
    alive = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    for _ in range(600):
        if not names & alive:
            break
        time.sleep(0.2)
        alive = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert not names & alive, f"scorers left behind: {names & alive}"
