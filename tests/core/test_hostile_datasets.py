"""Datasets as an attacker or a careless user writes them: devices, FIFOs, huge or
foreign manifests, escaping shard paths, crafted shapes, client-chosen endpoints."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from dynams_service.core.data.shards import (
    MANIFEST_NAME,
    DatasetNotFound,
    ShardError,
    read_manifest,
    verify_dataset,
)
from dynams_service.service.dataset_access import DatasetAccess, DatasetAccessDenied


@pytest.fixture()
def dataset(small_shards, tmp_path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(small_shards[0], root)
    return root


def edit_manifest(root: Path, **changes) -> None:
    path = root / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_manifest_symlinked_to_a_device_is_refused_without_reading(dataset):
    (dataset / MANIFEST_NAME).unlink()
    (dataset / MANIFEST_NAME).symlink_to("/dev/zero")
    with pytest.raises(ShardError, match="not a regular file"):
        read_manifest(str(dataset))


def test_fifo_manifest_and_shard_do_not_hang(dataset):
    done = threading.Event()

    def attempt(path: Path) -> None:
        with pytest.raises(ShardError, match="not a regular file"):
            if path.name == MANIFEST_NAME:
                read_manifest(str(dataset))
            else:
                verify_dataset(str(dataset))
        done.set()

    shard = dataset / "shard-00002.parquet"
    shard.unlink()
    os.mkfifo(shard)
    worker = threading.Thread(target=attempt, args=(shard,), daemon=True)
    worker.start()
    worker.join(30)
    assert done.is_set(), "verify_dataset blocked on a FIFO shard"
    (dataset / MANIFEST_NAME).rename(dataset / "m.json")
    os.mkfifo(dataset / MANIFEST_NAME)
    done.clear()
    worker = threading.Thread(target=attempt, args=(dataset / MANIFEST_NAME,), daemon=True)
    worker.start()
    worker.join(30)
    assert done.is_set(), "read_manifest blocked on a FIFO manifest"


def test_oversized_manifest_is_refused_by_size(dataset):
    path = dataset / MANIFEST_NAME
    path.write_bytes(b" " * (9 << 20) + path.read_bytes())
    with pytest.raises(ShardError, match="larger than 8 MiB"):
        read_manifest(str(dataset))


def test_foreign_file_contents_are_not_echoed(dataset, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-" + "x" * 40 + "-TAILSECRET\n")
    (dataset / MANIFEST_NAME).unlink()
    (dataset / MANIFEST_NAME).symlink_to(secret)
    with pytest.raises(ShardError) as info:
        read_manifest(str(dataset))
    assert "SECRET" not in str(info.value) and "not valid JSON" in str(info.value)
    (dataset / MANIFEST_NAME).unlink()
    (dataset / MANIFEST_NAME).write_text(json.dumps({"TOPSECRET-key": 1}))
    with pytest.raises(ShardError) as info:
        read_manifest(str(dataset))
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.parquet", "a/../../x.parquet",
                                  "./shard.parquet", "s3://evil/x", "a//b.parquet"])
def test_shard_paths_stay_inside_the_dataset(dataset, path):
    manifest = json.loads((dataset / MANIFEST_NAME).read_text())
    manifest["shards"][0]["path"] = path
    (dataset / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="shards"):
        read_manifest(str(dataset))


def test_a_shard_symlinked_outside_is_refused(dataset, tmp_path):
    outside = tmp_path / "outside.parquet"
    (dataset / "shard-00001.parquet").rename(outside)
    (dataset / "shard-00001.parquet").symlink_to(outside)
    with pytest.raises(ShardError, match="outside the dataset directory"):
        verify_dataset(str(dataset))


@pytest.mark.parametrize("shape", [[2 ** 62, 2 ** 62], [1, 65537, 1], [], [1] * 9,
                                   [0, 28, 28], [4096, 4096, 4096]])
def test_crafted_sample_shapes_are_validation_errors(dataset, shape):
    edit_manifest(dataset, sample_shape=shape)
    with pytest.raises(ShardError, match="sample_shape"):
        read_manifest(str(dataset))


def test_normalisation_needs_one_positive_std_per_channel(dataset):
    edit_manifest(dataset, mean=[0.1, 0.2], std=[0.3, 0.4])
    with pytest.raises(ShardError, match="one value per channel"):
        read_manifest(str(dataset))
    edit_manifest(dataset, mean=[0.1], std=[0.0])
    with pytest.raises(ShardError, match="std"):
        read_manifest(str(dataset))


def test_missing_dataset_message_names_no_file_contents(tmp_path):
    with pytest.raises(DatasetNotFound, match="no dataset here") as absolute:
        read_manifest(str(tmp_path / "nowhere"))
    assert "relative path" not in str(absolute.value)
    with pytest.raises(DatasetNotFound, match="relative path is resolved in the reader's"):
        read_manifest("nowhere/at-all")


@pytest.mark.parametrize("uri", [
    "s3://bucket/ds?endpoint_override=127.0.0.1:9000&scheme=http",
    "s3://key:secret@bucket/ds", "hdfs://10.0.0.1:8020/ds", "s3://bucket:9000/ds",
    "gs://bucket/ds#frag", "file://otherhost/ds", "http://127.0.0.1/ds",
])
def test_client_chosen_endpoints_and_credentials_are_denied(uri):
    with pytest.raises(DatasetAccessDenied):
        DatasetAccess().check(uri)


def test_default_access_allows_local_paths_and_object_stores(tmp_path):
    access = DatasetAccess()
    for uri in (str(tmp_path), "s3://bucket/ds", "gs://bucket/ds", f"file://{tmp_path}"):
        access.check(uri)


def test_roots_confine_datasets_including_through_symlinks(tmp_path):
    (tmp_path / "data" / "ds").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path / "elsewhere")
    access = DatasetAccess(roots=[str(tmp_path / "data"), "s3://team/datasets"])
    access.check(str(tmp_path / "data" / "ds"))
    access.check("s3://team/datasets/fmnist")
    for uri in (str(tmp_path / "data" / "link"), str(tmp_path / "data" / ".." / "elsewhere"),
                str(tmp_path / "database"), "s3://team/datasets-other",
                "s3://team/datasets/../private", "gs://team/datasets"):
        with pytest.raises(DatasetAccessDenied, match="not under an allowed dataset root"):
            access.check(uri)
