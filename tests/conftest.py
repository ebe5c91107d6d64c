"""Shared fixtures: the real Fashion-MNIST files and their shards, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dynams_service.core.idx import load_idx_split
from dynams_service.core.shards import DatasetManifest, write_shards

FASHION_MNIST_DIR = Path(
    os.environ.get("DYNAMS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """Directory of the real Fashion-MNIST IDX files (``make test`` installs them)."""
    if not any(FASHION_MNIST_DIR.glob("train-images-idx3-ubyte*")):
        pytest.fail(f"Fashion-MNIST IDX files not found in {FASHION_MNIST_DIR}; run `make test` "
                    "(it installs them) or set DYNAMS_FASHION_MNIST_DIR")
    return FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def fashion_mnist_train(fashion_mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 60k training images (N, 28, 28) uint8 and labels (N,) int64."""
    return load_idx_split(fashion_mnist_dir, "train")


@pytest.fixture(scope="session")
def fashion_mnist_shards(
    tmp_path_factory: pytest.TempPathFactory, fashion_mnist_train: tuple[np.ndarray, np.ndarray]
) -> tuple[str, DatasetManifest]:
    """The full training set written once as shards of 8192 rows."""
    images, labels = fashion_mnist_train
    uri = str(tmp_path_factory.mktemp("shards") / "train")
    return uri, write_shards(uri, images[:, None], labels, rows_per_shard=8192)
