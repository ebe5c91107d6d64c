"""Per-sample loss weights end to end: a reweighting policy's selection on a real gRPC
selector (in-process scorers), its weights on every rank's sampler, after a restart, in a
fallback epoch, and the loss helpers that apply them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynams_service import score
from dynams_service.client import (
    DynaMSSampler,
    EpochWeights,
    SelectorClient,
    SelectorJob,
    WithIndices,
    psp_loss,
    weighted_loss,
)
from dynams_service.core.data.shards import decode_samples, read_shards
from dynams_service.core.job import SelectionKind
from dynams_service.core.models.proxy import build_proxy, export_psp
from dynams_service.core.selection.policy import SelectionPolicy
from dynams_service.core.selection.selection_rules import round_seed, rule_select_rows
from tests.conftest import local_server
from tests.service.conftest import make_spec

N = 4000
POLICY = {"class_balance": "global", "explore": 0.5, "reweight": "inverse"}


def core_round(small_shards, model, k: int, seed: int, round_: int):
    """The core's selection and weights for the same data, weights and policy."""
    uri, manifest = small_shards
    rows = read_shards(uri, manifest=manifest)
    proxy = build_proxy("fmnist-cnn", 0.25, export_psp(model, 0.25))
    margins = score(proxy, decode_samples(rows.samples, manifest), batch_size=256).numpy()
    return rule_select_rows(margins, rows.labels, k=k, rule=SelectionPolicy(**POLICY).rule,
                            seed=round_seed(seed, round_))


def samplers(address, spec, world_size=2, deadline=60.0):
    client = SelectorClient(address, timeout=10, retries=1)
    job = SelectorJob.create(client, spec)
    return client, [DynaMSSampler(N, job, rank=r, world_size=world_size, deadline=deadline)
                    for r in range(world_size)]


def test_every_rank_trains_the_selection_with_the_cores_weights(tmp_path, small_shards,
                                                                 trained_model):
    spec = make_spec(small_shards, **POLICY)
    server = local_server(tmp_path / "state")
    client, ranks = samplers(server.address, spec)
    try:
        for s in ranks:
            s.set_epoch(0)
        full = [list(iter(s)) for s in ranks]
        assert torch.equal(ranks[0].weights_of(full[0][:5]), torch.ones(5))  # full epoch
        ranks[0].push(trained_model, version=3)
        for s in ranks:
            s.set_epoch(1)
        parts = [np.array(list(iter(s))) for s in ranks]
        assert all(s.sources[1].kind is SelectionKind.SUBSET for s in ranks)
        want = core_round(small_shards, trained_model, k=1200, seed=7, round_=0)
        table = dict(zip(want.indices.tolist(), want.weights.tolist(), strict=True))
        assert sorted(np.concatenate(parts).tolist()) == sorted(table)
        for s, part in zip(ranks, parts, strict=True):
            got = s.weights_of(torch.from_numpy(part))
            assert got.dtype == torch.float32
            np.testing.assert_array_equal(got.numpy(), [table[i] for i in part.tolist()])
        explored = round(0.5 * 1200)
        assert sorted(set(table.values())) == [1.0, np.float32((N - (1200 - explored))
                                                              / explored)]
        assert sum(table.values()) == pytest.approx(N, rel=1e-5)
        with pytest.raises(KeyError, match="not in this rank's epoch 1"):
            ranks[0].weights_of(parts[1][:1])  # another rank's sample: re-sharded
    finally:
        for s in ranks:
            s.close()
        client.close()
        server.stop(grace=0)
    # The round's weights are stored with it: a restarted selector serves the same.
    again = local_server(tmp_path / "state")
    client, ranks = samplers(again.address, spec)
    try:
        ranks[1].set_epoch(1)
        assert np.array_equal(np.array(list(iter(ranks[1]))), parts[1])
        assert ranks[1].sources[1].round == 0
        np.testing.assert_array_equal(ranks[1].weights_of(parts[1]).numpy(),
                                      [table[i] for i in parts[1].tolist()])
    finally:
        for s in ranks:
            s.close()
        client.close()
        again.stop(grace=0)


def test_a_fallback_epoch_carries_the_uniform_subsets_weight(tmp_path, small_shards):
    spec = make_spec(small_shards, **POLICY)
    server = local_server(tmp_path / "state")
    client, ranks = samplers(server.address, spec, world_size=1, deadline=2.0)
    server.stop(grace=0)
    try:
        ranks[0].set_epoch(2)
        part = list(iter(ranks[0]))
        assert ranks[0].fallback_epochs == [2] and len(part) == 1200
        np.testing.assert_allclose(ranks[0].weights_of(part[:3]).numpy(), N / 1200)
    finally:
        ranks[0].close()
        client.close()


def test_weights_of_before_iterating_is_an_error(tmp_path, small_shards):
    server = local_server(tmp_path / "state")
    client, ranks = samplers(server.address, make_spec(small_shards, **POLICY), world_size=1)
    try:
        with pytest.raises(RuntimeError, match="before iterating epoch 0"):
            ranks[0].weights_of([1, 2])
    finally:
        ranks[0].close()
        client.close()
        server.stop(grace=0)


def test_epoch_weights_look_up_by_dataset_index():
    weights = EpochWeights(4, np.array([7, 2, 9]), np.array([1.0, 3.0, 1.5], np.float32))
    assert weights.weighted
    assert weights.of(torch.tensor([9, 7, 2, 9])).tolist() == [1.5, 1.0, 3.0, 1.5]
    with pytest.raises(KeyError, match="index 5 is not in this rank's epoch 4"):
        weights.of([5])
    plain = EpochWeights(0, np.arange(3), None, default=2.0)
    assert not plain.weighted and plain.of([0, 2]).tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="2 weights for 3 indices"):
        EpochWeights(0, np.arange(3), np.ones(2))


def test_with_indices_and_the_weighted_losses():
    data = WithIndices([(torch.zeros(2), 1), (torch.ones(2), 0)])
    x, y, i = data[1]
    assert len(data) == 2 and y == 0 and i == 1 and torch.equal(x, torch.ones(2))
    assert WithIndices(["a"])[0] == ("a", 0)
    losses = torch.tensor([1.0, 2.0, 3.0])
    assert weighted_loss(losses, torch.tensor([1.0, 2.0, 0.5])) == pytest.approx(6.5 / 3)
    assert weighted_loss(losses, None) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="weights of shape"):
        weighted_loss(losses, torch.ones(2))
    torch.manual_seed(0)
    logits, psp_logits, y = torch.randn(4, 10), torch.randn(2, 10), torch.tensor([1, 2, 3, 4])
    w = torch.tensor([2.0, 1.0, 1.0, 0.5])
    want = (F.cross_entropy(logits, y, reduction="none") * w).mean() \
        + 0.5 * F.cross_entropy(psp_logits, y[:2])
    assert psp_loss(logits, psp_logits, y, lam=0.5, weights=w) == pytest.approx(float(want))
