"""Long calls (streams and CreateJob) are capped per peer and overall, and idle streams end.

NOTE [ long calls and worker threads ]
The gRPC sync server runs each call on one of a fixed set of worker threads. A stream
whose client sends (or reads) slowly holds its thread for as long as the client likes:
40 slow PushWeights streams once held all 32 threads, and health checks, GetJob and
GetSelection timed out behind them. ``CallLimiter`` therefore

- refuses a long call with RESOURCE_EXHAUSTED when its peer host already has
  ``max_streams_per_peer`` of them, or the server ``max_streams`` (fewer than the worker
  threads, so short calls always find one);
- cancels a stream that has gone ``stream_idle_timeout`` seconds without a message
  (received for a request stream; sent for a response stream, counted from the first
  one: before it, GetSelection waits for a round, bounded by ``max_selection_wait``).

gRPC Python has no per-message timeout on the server, so a watchdog thread cancels the
idle call (``ServicerContext.cancel``); its client sees CANCELLED.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from .decoding import PeerLogLimiter, peer_host
from .limits import Limits

__all__ = ["CallLimiter", "LONG_UNARY_METHODS"]

log = logging.getLogger(__name__)
LONG_UNARY_METHODS = ("/dynams.v1.Selector/CreateJob",)  # may wait for placement
NEVER_IDLE_METHODS = ("/grpc.health.v1.Health/Watch",)  # silent until the status changes


@dataclass(eq=False)
class _Call:
    peer: str
    method: str
    context: grpc.ServicerContext
    last: float = field(default_factory=time.monotonic)
    armed: bool = False  # idle clock running


class CallLimiter(grpc.ServerInterceptor):
    """Caps concurrent long calls and cancels idle streams (NOTE above)."""

    def __init__(self, limits: Limits, check_every: float | None = None) -> None:
        self.limits = limits
        self._calls: set[_Call] = set()
        self._per_peer: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._log = PeerLogLimiter()
        self.cancelled_idle = 0
        self.refused = 0
        interval = check_every or min(1.0, limits.stream_idle_timeout / 4)
        self._watchdog = threading.Thread(target=self._watch, args=(interval,),
                                          name="dynams-idle-streams", daemon=True)
        self._watchdog.start()

    def close(self) -> None:
        self._stop.set()

    # --- bookkeeping --------------------------------------------------------------------

    def _enter(self, method: str, context: grpc.ServicerContext) -> _Call:
        peer = peer_host(context)
        with self._lock:
            if (len(self._calls) >= self.limits.max_streams
                    or self._per_peer[peer] >= self.limits.max_streams_per_peer):
                self.refused += 1
                overall = len(self._calls)
                mine = self._per_peer[peer]
            else:
                call = _Call(peer, method, context)
                self._calls.add(call)
                self._per_peer[peer] += 1
                return call
        self._log.warn(peer, f"too many long calls ({mine} from this peer, {overall} in all)")
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"too many concurrent streams: {mine} from your host (limit "
                      f"{self.limits.max_streams_per_peer}), {overall} in all (limit "
                      f"{self.limits.max_streams}); retry when one ends")
        raise AssertionError("context.abort returned")

    def _leave(self, call: _Call) -> None:
        with self._lock:
            if call in self._calls:
                self._calls.discard(call)
                self._per_peer[call.peer] -= 1
                if self._per_peer[call.peer] <= 0:
                    del self._per_peer[call.peer]

    def active(self) -> int:
        """Long calls in progress."""
        with self._lock:
            return len(self._calls)

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            now = time.monotonic()
            with self._lock:
                idle = [c for c in self._calls
                        if c.armed and now - c.last > self.limits.stream_idle_timeout]
                for call in idle:
                    call.armed = False  # cancel once
            for call in idle:
                self.cancelled_idle += 1
                self._log.warn(call.peer, f"{call.method}: stream idle for more than "
                                          f"{self.limits.stream_idle_timeout:g}s, cancelled")
                call.context.cancel()

    # --- handler wrapping ---------------------------------------------------------------

    def _requests(self, call: _Call, requests: Iterator) -> Iterator:
        for request in requests:
            call.last = time.monotonic()
            yield request
        call.armed = False  # the client finished sending; the handler works now

    def _responses(self, call: _Call, responses: Iterator) -> Iterator:
        for response in responses:
            call.last = time.monotonic()
            call.armed = call.method not in NEVER_IDLE_METHODS
            yield response
            call.last = time.monotonic()  # sent: the client read it

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not (handler.request_streaming or handler.response_streaming
                                   or method in LONG_UNARY_METHODS):
            return handler
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.request_streaming and handler.response_streaming:
            behavior = handler.stream_stream

            def stream_stream(requests, context):
                call = self._enter(method, context)
                call.armed = True
                try:
                    yield from self._responses(
                        call, behavior(self._requests(call, requests), context))
                finally:
                    self._leave(call)

            return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)
        if handler.request_streaming:
            behavior = handler.stream_unary

            def stream_unary(requests, context):
                call = self._enter(method, context)
                call.armed = True
                try:
                    return behavior(self._requests(call, requests), context)
                finally:
                    self._leave(call)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
        if handler.response_streaming:
            behavior = handler.unary_stream

            def unary_stream(request, context):
                call = self._enter(method, context)
                try:
                    yield from self._responses(call, behavior(request, context))
                finally:
                    self._leave(call)

            return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
        behavior = handler.unary_unary

        def unary_unary(request, context):
            call = self._enter(method, context)
            try:
                return behavior(request, context)
            finally:
                self._leave(call)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
