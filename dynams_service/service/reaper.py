"""Job lifetime: idle jobs give their scorers back (``--job-ttl``) and expire (``--job-expiry``).

A job's clock restarts with every RPC that names it. After ``job_ttl`` seconds without
one, its scorers are stopped (their CPUs/GPUs and memory return to the cluster); the next
push starts them again, as for a restored job. After ``job_expiry`` seconds it is deleted
with its state.
"""

from __future__ import annotations

import logging
import threading

from .coordinator import JobCoordinator
from .limits import Limits

__all__ = ["JobReaper"]

log = logging.getLogger(__name__)


class JobReaper:
    """A daemon thread applying ``job_ttl`` and ``job_expiry`` every ``interval`` seconds."""

    def __init__(self, coordinator: JobCoordinator, limits: Limits,
                 interval: float | None = None) -> None:
        self.coordinator = coordinator
        self.limits = limits
        spans = [s for s in (limits.job_ttl, limits.job_expiry) if s > 0]
        self.interval = interval or min([30.0] + [max(0.05, s / 4) for s in spans])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dynams-job-reaper",
                                        daemon=True)

    def start(self) -> None:
        if self.limits.job_ttl > 0 or self.limits.job_expiry > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.coordinator.reap(self.limits.job_ttl, self.limits.job_expiry)
            except Exception:  # noqa: BLE001 - keep reaping; the next pass retries
                log.exception("job reaper pass failed")
