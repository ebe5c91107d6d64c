"""IDX reading on the real Fashion-MNIST files, and clear errors for broken ones."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from dynams_service.core.data.idx import IDXError, load_idx_split, read_idx

# The first labels of upstream Fashion-MNIST (ankle boot, T-shirt, T-shirt, dress, …).
FIRST_LABELS = {"train": [9, 0, 0, 3, 0, 2, 7, 2, 5, 5], "test": [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]}


@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(fashion_mnist_dir, split, n):
    images, labels = load_idx_split(fashion_mnist_dir, split)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [n // 10] * 10
    assert labels[:10].tolist() == FIRST_LABELS[split]


def test_raw_and_gz_read_the_same(fashion_mnist_dir, tmp_path):
    raw = gzip.decompress((fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "labels").write_bytes(raw)
    assert np.array_equal(read_idx(tmp_path / "labels"),
                          read_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz"))


def _labels_bytes(fashion_mnist_dir):
    return gzip.decompress((fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-10], "truncated"),
        (lambda b: b + b"xx", "trailing"),
        (lambda b: b"\x01\x02" + b[2:], "bad magic"),
        (lambda b: b[:2] + b"\x42" + b[3:], "unknown IDX element type"),
        (lambda b: b[:6], "truncated header"),
        (lambda b: b"", "bad magic"),
    ],
)
def test_broken_files_are_named(fashion_mnist_dir, tmp_path, mutate, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(mutate(_labels_bytes(fashion_mnist_dir)))
    with pytest.raises(IDXError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_is_named(tmp_path, fashion_mnist_dir):
    data = (fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IDXError, match="cannot decompress"):
        read_idx(path)


def test_missing_split_and_mismatched_counts(tmp_path, fashion_mnist_dir):
    with pytest.raises(IDXError, match="missing train-images-idx3-ubyte"):
        load_idx_split(tmp_path, "train")
    # images from test, labels from train: counts differ.
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
        (fashion_mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        (fashion_mnist_dir / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(IDXError, match="10000 images but .* 60000 labels"):
        load_idx_split(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_idx_split(tmp_path, "val")
