"""``ShardDataset``: the trainer's map-style view of a shard dataset.

Item ``i`` is row ``i`` of the shards, decoded by the manifest's decoder and normalised
with its mean/std: exactly what the selector's scorers score, so selected indices and
trained samples agree. Random augmentation stays the trainer's business (``transform``).
"""

from __future__ import annotations

import bisect
import posixpath
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .decoders import DecodeError, Normalizer
from .shards import (
    CorruptSample,
    dataset_decoder,
    dataset_filesystem,
    open_shard,
    verified_labels,
)

__all__ = ["ShardDataset"]


class ShardDataset(torch.utils.data.Dataset):
    """Map-style Dataset over shards: ``ds[i] → (float32 sample, int label)``.

    Reads Parquet row groups on demand and keeps the most recently used ones, encoded, up
    to ``cache_bytes`` per process. The default holds all of Fashion-MNIST (47 MB), so a
    shuffled epoch reads each row group once; a shuffled epoch over a dataset larger than
    the cache re-reads row groups (raise ``cache_bytes``, or shuffle within shards). It
    works in DataLoader worker processes (open files are not pickled). ``__getitems__``
    decodes a whole batch at once.

    Args:
        uri: the dataset (local path or pyarrow filesystem URI).
        transform: applied to each normalised sample tensor (e.g. random crops).
        normalize: False yields the decoder's unnormalised output (uint8 for images).
        cache_bytes: encoded row-group bytes kept in memory per process (at least one
            row group is always kept).

    Example:
        >>> train = ShardDataset("data/fashion-mnist/train")  # doctest: +SKIP
        >>> x, y = train[0]  # doctest: +SKIP
    """

    def __init__(self, uri: str, *, transform: Callable[[torch.Tensor], Any] | None = None,
                 normalize: bool = True, cache_bytes: int = 512 * 2**20) -> None:
        self.uri = uri
        self.manifest, labels = verified_labels(uri)
        self.labels = labels
        self.targets = labels  # torchvision's name for the label list
        self.decoder = dataset_decoder(self.manifest)
        self.normalizer = Normalizer(self.manifest.mean, self.manifest.std) if normalize else None
        self.transform = transform
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._starts = [s.start for s in self.manifest.shards]
        self._fs, self._root = dataset_filesystem(uri)
        self._open: dict[int, tuple[Any, Any, list[int]]] = {}
        self._groups: OrderedDict[tuple[int, int], pa.Array] = OrderedDict()

    def __len__(self) -> int:
        return self.manifest.num_samples

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"], state["_groups"], state["_cached_bytes"] = {}, OrderedDict(), 0
        return state

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, int]]:
        """Decode a batch of items at once (DataLoader calls this with each batch)."""
        n = len(self)
        rows = []
        for i in indices:
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {n} samples")
            rows.append(i % n)
        values = [self._value(i) for i in rows]
        column = pa.concat_arrays(values) if values else None
        try:
            x = self.decoder.decode(column) if column is not None else torch.empty(0)
        except DecodeError as exc:
            bad = rows[exc.row]
            raise CorruptSample(f"{self.uri}: dataset index {bad}: {exc.reason}") from None
        if self.normalizer is not None:
            x = self.normalizer(x)
        out = []
        for k, i in enumerate(rows):
            sample = x[k]
            out.append((self.transform(sample) if self.transform else sample,
                        int(self.labels[i])))
        return out

    def _value(self, i: int) -> pa.Array:
        """Row ``i``'s stored sample as a length-1 Arrow array."""
        s = bisect.bisect_right(self._starts, i) - 1
        shard = self.manifest.shards[s]
        parquet, _, group_starts = self._shard(s)
        g = bisect.bisect_right(group_starts, i - shard.start) - 1
        key = (s, g)
        column = self._groups.get(key)
        if column is None:
            try:
                column = parquet.read_row_group(g, columns=["sample"]).column(0).combine_chunks()
            except (OSError, pa.ArrowException) as exc:
                raise CorruptSample(f"{posixpath.join(self._root, shard.path)}: unreadable "
                                    f"row group {g} ({exc})") from None
            self._groups[key] = column
            self._cached_bytes += column.nbytes
            while self._cached_bytes > self.cache_bytes and len(self._groups) > 1:
                self._cached_bytes -= self._groups.popitem(last=False)[1].nbytes
        else:
            self._groups.move_to_end(key)
        return column.slice(i - shard.start - group_starts[g], 1)

    def _shard(self, s: int) -> tuple[Any, Any, list[int]]:
        if s not in self._open:
            parquet, handle = open_shard(self._fs, self._root, self.manifest.shards[s],
                                         self.decoder)
            meta = parquet.metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int).tolist()
            self._open[s] = (parquet, handle, starts)
        return self._open[s]
