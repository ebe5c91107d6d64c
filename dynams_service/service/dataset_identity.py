"""How a job's dataset encodes its samples: part of the job's identity.

The fingerprint guards the rows' order and labels; it says nothing of the samples. A
dataset rewritten under the same URI with another sample shape or decoder keeps its
fingerprint, so a job created again with the same spec must also compare this record,
or it would reuse scorers (and selections) made for the old samples.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..core.data.shards import DatasetManifest

__all__ = ["DatasetEncoding"]


class DatasetEncoding(BaseModel):
    """The decoder (name and parameters, dtype included) and the decoded sample shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decoder: dict[str, Any]
    sample_shape: tuple[int, ...]

    @classmethod
    def of(cls, manifest: DatasetManifest) -> DatasetEncoding:
        # Through JSON, as it is saved: tuples and lists in the parameters compare equal.
        decoder = json.loads(json.dumps(manifest.decoder))
        return cls(decoder=decoder, sample_shape=manifest.sample_shape)

    def differences(self, now: DatasetEncoding) -> list[str]:
        """What changed from this (the job's) encoding to ``now``, one phrase each."""
        changed = []
        if self.sample_shape != now.sample_shape:
            changed.append(f"sample shape {list(self.sample_shape)} -> {list(now.sample_shape)}")
        if self.decoder.get("name") != now.decoder.get("name"):
            changed.append(f"decoder {self.decoder.get('name')!r} -> {now.decoder.get('name')!r}")
            return changed
        for key in sorted((self.decoder.keys() | now.decoder.keys()) - {"name"}):
            before, after = self.decoder.get(key), now.decoder.get(key)
            if before != after:
                changed.append(f"decoder {now.decoder.get('name')!r} {key} {before!r} -> "
                               f"{after!r}")
        return changed
