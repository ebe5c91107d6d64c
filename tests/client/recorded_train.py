"""examples/train_ddp.py with every rank's indices, sources and final parameters recorded.

Run it under torchrun like the example, with ``--record-dir DIR`` first; the example
itself stays free of test-only code: its sampler is replaced by a recording subclass.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dynams_service.client import DynaMSSampler

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_ddp.py"


def param_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for t in model.parameters():  # BN running stats are per rank between broadcasts
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def recording_sampler(record_dir: Path) -> type[DynaMSSampler]:
    """A DynaMSSampler that writes what it yielded, and the model it pushed, on close()."""

    class RecordingSampler(DynaMSSampler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.records: dict[int, list[int]] = {}
            self.weights: dict[int, list[float]] = {}
            self.model: torch.nn.Module | None = None

        def __iter__(self):
            seen = self.records[self.epoch] = []
            for i in super().__iter__():
                seen.append(i)
                yield i

        def weights_of(self, indices):
            weights = super().weights_of(indices)
            self.weights.setdefault(self.epoch, []).extend(weights.tolist())
            return weights

        def maybe_push(self, model, progress, version=None):
            self.model = model
            return super().maybe_push(model, progress, version)

        def close(self) -> None:
            super().close()
            if getattr(self, "_recorded", False):
                return
            self._recorded = True
            record_dir.mkdir(parents=True, exist_ok=True)
            for epoch, indices in self.records.items():
                np.save(record_dir / f"rank{self.rank}-epoch{epoch}.npy", np.asarray(indices))
            for epoch, weights in self.weights.items():
                np.save(record_dir / f"rank{self.rank}-epoch{epoch}-weights.npy",
                        np.asarray(weights, dtype=np.float32))
            info = {"param_sha256": param_hash(self.model) if self.model else None,
                    "sources": {e: asdict(s) for e, s in self.sources.items()},
                    "pushed": self.pushed, "fallback_epochs": self.fallback_epochs}
            (record_dir / f"rank{self.rank}.json").write_text(json.dumps(info, indent=2))

    return RecordingSampler


def main() -> None:
    if sys.argv[1] != "--record-dir":
        raise SystemExit("usage: recorded_train.py --record-dir DIR [train_ddp.py flags]")
    record_dir, argv = Path(sys.argv[2]), sys.argv[3:]
    spec = importlib.util.spec_from_file_location("train_ddp", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.DynaMSSampler = recording_sampler(record_dir)
    example.main(argv)


if __name__ == "__main__":
    main()
