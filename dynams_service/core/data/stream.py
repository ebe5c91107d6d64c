"""Streaming decoded rows out of shards under a memory budget (what scorers score).

NOTE [ streaming and caching ]: a scorer's rows need not fit in memory. ``ShardStream``
reads its shards record batch by record batch, decodes them in a small thread pool and
hands out batches of exactly ``batch_size`` rows, with reading and decoding running a few
batches ahead of the consumer (a bounded queue) so they overlap the model's forward.
Decoded rows are kept only for a leading prefix that fits ``cache_bytes``; every later
pass serves that prefix from memory and streams and decodes the rest again. Batches
start at multiples of ``batch_size`` whatever is cached, so a pass yields the same
batches, and a model the same margins, at any budget.
"""

from __future__ import annotations

import posixpath
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from .decoders import DecodeError
from .shards import (
    CorruptSample,
    DatasetManifest,
    ShardError,
    dataset_decoder,
    dataset_filesystem,
    open_shard,
    read_index_labels,
    read_manifest,
)

__all__ = ["DecodedBatch", "ShardStream", "verify_samples"]


@dataclass(frozen=True)
class DecodedBatch:
    """Consecutive rows of a stream: dataset indices, labels and unnormalised samples."""

    indices: np.ndarray
    labels: np.ndarray
    samples: torch.Tensor


_END = object()


