"""The gRPC servicer: unpack, delegate to the coordinator, pack; map errors to status codes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import wraps
from typing import TypeVar

import grpc
from pydantic import ValidationError

from ..core.job import RoundState
from ..proto.dynams.v1 import selector_pb2_grpc
from ..protocol import (
    JOB_STATES,
    MAX_WORLD_SIZE,
    REASON_KEY,
    ROUND_STATES,
    SELECTION_KINDS,
    ProtocolError,
    chunks_to_push,
    pb,
    selection_chunks,
    spec_from_proto,
    spec_to_proto,
)
from .coordinator import JobCoordinator, JobStatus, JobSummary
from .decoding import UndecodableRequest
from .errors import InvalidArgument, SelectorError

__all__ = ["SelectorServicer"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def _status_codes(method: Callable[..., T]) -> Callable[..., T]:
    """Turn domain and validation errors into gRPC status codes with a readable message."""

    @wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            result = method(self, request, context)
            if isinstance(result, Iterator):
                yield from result
                return
            yield result
        except UndecodableRequest:
            raise  # the decoding layer answers it (INVALID_ARGUMENT, rate-limited log)
        except SelectorError as exc:
            if exc.reason:
                context.set_trailing_metadata(((REASON_KEY, exc.reason),))
            context.abort(getattr(grpc.StatusCode, exc.code), _short(exc))
        except (ValidationError, ProtocolError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _short(exc))
        except grpc.RpcError:
            raise
        except Exception as exc:  # noqa: BLE001 - never leak a traceback as UNKNOWN
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, _short(f"{type(exc).__name__}: {exc}"))

    return wrapper


def _unary(method: Callable[..., T]) -> Callable[..., T]:
    streaming = _status_codes(method)

    @wraps(method)
    def wrapper(self, request, context):
        return next(iter(streaming(self, request, context)))

    return wrapper


def _short(exc: Exception | str, limit: int = 1000) -> str:
    """The error text, ASCII and at most ``limit`` characters.

    It travels percent-encoded in a trailer, and a client drops trailers over 8 KiB
    (RESOURCE_EXHAUSTED instead of the real status), so long or non-ASCII input echoed
    in a message (a job id, a dataset URI) must be cut and escaped.
    """
    text = str(exc).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def _answer_before(deadline: float | None) -> float | None:
    """How long a call may wait so that its answer (why it waited in vain, for instance)
    reaches the client before the client's own deadline cancels the call: a tenth of the
    time, at most half a second, is kept for the way back."""
    if deadline is None:
        return None
    return max(0.0, deadline - min(0.5, 0.1 * deadline))


def job_to_proto(status: JobStatus, dashboard_url: str = "") -> pb.Job:
    summary = status.summary
    return pb.Job(
        dashboard_url=dashboard_url,
        state=JOB_STATES[summary.state],
        rounds_total=len(status.rounds),
        rounds_done=sum(r.state is RoundState.DONE for r in status.rounds),
        scorer_status=[pb.ScorerStatus(**info) for info in status.scorer_infos],
        spec=spec_to_proto(status.spec), epoch_sizes=status.plan.sizes,
        fraction_trained=status.plan.fraction_trained, scorers=status.scorers,
        rounds=[pb.RoundStatus(round=r.round, epoch=r.epoch, state=ROUND_STATES[r.state],
                               weights_version=r.weights_version, selected=r.selected,
                               seconds=r.seconds, error=r.error) for r in status.rounds],
    )


def summary_to_proto(summary: JobSummary, dashboard_url: str = "") -> pb.Job:
    """A ListJobs entry: spec, state and counts only, so its size does not grow with epochs."""
    spec = (spec_to_proto(summary.spec) if summary.spec is not None
            else pb.JobSpec(job_id=summary.job_id))
    return pb.Job(spec=spec, state=JOB_STATES[summary.state], error=_short(summary.error),
                  rounds_total=summary.rounds_total, rounds_done=summary.rounds_done,
                  dashboard_url=dashboard_url)


class SelectorServicer(selector_pb2_grpc.SelectorServicer):
    """Thin adapter from the ``dynams.v1.Selector`` service to ``JobCoordinator``."""

    def __init__(self, coordinator: JobCoordinator, dashboard_url: str = "") -> None:
        self.coordinator = coordinator
        self.dashboard_url = dashboard_url

    @_unary
    def CreateJob(self, request: pb.CreateJobRequest, context) -> pb.Job:
        spec = spec_from_proto(request.spec)
        status = self.coordinator.create_job(spec, timeout=context.time_remaining(),
                                             gave_up=lambda: not context.is_active())
        return job_to_proto(status, self.dashboard_url)

    @_unary
    def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        return job_to_proto(self.coordinator.get_job(request.job_id), self.dashboard_url)

    @_unary
    def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be in [0, {MAX_PAGE_SIZE}], got "
                                  f"{request.page_size}")
        summaries, token = self.coordinator.list_jobs(
            after=request.page_token, limit=request.page_size or DEFAULT_PAGE_SIZE)
        return pb.ListJobsResponse(jobs=[summary_to_proto(s, self.dashboard_url)
                                         for s in summaries], next_page_token=token)

    @_unary
    def DeleteJob(self, request: pb.DeleteJobRequest, context) -> pb.DeleteJobResponse:
        return pb.DeleteJobResponse(deleted=self.coordinator.delete_job(request.job_id))

    @_unary
    def PushWeights(self, request_iterator, context) -> pb.PushAck:
        push = chunks_to_push(request_iterator)
        round_, already = self.coordinator.push_weights(push.job_id, push.version, push.epoch,
                                                        push.records, push.nbytes)
        return pb.PushAck(job_id=push.job_id, version=push.version, round=round_,
                          bytes_received=push.nbytes, already_done=already)

    @_status_codes
    def GetSelection(self, request: pb.GetSelectionRequest, context):
        if request.world_size > MAX_WORLD_SIZE:  # padding would allocate world_size indices
            raise InvalidArgument(f"world_size {request.world_size} exceeds {MAX_WORLD_SIZE}")
        answer = self.coordinator.get_selection(
            request.job_id, request.epoch, request.rank, request.world_size, request.drop_last,
            timeout=_answer_before(context.time_remaining()))
        header = pb.SelectionHeader(
            epoch=answer.epoch, round=answer.round, weights_version=answer.weights_version,
            kind=SELECTION_KINDS[answer.kind],
            global_count=answer.global_count, rank_count=len(answer.indices),
            weighted=answer.weights_of is not None)
        return selection_chunks(header, answer.indices, answer.weights_of)
