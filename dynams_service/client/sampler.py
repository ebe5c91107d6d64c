"""DynaMSSampler: a drop-in for DistributedSampler whose epochs come from the selector.

Each rank asks the selector for its part of the epoch's canonical list (NOTE [ canonical
list ] in ``core/partition.py``). If the selector is unreachable or late past the
deadline, the rank trains on a seeded uniform subset of the planned size instead, warns
once and counts it: the job never hangs and every epoch has the planned length.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

import grpc
import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from ..core.job import JobSpec
from ..core.models import SlimmableModel
from ..core.partition import epoch_order, rank_count, rank_part, uniform_subset
from ..core.policy import EpochKind, Plan
from ..core.proxy import export_psp
from ..protocol import WEIGHTS_NOT_PUSHED, pb, spec_from_proto
from .client import SelectorClient, SelectorRpcError

__all__ = ["DynaMSSampler", "EpochSource"]

log = logging.getLogger(__name__)


class EpochSource:
    """Where an epoch's indices came from (for logs and summaries)."""

    def __init__(self, kind: str, round_: int = -1, weights_version: int = -1,
                 wait_seconds: float = 0.0) -> None:
        self.kind = kind  # "full" | "subset" | "fallback"
        self.round = round_
        self.weights_version = weights_version
        self.wait_seconds = wait_seconds

    def __repr__(self) -> str:
        return (f"EpochSource({self.kind}, round={self.round}, "
                f"version={self.weights_version}, wait={self.wait_seconds:.3f}s)")


