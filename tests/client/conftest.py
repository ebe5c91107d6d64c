"""Fixtures of the trainer-side tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dynams_service import write_shards


@pytest.fixture(scope="session")
def shard_root(tmp_path_factory, small_shards, fashion_mnist_dir) -> Path:
    """shards/train (the 4000-sample set) and shards/test (1000 test images)."""
    from dynams_service.core.data.idx import load_idx_split

    root = tmp_path_factory.mktemp("ddp") / "shards"
    shutil.copytree(small_shards[0], root / "train")
    images, labels = load_idx_split(fashion_mnist_dir, "test")
    write_shards(str(root / "test"), images[:1000, None], labels[:1000], num_classes=10,
                 stats_from=small_shards[1])
    return root
