"""Scoring a proxy over real Fashion-MNIST equals margins of the model at that width."""

from __future__ import annotations

import torch

from dynams_service import build_architecture, margins, score, select
from dynams_service.core.data.shards import decode_samples, read_shards
from dynams_service.core.models.proxy import build_proxy, export_psp


def test_proxy_scores_equal_the_model_at_width(fashion_mnist_shards):
    uri, manifest = fashion_mnist_shards
    rows = read_shards(uri, [7], manifest=manifest)
    x = decode_samples(rows.samples[:1000], manifest)
    y = torch.from_numpy(rows.labels[:1000])
    torch.manual_seed(0)
    model = build_architecture("fmnist-cnn")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for start in range(0, 1000, 100):  # a few steps so the margins mean something
        loss = sum(torch.nn.functional.cross_entropy(model(x[start:start + 100], w),
                                                     y[start:start + 100]) for w in (1.0, 0.25))
        opt.zero_grad()
        loss.backward()
        opt.step()

    proxy = build_proxy("fmnist-cnn", 0.25, export_psp(model, 0.25))
    by_proxy = score(proxy, x, y, batch_size=256)
    by_model = score(model, x, y, width=0.25, batch_size=333)
    assert model.training  # flag restored
    torch.testing.assert_close(by_proxy, by_model, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        head = model.head.slice_state(0.25)
        direct = margins(model.eval().forward_features(x, 0.25), head["weight"], head["bias"])
    torch.testing.assert_close(by_model, direct, atol=1e-5, rtol=1e-5)
    chosen = select(by_proxy, y, ratio=0.3, per_class=True)
    assert len(chosen) == 300
    assert by_proxy[chosen].mean() < by_proxy.mean()
