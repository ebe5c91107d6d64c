"""State: corrupt files quarantine one job and the server starts; deletions that cannot
happen are errors; ListJobs stays small whatever the jobs' length."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest

from dynams_service import JobSpec, ScorerResources
from dynams_service.cli import main as dynams_main
from dynams_service.client import SelectorClient, SelectorError, Status
from dynams_service.core.data.shards import read_manifest
from dynams_service.core.job import JobState
from dynams_service.protocol import pb
from dynams_service.service.dataset_identity import DatasetEncoding
from dynams_service.service.store import RoundResult, StateStore

from .conftest import make_spec
from .test_limits import C, immutable  # noqa: F401 - the fixture

# Restored jobs start no scorer until a push, so these tests cost no actors.
NO_CPU = ScorerResources(num_scorers=1, num_cpus=0)


def persisted(state, spec: JobSpec, rounds: int = 0) -> StateStore:
    store = StateStore(state)
    store.save_spec(spec, DatasetEncoding.of(read_manifest(spec.dataset_uri)))
    for r in range(rounds):
        chosen = np.arange(r, 1200 + r, dtype=np.int64)
        store.save_round(spec.job_id, RoundResult(r, r + 1, 7, chosen,
                                                  np.zeros(1200, np.float32), 0.5))
    return store


def test_corrupt_state_quarantines_only_that_job(local_server_factory, small_shards, tmp_path,
                                                 capsys):
    state = tmp_path / "state"
    for job_id in ("good", "bad-round", "bad-spec"):
        spec = make_spec(small_shards, job_id).model_copy(update={"resources": NO_CPU})
        persisted(state, spec, rounds=1)
    round_file = state / "jobs/bad-round/round-00000.arrow"
    round_file.write_bytes(round_file.read_bytes()[:100])  # truncated
    (state / "jobs/bad-spec/spec.json").write_text('{"job_id": "bad-spec", "epochs": ')

    server = local_server_factory(state_dir=state)
    client = SelectorClient(server.address, retries=0)
    jobs = {j.job_id: j for j in client.list_jobs()}
    assert jobs["good"].state == JobState.IDLE and jobs["good"].rounds_done == 1
    for bad, file in (("bad-round", "round-00000.arrow"), ("bad-spec", "spec.json")):
        assert jobs[bad].state == JobState.FAILED and file in jobs[bad].error
        with pytest.raises(SelectorError) as info:
            client.get_selection(bad, 1, 0, 1)
        assert info.value.status == Status.FAILED_PRECONDITION
        assert "could not be restored" in info.value.details
    header = client.get_selection("good", 1, 0, 1)
    part = header.indices
    assert header.weights_version == 7 and sorted(part.tolist()) == list(range(1200))

    assert dynams_main(["status", "--address", server.address]) == 0
    text = capsys.readouterr().out
    assert "job bad-round  FAILED (quarantined): unreadable round-00000.arrow" in text
    assert "job good  idle" in text

    assert client.delete_job("bad-round")
    assert not (state / "jobs/bad-round").exists()
    spec = make_spec(small_shards, "bad-spec").model_copy(update={"resources": NO_CPU})
    with pytest.raises(SelectorError) as info:
        client.create_job(spec)
    assert info.value.status == Status.ALREADY_EXISTS and "delete it first" in info.value.details


def test_a_job_whose_dataset_vanished_is_listed_failed_and_resumes_when_created_again(
        local_server_factory, small_shards, tmp_path):
    uri, manifest = small_shards
    data = tmp_path / "data"
    shutil.copytree(uri, data)
    spec = make_spec((str(data), manifest), "moved").model_copy(update={"resources": NO_CPU})
    persisted(tmp_path / "state", spec, rounds=1)
    data.rename(tmp_path / "elsewhere")
    server = local_server_factory(state_dir=tmp_path / "state")
    client = SelectorClient(server.address, retries=0)
    [job] = client.list_jobs()
    assert job.state == JobState.FAILED and "cannot restore" in job.error
    with pytest.raises(SelectorError) as info:
        client.create_job(spec)  # still missing: still failed
    assert info.value.status == Status.NOT_FOUND
    assert client.list_jobs()[0].state == JobState.FAILED
    (tmp_path / "elsewhere").rename(data)
    assert client.create_job(spec).rounds_done == 1  # resumed with its saved round
    header = client.get_selection("moved", 1, 0, 1)
    part = header.indices
    assert header.weights_version == 7 and sorted(part.tolist()) == list(range(1200))


def test_delete_on_a_read_only_state_dir_is_an_error(local_server_factory, small_shards, tmp_path,
                                                     immutable):  # noqa: F811
    state = tmp_path / "state"
    persisted(state, make_spec(small_shards, "kept").model_copy(update={"resources": NO_CPU}))
    server = local_server_factory(state_dir=state)
    client = SelectorClient(server.address, retries=0)
    immutable(state / "jobs")
    with pytest.raises(SelectorError) as info:
        client.delete_job("kept")
    assert info.value.status == Status.INTERNAL and "the job is kept" in info.value.details
    assert [j.spec.job_id for j in client.list_jobs()] == ["kept"]
    assert (state / "jobs/kept/spec.json").exists()


def test_list_jobs_is_summaries_in_pages_whatever_the_jobs_length(local_server_factory,
                                                                  small_shards, tmp_path):
    state = tmp_path / "state"
    for i in range(4):
        spec = make_spec(small_shards, f"long-{i}").model_copy(
            update={"resources": NO_CPU, "epochs": 100_000})
        persisted(state, spec)
    server = local_server_factory(state_dir=state)
    client = SelectorClient(server.address, retries=0)
    stub_reply = client._stub.ListJobs(pb.ListJobsRequest(page_size=3), timeout=30)
    assert [j.spec.job_id for j in stub_reply.jobs] == ["long-0", "long-1", "long-2"]
    assert stub_reply.next_page_token == "long-2"
    assert stub_reply.ByteSize() < 16 * 1024  # four 100,000-epoch jobs once took > 8 MiB
    assert all(not j.rounds and not j.epoch_sizes for j in stub_reply.jobs)
    assert stub_reply.jobs[0].rounds_total == 99_999
    jobs = client.list_jobs(page_size=3)
    assert [j.spec.job_id for j in jobs] == [f"long-{i}" for i in range(4)]
    detail = client.get_job("long-3")
    assert len(detail.rounds) == 99_999 and len(detail.epoch_sizes) == 100_000
    with pytest.raises(SelectorError) as info:
        client.get_job("nope")
    assert info.value.status == Status.NOT_FOUND and "long-" not in info.value.details  # no id list
    with pytest.raises(grpc.RpcError) as raw:
        client._stub.ListJobs(pb.ListJobsRequest(page_size=5000), timeout=30)
    assert raw.value.code() == C.INVALID_ARGUMENT
