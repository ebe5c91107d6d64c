"""A round's state is one record with checked transitions; round threads are forgotten
when they end; the coordinator holds no Ray."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from dynams_service.service.rounds import Round, RoundState
from dynams_service.service.store import RoundResult
from dynams_service.service.threads import RoundThreads


def result(index: int, version: int = 3) -> RoundResult:
    return RoundResult(index, index + 1, version, np.arange(4), np.zeros(4, np.float32), 0.1)


def test_a_round_goes_waiting_scoring_failed_scoring_done():
    r = Round(index=2, epoch=3)
    assert r.state is RoundState.WAITING and r.weights_version == -1
    r = r.scoring(7)
    assert r.state is RoundState.SCORING and r.weights_version == 7
    r = r.failed("scorer died")
    assert r.state is RoundState.FAILED and r.error == "scorer died"
    r = r.scoring(8)
    assert r.state is RoundState.SCORING and r.error == ""
    r = r.done(result(2, version=8))
    assert r.state is RoundState.DONE and r.result.weights_version == 8 == r.weights_version


def test_a_restored_round_goes_straight_to_done():
    assert Round(index=0, epoch=1).done(result(0)).state is RoundState.DONE


@pytest.mark.parametrize("move", [
    lambda r: r.scoring(1).done(result(0)).scoring(2),  # a done round is never rescored
    lambda r: r.failed("x"),                             # only a scoring round fails
    lambda r: r.scoring(1).scoring(2),                   # one scoring at a time
    lambda r: r.done(result(1)),                         # another round's result
])
def test_impossible_transitions_are_refused(move):
    with pytest.raises(AssertionError):
        move(Round(index=0, epoch=1))


def test_round_threads_stay_bounded_after_many_rounds():
    threads = RoundThreads()
    release = threading.Event()
    for i in range(200):
        threads.start(f"round-{i}", release.wait)
    assert len(threads.running()) == 200
    release.set()
    assert threads.join()
    assert threads.running() == []


def test_importing_the_coordinator_loads_no_ray():
    """Checked in a fresh interpreter: every module the coordinator pulls in counts."""
    code = ("import sys, dynams_service.service.coordinator\n"
            "ray = sorted(m for m in sys.modules if m.split('.')[0] == 'ray')\n"
            "assert not ray, ray\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
