"""PyTorch Lightning training on DynaMS selections: a LightningModule plus ``DynaMSCallback``.

    pip install -e '.[lightning]'
    dynams serve --address 127.0.0.1:50051 &
    python examples/train_lightning.py --selector 127.0.0.1:50051 \\
        --shards data/fashion-mnist --devices 2 --epochs 6 --ratio 0.3

Lightning starts the other ranks itself (``strategy="ddp"``, gloo on CPU). The sampler is a
``DistributedSampler``, so Lightning keeps it; the callback pushes the PSP weights, checks
every batch against the sampler and keeps its position in checkpoints: ``--ckpt-dir DIR``
saves every ``--ckpt-every`` steps, ``--resume PATH`` continues from one, mid-epoch
included. OneCycleLR is sized by ``sampler.total_steps``. Rank 0 prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

import dynams_service as dms
from dynams_service.client import (
    DynaMSSampler,
    JointPSP,
    SelectorClient,
    SelectorJob,
    WithIndices,
    psp_loss,
)
from dynams_service.integrations.lightning import DynaMSCallback


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--selector", required=True, metavar="HOST:PORT")
    p.add_argument("--shards", type=Path, required=True, help="holds train/ shards")
    p.add_argument("--job-id", default="lightning")
    p.add_argument("--devices", type=int, default=2, help="processes on this node")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--explore", type=float, default=0.0)
    p.add_argument("--reweight", default="none", choices=["none", "inverse", "normalized"])
    p.add_argument("--batch-size", type=int, default=128, help="per rank")
    p.add_argument("--lr", type=float, default=0.05, help="OneCycleLR's peak")
    p.add_argument("--ckpt-dir", type=Path, help="save a checkpoint every --ckpt-every steps")
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--resume", type=Path, help="a checkpoint to continue from")
    return p.parse_args(argv)


class SelectedTraining(pl.LightningModule):
    """A slimmable CNN trained jointly with its PSP on the sampler's batches."""

    def __init__(self, dynams: DynaMSCallback, train_set: dms.ShardDataset,
                 args: argparse.Namespace) -> None:
        super().__init__()
        self.model = dms.SlimCNN(num_classes=10, in_channels=1, widths=(1.0, 0.25))
        self.joint = JointPSP(self.model, width=0.25)
        self.dynams, self.train_set, self.args = dynams, train_set, args

    def train_dataloader(self) -> DataLoader:
        # WithIndices: each batch carries its indices, to look up loss weights and to let
        # the callback check the batch against the sampler.
        return DataLoader(WithIndices(self.train_set), batch_size=self.args.batch_size,
                          sampler=self.dynams.sampler)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, idx = batch
        weights = self.dynams.sampler.weights_of(idx) if self.args.reweight != "none" else None
        loss = psp_loss(*self.joint(x), y, weights=weights)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.args.lr, momentum=0.9)
        # Epoch lengths follow the selection: the plan sizes the schedule exactly.
        total = self.dynams.sampler.total_steps(self.args.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, self.args.lr, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def open_sampler(args: argparse.Namespace, train_set: dms.ShardDataset) -> DynaMSSampler:
    """The job (created once, whichever rank is first) and this rank's sampler; called by
    the callback once Lightning has set up the process group."""
    uri = str((args.shards / "train").resolve())
    spec = dms.JobSpec(job_id=args.job_id, dataset_uri=uri, epochs=args.epochs,
                       fingerprint=train_set.manifest.fingerprint,
                       proxy=dms.ProxySpec(architecture="fmnist-cnn", width=0.25),
                       policy=dms.SelectionPolicy(ratio=args.ratio, explore=args.explore,
                                                  reweight=args.reweight,
                                                  class_balance="global" if args.explore
                                                  else "per_class", staleness="sync"))
    return DynaMSSampler(train_set, SelectorJob.create(SelectorClient(args.selector), spec))


def main(argv: list[str] | None = None, extra_callbacks: tuple = ()) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    train_set = dms.ShardDataset(str(args.shards / "train"))
    dynams = DynaMSCallback(lambda: open_sampler(args, train_set))
    callbacks: list[pl.Callback] = [dynams, *extra_callbacks]
    if args.ckpt_dir:
        callbacks.append(ModelCheckpoint(dirpath=args.ckpt_dir, filename="{step}",
                                         every_n_train_steps=args.ckpt_every, save_top_k=-1))
    trainer = pl.Trainer(accelerator="cpu", devices=args.devices, strategy="ddp",
                         max_epochs=args.epochs, callbacks=callbacks, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=bool(args.ckpt_dir))
    module = SelectedTraining(dynams, train_set, args)
    trainer.fit(module, ckpt_path=args.resume)
    if trainer.is_global_zero:
        sampler = dynams.sampler
        print(json.dumps({"fraction_trained": sampler.plan().fraction_trained,
                          "fallback_epochs": sampler.fallback_epochs,
                          "optimizer_steps": trainer.global_step,
                          "planned_steps": sampler.total_steps(args.batch_size)}), flush=True)


if __name__ == "__main__":
    main()
