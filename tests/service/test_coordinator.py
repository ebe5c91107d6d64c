"""The coordinator's logic without Ray: in-process scorers (``local_scorers``) through its
``scorer_factory``, real shards, the real state store.

Rounds, waiting, failures and retries, releases, restarts, deletion mid-round and
admission; the same paths through Ray actors and gRPC are in test_selector.py,
test_faults.py, test_state.py and test_limits.py.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from dynams_service.core.job import JobState, RoundState, SelectionKind
from dynams_service.core.models.proxy import TensorRecord, export_psp
from dynams_service.core.selection.partition import epoch_order
from dynams_service.service.coordinator import JobCoordinator
from dynams_service.service.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RoundFailed,
    WeightsNotPushed,
)
from dynams_service.service.job_record import Job
from dynams_service.service.limits import Limits
from dynams_service.service.metrics import InMemoryMetrics
from dynams_service.service.store import StateStore

from .conftest import canonical_from_parts, make_spec, with_resources
from .local_scorers import LocalCluster
from .test_selector import expected_selection


class Selector:
    """A coordinator over a state dir, with in-process scorers and counted metrics."""

    def __init__(self, state_dir, cluster: LocalCluster | None = None, **limits) -> None:
        self.cluster = cluster or LocalCluster()
        self.metrics = InMemoryMetrics()
        self.coordinator = JobCoordinator(StateStore(state_dir), self.metrics,
                                          Limits(**limits), scorer_factory=self.cluster)
        self.coordinator.restore()

    def __getattr__(self, name):
        return getattr(self.coordinator, name)

    def push(self, job_id: str, epoch: int, model, version: int = 1) -> tuple[int, bool]:
        records = export_psp(model, 0.25)
        return self.coordinator.push_weights(job_id, version, epoch, records,
                                             sum(r.nbytes for r in records))

    def parts(self, job_id: str, epoch: int, world: int = 2, timeout: float = 60):
        return [self.coordinator.get_selection(job_id, epoch, rank, world, False, timeout)
                for rank in range(world)]

    def state(self, job_id: str) -> JobState:
        return self.coordinator.get_job(job_id).summary.state

    def wait_round(self, job_id: str, round_: int, state: RoundState) -> None:
        deadline = time.monotonic() + 60
        while self.coordinator.get_job(job_id).rounds[round_].state is not state:
            assert time.monotonic() < deadline, f"round {round_} never {state}"
            time.sleep(0.01)


def same(a: list, b: list) -> bool:
    """Two lists of answers, equal field by field (the indices element by element)."""
    return len(a) == len(b) and all(
        (x.epoch, x.round, x.weights_version, x.kind, x.global_count)
        == (y.epoch, y.round, y.weights_version, y.kind, y.global_count)
        and np.array_equal(x.indices, y.indices) for x, y in zip(a, b, strict=True))


@pytest.fixture()
def selector(tmp_path):
    s = Selector(tmp_path / "state")
    yield s
    s.shutdown()
    assert s.rounds.threads.join()


def test_a_round_equals_the_core_and_ranks_split_it(selector, small_shards, trained_model):
    spec = make_spec(small_shards)
    status = selector.create_job(spec)
    assert status.summary.state is JobState.ACTIVE and len(status.rounds) == 3
    assert selector.push(spec.job_id, 1, trained_model, version=11) == (0, False)
    answers = selector.parts(spec.job_id, 1)
    expected = expected_selection(small_shards, trained_model)
    assert all(a.kind is SelectionKind.SUBSET and a.weights_version == 11 for a in answers)
    canonical = canonical_from_parts([a.indices for a in answers], answers[0].global_count)
    assert np.array_equal(canonical, epoch_order(expected, seed=7, epoch=1))
    assert selector.metrics.rounds == {spec.job_id: 1}
    assert selector.metrics.selections_served == {spec.job_id: 2}
    full = selector.parts(spec.job_id, 0, world=1)[0]
    assert full.kind is SelectionKind.FULL and full.round == -1 and len(full.indices) == 4000


def test_a_rank_waits_for_weights_then_scoring_in_one_call(selector, small_shards,
                                                           trained_model):
    spec = make_spec(small_shards)
    selector.create_job(spec)
    with pytest.raises(WeightsNotPushed, match=r"round 0 \(epoch 1\) within 0.2s"):
        selector.get_selection(spec.job_id, 1, 0, 1, False, 0.2)
    selector.cluster.gate.clear()
    answers = []
    waiter = threading.Thread(target=lambda: answers.extend(selector.parts(spec.job_id, 1)))
    waiter.start()
    time.sleep(0.2)
    selector.push(spec.job_id, 1, trained_model)
    with pytest.raises(DeadlineExceeded, match="round 0 is still scoring"):
        selector.get_selection(spec.job_id, 1, 0, 1, False, 0.2)
    assert not answers
    selector.cluster.gate.set()
    waiter.join(60)
    assert [len(a.indices) for a in answers] == [600, 600]


def test_a_failed_round_is_reported_and_a_new_push_retries_it(selector, small_shards,
                                                              trained_model):
    spec = make_spec(small_shards)
    selector.create_job(spec)
    selector.cluster.failures = 1
    selector.push(spec.job_id, 1, trained_model)
    selector.wait_round(spec.job_id, 0, RoundState.FAILED)
    with pytest.raises(RoundFailed, match="scorer of job 'fmnist-small' died"):
        selector.get_selection(spec.job_id, 1, 0, 1, False, 5)
    assert selector.push(spec.job_id, 1, trained_model, version=2) == (0, False)
    assert selector.parts(spec.job_id, 1)[0].weights_version == 2


def test_the_last_round_releases_the_scorers_and_repushes_change_nothing(
        selector, small_shards, trained_model):
    spec = make_spec(small_shards)
    selector.create_job(spec)
    for epoch in (1, 2, 3):
        selector.push(spec.job_id, epoch, trained_model, version=epoch)
        selector.parts(spec.job_id, epoch)
    assert selector.state(spec.job_id) is JobState.FINISHED
    assert selector.cluster.running(spec.job_id) == []
    before = selector.parts(spec.job_id, 2)
    assert selector.push(spec.job_id, 2, trained_model, version=9) == (1, True)
    assert same(selector.parts(spec.job_id, 2), before)
    assert len(selector.cluster.started) == 1


def test_a_restart_serves_the_same_answers_and_starts_scorers_on_the_next_push(
        tmp_path, small_shards, trained_model):
    spec = make_spec(small_shards)
    first = Selector(tmp_path / "state")
    first.create_job(spec)
    first.push(spec.job_id, 1, trained_model, version=4)
    before = first.parts(spec.job_id, 1)
    first.shutdown()

    again = Selector(tmp_path / "state")
    assert again.state(spec.job_id) is JobState.IDLE and again.cluster.started == []
    assert same(again.parts(spec.job_id, 1), before)
    assert again.push(spec.job_id, 1, trained_model) == (0, True)
    assert again.cluster.started == []  # a done round needs no scorers
    again.push(spec.job_id, 2, trained_model)
    assert again.parts(spec.job_id, 2)[0].round == 1
    assert len(again.cluster.started) == 1 and again.state(spec.job_id) is JobState.ACTIVE
    again.shutdown()


def test_idle_jobs_give_their_scorers_back_and_expire(selector, small_shards, trained_model):
    spec = make_spec(small_shards)
    selector.create_job(spec)
    [scorers] = selector.cluster.started
    time.sleep(0.05)
    assert selector.reap(ttl=0.01, expiry=0) == ([spec.job_id], [])
    assert scorers.stopped and selector.state(spec.job_id) is JobState.IDLE
    selector.push(spec.job_id, 1, trained_model)  # starts them again
    assert len(selector.parts(spec.job_id, 1)[0].indices) == 600
    assert selector.state(spec.job_id) is JobState.ACTIVE
    time.sleep(0.05)
    assert selector.reap(ttl=0, expiry=0.01) == ([], [spec.job_id])
    with pytest.raises(NotFound):
        selector.get_job(spec.job_id)
    assert selector.cluster.running(spec.job_id) == []


def test_a_scoring_job_is_not_reaped(selector, small_shards, trained_model):
    spec = make_spec(small_shards)
    selector.create_job(spec)
    selector.cluster.gate.clear()
    selector.push(spec.job_id, 1, trained_model)
    time.sleep(0.05)
    assert selector.reap(ttl=0.01, expiry=0.01) == ([], [])
    selector.cluster.gate.set()
    selector.parts(spec.job_id, 1)


def test_deleting_a_job_mid_round_ends_its_waiters_and_keeps_nothing(
        selector, small_shards, trained_model, tmp_path, caplog):
    spec = make_spec(small_shards)
    selector.create_job(spec)
    selector.cluster.gate.clear()
    selector.push(spec.job_id, 1, trained_model)
    errors = []

    def wait() -> None:
        try:
            selector.get_selection(spec.job_id, 1, 0, 1, False, 60)
        except NotFound as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    assert selector.delete_job(spec.job_id)
    waiter.join(10)
    assert [str(e) for e in errors] == ["job 'fmnist-small' was deleted"]
    with caplog.at_level(logging.INFO, logger="dynams_service.service.round_runner"):
        selector.cluster.gate.set()
        assert selector.rounds.threads.join()
    # The released scorers end the round quietly: INFO, no traceback.
    [ended] = [r for r in caplog.records if r.name.endswith("round_runner")]
    assert ended.levelno == logging.INFO and ended.exc_info is None
    assert "ended with the job or the selector" in ended.getMessage()
    assert selector.cluster.running(spec.job_id) == []
    assert not (tmp_path / "state/jobs/fmnist-small").exists()
    selector.create_job(spec)  # the id is free again, with fresh rounds
    assert selector.get_job(spec.job_id).rounds[0].state is RoundState.WAITING


def test_admission_and_placement_failures_leave_nothing(tmp_path, small_shards):
    selector = Selector(tmp_path / "state", max_jobs=1, max_cpus_per_job=2)
    with pytest.raises(ResourceExhausted):
        selector.create_job(with_resources(make_spec(small_shards, "greedy"), num_cpus=2))
    selector.cluster.refuse = True
    with pytest.raises(Internal, match="cannot place"):
        selector.create_job(make_spec(small_shards, "unplaced"))
    assert selector.list_jobs() == ([], "") and selector.table.creating == {}
    selector.cluster.refuse = False
    selector.create_job(make_spec(small_shards, "one"))
    with pytest.raises(ResourceExhausted):
        selector.create_job(make_spec(small_shards, "two"))
    with pytest.raises(AlreadyExists, match="differs in policy"):
        selector.create_job(make_spec(small_shards, "one", ratio=0.5))
    selector.shutdown()


def test_bad_pushes_and_questions_are_refused(selector, small_shards, trained_model):
    spec = make_spec(small_shards)
    selector.create_job(spec)
    with pytest.raises(FailedPrecondition, match="full epoch and needs no weights"):
        selector.push(spec.job_id, 0, trained_model)
    with pytest.raises(InvalidArgument, match="epoch 9 must be in"):
        selector.push(spec.job_id, 9, trained_model)
    with pytest.raises(InvalidArgument, match="is not part of the proxy"):
        selector.push_weights(spec.job_id, 1, 1, [TensorRecord("x", "float32", (1,),
                                                               b"\0" * 4)], 4)
    with pytest.raises(InvalidArgument, match="rank 2 must be in"):
        selector.get_selection(spec.job_id, 1, 2, 2, False, 1)
    with pytest.raises(NotFound, match="no job 'other'"):
        selector.get_selection("other", 1, 0, 1, False, 1)
    assert selector.get_job(spec.job_id).rounds[0].state is RoundState.WAITING


def test_a_corrupt_saved_round_quarantines_only_that_job(tmp_path, small_shards,
                                                         trained_model):
    first = Selector(tmp_path / "state")
    for job_id in ("good", "bad"):
        first.create_job(make_spec(small_shards, job_id))
        first.push(job_id, 1, trained_model)
        first.parts(job_id, 1)
    first.shutdown()
    round_file = tmp_path / "state/jobs/bad/round-00000.arrow"
    round_file.write_bytes(round_file.read_bytes()[:100])
    again = Selector(tmp_path / "state")
    summaries = {s.job_id: s for s in again.list_jobs()[0]}
    assert summaries["good"].state is JobState.IDLE and summaries["good"].rounds_done == 1
    assert summaries["bad"].state is JobState.FAILED and "round-00000" in summaries["bad"].error
    with pytest.raises(FailedPrecondition, match="could not be restored"):
        again.get_selection("bad", 1, 0, 1, False, 1)
    assert again.delete_job("bad") and [s.job_id for s in again.list_jobs()[0]] == ["good"]


@pytest.mark.parametrize("move", [
    lambda j: j.released(),                 # no scorers to release
    lambda j: j.started().started(),        # started twice
    lambda j: j.deleted().started(),        # a deleted job stays deleted
    lambda j: j.deleted().with_round(j.rounds[0]),
])
def test_impossible_job_transitions_are_refused(move, small_shards):
    from dynams_service.service.dataset_access import DatasetAccess
    from dynams_service.service.job_preparation import prepare_job

    job = prepare_job(make_spec(small_shards), DatasetAccess(()))
    assert isinstance(job, Job) and job.state is JobState.IDLE
    with pytest.raises(AssertionError):
        move(job)
