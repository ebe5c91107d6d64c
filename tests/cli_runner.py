"""The ``dynams`` command line run in this process: its real ``main()`` (argument parsing,
error handling, exit codes) without a new interpreter per call."""

from __future__ import annotations

import io
import subprocess
from contextlib import redirect_stderr, redirect_stdout

from dynams_service.cli import main


def dynams(*args: str) -> subprocess.CompletedProcess:
    """``dynams ARGS`` as a completed process: its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors and --help
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess(["dynams", *args], code, out.getvalue(), err.getvalue())
