"""One quality-benchmark run as a typed record: what ``quality.py`` stores per run.

Stored as one JSON object per run in ``quality.json``; ``from_json`` reads records
written before a field existed (it takes its default) and refuses unknown keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["RunRecord"]


@dataclass(frozen=True)
class RunRecord:
    """A run's identity, accuracies, sizes and cost accounting."""

    # identity (``key``): one record per method, ratio, seed, length, size and data variant
    method: str
    ratio: float | None
    seed: int
    epochs: int
    max_samples: int | None
    label_noise: float = 0.0
    long_tail: float = 0.0  # largest/smallest class size; 0: balanced
    # data
    num_train: int = 0
    num_test: int = 0
    # accuracy
    final_accuracy: float = 0.0
    best_accuracy: float = 0.0
    accuracy_per_epoch: list[float] = field(default_factory=list)
    accuracy_epochs: list[int] = field(default_factory=list)
    train_loss_per_epoch: list[float] = field(default_factory=list)
    # what was trained on
    fraction_trained: float = 0.0
    planned_fraction: float = 0.0
    sample_iterations: int = 0
    epoch_sizes: list[int] = field(default_factory=list)
    optimizer_steps: int = 0
    planned_steps: int = 0
    subset_ratio: float | None = None
    # cost: wall and process-CPU seconds; "robust" = median step time × steps
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    scoring_seconds: float = 0.0
    total_compute_seconds: float = 0.0
    step_seconds_median: float = 0.0
    train_seconds_robust: float = 0.0
    total_compute_seconds_robust: float = 0.0
    train_cpu_seconds: float = 0.0
    scoring_cpu_seconds: float = 0.0
    total_compute_cpu_seconds: float = 0.0
    selection_seconds_each: list[float] = field(default_factory=list)
    selection_digests: list[str] = field(default_factory=list)
    # why a rule wins or loses (``quality.selection_diagnostics``): per round, the overlap
    # with the previous round, the share the final model still misclassifies, the share
    # of flipped labels, the class mix's total-variation distance from the data's
    diagnostics: dict[str, Any] = field(default_factory=dict)
    # the method's knobs and the trainer's settings, as run
    config: dict[str, Any] = field(default_factory=dict)
    torch_threads: int = 0
    host: str = ""
    finished_at: str = ""

    @property
    def key(self) -> tuple:
        return (self.method, self.ratio, self.seed, self.epochs, self.max_samples,
                self.label_noise, self.long_tail)

    @property
    def variant(self) -> tuple[float, float]:
        """The data variant: (label noise, long tail); one results directory holds one."""
        return (self.label_noise, self.long_tail)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        unknown = data.keys() - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"run record with unknown fields {sorted(unknown)}")
        return cls(**data)
