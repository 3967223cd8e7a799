"""The edge of every call: how many calls one client may have open, how long a call may wait on its
client, and threads that always answer health checks.

:class:`Guard`, a server interceptor, sees every call of every service as it arrives:

- **One client, a bounded share.** A client (its bearer token when it presents a valid one, else
  its peer address without the port) may have at most ``per_client`` calls open at once; one more
  is refused at once with RESOURCE_EXHAUSTED (``TOO_MANY_CALLS``). Health checks are exempt.
- **No call waits on its client for ever.** A call waiting for a request message, or for its
  client to take a reply (HTTP/2 flow control), longer than ``idle_s`` is cancelled (its
  reservations are released as its handler unwinds). To watch unary calls too, every unary
  request is read as a stream of one message, from the moment the call arrives: a client that
  opens a call and never sends its request holds nothing for longer than ``idle_s``.
- **Health is always answered.** ``grpc.health.v1.Health/Check`` runs on threads of its own.

The server's thread pool has a thread for every call it admits (``maximum_concurrent_rpcs``
equals the pool's size), so a call never waits in a queue behind others; how much work runs at
once is bounded by the memory budget (:mod:`zfnet.server.admission`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.server.security import HEALTH_PREFIX, Tokens
from zfnet.status import to_grpc_status

log = logging.getLogger("zfnet.server")

IDLE_S = 30.0  # --stream-idle-timeout default
PER_CLIENT = 32  # --max-calls-per-client default
HEALTH_CHECK = HEALTH_PREFIX + "Check"
HEALTH_THREADS = 2


@dataclass(eq=False)
class Call:
    """One call in flight: whom it is from, and since when it waits on its client (None: it does not)."""

    method: str
    client: str
    context: grpc.ServicerContext
    waiting_since: float | None = None
    ended: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """The call waits on its client inside the block (a request message, room to send a reply)."""
        self.waiting_since = time.monotonic()
        try:
            yield
        finally:
            self.waiting_since = None

    def receiving(self, requests: Iterator[Any]) -> Iterator[Any]:
        """The request stream, each wait for the next message watched."""
        while True:
            with self.waiting():
                message = next(requests, _END)
            if message is _END:
                return
            yield message

    def sending(self, replies: Iterator[Any]) -> Iterator[Any]:
        """The reply stream, each wait for the client to take a reply watched."""
        for reply in replies:
            with self.waiting():
                yield reply

    def cancel_if_idle(self, now: float, idle_s: float) -> bool:
        """Cancel the call when it has waited on its client longer than ``idle_s``; True if it did now."""
        since = self.waiting_since
        with self._lock:
            if self.ended or since is None or now - since <= idle_s:
                return False
            self.ended = True
        log.warning("cancelled %s from %s: its client sent or took nothing for %.0f s (--stream-idle-timeout)", self.method, self.client, now - since)
        self.context.cancel()
        return True


_END = object()


class Guard(grpc.ServerInterceptor):
    """Per-client call caps, the idle watchdog and the health threads (see the module doc)."""

    def __init__(self, idle_s: float = IDLE_S, per_client: int = PER_CLIENT, tokens: Tokens | None = None) -> None:
        if idle_s <= 0:
            raise InvalidArgument(f"--stream-idle-timeout must be positive, got {idle_s}")
        if per_client < 1:
            raise InvalidArgument(f"--max-calls-per-client must be at least 1, got {per_client}")
        self.idle_s, self.per_client = idle_s, per_client
        self._tokens = tokens or Tokens(())
        self._lock = threading.Lock()
        self._calls: set[Call] = set()
        self._open: Counter[str] = Counter()
        self.health_pool = ThreadPoolExecutor(HEALTH_THREADS, thread_name_prefix="zfnet-health")
        _watchdog.watch(self)

    def open_calls(self, client: str | None = None) -> int:
        """Calls in flight (of ``client`` only, when given)."""
        with self._lock:
            return len(self._calls) if client is None else self._open[client]

    def sweep(self, now: float) -> int:
        """Cancel every call that has waited on its client too long; how many."""
        with self._lock:
            calls = list(self._calls)
        return sum(call.cancel_if_idle(now, self.idle_s) for call in calls)

    def close(self) -> None:
        self.health_pool.shutdown(wait=False)

    def _client(self, context: grpc.ServicerContext, metadata: Sequence[tuple[str, Any]] | None) -> str:
        """A valid bearer token names its client; else the peer's address without its port."""
        token = self._tokens.of_call(metadata)
        if token is not None:
            return f"token {token}"
        peer = context.peer() or "unknown"
        return peer.rpartition(":")[0] if peer.startswith(("ipv4:", "ipv6:")) else peer.partition(":")[0]

    @contextmanager
    def _tracked(self, method: str, context: grpc.ServicerContext, metadata) -> Iterator[Call]:
        client = self._client(context, metadata)
        exempt = method == HEALTH_CHECK
        with self._lock:
            full = not exempt and self._open[client] >= self.per_client
            if not full:
                self._open[client] += 1
        if full:
            log.warning("refused %s from %s: %d calls open already (--max-calls-per-client)", method, client, self.per_client)
            refusal = ResourceExhausted(
                f"this client ({client}) has {self.per_client} calls open already, this server's limit per client "
                "(--max-calls-per-client); wait for one to end", reason="TOO_MANY_CALLS", metadata={"limit": self.per_client},
            )
            context.abort_with_status(to_grpc_status(refusal))
        call = Call(method, client, context)
        with self._lock:
            self._calls.add(call)
        try:
            yield call
        finally:
            with call._lock:
                call.ended = True
            with self._lock:
                self._calls.discard(call)
                self._open[client] -= 1
                if not self._open[client]:
                    del self._open[client]

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None:
            return None
        method, metadata = details.method, details.invocation_metadata
        track = lambda context: self._tracked(method, context, metadata)  # noqa: E731
        if handler.request_streaming and handler.response_streaming:
            behavior = handler.stream_stream

            def stream_stream(requests, context):
                with track(context) as call:
                    yield from call.sending(behavior(call.receiving(requests), context))

            return handler._replace(stream_stream=stream_stream)
        if handler.request_streaming:
            behavior = handler.stream_unary

            def stream_unary(requests, context):
                with track(context) as call:
                    return behavior(call.receiving(requests), context)

            return handler._replace(stream_unary=stream_unary)
        if handler.response_streaming:
            behavior = handler.unary_stream

            def unary_stream(requests, context):
                with track(context) as call:
                    yield from call.sending(behavior(_one(call, requests, context), context))

            return handler._replace(request_streaming=True, unary_stream=None, stream_stream=unary_stream)
        behavior = handler.unary_unary

        def unary_unary(requests, context):
            with track(context) as call:
                return behavior(_one(call, requests, context), context)

        if method == HEALTH_CHECK:
            unary_unary.experimental_thread_pool = self.health_pool  # pyright: ignore[reportFunctionMemberAccess]
        return handler._replace(request_streaming=True, unary_unary=None, stream_unary=unary_unary)


def _one(call: Call, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
    """The one request message of a unary call, read as a stream; a stream without one is refused."""
    request = next(call.receiving(requests), _END)
    if request is _END:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{call.method} takes exactly one request message; the client sent none")
    return request


class _Watchdog:
    """One thread for all guards of the process: every ``period`` s, cancel the calls idle too long."""

    def __init__(self) -> None:
        self._guards: weakref.WeakSet[Guard] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, guard: Guard) -> None:
        with self._lock:
            self._guards.add(guard)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zfnet-idle-watchdog", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            guards = list(self._guards)
            period = min([1.0, *(g.idle_s / 4 for g in guards)])
            time.sleep(period)
            now = time.monotonic()
            for guard in guards:
                try:
                    guard.sweep(now)
                except Exception:  # a cancelled call's context may already be gone; the next sweep retries
                    log.exception("idle watchdog")
            del guards


_watchdog = _Watchdog()
