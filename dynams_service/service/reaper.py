"""Job lifetime: idle jobs give their scorers back (``--job-ttl``) and expire (``--job-expiry``).

A job's clock restarts with every RPC that names it. After ``job_ttl`` seconds without
one, its scorers are stopped (their CPUs/GPUs and memory return to the cluster); the next
push starts them again, as for a restored job. After ``job_expiry`` seconds it is deleted
with its state. A job that is scoring is never reaped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .errors import Internal, NotFound
from .job_table import JobTable
from .limits import Limits

__all__ = ["JobReaper", "reap"]

log = logging.getLogger(__name__)


def reap(table: JobTable, delete_job: Callable[[str], object], ttl: float,
         expiry: float) -> tuple[list[str], list[str]]:
    """Release the scorers of jobs idle for ``ttl`` s, delete jobs idle for ``expiry`` s
    (0 disables either) with ``delete_job``. Returns (released, deleted) job ids."""
    now = time.monotonic()
    with table.lock:
        entries = list(table.entries.values())
        expired = [e.job_id for e in entries if expiry > 0 and now - e.last_used > expiry
                   and not e.record.scoring]
        idle = [e for e in entries if e.job_id not in expired and ttl > 0
                and e.scorers is not None and now - e.last_used > ttl and not e.record.scoring]
    released = []
    for entry in idle:
        if not entry.scorers_lock.acquire(blocking=False):
            continue  # its scorers are being started: not idle
        try:
            with table.lock:
                if (entry.record.scoring or entry.deleted
                        or time.monotonic() - entry.last_used <= ttl):
                    continue
                scorers = table.detach(entry)
        finally:
            entry.scorers_lock.release()
        if scorers is not None:
            scorers.shutdown()
            released.append(entry.job_id)
            log.info("job %s: no RPC for %.0fs, scorers released (the next push starts "
                     "them again)", entry.job_id, ttl)
    deleted = []
    for job_id in expired:
        try:
            delete_job(job_id)
        except (NotFound, Internal) as exc:
            log.warning("job %s expired but was not deleted: %s", job_id, exc)
            continue
        deleted.append(job_id)
        log.info("job %s: no RPC for %.0fs, expired and deleted", job_id, expiry)
    return released, deleted


class JobReaper:
    """A daemon thread calling ``reap_once()`` every ``interval`` seconds while
    ``job_ttl`` or ``job_expiry`` is set."""

    def __init__(self, reap_once: Callable[[], object], limits: Limits,
                 interval: float | None = None) -> None:
        self.reap_once = reap_once
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
                self.reap_once()
            except Exception:  # noqa: BLE001 - keep reaping; the next pass retries
                log.exception("job reaper pass failed")
