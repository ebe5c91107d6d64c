"""PushScheduler: when to push the PSP weights for the next round, and sending them.

``sync`` pushes at the end of the epoch before a round; ``pipelined`` pushes a lead
fraction of an epoch early, so scoring overlaps training. The slice is copied at once and
sent by a background thread, so training never waits for the network.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from ..core.models.models import SlimmableModel
from ..core.models.proxy import TensorRecord, export_psp
from .errors import SelectorError, Status
from .job import SelectorJob
from .warn_once import WarnOnce

__all__ = ["PushScheduler"]

log = logging.getLogger(__name__)

FIRST_LEAD = 0.25  # the adaptive lead before any round has been timed
MIN_LEAD, MAX_LEAD = 0.05, 0.9


class PushScheduler:
    """Decides when a round's weights are due and sends them from rank 0 in the background.

    Args:
        job: the selector job the weights are for.
        sender: whether this process sends (rank 0); the others only take note, so every
            rank agrees on which rounds were pushed.
        send_timeout: seconds one push may take on the wire.
        lead: with ``staleness="pipelined"``, push this fraction of an epoch before its end;
            ``None`` adapts it: 1.5x the last round's latency over the last epoch's
            duration, in [0.05, 0.9], starting at 0.25.
    """

    def __init__(self, job: SelectorJob, *, sender: bool, send_timeout: float,
                 lead: float | None = None) -> None:
        if lead is not None and not 0 <= lead < 1:
            raise ValueError(f"pipeline_fraction must be in [0, 1), got {lead}")
        self.job = job
        self.sender = sender
        self.send_timeout = send_timeout
        self.lead = lead
        self.pushed: dict[int, int] = {}  # select epoch → weights version pushed
        self._sends: dict[int, Future] = {}  # select epoch → its background send
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynams-push")
        self._closing = threading.Event()  # set by close(): ends a push still on the wire
        self._epoch_started: dict[int, float] = {}
        self._round_latency: float | None = None  # push → answer of the last round
        self._warn = WarnOnce(log)  # the first failed push warns; later ones log at INFO

    # --- when ---------------------------------------------------------------------------

    def epoch_started(self, epoch: int) -> None:
        """Note when an epoch starts (its duration sizes the adaptive lead)."""
        self._epoch_started[epoch] = time.monotonic()

    def round_answered(self, seconds: float) -> None:
        """Note how long a pushed round took from request to answer."""
        self._round_latency = seconds

    def lead_fraction(self) -> float:
        """How early (fraction of an epoch) a pipelined push goes out."""
        if self.lead is not None:
            return self.lead
        starts = sorted(self._epoch_started)
        if self._round_latency is None or len(starts) < 2:
            return FIRST_LEAD
        duration = self._epoch_started[starts[-1]] - self._epoch_started[starts[-2]]
        return min(MAX_LEAD, max(MIN_LEAD, 1.5 * self._round_latency / max(duration, 1e-6)))

    def due(self, target: int | None, progress: float) -> bool:
        """Whether the weights for the round starting at ``target`` are due, ``progress``
        (fraction of the current epoch done) into the epoch before it."""
        if target is None or target in self.pushed:
            return False
        sync = self.job.spec.policy.staleness == "sync"
        threshold = 1.0 if sync else 1 - self.lead_fraction()
        return progress >= threshold - 1e-9

    # --- sending ------------------------------------------------------------------------

    def push(self, target: int, model: SlimmableModel, version: int | None = None) -> int:
        """Record the push for ``target`` and, on the sender, send the PSP slice in the
        background. Returns the version (milliseconds since the epoch by default)."""
        version = int(time.time() * 1000) if version is None else version
        self.pushed[target] = version
        if self.sender:
            records = export_psp(model, self.job.spec.proxy.width)
            self._sends[target] = self._pool.submit(self._send, target, version, records)
        return version

    def sent(self, target: int, timeout: float) -> bool:
        """Whether this process's send for ``target`` went out, waiting up to ``timeout``
        seconds for one in flight; True where this process sends none."""
        send = self._sends.get(target)
        if send is None:
            return True
        wait_futures([send], timeout=timeout)
        return send.done() and send.result()

    def _send(self, target: int, version: int, records: list[TensorRecord]) -> bool:
        """Send one push; on a selector that lost the job, create it and push again."""
        job = self.job
        try:
            try:
                job.client.push_weights(job.job_id, target, version, records,
                                        timeout=self.send_timeout, cancel=self._closing)
            except SelectorError as exc:
                if not (exc.status is Status.NOT_FOUND and not self._closing.is_set()
                        and job.recreate(self.send_timeout)):
                    raise
                job.client.push_weights(job.job_id, target, version, records,
                                        timeout=self.send_timeout, cancel=self._closing)
            return True
        except SelectorError as exc:
            self._warn(f"weights push for epoch {target} failed ({exc.status.value}: "
                       f"{exc.details}); that epoch will fall back")
            return False

    def close(self, timeout: float) -> None:
        """Drop queued pushes; give the one on the wire ``timeout`` seconds, then cancel it
        (a frozen selector cannot hold the trainer's exit)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        running = [f for f in self._sends.values() if not f.done()]
        if running:
            wait_futures(running, timeout=timeout)
        self._closing.set()
