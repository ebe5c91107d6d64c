"""examples/train_accelerate.py with the indices every process trained recorded per epoch
(``DIR/rank{r}-epoch{e}.npy``) and the world size it ran in (``DIR/rank{r}.json``).

``accelerate launch ... recorded_accelerate.py --record-dir DIR [example flags]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_accelerate.py"


def main() -> None:
    if sys.argv[1] != "--record-dir":
        raise SystemExit("usage: recorded_accelerate.py --record-dir DIR [example flags]")
    record_dir, argv = Path(sys.argv[2]), sys.argv[3:]
    spec = importlib.util.spec_from_file_location("train_accelerate", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    seen: dict[int, list[int]] = {}
    example.main(argv, on_batch=lambda epoch, idx: seen.setdefault(epoch, []).extend(
        idx.tolist()))
    record_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))  # set by the launcher
    for epoch, indices in seen.items():
        np.save(record_dir / f"rank{rank}-epoch{epoch}.npy", np.asarray(indices))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    (record_dir / f"rank{rank}.json").write_text(json.dumps({"world": world}))


if __name__ == "__main__":
    main()
