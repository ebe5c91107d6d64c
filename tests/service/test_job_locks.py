"""CreateJob waits per job: a dataset whose manifest is slow to arrive holds up its own
job (and only a second CreateJob of the same id), never CreateJob, GetJob or ListJobs of
the others. The slow dataset is a real pyarrow filesystem whose manifest reads wait at a
gate the test opens (``gated_fs``), so nothing in the code under test is patched."""

from __future__ import annotations

import threading

import pytest

from dynams_service.client import SelectorClient, SelectorError, Status
from dynams_service.core.registry import load_plugin_modules

from .conftest import make_spec, with_resources


@pytest.fixture()
def gate():
    load_plugin_modules(["tests.service.gated_fs"])
    from . import gated_fs

    gated_fs.WAITING.clear()
    gated_fs.GATE.clear()
    yield gated_fs
    gated_fs.GATE.set()  # never leave a reader waiting, whatever the test did


def light(small_shards, job_id: str, uri: str | None = None):
    """One scorer taking no CPU reservation, so three jobs fit beside the other tests'."""
    spec = make_spec(small_shards, job_id)
    if uri:
        spec = spec.model_copy(update={"dataset_uri": uri})
    return with_resources(spec, num_scorers=1, num_cpus=0)


def test_a_slow_dataset_blocks_only_its_own_job(local_server_factory, small_shards, gate):
    server = local_server_factory()
    client = SelectorClient(server.address, retries=0)
    client.create_job(light(small_shards, "existing"))

    slow = light(small_shards, "slow", uri="gated://" + small_shards[0].lstrip("/"))
    outcome: dict = {}

    def create(key: str) -> None:
        try:
            outcome[key] = client.create_job(slow, timeout=300)
        except SelectorError as exc:  # reported, and the asserts below say which
            outcome[key] = exc

    first = threading.Thread(target=create, args=("first",))
    first.start()
    assert gate.WAITING.wait(120), "the slow job never reached its manifest"
    twin = threading.Thread(target=create, args=("twin",))  # the same id: waits for it
    twin.start()

    # While the slow job's manifest is held, the others proceed: all of this returns.
    beside = client.create_job(light(small_shards, "beside"), timeout=300)
    assert beside.spec.job_id == "beside"
    assert client.get_job("existing").spec.job_id == "existing"
    listed = [job.spec.job_id for job in client.list_jobs()]
    assert listed == ["beside", "existing"]  # "slow" is not created yet
    with pytest.raises(SelectorError) as refused:  # another spec under the held id
        client.create_job(light(small_shards, "slow"), timeout=60)
    assert refused.value.status == Status.ALREADY_EXISTS
    assert first.is_alive() and twin.is_alive() and not outcome

    gate.GATE.set()
    first.join(300)
    twin.join(300)
    assert outcome["first"].spec.job_id == "slow", outcome["first"]
    assert outcome["twin"].spec == outcome["first"].spec, outcome["twin"]
    assert sorted(job.spec.job_id for job in client.list_jobs()) == ["beside", "existing",
                                                                     "slow"]
