"""Encoded-image datasets through the whole selector: real Ray scorers streaming JPEG
shards, real gRPC; cache budgets, corrupt samples and unknown decoders."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from dynams_service import (
    JobSpec,
    ProxySpec,
    ScorerResources,
    SelectionPolicy,
    build_architecture,
    score,
    select,
)
from dynams_service.client import Reason, RoundInfo, SelectorClient, SelectorError, Status
from dynams_service.core.data.decoders import ImageDecoder, Normalizer
from dynams_service.core.data.shards import decode_samples, read_shards
from dynams_service.core.job import RoundState, SelectionKind
from dynams_service.core.models.proxy import build_proxy, export_psp

from ..core.test_stream import corrupt_row
from .conftest import canonical_from_parts, gather


def image_spec(shards, job_id: str, *, cache_bytes: int = 1 << 30,
               architecture: str = "cifar-resnet18", uri: str | None = None,
               num_scorers: int = 2) -> JobSpec:
    return JobSpec(job_id=job_id, dataset_uri=uri or shards[0],
                   fingerprint=shards[1].fingerprint,
                   proxy=ProxySpec(architecture=architecture, width=0.25),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1, seed=3), epochs=3,
                   resources=ScorerResources(num_scorers=num_scorers, num_cpus=1, batch_size=64,
                                             cache_bytes=cache_bytes))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_architecture("cifar-resnet18").eval()


def wait_round(client: SelectorClient, job_id: str, timeout: float = 180) -> RoundInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rnd = client.get_job(job_id).rounds[0]
        if rnd.state in (RoundState.DONE, RoundState.FAILED):
            return rnd
        time.sleep(0.2)
    raise AssertionError(f"round 0 of {job_id} still {rnd.state} after {timeout}s")


def test_jpeg_round_streams_and_matches_the_core(server_factory, jpeg_shards, resnet):
    server = server_factory()
    client = SelectorClient(server.address)
    uri, manifest = jpeg_shards
    records = export_psp(resnet, 0.25)
    rows = read_shards(uri, manifest=manifest)
    proxy = build_proxy("cifar-resnet18", 0.25, records)
    expected = select(score(proxy, decode_samples(rows.samples, manifest), batch_size=64),
                      rows.labels, ratio=0.3)
    selections = {}
    for cache, scorers in ((0, 2), (1 << 30, 1)):  # streaming every round, and all cached
        spec = image_spec(jpeg_shards, f"jpeg-cache-{cache}", cache_bytes=cache,
                          num_scorers=scorers)
        job = client.create_job(spec)
        assert list(job.epoch_sizes) == [600, 180, 180]
        client.push_weights(spec.job_id, epoch=1, version=1, records=records)
        headers, parts = zip(*gather(client, spec.job_id, 1, world_size=2), strict=True)
        assert all(h.kind == SelectionKind.SUBSET for h in headers)
        selections[cache] = np.sort(canonical_from_parts(list(parts), 180))
        scorers = client.get_job(spec.job_id).scorer_status
        assert sum(s.rows for s in scorers) == 600
        assert all(s.input_bytes == (0 if cache == 0 else s.rows * 3 * 32 * 32)
                   for s in scorers), scorers
    assert np.array_equal(selections[0], expected)
    assert np.array_equal(selections[1 << 30], expected)


def test_corrupt_image_fails_the_round_naming_shard_and_row(server_factory, jpeg_shards,
                                                            resnet, tmp_path):
    uri = str(tmp_path / "corrupt")
    shutil.copytree(jpeg_shards[0], uri)
    corrupt_row(uri, "shard-00002.parquet", 11)
    server = server_factory()
    client = SelectorClient(server.address)
    spec = image_spec(jpeg_shards, "jpeg-corrupt", uri=uri, cache_bytes=0)
    client.create_job(spec)  # labels and layout are fine; the bad pixels show when scored
    client.push_weights(spec.job_id, epoch=1, version=1, records=export_psp(resnet, 0.25))
    rnd = wait_round(client, spec.job_id)
    assert rnd.state == RoundState.FAILED
    assert "shard-00002.parquet row 11 (dataset index 411)" in rnd.error
    assert "Traceback" not in rnd.error
    with pytest.raises(SelectorError) as info:
        client.get_selection(spec.job_id, 1, 0, 1, timeout=10)
    assert info.value.status == Status.INTERNAL
    assert info.value.reason == Reason.ROUND_FAILED  # what the sampler switches on
    assert "shard-00002.parquet row 11" in info.value.details


def test_unregistered_decoder_is_invalid_argument(local_server_factory, jpeg_shards, tmp_path):
    uri = tmp_path / "custom"
    shutil.copytree(jpeg_shards[0], uri)
    manifest = json.loads((uri / "dynams-dataset.json").read_text())
    manifest["decoder"] = {"name": "webdataset-tar", "size": [3, 32, 32]}
    (uri / "dynams-dataset.json").write_text(json.dumps(manifest))
    client = SelectorClient(local_server_factory().address)
    with pytest.raises(SelectorError) as info:
        client.create_job(image_spec(jpeg_shards, "jpeg-unknown-decoder", uri=str(uri)))
    assert info.value.status == Status.INVALID_ARGUMENT
    assert "unknown decoder 'webdataset-tar'" in info.value.details
    assert "'image'" in info.value.details  # lists what is registered


def test_architecture_that_cannot_read_the_samples_is_invalid_argument(local_server_factory,
                                                                       jpeg_shards):
    client = SelectorClient(local_server_factory().address)
    with pytest.raises(SelectorError) as info:
        client.create_job(image_spec(jpeg_shards, "jpeg-wrong-arch", architecture="fmnist-cnn"))
    assert info.value.status == Status.INVALID_ARGUMENT
    assert "cannot read this dataset's samples of shape [3, 32, 32]" in info.value.details


def test_operator_decoder_loads_with_models_flag(tmp_path, jpeg_shards, resnet):
    """A decoder registered in an operator's module (``dynams serve --models``) decodes in
    the scorer processes too; the client only names it in the manifest."""
    plugin = tmp_path / "plugins" / "flipped_images.py"
    plugin.parent.mkdir()
    plugin.write_text(
        "from dynams_service import register_decoder\n"
        "from dynams_service.core.data.decoders import ImageDecoder\n\n\n"
        "class Flipped(ImageDecoder):\n"
        "    def decode(self, column):\n"
        "        return super().decode(column).flip(-1)\n\n\n"
        "register_decoder('flipped-image', Flipped)\n")
    uri = tmp_path / "flipped"
    shutil.copytree(jpeg_shards[0], uri)
    manifest = json.loads((uri / "dynams-dataset.json").read_text())
    manifest["decoder"] = {"name": "flipped-image", "size": [3, 32, 32]}
    (uri / "dynams-dataset.json").write_text(json.dumps(manifest))

    ray_tmp = tempfile.mkdtemp(prefix="dynplug-", dir="/tmp")  # AF_UNIX paths are short
    (tmp_path / "tok").write_text(secrets.token_hex(32))
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_AUTH_TOKEN_PATH=str(tmp_path / "tok"),
               PYTHONPATH=os.pathsep.join([str(plugin.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynams_service.cli", "serve", "--address", "127.0.0.1:0",
         "--ray-address", "local", "--state-dir", str(tmp_path / "state"),
         "--models", "flipped_images"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        address, lines = None, []
        while address is None:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
            address = match.group(1) if match else None
        client = SelectorClient(address)
        spec = image_spec(jpeg_shards, "jpeg-flipped", uri=str(uri))
        client.create_job(spec)
        records = export_psp(resnet, 0.25)
        client.push_weights(spec.job_id, epoch=1, version=1, records=records)
        (_, part), = gather(client, spec.job_id, 1, world_size=1)
        rows = read_shards(jpeg_shards[0])
        x = ImageDecoder([3, 32, 32]).decode(pa.array(list(rows.samples))).flip(-1)
        x = Normalizer(jpeg_shards[1].mean, jpeg_shards[1].std)(x)
        expected = select(score(build_proxy("cifar-resnet18", 0.25, records), x,
                                batch_size=64), rows.labels, ratio=0.3)
        assert np.array_equal(np.sort(part), expected)
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
