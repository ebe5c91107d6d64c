"""A job is its spec and its dataset's encoding: the same id over a dataset rewritten with
another sample shape or decoder is ALREADY_EXISTS, never a silent reuse; jobs saved
before the encoding was kept still restore."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dynams_service import ScorerResources
from dynams_service.client import SelectorClient, SelectorError, Status
from dynams_service.core.data.shards import DatasetManifest, write_shards
from dynams_service.core.job import JobState
from dynams_service.service.coordinator import JobCoordinator
from dynams_service.service.dataset_identity import DatasetEncoding
from dynams_service.service.store import StateStore

from .conftest import make_spec

N = 1000
ONE_SCORER = ScorerResources(num_scorers=1, num_cpus=0, batch_size=256)


def write(uri, images: np.ndarray, labels: np.ndarray) -> DatasetManifest:
    """(Re)write a one-shard dataset at ``uri``."""
    shutil.rmtree(uri, ignore_errors=True)
    return write_shards(str(uri), images, labels, num_classes=10, rows_per_shard=N)


@pytest.fixture()
def images_labels(fashion_mnist_train):
    images, labels = fashion_mnist_train
    return images[:N, None], labels[:N]  # (N, 1, 28, 28)


def test_a_dataset_rewritten_with_another_shape_is_another_job(local_server_factory, tmp_path,
                                                                images_labels):
    images, labels = images_labels
    uri = tmp_path / "data"
    manifest = write(uri, images, labels)
    spec = make_spec((str(uri), manifest), "reshaped").model_copy(
        update={"resources": ONE_SCORER})
    state = tmp_path / "state"
    server = local_server_factory(state_dir=state)
    client = SelectorClient(server.address, retries=0)
    first = client.create_job(spec)
    assert client.create_job(spec).scorers == first.scorers  # identical: idempotent

    halved = write(uri, np.ascontiguousarray(images[:, :, ::2, ::2]), labels)
    assert halved.fingerprint == manifest.fingerprint  # same rows and labels: same spec
    with pytest.raises(SelectorError) as info:
        client.create_job(spec)
    assert info.value.status == Status.ALREADY_EXISTS
    assert "sample shape [1, 28, 28] -> [1, 14, 14]" in info.value.details

    server.stop(grace=0)  # a restart finds the job's dataset changed under it
    client = SelectorClient(local_server_factory(state_dir=state).address, retries=0)
    [job] = client.list_jobs()
    assert job.state == JobState.FAILED and "[1, 28, 28] -> [1, 14, 14]" in job.error
    with pytest.raises(SelectorError) as info:
        client.create_job(spec)
    assert info.value.status == Status.ALREADY_EXISTS
    assert "[1, 28, 28] -> [1, 14, 14]" in info.value.details
    assert client.delete_job("reshaped")
    with pytest.raises(SelectorError) as info:  # deleted: the new dataset is checked
        client.create_job(spec)
    assert info.value.status == Status.INVALID_ARGUMENT
    assert "samples of shape [1, 14, 14]" in info.value.details


def test_a_changed_decoder_is_named(tmp_path, images_labels, jpeg_shards):
    images, labels = images_labels
    raw = DatasetEncoding.of(write(tmp_path / "raw", images, labels))
    _, jpeg = jpeg_shards
    changed = raw.differences(DatasetEncoding.of(jpeg))
    assert changed[0].startswith("sample shape [1, 28, 28] -> [3, 32, 32]")
    assert changed[1] == "decoder 'raw' -> 'image'"
    assert raw.differences(DatasetEncoding.of(write(tmp_path / "again", images, labels))) == []


def test_a_saved_encoding_that_differs_quarantines_the_job_at_restore(tmp_path, images_labels):
    images, labels = images_labels
    uri = tmp_path / "data"
    manifest = write(uri, images, labels)
    spec = make_spec((str(uri), manifest), "moved-on").model_copy(
        update={"resources": ONE_SCORER})
    store = StateStore(tmp_path / "state")
    store.save_spec(spec, DatasetEncoding.of(manifest))
    write(uri, images.astype(np.float32) / 255, labels)  # same shape, another dtype
    coordinator = JobCoordinator(StateStore(tmp_path / "state"))
    assert coordinator.restore() == 0
    [summary], _ = coordinator.list_jobs()
    assert summary.state == "failed"
    assert "decoder 'raw' dtype 'uint8' -> 'float32'" in summary.error
