"""examples/train_lightning.py with the indices every rank trained recorded per epoch.

``python recorded_lightning.py --record-dir DIR [train_lightning.py flags]``: Lightning
re-runs this script for its other ranks, so each rank records its own batches (the
indices ``WithIndices`` appends), as trained, to ``DIR/rank{r}-epoch{e}.npy``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_lightning.py"


class Recorder(pl.Callback):
    def __init__(self, record_dir: Path) -> None:
        self.record_dir = record_dir
        self.trained: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.trained.setdefault(trainer.current_epoch, []).extend(batch[-1].tolist())

    def on_fit_end(self, trainer, pl_module) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        for epoch, indices in self.trained.items():
            np.save(self.record_dir / f"rank{rank}-epoch{epoch}.npy", np.asarray(indices))
        schedule = trainer.lr_scheduler_configs[0].scheduler
        info = {"scheduler_steps": schedule.last_epoch, "scheduler_total": schedule.total_steps,
                "global_step": trainer.global_step}
        (self.record_dir / f"rank{rank}.json").write_text(json.dumps(info))


def main() -> None:
    if sys.argv[1] != "--record-dir":
        raise SystemExit("usage: recorded_lightning.py --record-dir DIR [example flags]")
    record_dir, argv = Path(sys.argv[2]), sys.argv[3:]
    spec = importlib.util.spec_from_file_location("train_lightning", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(argv, extra_callbacks=(Recorder(record_dir),))


if __name__ == "__main__":
    main()
