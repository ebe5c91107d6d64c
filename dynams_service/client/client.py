"""SelectorClient: a typed client of the selector's gRPC API.

Deadlines on every call, retries with exponential backoff on UNAVAILABLE, bearer-token
metadata, TLS. Replies are the client's own dataclasses (``replies.py``) and every failure
is a ``SelectorError`` (``errors.py``): no gRPC or protobuf type crosses this module.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import grpc

from ..core.job import JobSpec
from ..core.models.proxy import TensorRecord
from ..proto.dynams.v1 import selector_pb2_grpc
from ..protocol import (
    MAX_MESSAGE_BYTES,
    REASON_KEY,
    ProtocolError,
    pb,
    records_to_chunks,
    selection_from_chunks,
    spec_to_proto,
)
from .errors import Reason, SelectorError, Status
from .replies import JobInfo, PushResult, Selection

__all__ = ["SelectorClient"]

T = TypeVar("T")


def _error(method: str, exc: grpc.RpcError) -> SelectorError:
    """A gRPC failure as the client's own error, with the server's typed reason."""
    code = exc.code()  # type: ignore[attr-defined]
    status = Status.__members__.get(code.name, Status.UNKNOWN)
    trailing = getattr(exc, "trailing_metadata", None)
    metadata = (trailing() if callable(trailing) else None) or ()
    value = next((str(v) for k, v in metadata if k == REASON_KEY), "")
    reason = Reason(value) if value in Reason._value2member_map_ else Reason.NONE
    return SelectorError(method, status, exc.details() or "", reason)  # type: ignore[attr-defined]


def _page(reply: pb.ListJobsResponse) -> tuple[list[JobInfo], str]:
    return [JobInfo.from_proto(j) for j in reply.jobs], reply.next_page_token


class SelectorClient:
    """Client of one selector.

    Args:
        address: ``host:port`` of ``dynams serve``.
        token: bearer token, if the server was started with ``--token-file``.
        tls_ca: PEM file of the CA that signed the server's certificate (enables TLS).
        timeout: default deadline per call, seconds.
        retries: attempts on UNAVAILABLE, with exponential backoff from ``backoff`` s.

    Example:
        >>> client = SelectorClient("127.0.0.1:50051")  # doctest: +SKIP
        >>> client.create_job(spec); client.get_selection("job", epoch=1, rank=0, world_size=2)
    """

    def __init__(self, address: str, *, token: str | None = None, tls_ca: str | Path | None = None,
                 timeout: float = 30.0, retries: int = 5, backoff: float = 0.2) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   # Reconnect quickly to a selector that comes back (gRPC's default
                   # backoff grows to 120 s, longer than most epochs; the sampler's
                   # reachability probe waits past this maximum).
                   ("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = selector_pb2_grpc.SelectorStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def _call(self, method: str, fn: Callable[[float], T], timeout: float | None) -> T:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn(max(0.001, deadline - time.monotonic()))
            except grpc.RpcError as exc:
                error = _error(method, exc)
                retry = (error.status is Status.UNAVAILABLE and attempt < self.retries
                         and time.monotonic() + delay < deadline)
                if not retry:
                    raise error from None
                time.sleep(delay * (1 + random.random() * 0.2))
                delay *= 2
            except ProtocolError as exc:
                raise SelectorError(method, Status.INTERNAL, str(exc),
                                    Reason.MALFORMED_REPLY) from None
        raise AssertionError("unreachable")

    def reachable(self, timeout: float) -> bool:
        """Whether the channel connects within ``timeout`` seconds (no call is made)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False

    def create_job(self, spec: JobSpec, timeout: float | None = None) -> JobInfo:
        """Create (or find the identical) job; scorers are started before it returns."""
        request = pb.CreateJobRequest(spec=spec_to_proto(spec))
        return self._call("CreateJob", lambda t: JobInfo.from_proto(self._stub.CreateJob(
            request, timeout=t, metadata=self._metadata)), timeout or max(self.timeout, 300))

    def get_job(self, job_id: str, timeout: float | None = None) -> JobInfo:
        """One job in full: its plan, every round, its scorers."""
        return self._call("GetJob", lambda t: JobInfo.from_proto(self._stub.GetJob(
            pb.GetJobRequest(job_id=job_id), timeout=t, metadata=self._metadata)), timeout)

    def list_jobs(self, timeout: float | None = None, page_size: int = 100) -> list[JobInfo]:
        """Every job's summary (spec, state, round counts), fetched a page at a time;
        ``get_job`` has a job's rounds and scorers."""
        jobs: list[JobInfo] = []
        token = ""
        while True:
            request = pb.ListJobsRequest(page_size=page_size, page_token=token)
            page, token = self._call("ListJobs", lambda t, r=request: _page(self._stub.ListJobs(
                r, timeout=t, metadata=self._metadata)), timeout)
            jobs.extend(page)
            if not token:
                return jobs

    def delete_job(self, job_id: str, timeout: float | None = None) -> bool:
        return self._call("DeleteJob", lambda t: self._stub.DeleteJob(
            pb.DeleteJobRequest(job_id=job_id), timeout=t, metadata=self._metadata),
            timeout).deleted

    def push_weights(self, job_id: str, epoch: int, version: int,
                     records: Iterable[TensorRecord], timeout: float | None = None,
                     cancel: threading.Event | None = None) -> PushResult:
        """Push PSP tensors for the round that starts at ``epoch`` (streamed in parts).

        Setting ``cancel`` ends the push at once (``SelectorError`` with CANCELLED).
        """
        records = list(records)

        def push(t: float) -> PushResult:
            call = self._stub.PushWeights.future(
                records_to_chunks(job_id, version, epoch, records), timeout=t,
                metadata=self._metadata)
            if cancel is not None:
                while not call.done():
                    if cancel.wait(0.05):
                        call.cancel()
                        break
            try:
                return PushResult.from_proto(call.result())
            except grpc.FutureCancelledError:
                raise SelectorError("PushWeights", Status.CANCELLED,
                                    "cancelled by the caller") from None

        return self._call("PushWeights", push, timeout)

    def get_selection(self, job_id: str, epoch: int, rank: int, world_size: int, *,
                      drop_last: bool = False, timeout: float | None = None) -> Selection:
        """This rank's indices for ``epoch`` (and their loss weights for a reweighting
        policy); waits up to ``timeout`` for the round (its weights and its scoring)."""
        request = pb.GetSelectionRequest(job_id=job_id, epoch=epoch, rank=rank,
                                         world_size=world_size, drop_last=drop_last)
        return self._call("GetSelection", lambda t: Selection.from_proto(*selection_from_chunks(
            self._stub.GetSelection(request, timeout=t, metadata=self._metadata))), timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SelectorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
