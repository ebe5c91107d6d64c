"""Where a benchmark stores its result: ``DIR/NAME.json``, only in the directory it is given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def store_json(out: Path | None, name: str, result: dict[str, Any]) -> None:
    """Write ``result`` to ``out/name`` (creating ``out``); nothing when ``out`` is None."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=2))
