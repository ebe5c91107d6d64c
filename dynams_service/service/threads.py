"""Background threads that are forgotten when they end, so holding them costs nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RoundThreads"]


class RoundThreads:
    """Runs each round on its own daemon thread and holds only the threads still running.

    A round may wait minutes for its scorers' placement or for scoring, so a fixed-size
    pool would queue one job's round behind another's; instead each gets a thread, and
    the set held is bounded by the rounds in progress, however many have run.
    """

    def __init__(self) -> None:
        self._running: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def start(self, name: str, target: Callable[..., object], *args: object) -> None:
        """Run ``target(*args)`` on a new daemon thread called ``name``."""
        thread = threading.Thread(target=self._run, args=(target, args), name=name,
                                  daemon=True)
        with self._lock:
            self._running.add(thread)
        thread.start()

    def _run(self, target: Callable[..., object], args: tuple) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._running.discard(threading.current_thread())

    def running(self) -> list[threading.Thread]:
        """The threads not yet finished."""
        with self._lock:
            return list(self._running)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the running threads, up to ``timeout`` s in all; True if none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self.running():
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running()
