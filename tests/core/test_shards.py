"""Shards on real Fashion-MNIST: round trip, fingerprint, groups, and malformed files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dynams_service import read_manifest, write_shards
from dynams_service.core.data.shards import (
    MANIFEST_NAME,
    ShardError,
    decode_samples,
    fingerprint,
    read_shards,
    shard_groups,
    verify_dataset,
    write_shards_from_dataset,
)


def test_round_trip_equals_the_idx_files(fashion_mnist_shards, fashion_mnist_train):
    uri, manifest = fashion_mnist_shards
    images, labels = fashion_mnist_train
    assert manifest.num_samples == 60000 and len(manifest.shards) == 8
    assert read_manifest(uri) == manifest
    rows = read_shards(uri)
    assert np.array_equal(rows.indices, np.arange(60000))
    assert np.array_equal(rows.labels, labels)
    assert np.array_equal(rows.samples[:, 0], images)
    assert verify_dataset(uri, expected=fingerprint(labels, 10)) == manifest


def test_a_scorer_reads_only_its_shards(fashion_mnist_shards, fashion_mnist_train):
    uri, manifest = fashion_mnist_shards
    rows = read_shards(uri, [2, 3], manifest=manifest)
    assert rows.indices[0] == 2 * 8192 and rows.indices[-1] == 4 * 8192 - 1
    assert np.array_equal(rows.samples[:, 0], fashion_mnist_train[0][2 * 8192: 4 * 8192])


@pytest.mark.parametrize("k", range(1, 9))
def test_shard_groups_are_contiguous_balanced_and_cover_all(fashion_mnist_shards, k):
    _, manifest = fashion_mnist_shards
    groups = shard_groups(manifest, k)
    assert len(groups) == k and all(groups)
    assert [i for g in groups for i in g] == list(range(8))
    rows = [sum(manifest.shards[i].num_rows for i in g) for g in groups]
    assert max(rows) - min(rows) <= 2 * 8192


def test_shard_groups_refuses_more_scorers_than_shards(fashion_mnist_shards):
    with pytest.raises(ValueError, match=r"number of scorers 9 must be in \[1, 8\]"):
        shard_groups(fashion_mnist_shards[1], 9)


def test_decode_normalises_with_the_manifest(fashion_mnist_shards):
    uri, manifest = fashion_mnist_shards
    rows = read_shards(uri, [0], manifest=manifest)
    x = decode_samples(rows.samples, manifest)
    assert x.dtype == torch.float32 and x.shape == (8192, 1, 28, 28)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_fingerprint_changes_with_labels():
    a = fingerprint(np.array([0, 1, 2]), 3)
    assert fingerprint(np.array([0, 2, 1]), 3) != a
    assert fingerprint(np.array([0, 1, 2], dtype=np.int32), 3) == a


def test_from_a_torch_dataset(tmp_path):
    data = torch.utils.data.TensorDataset(torch.rand(50, 3, 4, 4), torch.arange(50) % 5)
    manifest = write_shards_from_dataset(str(tmp_path / "ds"), data, rows_per_shard=16)
    assert len(manifest.shards) == 4 and manifest.decoder["dtype"] == "float32"
    rows = read_shards(str(tmp_path / "ds"))
    assert np.allclose(rows.samples, data.tensors[0].numpy())
    assert rows.labels.tolist() == (np.arange(50) % 5).tolist()


@pytest.fixture()
def small_dataset(tmp_path, fashion_mnist_train) -> str:
    images, labels = fashion_mnist_train
    uri = str(tmp_path / "small")
    write_shards(uri, images[:300, None], labels[:300], num_classes=10, rows_per_shard=100)
    return uri


def _rewrite(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _drop_label(path: Path) -> None:
    _rewrite(path, pq.read_table(path).drop_columns(["label"]))


def _bad_label(path: Path) -> None:
    t = pq.read_table(path)
    labels = t.column("label").to_numpy().copy()
    labels[5] = 10
    _rewrite(path, t.set_column(1, "label", pa.array(labels)))


def _index_gap(path: Path) -> None:
    t = pq.read_table(path)
    index = t.column("index").to_numpy().copy()
    index[50:] += 1
    _rewrite(path, t.set_column(0, "index", pa.array(index)))


def _wrong_sample_type(path: Path) -> None:
    t = pq.read_table(path)
    _rewrite(path, t.set_column(2, "sample", pa.array([b"x"] * t.num_rows)))


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (_truncate, "unreadable shard"),
        (_drop_label, "missing columns"),
        (_bad_label, "labels in"),
        (_index_gap, "not the contiguous range"),
        (_wrong_sample_type, "fixed_size_binary"),
        (lambda p: p.unlink(), "unreadable shard"),
    ],
)
def test_malformed_shards_are_named(small_dataset, breaker, message):
    shard = Path(small_dataset) / "shard-00001.parquet"
    breaker(shard)
    with pytest.raises(ShardError, match=message) as info:
        verify_dataset(small_dataset)
    assert "shard-00001.parquet" in str(info.value)
    with pytest.raises(ShardError, match="shard-00001.parquet"):
        read_shards(small_dataset)


def test_manifest_problems_are_named(small_dataset, tmp_path):
    with pytest.raises(ShardError, match="no dataset here"):
        read_manifest(str(tmp_path / "nothing"))
    manifest_path = Path(small_dataset) / MANIFEST_NAME
    raw = json.loads(manifest_path.read_text())
    raw["shards"][1]["start"] = 150
    manifest_path.write_text(json.dumps(raw))
    with pytest.raises(ShardError, match="expected to start at 100"):
        read_manifest(small_dataset)
    manifest_path.write_text("{not json")
    with pytest.raises(ShardError, match="invalid manifest"):
        read_manifest(small_dataset)


def test_fingerprint_mismatch_is_refused(small_dataset, fashion_mnist_train):
    other = fingerprint(fashion_mnist_train[1][:300][::-1], 10)
    with pytest.raises(ShardError, match="differs from the trainer's"):
        verify_dataset(small_dataset, expected=other)


def test_relabelled_shard_fails_the_manifest_fingerprint(small_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    t = pq.read_table(copy / "shard-00000.parquet")
    labels = (t.column("label").to_numpy() + 1) % 10
    pq.write_table(t.set_column(1, "label", pa.array(labels)), copy / "shard-00000.parquet")
    with pytest.raises(ShardError, match="do not match the manifest's fingerprint"):
        verify_dataset(str(copy))


def test_write_shards_refuses_arrays_without_a_channel_axis(tmp_path):
    images = np.zeros((10, 28, 28), np.uint8)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*samples\[:, None\] gives "
                                         r"\(N, 1, 28, 28\)"):
        write_shards(str(tmp_path / "ds"), images, np.zeros(10, np.int64), num_classes=2)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got shape \(10, 784\)"):
        write_shards(str(tmp_path / "ds"), images.reshape(10, -1), np.zeros(10, np.int64))
    assert not (tmp_path / "ds").exists()
