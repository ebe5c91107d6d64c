"""A second real model path: cifar-resnet18 on 3x16x16 JPEG shards, scored by the selector
and trained by two real gloo ranks (torchrun). The images are small because the path, not
the arithmetic, is under test: the JPEG decoder, the ResNet's slimmed PSP on the scorers
and in the joint loss, and DDP over the selector's parts."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.ddp_example import read_output
from dynams_service import read_manifest

from .test_ddp import finish, torchrun

N = 400


def test_resnet18_on_jpeg_shards_two_ranks(server_factory, tmp_path, fashion_mnist_dir):
    from benchmarks.jpeg_data import jpeg_dataset, jpeg_items
    from dynams_service.core.data.shards import write_encoded_shards

    train = jpeg_dataset(N, size=16, channels=3, rows_per_shard=100)
    root = tmp_path / "shards"
    shutil.copytree(train, root / "train")
    write_encoded_shards(str(root / "test"), jpeg_items(100, size=16, channels=3, split="test"),
                         size=(3, 16, 16), num_classes=10, stats_from=read_manifest(train))
    server = server_factory(state_dir=tmp_path / "state")
    out = finish(torchrun(["--selector", server.address, "--arch", "cifar-resnet18",
                           "--shards", str(root),
                           "--epochs", "3", "--ratio", "0.3", "--scorers", "2",
                           "--batch-size", "50", "--job-id", "resnet-jpeg"],
                          cwd=tmp_path), timeout=600)
    result = read_output(out)
    kinds = [e["kind"] for e in result["epochs"]]
    assert kinds == ["full", "subset", "subset"], out  # both rounds answered, no fallback
    assert result["fallback_epochs"] == []
    assert [e["samples"] for e in result["epochs"]] == [N, 120, 120]
    assert read_manifest(str(root / "train")).decoder["name"] == "image"
    assert Path(tmp_path / "state").exists()