class DynaMSSampler(Sampler[int]):
    """This rank's indices of each epoch, as selected by the DynaMS selector.

    Args:
        dataset_or_len: the training Dataset (its ``len``) or the number of samples.
        client: a ``SelectorClient`` (or an address string).
        job: a ``JobSpec`` (created on the selector if needed; idempotent) or a job id.
        rank, world_size: default to ``torch.distributed``'s, or 0 and 1 without it.
        seed: seed of the fallback subsets (defaults to the policy's seed).
        drop_last: DistributedSampler's semantics: drop the tail instead of padding.
        deadline: seconds an epoch may wait for the selector before falling back.
        pipeline_fraction: with ``staleness="pipelined"``, push this fraction of an epoch
            before its end so scoring overlaps training; ``None`` (default) adapts it:
            1.5× the last round's latency over the last epoch's duration, in [0.05, 0.9],
            starting at 0.25.

    Example:
        >>> sampler = DynaMSSampler(train_set, SelectorClient("127.0.0.1:50051"), spec)
        >>> loader = DataLoader(train_set, batch_size=128, sampler=sampler)
        >>> for epoch in range(spec.epochs):
        ...     sampler.set_epoch(epoch)
        ...     for i, (x, y) in enumerate(loader):
        ...         ...  # train
        ...         sampler.maybe_push(model, progress=(i + 1) / len(loader))
    """

    def __init__(self, dataset_or_len: Sized | int, client: SelectorClient | str,
                 job: JobSpec | str, *, rank: int | None = None, world_size: int | None = None,
                 seed: int | None = None, drop_last: bool = False, deadline: float = 60.0,
                 pipeline_fraction: float | None = None) -> None:
        self.num_samples = (dataset_or_len if isinstance(dataset_or_len, int)
                            else len(dataset_or_len))
        distributed = dist.is_available() and dist.is_initialized()
        if world_size is None:
            world_size = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, {world_size - 1}]")
        if deadline <= 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline}")
        if pipeline_fraction is not None and not 0 <= pipeline_fraction < 1:
            raise ValueError(f"pipeline_fraction must be in [0, 1), got {pipeline_fraction}")
        self.client = SelectorClient(client) if isinstance(client, str) else client
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.deadline = deadline
        self.pipeline_fraction = pipeline_fraction
        self._warned = False
        self._epoch_started: dict[int, float] = {}
        self.spec = self._resolve_job(job)
        if self.spec.fingerprint.num_samples != self.num_samples:
            raise ValueError(f"the dataset has {self.num_samples} samples, the job's "
                             f"fingerprint {self.spec.fingerprint.num_samples}")
        self.seed = self.spec.policy.seed if seed is None else seed
        self._plan = self.spec.plan()
        self.epoch = 0
        self.fallback_epochs: list[int] = []
        self.sources: dict[int, EpochSource] = {}
        self.wait_seconds: dict[int, float] = {}  # epoch → time __iter__ blocked on it
        self.pushed: dict[int, int] = {}  # select epoch → weights version pushed
        self._can_create = isinstance(job, JobSpec)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dynams-fetch")
        self._futures: dict[int, Future] = {}
        self._pushes: dict[int, Future] = {}  # epoch → the background push (rank 0)
        self._push_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynams-push")
        self._closing = threading.Event()  # set by close(): ends a push still on the wire
        self._lock = threading.Lock()
        self._yielded = 0  # indices of the current epoch handed out so far
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples already trained)

    def _resolve_job(self, job: JobSpec | str) -> JobSpec:
        try:
            if isinstance(job, JobSpec):
                self.client.create_job(job)
                return job
            return spec_from_proto(self.client.get_job(job).spec)
        except SelectorRpcError as exc:
            if isinstance(job, JobSpec) and exc.code in (grpc.StatusCode.UNAVAILABLE,
                                                         grpc.StatusCode.DEADLINE_EXCEEDED):
                self._warn(f"selector at {self.client.address} unreachable at start "
                           f"({exc.code.name}); training on uniform fallback subsets until "
                           "it answers")
                return job
            raise

    # --- DistributedSampler's surface ---------------------------------------------------

    def plan(self) -> Plan:
        """Every epoch's kind and global size, known before training starts."""
        return self._plan

    def epoch_lengths(self) -> list[int]:
        """This rank's number of samples in every epoch (for LR schedules, progress bars)."""
        return [rank_count(size, self.world_size, self.drop_last) for size in self._plan.sizes]

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (and start fetching it in the background)."""
        if not 0 <= epoch < len(self._plan.epochs):
            raise ValueError(f"epoch {epoch} must be in [0, {len(self._plan.epochs) - 1}]")
        self.epoch = epoch
        self._epoch_started[epoch] = time.monotonic()
        self._fetch(epoch)

    def __len__(self) -> int:
        """This rank's samples left in the epoch: all of them, less those already trained
        when the sampler was resumed mid-epoch."""
        return rank_count(self._plan[self.epoch].size, self.world_size,
                          self.drop_last) - self._skip(self.epoch)

    def __iter__(self) -> Iterator[int]:
        started = time.perf_counter()
        indices = self._fetch(self.epoch).result()
        self.wait_seconds[self.epoch] = time.perf_counter() - started
        nxt = self.epoch + 1
        if nxt < len(self._plan.epochs) and (self._plan[nxt].kind is not EpochKind.SELECT
                                             or nxt in self.pushed):
            self._fetch(nxt)
        skip = self._skip(self.epoch)
        self._resume_at = None
        self._yielded = skip
        return self._counted(indices[skip:].tolist())

    def _counted(self, indices: list[int]) -> Iterator[int]:
        for i in indices:
            self._yielded += 1
            yield i

    def _skip(self, epoch: int) -> int:
        return self._resume_at[1] if self._resume_at and self._resume_at[0] == epoch else 0

    # --- checkpoints --------------------------------------------------------------------

    def state_dict(self, consumed: int | None = None) -> dict:
        """What a checkpoint needs to resume this sampler exactly, mid-epoch included.

        Args:
            consumed: this rank's samples of the current epoch already trained on; by
                default the number of indices the iterator has handed out (pass it when
                a DataLoader prefetches ahead of training).

        Example:
            >>> torch.save({"model": model.state_dict(), "sampler": sampler.state_dict(
            ...     consumed=(step + 1) * batch_size)}, "ckpt.pt")  # doctest: +SKIP
        """
        consumed = self._yielded if consumed is None else consumed
        if not 0 <= consumed <= rank_count(self._plan[self.epoch].size, self.world_size,
                                           self.drop_last):
            raise ValueError(f"consumed must be in [0, this epoch's {len(self)}], got "
                             f"{consumed}")
        return {"job_id": self.spec.job_id, "world_size": self.world_size,
                "epoch": self.epoch, "consumed": consumed, "pushed": dict(self.pushed)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``: the next ``set_epoch(state["epoch"])`` then
        iterates the rest of that epoch, exactly the indices an uninterrupted run would
        have yielded. Rounds already pushed are not pushed again."""
        if state.get("job_id") != self.spec.job_id:
            raise ValueError(f"the checkpoint is of job {state.get('job_id')!r}, this "
                             f"sampler's is {self.spec.job_id!r}")
        if state.get("world_size") != self.world_size:
            raise ValueError(f"the checkpoint was taken with world_size "
                             f"{state.get('world_size')}, this job runs {self.world_size} "
                             "ranks: the epoch's parts would differ")
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if not 0 <= epoch < len(self._plan.epochs):
            raise ValueError(f"epoch {epoch} must be in [0, {len(self._plan.epochs) - 1}]")
        self.pushed = {int(e): int(v) for e, v in state["pushed"].items()}
        self.epoch = epoch
        self._resume_at = (epoch, consumed)

    # --- weights ------------------------------------------------------------------------

    def next_select_epoch(self) -> int | None:
        """The next epoch after the current one that starts a round, if any."""
        nxt = self.epoch + 1
        if nxt < len(self._plan.epochs) and self._plan[nxt].kind is EpochKind.SELECT:
            return nxt
        return None

    def push_due(self, progress: float) -> bool:
        """Whether the PSP weights for the next round should be pushed at this point.

        ``progress`` is the fraction of the current epoch done; ``sync`` pushes at 1.0,
        ``pipelined`` at ``1 - lead_fraction()``.
        """
        target = self.next_select_epoch()
        if target is None or target in self.pushed:
            return False
        threshold = 1.0 if self.spec.policy.staleness == "sync" else 1 - self.lead_fraction()
        return progress >= threshold - 1e-9

    def lead_fraction(self) -> float:
        """How early (fraction of an epoch) a pipelined push goes out."""
        if self.pipeline_fraction is not None:
            return self.pipeline_fraction
        rounds = [e for e in sorted(self.sources) if self.sources[e].kind == "subset"
                  and self._plan[e].kind is EpochKind.SELECT and e in self.pushed]
        epochs = sorted(self._epoch_started)
        if not rounds or len(epochs) < 2:
            return 0.25
        latency = self.sources[rounds[-1]].wait_seconds  # push → answer ready
        last = epochs[-1]
        duration = self._epoch_started[last] - self._epoch_started[epochs[-2]]
        return min(0.9, max(0.05, 1.5 * latency / max(duration, 1e-6)))

    def push(self, model: SlimmableModel, version: int | None = None) -> int | None:
        """Push the PSP slice for the next round from rank 0; other ranks only take note.

        The slice is copied now and sent in the background, so training does not wait for
        the network. Returns the version (None when nothing is due).
        """
        target = self.next_select_epoch()
        if target is None or target in self.pushed:
            return None
        version = int(time.time() * 1000) if version is None else version
        self.pushed[target] = version
        if self.rank == 0:
            records = export_psp(model, self.spec.proxy.width)
            self._pushes[target] = self._push_pool.submit(self._send, target, version, records)
        self._fetch(target)
        return version

    def _send(self, epoch: int, version: int, records: list) -> bool:
        """Send one push; on a selector that lost the job, create it and push again."""
        timeout = max(self.deadline, 120.0)
        try:
            try:
                self.client.push_weights(self.spec.job_id, epoch, version, records,
                                         timeout=timeout, cancel=self._closing)
            except SelectorRpcError as exc:
                if not (exc.code == grpc.StatusCode.NOT_FOUND and not self._closing.is_set()
                        and self._recreate(timeout)):
                    raise
                self.client.push_weights(self.spec.job_id, epoch, version, records,
                                         timeout=timeout, cancel=self._closing)
            return True
        except SelectorRpcError as exc:
            self._warn(f"weights push for epoch {epoch} failed ({exc.code.name}: "
                       f"{exc.details}); that epoch will fall back")
            return False

    def maybe_push(self, model: SlimmableModel, progress: float,
                   version: int | None = None) -> int | None:
        """``push(model, version)`` when ``push_due(progress)``; call it after every step."""
        return self.push(model, version) if self.push_due(progress) else None

    # --- fetching -----------------------------------------------------------------------

    def _fetch(self, epoch: int) -> Future:
        with self._lock:
            future = self._futures.get(epoch)
            if future is None:
                future = self._pool.submit(self._answer, epoch)
                self._futures[epoch] = future
                for old in [e for e in self._futures if e < epoch - 1]:
                    del self._futures[old]
            return future

    def _answer(self, epoch: int) -> np.ndarray:
        started = time.monotonic()
        expected = rank_count(self._plan[epoch].size, self.world_size, self.drop_last)
        deadline = started + self.deadline
        recreated = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "deadline passed"
                break
            try:
                header, indices = self.client.get_selection(
                    self.spec.job_id, epoch, self.rank, self.world_size,
                    drop_last=self.drop_last, timeout=remaining)
            except SelectorRpcError as exc:
                if exc.reason == WEIGHTS_NOT_PUSHED:
                    push = self._pushes.get(epoch)
                    if push is not None and push.done() and not push.result():
                        reason = "the weights push failed"
                        break
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                    continue  # rank 0's push is on its way
                if (exc.code == grpc.StatusCode.NOT_FOUND and not recreated
                        and self._recreate(deadline - time.monotonic())):
                    recreated = True
                    continue
                reason = f"{exc.code.name}: {exc.details}"
                break
            if len(indices) != expected:
                reason = f"selector sent {len(indices)} indices, the plan says {expected}"
                break
            kind = "full" if header.kind == pb.SELECTION_KIND_FULL else "subset"
            self.sources[epoch] = EpochSource(kind, header.round, header.weights_version,
                                              time.monotonic() - started)
            return indices
        return self._fallback(epoch, reason, time.monotonic() - started)

    def _recreate(self, timeout: float) -> bool:
        """Create the job on a selector that did not know it (unreachable at start, or
        restarted without its state); idempotent, so every rank may try."""
        if not self._can_create:
            return False
        try:
            self.client.create_job(self.spec, timeout=max(0.001, timeout))
            return True
        except SelectorRpcError:
            return False

    def _fallback(self, epoch: int, reason: str, waited: float) -> np.ndarray:
        size = self._plan[epoch].size
        subset = (np.arange(self.num_samples) if size == self.num_samples
                  else uniform_subset(self.num_samples, size, self.seed, epoch))
        order = epoch_order(subset, self.seed, epoch)
        with self._lock:
            self.fallback_epochs.append(epoch)
        self.sources[epoch] = EpochSource("fallback", wait_seconds=waited)
        self._warn(f"epoch {epoch}: no selection from {self.client.address} ({reason}); "
                   f"training on a seeded uniform subset of {size}")
        return rank_part(order, self.rank, self.world_size, self.drop_last)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s (further fallbacks are counted in sampler.fallback_epochs)", message)
        else:
            log.info(message)

    def close(self) -> None:
        """Stop background work, returning within ``deadline`` seconds.

        Queued pushes are dropped; the push on the wire gets until the deadline to finish
        and is then cancelled, so a frozen selector cannot hold the trainer's exit.
        """
        self._push_pool.shutdown(wait=False, cancel_futures=True)
        running = [f for f in self._pushes.values() if not f.done()]
        if running:
            wait_futures(running, timeout=self.deadline)
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
