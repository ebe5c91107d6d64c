"""DynaMSCallback in a single-process Lightning Trainer (in this process): it trains on the
sampler's epochs and pushes at their end, and refuses a loader that does not sample
with its sampler."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from dynams_service import ShardDataset, SlimCNN
from dynams_service.client import (
    DynaMSSampler,
    JointPSP,
    SamplerMisuseError,
    SelectorClient,
    SelectorJob,
    WithIndices,
    psp_loss,
)
from tests.service.conftest import make_spec

pl = pytest.importorskip("lightning.pytorch")
from dynams_service.integrations.lightning import DynaMSCallback  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self, loader: DataLoader) -> None:
        super().__init__()
        self.model = SlimCNN(num_classes=10, in_channels=1, widths=(1.0, 0.25))
        self.joint, self.loader = JointPSP(self.model, 0.25), loader

    def train_dataloader(self) -> DataLoader:
        return self.loader

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return psp_loss(*self.joint(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture()
def sampler(local_server_factory, small_shards):
    server = local_server_factory()
    client = SelectorClient(server.address, timeout=10, retries=1)
    job = SelectorJob.create(client, make_spec(small_shards, staleness="sync"))
    yield DynaMSSampler(4000, job, rank=0, world_size=1)
    client.close()


@pytest.fixture()
def data(small_shards) -> WithIndices:
    return WithIndices(ShardDataset(small_shards[0]))


def trainer(callback: DynaMSCallback, epochs: int) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, callbacks=[callback],
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False)


def test_callback_trains_the_samplers_epochs_and_pushes_at_their_end(sampler, data):
    callback = DynaMSCallback(sampler)
    fit = trainer(callback, 2)
    fit.fit(Tiny(DataLoader(data, batch_size=200, sampler=sampler)))
    assert fit.reload_dataloaders_every_n_epochs == 1  # set by the callback
    # at the end of epoch 0 for epoch 1; none for epoch 2, which this fit (max_epochs=2) never runs
    assert sorted(sampler.pushed) == [1]
    assert sampler.sources[1].kind == "subset" and sampler.fallback_epochs == []
    assert fit.global_step == 20 + 6  # 4000, then 1200 samples: the second epoch's length


def test_callback_refuses_a_loader_that_does_not_use_its_sampler(sampler, data):
    with pytest.raises(SamplerMisuseError, match="RandomSampler"):
        trainer(DynaMSCallback(sampler), 1).fit(Tiny(DataLoader(data, batch_size=200,
                                                                shuffle=True)))
