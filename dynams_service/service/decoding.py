"""Request decoding in the handlers: an undecodable request is INVALID_ARGUMENT.

NOTE [ decoding requests ourselves ]
gRPC Python decodes a request before the handler runs; when that fails it answers
INTERNAL "Exception deserializing request!", logs a traceback per message, and (grpcio
1.85) keeps about 17 KB per failed call alive. ``DecodingInterceptor`` rewrites every
method handler of the server (Selector, health, reflection) so that gRPC hands over the
raw bytes and the handler decodes them itself: a message that does not parse is answered
INVALID_ARGUMENT, its bytes are released when the call ends, and at most one bounded log
line per peer and minute says so (``PeerLogLimiter``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ..protocol import ProtocolError

__all__ = ["DecodingInterceptor", "PeerLogLimiter", "UndecodableRequest", "peer_host"]

log = logging.getLogger(__name__)


class UndecodableRequest(ProtocolError):
    """A request's bytes are not a valid message of the method's request type."""


def peer_host(context: grpc.ServicerContext) -> str:
    """The peer's address without its port (``ipv4:127.0.0.1:5123`` → ``ipv4:127.0.0.1``).

    Limits and log throttling count per host: one client opening many connections is
    still one peer.
    """
    peer = context.peer() or "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class PeerLogLimiter:
    """At most one log line per peer per ``interval`` seconds, naming how many were muted.

    Remembers at most ``max_peers`` peers (least recently seen forgotten first), so a
    flood from many addresses cannot grow it without bound.
    """

    def __init__(self, interval: float = 60.0, max_peers: int = 1024) -> None:
        self.interval = interval
        self.max_peers = max_peers
        self._seen: OrderedDict[str, list[float | int]] = OrderedDict()  # peer → [last, muted]
        self._lock = threading.Lock()

    def warn(self, peer: str, message: str) -> bool:
        """Log ``message`` for ``peer`` unless it logged within the interval; True if logged."""
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(peer)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                self._seen.move_to_end(peer)
                return False
            muted = int(entry[1]) if entry is not None else 0
            self._seen[peer] = [now, 0]
            self._seen.move_to_end(peer)
            while len(self._seen) > self.max_peers:
                self._seen.popitem(last=False)
        suffix = f" ({muted} more since the last line)" if muted else ""
        log.warning("%s from %s%s", message[:200], peer[:100], suffix)
        return True


def _decoder(deserializer: Callable[[bytes], Any] | None, method: str
             ) -> Callable[[bytes], Any]:
    if deserializer is None:
        return lambda raw: raw

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeWarning, …
            raise UndecodableRequest(
                f"{method}: the request ({len(raw)} bytes) is not a valid message of this "
                "method's request type") from None

    return decode


class DecodingInterceptor(grpc.ServerInterceptor):
    """Makes every handler take raw bytes and decode them itself (see the NOTE above)."""

    def __init__(self, limiter: PeerLogLimiter | None = None) -> None:
        self.limiter = limiter or PeerLogLimiter()

    def _refuse(self, exc: UndecodableRequest, context: grpc.ServicerContext) -> None:
        self.limiter.warn(peer_host(context), f"undecodable request: {exc}")
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = _decoder(handler.request_deserializer, handler_call_details.method)
        serializer = handler.response_serializer
        if handler.request_streaming:
            behavior = handler.stream_stream or handler.stream_unary

            def decoded(raw_requests: Iterator[bytes]) -> Iterator[Any]:
                for raw in raw_requests:
                    yield decode(raw)

            if handler.response_streaming:
                def stream_stream(raw_requests, context):
                    try:
                        yield from behavior(decoded(raw_requests), context)
                    except UndecodableRequest as exc:
                        self._refuse(exc, context)

                return grpc.stream_stream_rpc_method_handler(
                    stream_stream, response_serializer=serializer)

            def stream_unary(raw_requests, context):
                try:
                    return behavior(decoded(raw_requests), context)
                except UndecodableRequest as exc:
                    self._refuse(exc, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, response_serializer=serializer)

        behavior = handler.unary_stream or handler.unary_unary

        def request_of(raw: bytes, context) -> Any:
            try:
                return decode(raw)
            except UndecodableRequest as exc:
                self._refuse(exc, context)

        if handler.response_streaming:
            def unary_stream(raw, context):
                return behavior(request_of(raw, context), context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, response_serializer=serializer)

        def unary_unary(raw, context):
            return behavior(request_of(raw, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serializer)
