"""DynaMSCallback: a Lightning Trainer drives a ``DynaMSSampler``.

The sampler is a ``DistributedSampler``, so Lightning keeps it in the training loader
(``use_distributed_sampler`` does not wrap it). The callback does the rest of what a
hand-written loop does: it pushes the PSP weights when due, checks the trained batches
against the sampler (with ``WithIndices``), keeps the sampler's position in Lightning's
checkpoints (a run killed mid-epoch resumes with the same samples), asks for no round
of an epoch past the Trainer's ``max_epochs``, and has Lightning
re-read the loader's length every epoch, since epoch lengths follow the selection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.data import extract_batch_size

from ..client.batch_audit import FIX_REPLACED, SamplerMisuseError
from ..client.loss_weights import WithIndices
from ..client.sampler import DynaMSSampler
from ..core.models.models import SlimmableModel

__all__ = ["DynaMSCallback"]

log = logging.getLogger(__name__)


def default_model(module: pl.LightningModule) -> SlimmableModel:
    """The module itself if slimmable, else its ``model`` attribute."""
    for candidate in (module, getattr(module, "model", None)):
        if isinstance(candidate, SlimmableModel):
            return candidate
    raise TypeError(f"{type(module).__name__} is not a SlimmableModel and has no slimmable "
                    "`model` attribute: pass DynaMSCallback(sampler, model=lambda module: ...)")


class DynaMSCallback(pl.Callback):
    """Drives ``sampler`` from the Trainer's hooks.

    Args:
        sampler: the training loader's ``DynaMSSampler``, or a function that builds it,
            called in ``setup`` (once Lightning has set up the process group the sampler
            reads its rank from); the module's ``train_dataloader`` uses ``.sampler``.
        model: the slimmable model whose PSP slice is pushed, from the LightningModule
            (default: the module itself, or its ``model`` attribute).
        batch_indices: the dataset indices of a batch, to check every batch against the
            sampler; by default ``batch[-1]`` when the loader's dataset is ``WithIndices``
            (else batches are not checked, only that the loader kept the sampler).
    """

    def __init__(self, sampler: DynaMSSampler | Callable[[], DynaMSSampler], *,
                 model: Callable[[pl.LightningModule], SlimmableModel] = default_model,
                 batch_indices: Callable[[Any], Any] | None = None) -> None:
        self._sampler = sampler if isinstance(sampler, DynaMSSampler) else None
        self._build = None if self._sampler else sampler
        self.model, self.batch_indices = model, batch_indices
        self.start = 0  # this rank's samples of the epoch trained before a resume
        self.trained = 0  # and since

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        used = getattr(getattr(loader, "batch_sampler", None), "sampler", None) \
            or getattr(loader, "sampler", None)
        if used is not self.sampler:
            raise SamplerMisuseError(f"the training loader samples with "
                                     f"{type(used).__name__}, not the DynaMSCallback's "
                                     f"DynaMSSampler: {FIX_REPLACED}")
        if self.batch_indices is None and isinstance(getattr(loader, "dataset", None),
                                                     WithIndices):
            self.batch_indices = last_item

    @property
    def sampler(self) -> DynaMSSampler:
        if self._sampler is None:
            raise RuntimeError("DynaMSCallback builds its sampler in setup(): use "
                               "`.sampler` from train_dataloader() or later hooks")
        return self._sampler

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._sampler is None:
            self._sampler = self._build()
        if trainer.reload_dataloaders_every_n_epochs != 1:
            # Lightning counts an epoch's batches once per loader load; ours vary by epoch.
            log.info("DynaMSCallback: reload_dataloaders_every_n_epochs set to 1 (epoch "
                     "lengths follow the selection)")
            trainer.reload_dataloaders_every_n_epochs = 1

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sampler.set_epoch(trainer.current_epoch)
        self.start = self.trained = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self.batch_indices is not None:
            self.sampler.check_batch(self.batch_indices(batch))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.trained += extract_batch_size(batch)
        if trainer.current_epoch + 1 < self.epochs(trainer):  # no round for an unrun epoch
            progress = (self.start + self.trained) / max(len(self.sampler), 1)
            self.sampler.maybe_push(self.model(pl_module), progress)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The next epoch's length must be known when Lightning reloads the loader, which
        # happens before it sets the samplers' epoch.
        if trainer.current_epoch + 1 < self.epochs(trainer):
            self.sampler.set_epoch(trainer.current_epoch + 1)

    def epochs(self, trainer: pl.Trainer) -> int:
        """Epochs this fit runs: the job's plan, cut at the Trainer's ``max_epochs``."""
        planned = len(self.sampler.plan().epochs)
        limit = trainer.max_epochs
        return planned if limit is None or limit < 0 else min(planned, limit)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.sampler.close()

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position: the samples of the epoch trained when the checkpoint
        is taken (the loader may have prefetched more)."""
        return self.sampler.state_dict(consumed=self.start + self.trained)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state_dict)
        self.start, self.trained = int(state_dict["consumed"]), 0


def last_item(batch: Any) -> Any:
    """A ``WithIndices`` batch's indices: its last item."""
    return batch[-1]
