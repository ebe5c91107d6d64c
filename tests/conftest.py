"""Shared fixtures: real Fashion-MNIST files and shards, one real local Ray cluster per
session, and selector servers on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# One intra-op thread per test process, and for the processes the tests start (set before
# torch loads): the xdist workers and the scorers, ranks and scripts they run share the
# cores, and OpenMP threads spin-waiting for a busy core made in-process tests several
# times slower (tests/core/test_slimming.py: 57 s with two threads beside one busy process,
# 20 s with one). A value set by the caller is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

from dynams_service import build_architecture
from dynams_service.core.data.idx import load_idx_split
from dynams_service.core.data.shards import (
    DatasetManifest,
    decode_samples,
    read_shards,
    write_shards,
)

pytest_plugins = ["tests.file_costs"]  # costliest files first across xdist workers

SMALL_N = 4000  # the small shard set: the first 4000 training images, 4 shards

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


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster with its temp files and auth token under a private temp dir."""
    import ray

    temp = Path(tempfile.mkdtemp(prefix="dynray-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(temp)
    (temp / "auth_token").write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(temp / "auth_token")
    # What only costs CPU here: usage reporting, and idle workers started ahead of any task
    # (every scorer actor gets a process of its own that imports torch anyway).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    # Ray runs its workers at niceness 15: on a machine kept busy by the other tests, the
    # scorer actors then wait for the CPU until the busy tests end (a restart test took
    # 190 s under two busy loops, 16 s at niceness 0, and once missed its 60 s deadline).
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address="local", num_cpus=4, include_dashboard=False, _temp_dir=str(temp),
             logging_level="WARNING")
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, fashion_mnist_train) -> tuple[str, DatasetManifest]:
    """The first 4000 Fashion-MNIST training images as 4 shards of 1000."""
    images, labels = fashion_mnist_train
    uri = str(tmp_path_factory.mktemp("small") / "train")
    manifest = write_shards(uri, images[:SMALL_N, None], labels[:SMALL_N], num_classes=10,
                            rows_per_shard=1000)
    return uri, manifest


# The training runs' set: training, not the process start, is their main cost. 2200 samples
# and 660 selected make an even number of 128-sample batches (18 and 6), each ending short.
DDP_N = 2200


@pytest.fixture(scope="session")
def shard_root(tmp_path_factory, fashion_mnist_train, small_shards, fashion_mnist_dir) -> Path:
    """What the training runs (torchrun, Lightning, Accelerate, Ray Train) read:
    shards/train (the first 2200 training images, 4 shards) and shards/test (1000 test
    images), normalised like the small shards."""
    from dynams_service.core.data.idx import load_idx_split

    root = tmp_path_factory.mktemp("ddp") / "shards"
    images, labels = fashion_mnist_train
    write_shards(str(root / "train"), images[:DDP_N, None], labels[:DDP_N], num_classes=10,
                 rows_per_shard=DDP_N // 4, stats_from=small_shards[1])
    images, labels = load_idx_split(fashion_mnist_dir, "test")
    write_shards(str(root / "test"), images[:1000, None], labels[:1000], num_classes=10,
                 stats_from=small_shards[1])
    return root


@pytest.fixture(scope="session")
def trained_model(small_shards):
    """The fmnist CNN trained one epoch on the small shards with the joint PSP loss."""
    uri, manifest = small_shards
    rows = read_shards(uri, manifest=manifest)
    x, y = decode_samples(rows.samples, manifest), torch.from_numpy(rows.labels)
    torch.manual_seed(0)
    model = build_architecture("fmnist-cnn").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    for start in range(0, len(x), 128):
        batch = perm[start:start + 128]
        loss = (torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
                + torch.nn.functional.cross_entropy(model(x[batch], 0.25), y[batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture()
def server_factory(ray_cluster, tmp_path):
    """Start selector servers on 127.0.0.1 (free port); all are stopped at teardown."""
    from dynams_service.service.server import SelectorServer

    servers = []

    def start(state_dir: Path | None = None, address: str = "127.0.0.1:0",
              **kwargs) -> SelectorServer:
        server = SelectorServer(address, state_dir=state_dir or tmp_path / "state",
                                **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=0)


@pytest.fixture(scope="session")
def jpeg_shards(fashion_mnist_dir) -> tuple[str, DatasetManifest]:
    """600 real Fashion-MNIST images up-scaled to 3x32x32, shifted, tinted and JPEG-encoded,
    in 3 shards of 200 (generated once into the dataset cache)."""
    from benchmarks.jpeg_data import jpeg_dataset
    from dynams_service.core.data.shards import read_manifest

    uri = jpeg_dataset(600, size=32, channels=3, rows_per_shard=200)
    return uri, read_manifest(uri)


@pytest.fixture(scope="session")
def jpeg_grey_shards(fashion_mnist_dir) -> tuple[str, DatasetManifest]:
    """1000 real Fashion-MNIST images as 1x64x64 JPEGs in 4 shards of 250."""
    from benchmarks.jpeg_data import jpeg_dataset
    from dynams_service.core.data.shards import read_manifest

    uri = jpeg_dataset(1000, size=64, channels=1, rows_per_shard=250)
    return uri, read_manifest(uri)


TORCHRUN_MODULES = {"test_ddp.py", "test_ddp_images.py", "test_resume.py",
                    "test_lightning.py", "test_accelerate.py", "test_ray_train.py"}


def pytest_collection_modifyitems(config, items):
    """Mark what needs more than this process, so ``-m 'not ray and not slow'`` runs the
    fast tests alone (``make test`` runs everything): ``ray`` for a test on a local Ray
    cluster (it uses ``ray_cluster``, directly or through ``server_factory``), ``slow``
    for torchrun ranks and benchmark scripts."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
        path = item.path
        if path.name in TORCHRUN_MODULES or path.parent.name == "benchmarks":
            item.add_marker(pytest.mark.slow)


def local_server(state_dir: Path, address: str = "127.0.0.1:0", **kwargs):
    """A started selector on 127.0.0.1 whose scorers run in this process (no Ray): for
    what the wire, the servicer and the coordinator do. Its ``cluster`` steers them."""
    from dynams_service.service.metrics import InMemoryMetrics
    from dynams_service.service.server import SelectorServer
    from tests.service.local_scorers import LocalCluster

    cluster = LocalCluster()
    server = SelectorServer(address, state_dir=state_dir, scorer_factory=cluster,
                            metrics=InMemoryMetrics(), **kwargs).start()
    server.cluster = cluster
    return server


@pytest.fixture()
def local_server_factory(tmp_path):
    """``local_server`` per call (default state dir ``tmp_path/state``); all stopped at
    teardown."""
    servers = []

    def start(state_dir: Path | None = None, **kwargs):
        server = local_server(state_dir or tmp_path / "state", **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=0)
