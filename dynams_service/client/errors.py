"""The client's errors: a status and a typed reason, never a gRPC type.

Every failure of a selector call, a malformed reply included, is a ``SelectorError``;
the sampler turns them into fallbacks or ``RoundFailedError``, so nothing else reaches a
training loop.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Status", "Reason", "SelectorError", "RoundFailedError"]


class Status(str, Enum):
    """Why a call failed, by kind (the status codes the selector answers with)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"        # the request is wrong: the message says how
    NOT_FOUND = "NOT_FOUND"                      # no such job, or no dataset there
    ALREADY_EXISTS = "ALREADY_EXISTS"            # another spec under this job id
    FAILED_PRECONDITION = "FAILED_PRECONDITION"  # not now, or not in this state
    PERMISSION_DENIED = "PERMISSION_DENIED"      # a dataset outside the allowed roots
    UNAUTHENTICATED = "UNAUTHENTICATED"          # a missing or wrong token
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"    # an operator limit is reached
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"      # no answer within the call's deadline
    UNAVAILABLE = "UNAVAILABLE"                  # the selector cannot be reached
    CANCELLED = "CANCELLED"                      # the caller cancelled the call
    INTERNAL = "INTERNAL"                        # the selector failed (a round, a bug)
    UNKNOWN = "UNKNOWN"                          # any other failure
    UNIMPLEMENTED = "UNIMPLEMENTED"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    DATA_LOSS = "DATA_LOSS"


class Reason(str, Enum):
    """What a client must tell apart within one status (NOTE [ error reasons ] in
    ``protocol.py``), or ``NONE``."""

    NONE = ""
    WEIGHTS_NOT_PUSHED = "WEIGHTS_NOT_PUSHED"  # FAILED_PRECONDITION: push the round's weights
    ROUND_FAILED = "ROUND_FAILED"  # INTERNAL: the round failed on the selector (a scorer
    # error, a corrupt sample, a bad configuration), as opposed to a selector down
    MALFORMED_REPLY = "MALFORMED_REPLY"  # INTERNAL: the reply broke the protocol


class SelectorError(RuntimeError):
    """A selector call failed: ``method``, ``status``, the selector's ``details`` and a
    typed ``reason``.

    ``unreachable`` is the one definition the client uses for "no answer from the
    selector": it could not be reached (UNAVAILABLE) or did not answer within the
    deadline (DEADLINE_EXCEEDED). Such a failure says nothing of the request; retrying it
    later may succeed.
    """

    def __init__(self, method: str, status: Status, details: str,
                 reason: Reason = Reason.NONE) -> None:
        super().__init__(f"{method}: {status.value}: {details}")
        self.method = method
        self.status = status
        self.details = details
        self.reason = reason

    @property
    def unreachable(self) -> bool:
        return self.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED)


class RoundFailedError(RuntimeError):
    """The selection round for ``epoch`` failed on the selector (a scorer error, a corrupt
    sample, a bad configuration); ``details`` is the selector's message."""

    def __init__(self, epoch: int, details: str) -> None:
        super().__init__(f"epoch {epoch}: the selection round failed on the selector: "
                         f"{details} (fix it, or build the sampler with "
                         "fallback_on_failed_round=True to train on uniform subsets instead)")
        self.epoch = epoch
        self.details = details