class ShardStream:
    """The decoded rows of some shards of a dataset, in index order, batch by batch.

    Args:
        uri: the dataset (any pyarrow filesystem URI).
        manifest: its manifest (read from ``uri`` when omitted).
        shard_ids: which shards (all by default), read in this order.
        batch_size: rows per batch (the last one may be shorter).
        cache_bytes: decoded bytes kept in memory across passes (a leading prefix of the
            rows); 0 streams everything every pass, so memory stays flat in the row count.
        decode_threads: threads decoding each record batch.
        read_rows: rows per Parquet record batch.
        prefetch: decoded record batches queued ahead of the consumer.
        device: where samples are decoded to (CUDA: pinned, non-blocking host copies, and
            GPU decoding where the decoder supports it).

    Example:
        >>> stream = ShardStream("data/fashion-mnist/train", batch_size=256)  # doctest: +SKIP
        >>> for batch in stream:  # doctest: +SKIP
        ...     x = normalizer(batch.samples)
    """

    def __init__(self, uri: str, manifest: DatasetManifest | None = None,
                 shard_ids: Sequence[int] | None = None, *, batch_size: int = 256,
                 cache_bytes: int = 0, decode_threads: int = 1, read_rows: int = 1024,
                 prefetch: int = 2, device: str | torch.device = "cpu") -> None:
        if batch_size < 1 or read_rows < 1 or prefetch < 1 or decode_threads < 1:
            raise ValueError(f"batch_size, read_rows, prefetch and decode_threads must be "
                             f">= 1, got {batch_size}, {read_rows}, {prefetch}, "
                             f"{decode_threads}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.manifest = manifest or read_manifest(uri)
        self.decoder = dataset_decoder(self.manifest)
        self.fs, self.root = dataset_filesystem(uri)
        ids = range(len(self.manifest.shards)) if shard_ids is None else shard_ids
        self.shards = [self.manifest.shards[i] for i in ids]
        self.batch_size, self.read_rows, self.prefetch = batch_size, read_rows, prefetch
        self.decode_threads = decode_threads
        self.device = torch.device(device)
        self.indices, self.labels = read_index_labels(self.fs, self.root, self.manifest,
                                                      self.decoder, self.shards)
        self.offsets = np.concatenate(([0], np.cumsum([s.num_rows for s in self.shards])))
        self.cache_rows = min(len(self.indices), cache_bytes // self.decoder.row_bytes)
        self._cache: torch.Tensor | None = None
        self._cached = 0  # rows of the cache filled so far (a prefix)
        self.decode_seconds = 0.0

    @property
    def num_rows(self) -> int:
        return len(self.indices)

    @property
    def cached_bytes(self) -> int:
        return self._cached * self.decoder.row_bytes

    def __len__(self) -> int:
        """Batches per pass."""
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[DecodedBatch]:
        """One pass over every row: the cached prefix from memory, the rest streamed."""
        pending: list[torch.Tensor] = []
        have = 0
        start = 0
        for piece in self._pieces():
            while len(piece):
                take = min(self.batch_size - have, len(piece))
                pending.append(piece[:take])
                piece = piece[take:]
                have += take
                if have == self.batch_size:
                    yield self._batch(start, pending)
                    start += have
                    pending, have = [], 0
        if have:
            yield self._batch(start, pending)

    def _batch(self, start: int, parts: list[torch.Tensor]) -> DecodedBatch:
        samples = parts[0] if len(parts) == 1 else torch.cat(parts)
        stop = start + len(samples)
        return DecodedBatch(self.indices[start:stop], self.labels[start:stop], samples)

    def _pieces(self) -> Iterator[torch.Tensor]:
        """Decoded rows in order: the cached prefix, then streamed record batches."""
        if self._cached and self._cache is not None:
            yield self._cache[:self._cached]
        if self._cached == self.num_rows:
            return
        if self.cache_rows and self._cache is None:
            # A normal tensor even when a pass runs under inference mode: the producer
            # thread (outside it) writes into it.
            with torch.inference_mode(False):
                self._cache = torch.empty((self.cache_rows, *self.decoder.shape),
                                          dtype=self.decoder.dtype, device=self.device)
        yield from self._prefetched(self._cached)

    def _prefetched(self, first: int) -> Iterator[torch.Tensor]:
        """Rows ``first…`` decoded by a producer thread, at most ``prefetch`` pieces ahead."""
        pieces: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    pieces.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for piece in self._decoded(first):
                    if not put(piece):
                        return
                put(_END)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(exc)

        producer = threading.Thread(target=produce, name="shard-stream", daemon=True)
        producer.start()
        try:
            while True:
                item = pieces.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            producer.join()

    def _decoded(self, first: int) -> Iterator[torch.Tensor]:
        """Read and decode rows ``first…`` (positions in this stream), filling the cache."""
        pool = ThreadPoolExecutor(self.decode_threads) if self.decode_threads > 1 else None
        try:
            position = first
            for s, shard in enumerate(self.shards):
                if self.offsets[s + 1] <= position:
                    continue
                for local, column in self._columns(shard, int(position - self.offsets[s])):
                    started = time.perf_counter()
                    decoded = self._decode(column, shard, local, pool)
                    self.decode_seconds += time.perf_counter() - started
                    self._fill_cache(position, decoded)
                    position += len(decoded)
                    yield decoded
        finally:
            if pool is not None:
                pool.shutdown()

    def _columns(self, shard, skip: int) -> Iterator[tuple[int, pa.Array]]:
        """(row in shard, sample column) record batches of one shard from row ``skip``."""
        parquet, handle = open_shard(self.fs, self.root, shard, self.decoder)
        path = posixpath.join(self.root, shard.path)
        try:
            groups, row = [], 0
            for g in range(parquet.metadata.num_row_groups):
                n = parquet.metadata.row_group(g).num_rows
                if row + n > skip:
                    groups.append(g)
                else:
                    row += n
            for batch in parquet.iter_batches(batch_size=self.read_rows, row_groups=groups,
                                              columns=["sample"]):
                column = batch.column(0)
                if row + len(column) <= skip:
                    row += len(column)
                    continue
                cut = max(0, skip - row)
                yield row + cut, column.slice(cut)
                row += len(column)
        except (OSError, pa.ArrowException) as exc:
            raise ShardError(f"{path}: unreadable shard ({exc})") from None
        finally:
            handle.close()

    def _decode(self, column: pa.Array, shard, local: int,
                pool: ThreadPoolExecutor | None) -> torch.Tensor:
        """Decode one record batch; a bad sample raises CorruptSample naming shard and row."""
        try:
            if self.device.type != "cpu":
                return self.decoder.decode_on(column, self.device)
            if pool is None or len(column) < 2 * self.decode_threads:
                return self.decoder.decode(column)
            step = -(-len(column) // self.decode_threads)
            starts = range(0, len(column), step)
            futures = [pool.submit(self.decoder.decode, column.slice(a, step)) for a in starts]
            parts = []
            for a, future in zip(starts, futures, strict=True):
                try:
                    parts.append(future.result())
                except DecodeError as exc:
                    raise DecodeError(a + exc.row, exc.reason) from None
            return torch.cat(parts)
        except DecodeError as exc:
            row = local + exc.row
            raise CorruptSample(f"{posixpath.join(self.root, shard.path)} row {row} (dataset "
                                f"index {shard.start + row}): {exc.reason}") from None

    def _fill_cache(self, position: int, decoded: torch.Tensor) -> None:
        """Keep the part of ``decoded`` (rows from ``position``) that extends the prefix."""
        if self._cache is None or position != self._cached or position >= self.cache_rows:
            return
        take = min(len(decoded), self.cache_rows - position)
        self._cache[position:position + take] = decoded[:take]
        self._cached = position + take


def verify_samples(uri: str, manifest: DatasetManifest | None = None, *,
                   decode_threads: int = 1) -> int:
    """Decode every sample of a dataset; returns the row count, or raises CorruptSample
    naming the first bad sample's shard file and row."""
    stream = ShardStream(uri, manifest, batch_size=4096, decode_threads=decode_threads)
    return sum(len(batch.indices) for batch in stream)
