"""A torchvision ResNet-18 made slimmable in one call, registered on a real `dynams serve`
with ``--models``, trained a few joint steps on real JPEG shards, and selected from: the
round equals the core's selection with the pushed proxy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from dynams_service import JobSpec, ProxySpec, ScorerResources, SelectionPolicy, ShardDataset
from dynams_service.client import JointPSP, SelectorClient, SelectorError, Status, psp_loss
from dynams_service.core.data.shards import decode_samples, read_shards
from dynams_service.core.models.proxy import TensorRecord, build_proxy, export_psp
from dynams_service.core.models.slimming import make_slimmable
from dynams_service.core.selection.scoring import score
from dynams_service.core.selection.selection import select

from .conftest import Selector, canonical_from_parts, gather


def _spec(shards, job_id: str) -> JobSpec:
    uri, manifest = shards
    return JobSpec(job_id=job_id, dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="tv-resnet18", width=0.25),
                   policy=SelectionPolicy(ratio=0.3, warmup_epochs=1, seed=5), epochs=3,
                   resources=ScorerResources(num_scorers=2, num_cpus=1, batch_size=64))


def _trained(uri: str) -> torch.nn.Module:
    """The trainer's side: the same one call, then a few joint steps on the shards."""
    torch.manual_seed(0)
    model = make_slimmable(resnet18(num_classes=10), widths=(1.0, 0.25),
                           input_shape=(3, 32, 32))
    joint = JointPSP(model, 0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(ShardDataset(uri), batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    for x, y in loader:
        logits, psp_logits = joint(x)
        loss = psp_loss(logits, psp_logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_torchvision_resnet_round_through_dynams_serve(tmp_path, ray_cluster, jpeg_shards):
    import tests.service.tv_models  # noqa: F401 - registers tv-resnet18 here as the selector does

    uri, manifest = jpeg_shards
    model = _trained(uri)
    records = export_psp(model, 0.25)
    selector = Selector(tmp_path / "state", "--models", "tests.service.tv_models")
    try:
        client = SelectorClient(selector.address)
        refused = _spec(jpeg_shards, "tv-densenet121").model_copy(
            update={"proxy": ProxySpec(architecture="tv-densenet121", width=0.25)})
        with pytest.raises(SelectorError) as info:
            client.create_job(refused)
        assert info.value.status == Status.FAILED_PRECONDITION
        assert "architecture 'tv-densenet121' is registered on this selector but cannot be " \
               "built: DenseNet cannot be made slimmable" in info.value.details
        assert "a concatenation along channels" in info.value.details

        spec = _spec(jpeg_shards, "tv-resnet18")
        job = client.create_job(spec)
        assert list(job.epoch_sizes) == [600, 180, 180]

        bad = [TensorRecord.from_tensor(r.name, torch.zeros(3)) if r.name.endswith(
            "conv1.weight") else r for r in records]
        with pytest.raises(SelectorError) as info:
            client.push_weights(spec.job_id, epoch=1, version=1, records=bad)
        assert info.value.status == Status.INVALID_ARGUMENT
        assert "body.conv1.weight" in info.value.details

        client.push_weights(spec.job_id, epoch=1, version=1, records=records)
        headers, parts = zip(*gather(client, spec.job_id, 1, world_size=2), strict=True)
        chosen = np.sort(canonical_from_parts(list(parts), headers[0].global_count))

        rows = read_shards(uri, manifest=manifest)
        proxy = build_proxy("tv-resnet18", 0.25, records)
        expected = select(score(proxy, decode_samples(rows.samples, manifest), batch_size=64),
                          rows.labels, ratio=0.3)
        assert len(chosen) == 180
        assert np.array_equal(chosen, expected)
        client.close()
    finally:
        selector.stop()
