"""Domain errors of the selector, each carrying the gRPC status code it maps to."""

from __future__ import annotations

__all__ = [
    "SelectorError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "WeightsNotPushed",
    "DeadlineExceeded",
    "PermissionDenied",
    "ResourceExhausted",
    "Internal",
    "RoundFailed",
]


class SelectorError(Exception):
    """Base class; ``code`` names a ``grpc.StatusCode`` member, ``reason`` (optional) is
    sent as machine-readable trailing metadata (NOTE [ error reasons ] in protocol.py)."""

    code = "INTERNAL"
    reason = ""


class InvalidArgument(SelectorError):
    code = "INVALID_ARGUMENT"


class NotFound(SelectorError):
    code = "NOT_FOUND"


class AlreadyExists(SelectorError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(SelectorError):
    code = "FAILED_PRECONDITION"


class WeightsNotPushed(FailedPrecondition):
    """A selection epoch whose round has no weights yet: push them, then ask again."""

    reason = "WEIGHTS_NOT_PUSHED"  # protocol.WEIGHTS_NOT_PUSHED


class DeadlineExceeded(SelectorError):
    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(SelectorError):
    """An operator limit (jobs, scorers, CPUs, GPUs, memory, concurrent calls) is reached."""

    code = "RESOURCE_EXHAUSTED"


class Internal(SelectorError):
    code = "INTERNAL"


class ScorersReleased(Internal):
    """A job's scorers were stopped (the job deleted, released when idle, the selector
    stopping) while a round used them: the round ends, and nothing else is wrong."""


class PermissionDenied(SelectorError):
    code = "PERMISSION_DENIED"


class RoundFailed(Internal):
    """A round failed on the server (scorer error, corrupt sample): a configuration error
    the trainer should see, unlike an unreachable selector."""

    reason = "ROUND_FAILED"  # protocol.ROUND_FAILED
