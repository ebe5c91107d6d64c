"""The scorer facade's k-selection over the margins its actors keep: equal to select() on
all margins, and still equal when an actor loses its part between scoring and selection
(killed for good, or killed and restarted empty by Ray)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import ray

from dynams_service import score, select
from dynams_service.core.proxy import build_proxy, export_psp, records_to_state, spec_of
from dynams_service.core.shards import decode_samples, read_shards
from dynams_service.service.scorer import JobScorers

from .conftest import make_spec


@pytest.fixture(scope="module")
def snapshot(trained_model):
    proxy = trained_model.make_proxy(0.25)
    state = records_to_state(export_psp(trained_model, 0.25), spec_of(proxy))
    return {name: t.numpy() for name, t in state.items()}


def expected(small_shards, trained_model, per_class: bool, k: int):
    uri, manifest = small_shards
    rows = read_shards(uri, manifest=manifest)
    proxy = build_proxy("fmnist-cnn", 0.25, export_psp(trained_model, 0.25))
    margins = score(proxy, decode_samples(rows.samples, manifest), batch_size=256).numpy()
    return select(margins, rows.labels, k=k, per_class=per_class), margins


@pytest.mark.parametrize("loss", ["none", "ray.kill", "SIGKILL"])
@pytest.mark.parametrize("per_class", [False, True])
def test_selection_over_kept_margins_survives_a_lost_part(ray_cluster, small_shards,
                                                          trained_model, snapshot, loss,
                                                          per_class):
    uri, manifest = small_shards
    spec = make_spec(small_shards, f"parts-{loss.replace('.', '').lower()}-{int(per_class)}",
                     class_balance="per_class" if per_class else "global")
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(
        update={"num_cpus": 0})})
    scorers = JobScorers(spec, manifest)
    try:
        scored = scorers.score(snapshot, "distance")
        assert scored.rows == manifest.num_samples
        victim = scorers.actors[1]
        if loss == "ray.kill":
            ray.kill(victim, no_restart=True)
        elif loss == "SIGKILL":  # Ray restarts the actor; it comes back holding nothing
            os.kill(ray.get(victim.pid.remote()), signal.SIGKILL)
        got = scorers.select(1200)
    finally:
        scorers.shutdown()
    chosen, margins = expected(small_shards, trained_model, per_class, 1200)
    np.testing.assert_array_equal(got.indices, chosen)
    np.testing.assert_allclose(got.margins, margins[chosen], rtol=1e-5, atol=1e-6)
