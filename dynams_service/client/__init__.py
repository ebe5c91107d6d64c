"""The trainer side: SelectorClient, SelectorJob, DynaMSSampler and the joint PSP loss.

``JointPSP``, ``psp_loss``, ``weighted_loss`` and ``WithIndices`` are plain PyTorch;
everything that talks to a selector is imported on first use, so a script (or a
Lightning module) that only trains jointly does not load gRPC.
"""

from __future__ import annotations

import importlib
from typing import Any

from .joint_training import JointPSP, psp_loss
from .loss_weights import EpochWeights, WithIndices, weighted_loss

_LAZY = {
    "SelectorClient": ".client",
    "SelectorError": ".errors", "Status": ".errors", "Reason": ".errors",
    "RoundFailedError": ".errors", "SamplerMisuseError": ".batch_audit",
    "JobInfo": ".replies", "RoundInfo": ".replies", "ScorerInfo": ".replies",
    "PushResult": ".replies", "Selection": ".replies",
    "SelectorJob": ".job",
    "DynaMSSampler": ".sampler",
    "EpochSource": ".epochs",
    "PushScheduler": ".push",
    "SamplerCheckpoint": ".checkpoint",
}

__all__ = ["JointPSP", "psp_loss", "weighted_loss", "WithIndices", "EpochWeights", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
