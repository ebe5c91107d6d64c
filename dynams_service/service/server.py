"""The selector's gRPC server: wiring of servicer, health, reflection, auth and TLS.

Hosted in the process that runs ``dynams serve`` (the Ray driver). Jobs and rounds are
on disk, so a restarted server resumes them; see docs/service.md#threat-model for exposure.
"""

from __future__ import annotations

import hmac
import logging
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..proto.dynams.v1 import selector_pb2_grpc
from ..protocol import MAX_MESSAGE_BYTES, pb
from .calls import CallLimiter
from .coordinator import JobCoordinator
from .decoding import DecodingInterceptor
from .limits import Limits
from .metrics import Metrics
from .reaper import JobReaper
from .scorer_api import ScorerFactory, start_ray_scorers
from .servicer import SelectorServicer
from .store import StateStore

__all__ = ["SelectorServer", "TLSFiles", "BearerTokenInterceptor", "SERVICE_NAME",
           "WORKERS", "check_workers"]

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Selector"].full_name
_OPEN_METHODS = ("/grpc.health.v1.Health/",)
WORKERS = 128  # gRPC worker threads; long calls get fewer (NOTE [ long calls and worker threads ])


def check_workers(limits: Limits, max_workers: int = WORKERS) -> None:
    """Long calls must leave worker threads to short ones (health, GetJob, …)."""
    if limits.max_streams >= max_workers:
        raise ValueError(f"--max-streams ({limits.max_streams}) must be below the server's "
                         f"{max_workers} worker threads")


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC except health checks.

    Exactly one ``authorization`` header: a request carrying several is refused, whatever
    they hold (proxies and clients disagree on which one counts).
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or wrong bearer token (metadata 'authorization')")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream_in = grpc.stream_unary_rpc_method_handler(deny)
        self._deny_stream_out = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(_OPEN_METHODS):
            return continuation(handler_call_details)
        given = [value for key, value in handler_call_details.invocation_metadata or ()
                 if key == "authorization"]
        token = given[0] if len(given) == 1 else ""
        token = token.encode() if isinstance(token, str) else token
        if hmac.compare_digest(token, self._expected) and len(given) == 1:
            return continuation(handler_call_details)
        if method.endswith("/PushWeights"):
            return self._deny_stream_in
        if method.endswith("/GetSelection"):
            return self._deny_stream_out
        return self._deny_unary


class SelectorServer:
    """A running selector: coordinator + gRPC server on ``address``.

    Example:
        >>> server = SelectorServer("127.0.0.1:0", state_dir="state")  # doctest: +SKIP
        >>> server.start(); print(server.address); server.stop()  # doctest: +SKIP
    """

    def __init__(self, address: str = "127.0.0.1:50051", *, state_dir: str | Path,
                 token: str | None = None, tls: TLSFiles | None = None,
                 max_workers: int = WORKERS, dashboard_url: str = "",
                 limits: Limits | None = None,
                 scorer_factory: ScorerFactory = start_ray_scorers,
                 metrics: Metrics | None = None) -> None:
        """``scorer_factory`` and ``metrics``: Ray actors and Ray metrics by default (see
        ``JobCoordinator``)."""
        self.limits = limits or Limits()
        check_workers(self.limits, max_workers)
        self.coordinator = JobCoordinator(StateStore(state_dir), metrics, self.limits,
                                          scorer_factory=scorer_factory)
        self.calls = CallLimiter(self.limits)
        self.decoding = DecodingInterceptor()
        # Outermost first: auth, then the long-call caps, then decoding next to the handler.
        interceptors = [BearerTokenInterceptor(token)] if token else []
        interceptors += [self.calls, self.decoding]
        self._reaper = JobReaper(
            lambda: self.coordinator.reap(self.limits.job_ttl, self.limits.job_expiry),
            self.limits)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dynams-rpc"),
            interceptors=interceptors,
            # Calls beyond this are refused (RESOURCE_EXHAUSTED) instead of queueing.
            maximum_concurrent_rpcs=4 * max_workers,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     # gRPC binds with SO_REUSEPORT: a second server on a port in use would
                     # silently share its connections. A port in use is refused instead.
                     ("grpc.so_reuseport", 0)],
        )
        selector_pb2_grpc.add_SelectorServicer_to_server(
            SelectorServicer(self.coordinator, dashboard_url), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        try:
            if tls is not None:
                credentials = grpc.ssl_server_credentials(
                    [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())])
                self.port = self._server.add_secure_port(address, credentials)
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError:  # grpcio's "Failed to bind"
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {address} (in use, or not this machine's)")
        self.address = f"{address.rsplit(':', 1)[0]}:{self.port}"

    def start(self) -> SelectorServer:
        """Restore persisted jobs, then serve."""
        restored = self.coordinator.restore()
        self._server.start()
        self._reaper.start()
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("selector listening on %s (%d jobs restored)", self.address, restored)
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving, then stop every job's scorers (state is already on disk)."""
        self._health.enter_graceful_shutdown()
        self._reaper.stop()
        self._server.stop(grace).wait()
        self.calls.close()
        self.coordinator.shutdown()

    def wait(self) -> None:
        self._server.wait_for_termination()
