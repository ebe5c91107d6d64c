"""Joint PSP training: the proxy learns in the same step as the model, at ≈α² extra cost."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.models import SlimmableModel

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

    def __init__(self, model: SlimmableModel, width: float) -> None:
        super().__init__()
        self.model = model
        self.width = model.check_width(width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x), self.model(x, self.width)


def psp_loss(logits: torch.Tensor, psp_logits: torch.Tensor, targets: torch.Tensor,
             lam: float = 1.0, distill: bool = False, temperature: float = 1.0) -> torch.Tensor:
    """``CE(full, y) + λ·CE(psp, y)``; with ``distill`` the PSP learns the detached full
    model's softened outputs instead (KL at ``temperature``)."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    loss = F.cross_entropy(logits, targets)
    if distill:
        t = temperature
        teacher = F.softmax(logits.detach() / t, dim=1)
        aux = F.kl_div(F.log_softmax(psp_logits / t, dim=1), teacher,
                       reduction="batchmean") * t * t
    else:
        aux = F.cross_entropy(psp_logits, targets)
    return loss + lam * aux
