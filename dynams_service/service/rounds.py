"""One selection round's state as one typed record, with its transitions in one place.

A job holds one ``Round`` per selection round. Each record is immutable: a transition
returns the next record, so a copy of a job's rounds taken under the coordinator's lock
is a consistent snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.job import RoundState
from .store import RoundResult

__all__ = ["Round", "RoundState"]


# Which states each state may be entered from. A restored round goes WAITING → DONE.
_ENTERED_FROM = {
    RoundState.SCORING: {RoundState.WAITING, RoundState.FAILED},
    RoundState.DONE: {RoundState.WAITING, RoundState.SCORING},
    RoundState.FAILED: {RoundState.SCORING},
}


@dataclass(frozen=True)
class Round:
    """One selection round: its number, the epoch that starts it, state and data."""

    index: int
    epoch: int
    state: RoundState = RoundState.WAITING
    weights_version: int = -1  # the version being scored or selected with; -1 while waiting
    result: RoundResult | None = None  # set when DONE
    error: str = ""  # set when FAILED

    def scoring(self, version: int) -> Round:
        """Weights of ``version`` were pushed: scoring starts."""
        return self._enter(RoundState.SCORING, weights_version=version, error="")

    def done(self, result: RoundResult) -> Round:
        """Selected (or restored from disk) with ``result``."""
        if result.round != self.index:
            raise AssertionError(f"round {self.index} given the result of round {result.round}")
        return self._enter(RoundState.DONE, weights_version=result.weights_version,
                           result=result, error="")

    def failed(self, error: str) -> Round:
        """Scoring failed with ``error``; the round waits for another push."""
        return self._enter(RoundState.FAILED, error=error)

    def _enter(self, state: RoundState, **changes) -> Round:
        if self.state not in _ENTERED_FROM[state]:
            raise AssertionError(f"round {self.index} cannot go from {self.state.value} to "
                                 f"{state.value}")
        return replace(self, state=state, **changes)
