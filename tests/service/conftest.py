"""Fixtures for the selector: one real local Ray cluster per session, real gRPC on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dynams_service import (
    JobSpec,
    ProxySpec,
    ScorerResources,
    SelectionPolicy,
    build_architecture,
    decode_samples,
    read_shards,
    write_shards,
)
from dynams_service.core.shards import DatasetManifest

SMALL_N = 4000


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster with its temp files and auth token under a private temp dir."""
    import ray

    temp = Path(tempfile.mkdtemp(prefix="dynray-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(temp)
    (temp / "auth_token").write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(temp / "auth_token")
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


def make_spec(small_shards, job_id: str = "fmnist-small", **policy) -> JobSpec:
    uri, manifest = small_shards
    policy = {"ratio": 0.3, "warmup_epochs": 1, "interval_epochs": 1, "seed": 7, **policy}
    return JobSpec(job_id=job_id, dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                   policy=SelectionPolicy(**policy), epochs=4,
                   resources=ScorerResources(num_scorers=2, num_cpus=1, batch_size=256))


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


def gather(client, job_id: str, epoch: int, world_size: int, drop_last: bool = False):
    """Every rank's answer for one epoch."""
    return [client.get_selection(job_id, epoch, rank, world_size, drop_last=drop_last,
                                 timeout=120) for rank in range(world_size)]


def canonical_from_parts(parts: list[np.ndarray], global_count: int) -> np.ndarray:
    """Undo the rank split: interleave parts, drop the padding."""
    world = len(parts)
    order = np.empty(len(parts[0]) * world, dtype=np.int64)
    for rank, part in enumerate(parts):
        order[rank::world] = part
    return order[:global_count]
