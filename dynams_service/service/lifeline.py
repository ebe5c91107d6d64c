"""Ray's helper processes end with ``dynams serve``, even when it is SIGKILLed.

NOTE [ lifeline ]
An embedded Ray (``--ray-address local``) runs its GCS, raylet, dashboard, log monitor
and agents as children of the server. A clean shutdown stops them; a SIGKILLed server
left the dashboard and runtime-env agents running (Ray 2.60). So before starting Ray the
server becomes the leader of its own process group (Ray's helpers inherit it) and starts
a small watcher in a separate session holding the read end of a pipe. The kernel closes
the write end when the server dies, however it dies; the watcher then sends SIGTERM and,
after ``grace`` seconds, SIGKILL to the whole group. A clean exit first tells the watcher
to stand down. Ray's worker processes have groups of their own and exit when their
raylet does.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["Lifeline"]

_WATCHER = """
import os, signal, sys, time
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
data = sys.stdin.buffer.read()          # returns when the server's end closes
if data.endswith(b"release"):
    sys.exit(0)
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        break
    if sig == signal.SIGTERM:
        time.sleep(grace)
"""


class Lifeline:
    """Ties this process group's life to this process (see NOTE [ lifeline ]).

    Example:
        >>> lifeline = Lifeline.start()  # doctest: +SKIP
        >>> ray.init(address="local"); ...; ray.shutdown(); lifeline.release()  # doctest: +SKIP
    """

    def __init__(self, watcher: subprocess.Popen, pgid: int) -> None:
        self.watcher = watcher
        self.pgid = pgid

    @classmethod
    def start(cls, grace: float = 2.0) -> Lifeline:
        """Lead a new process group (unless already leading one) and start the watcher."""
        if os.getpgrp() != os.getpid():
            os.setpgid(0, 0)
        pgid = os.getpgrp()
        watcher = subprocess.Popen(
            [sys.executable, "-c", _WATCHER, str(pgid), str(grace)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        return cls(watcher, pgid)

    def release(self) -> None:
        """After a clean shutdown: the watcher exits without signalling anyone."""
        if self.watcher.stdin is not None and not self.watcher.stdin.closed:
            try:
                self.watcher.stdin.write(b"release")
                self.watcher.stdin.close()
            except BrokenPipeError:
                pass
        self.watcher.wait(timeout=10)
