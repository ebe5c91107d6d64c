"""Joint PSP training: the proxy learns in the same step as the model, at a fraction of its cost."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.models.models import SlimmableModel
from .loss_weights import weighted_loss

__all__ = ["JointPSP", "psp_loss"]


class JointPSP(nn.Module):
    """Wraps a slimmable model so one forward returns (full logits, PSP logits).

    One forward per step keeps DDP's gradient hooks firing once per parameter, which two
    separate ``model(x)`` / ``model(x, width)`` calls before ``backward`` would not. Build
    the model with ``widths=(1.0, width)`` so every parameter is used and DDP needs no
    ``find_unused_parameters``.

    Example:
        >>> joint = JointPSP(SlimCNN(widths=(1.0, 0.25)), width=0.25)  # doctest: +SKIP
        >>> logits, psp_logits = DistributedDataParallel(joint)(x)  # doctest: +SKIP
    """

    def __init__(self, model: SlimmableModel, width: float, batch_fraction: float = 0.5,
                 every: int = 1) -> None:
        super().__init__()
        if not 0 < batch_fraction <= 1:
            raise ValueError(f"batch_fraction must be in (0, 1], got {batch_fraction}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.model = model
        self.width = model.check_width(width)
        self.batch_fraction = batch_fraction
        self.every = every
        self.steps = 0  # training forwards so far (which of them run the PSP)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full logits for the batch; PSP logits for its first ⌈batch_fraction·B⌉ samples,
        on every ``every``-th training forward (None on the others; ``psp_loss`` then is
        the plain loss). Evaluation forwards always return both.

        On CPU, pooling, BatchNorm and ReLU cost ∝ α, not α², so the proxy's step costs more
        than α² of the model's; a batch fraction of 0.5 roughly halves that overhead (the
        quality benchmark found no accuracy cost, hence the default; 0.25 did cost
        accuracy). ``every`` divides what is left (docs/benchmarks.md has the measurement).
        """
        logits = self.model(x)
        if not self._psp_due():
            return logits, None
        k = max(1, math.ceil(round(x.shape[0] * self.batch_fraction, 6)))
        return logits, self.model(x[:k], self.width)

    @torch.compiler.disable
    def _psp_due(self) -> bool:
        """Count a training forward; whether it runs the PSP. Outside ``torch.compile``'s
        graph: traced, the changing counter would recompile the model at every step."""
        if not self.training:
            return True
        due = self.steps % self.every == 0
        self.steps += 1
        return due


def psp_loss(logits: torch.Tensor, psp_logits: torch.Tensor | None, targets: torch.Tensor,
             lam: float = 1.0, distill: bool = False, temperature: float = 1.0,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """``CE(full, y) + λ·CE(psp, y)``; with ``distill`` the PSP learns the detached full
    model's softened outputs instead (KL at ``temperature``). ``psp_logits`` may cover only
    the batch's first rows (``JointPSP(batch_fraction=…)``), or be None on a step without
    the PSP (``JointPSP(every=…)``): the plain loss. ``weights``: the selection's per-sample
    loss weights (``weighted_loss``), applied to the full model's term only; the PSP keeps
    ranking every sample alike."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if weights is None:
        loss = F.cross_entropy(logits, targets)
    else:
        loss = weighted_loss(F.cross_entropy(logits, targets, reduction="none"), weights)
    if psp_logits is None:
        return loss
    k = psp_logits.shape[0]
    logits, targets = logits[:k], targets[:k]
    if distill:
        t = temperature
        teacher = F.softmax(logits.detach() / t, dim=1)
        aux = F.kl_div(F.log_softmax(psp_logits / t, dim=1), teacher,
                       reduction="batchmean") * t * t
    else:
        aux = F.cross_entropy(psp_logits, targets)
    return loss + lam * aux

