"""Scores: what a selection ranks samples by, as plug-ins registered by name.

A score maps ``(proxy, inputs, labels)`` to one float per sample; **lower means "keep
first"**. DynaMS keeps the samples with the smallest margins (those nearest a decision
boundary), so the margin scores return margins as they are; a loss-like score, where the
samples to keep have the *highest* loss, returns the negated loss.

Built-ins:
- ``distance`` (the default): distance of the PSP features to the nearest boundary of
  the predicted class (``core.margin.margins``, ``mode="distance"``);
- ``signed``: distance to the nearest boundary of the true class, negative when
  misclassified (``mode="signed"``);
- ``loss``: the negated cross-entropy of the PSP (an InfoBatch-like rule, computed on the
  selector instead of the trainer);
- ``el2n``: the negated EL2N score, ``‖softmax(logits) − onehot(y)‖₂`` of the PSP
  (Paul et al. 2021, "Deep Learning on a Data Diet").

Operators add their own exactly like architectures and decoders: one function and one
``register_score`` call in a module named with ``dynams serve --models MODULE``; a job
names the score in ``SelectionPolicy.score``, and the selector refuses a name it does not
know at CreateJob.

Example (an operator's module)::

    from dynams_service.core.selection.scores import register_score

    def true_logit(proxy, inputs, labels):
        # the samples the proxy finds least likely to be of their class come first
        return proxy.logits(inputs).gather(1, labels[:, None]).squeeze(1)

    register_score("true-logit", true_logit)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.models import SlimmableModel
from ..registry import Registry
from .margin import _check_labels, margins

__all__ = [
    "ScoringProxy",
    "ScoreFn",
    "register_score",
    "get_score",
    "scores",
    "DEFAULT_SCORE",
]

DEFAULT_SCORE = "distance"


@dataclass(frozen=True)
class ScoringProxy:
    """The proxy as a score sees it: the model at one width and its head at that width.

    ``features(x)`` runs the network to the penultimate layer, ``head(z)`` applies the
    linear head sliced at the width (``weight`` ``(C, D)``, ``bias`` ``(C,)`` or None),
    and ``logits(x)`` does both. A score that needs features and logits calls
    ``features`` once and ``head`` on the result, so the network runs once per batch.
    Scores run in eval mode under ``torch.inference_mode()``; inputs and labels are
    already on ``device``.
    """

    model: SlimmableModel
    width: float
    weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, model: SlimmableModel, width: float = 1.0) -> ScoringProxy:
        """``model`` at ``width`` (a standalone proxy runs at its only width, 1.0)."""
        head = model.head.slice_state(width)
        return cls(model, float(width), head["weight"], head.get("bias"))

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` penultimate features."""
        return self.model.forward_features(inputs, self.width)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` logits from features (the sliced linear head)."""
        return F.linear(features, self.weight, self.bias)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` logits from inputs."""
        return self.head(self.features(inputs))


ScoreFn = Callable[[ScoringProxy, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""``fn(proxy, inputs (B, ...), labels (B,) int64 or None) → (B,)`` floats, lower first."""

_SCORES: Registry[ScoreFn] = Registry("score")


def register_score(name: str, fn: ScoreFn, *, replace: bool = False) -> None:
    """Make ``name`` usable as ``SelectionPolicy.score``; ``fn(proxy, inputs, labels)``
    returns ``(B,)`` floats, **lower = keep first** (negate losses).

    Call it at import time of a module the operator names (``dynams serve --models mod``);
    the selector's scorer processes import the same modules. ``labels`` is None only
    where the caller has none (``core.scoring.score`` without labels); a score that needs
    them should say so with a ``ValueError``.
    """
    if not callable(fn):
        raise TypeError(f"score {name!r} must be callable, got {type(fn).__name__}")
    _SCORES.register(name, fn, replace=replace)


def get_score(name: str) -> ScoreFn:
    """The score registered as ``name`` (``UnknownName``, a ``KeyError``, lists the known
    ones otherwise)."""
    return _SCORES.get(name)


def scores() -> list[str]:
    """Names of all registered scores."""
    return _SCORES.names()


def _need_labels(name: str, labels: torch.Tensor | None, num_samples: int,
                 num_classes: int) -> torch.Tensor:
    if labels is None:
        raise ValueError(f"score {name!r} needs labels (the true class of each sample)")
    return _check_labels(labels, num_samples, num_classes)


def distance(proxy: ScoringProxy, inputs: torch.Tensor,
             labels: torch.Tensor | None) -> torch.Tensor:
    """Margin to the nearest boundary of the predicted class (≥ 0; small = keep)."""
    return margins(proxy.features(inputs), proxy.weight, proxy.bias, mode="distance")


def signed(proxy: ScoringProxy, inputs: torch.Tensor,
           labels: torch.Tensor | None) -> torch.Tensor:
    """Margin to the nearest boundary of the true class (< 0 when misclassified)."""
    if labels is None:
        raise ValueError("score 'signed' needs labels (the true class of each sample)")
    return margins(proxy.features(inputs), proxy.weight, proxy.bias, labels, mode="signed")


def loss(proxy: ScoringProxy, inputs: torch.Tensor,
         labels: torch.Tensor | None) -> torch.Tensor:
    """Negated cross-entropy of the proxy: the highest-loss samples come first."""
    logits = proxy.logits(inputs).to(torch.float32)
    y = _need_labels("loss", labels, len(logits), logits.shape[1])
    return -F.cross_entropy(logits, y, reduction="none")


def el2n(proxy: ScoringProxy, inputs: torch.Tensor,
         labels: torch.Tensor | None) -> torch.Tensor:
    """Negated EL2N, ``‖softmax(logits) − onehot(y)‖₂``: the largest errors come first."""
    logits = proxy.logits(inputs).to(torch.float32)
    y = _need_labels("el2n", labels, len(logits), logits.shape[1])
    error = torch.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1])
    return -torch.linalg.vector_norm(error, dim=1)


register_score("distance", distance)
register_score("signed", signed)
register_score("loss", loss)
register_score("el2n", el2n)
