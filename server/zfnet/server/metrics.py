"""Per-replica metrics in the Prometheus text format: requests and latencies per gRPC method (a
server interceptor, so the servicer stays as it is), memory and cache state read from the engine
when scraped. ``zfserver --metrics-port`` serves them at ``http://HOST:PORT/metrics``: over TLS
when the gRPC port is (the same certificate), and only to a scraper that sends one of the server's
bearer tokens when it has them (``Authorization: Bearer <token>``; else 401)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily

from zfnet.server.admission import rss_bytes
from zfnet.server.security import Tls, Tokens

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class EngineCollector:
    """Memory and cache state of one engine, read at scrape time."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        budget = self.engine.budget.status()
        memory = GaugeMetricFamily("zfnet_memory_bytes", "Resident memory of the process (rss) and the memory budget's parts.", labels=["part"])
        memory.add_metric(["rss"], rss_bytes())
        for part in ("limit", "requests", "resident"):
            memory.add_metric([part], budget[part])
        yield memory
        admission = GaugeMetricFamily("zfnet_admission_requests", "Requests running in or waiting for the memory budget.", labels=["state"])
        admission.add_metric(["running"], budget["running"])
        admission.add_metric(["waiting"], budget["waiting"])
        yield admission
        store = self.engine.store
        models = store.summaries()
        yield GaugeMetricFamily("zfnet_models_known", "Models this replica can serve (uploaded or in --model-dir).", value=len(models))
        yield GaugeMetricFamily("zfnet_models_loaded", "Models held in memory with their sessions.", value=sum(store.is_loaded(sha) for sha, _, _ in models))


class _HttpServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass


def _bearer(app: Callable, tokens: Tokens) -> Callable:
    """``app`` for requests with ``Authorization: Bearer <token>`` of ``tokens``; 401 for the others."""

    def guarded(environ, start_response):
        if tokens.match(environ.get("HTTP_AUTHORIZATION")) is None:
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"this server's metrics need a bearer token: Authorization: Bearer <token>\n"]
        return app(environ, start_response)

    return guarded


class Metrics(grpc.ServerInterceptor):
    """Counts every call by method and status code and times it; owns one registry per server."""

    def __init__(self, engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("zfnet_requests", "gRPC calls finished, by method and status code.", ["method", "code"], registry=self.registry)
        self.latency = Histogram("zfnet_request_seconds", "gRPC call latency, by method.", ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(EngineCollector(engine))
        self._http = None

    def serve(self, host: str, port: int, tokens: Tokens | None = None, tls: Tls | None = None) -> int:
        """Serve the text format at http://host:port/metrics (0: any free port), to holders of one of
        ``tokens`` when there are any, over TLS with ``tls``; the bound port."""
        app = make_wsgi_app(self.registry)
        if tokens:
            app = _bearer(app, tokens)
        server_class = _HttpServer6 if ":" in host else _HttpServer
        self._http = make_server(host, port, app, server_class, handler_class=_Quiet)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            self._http.socket = context.wrap_socket(self._http.socket, server_side=True)
        threading.Thread(target=self._http.serve_forever, name="zfnet-metrics", daemon=True).start()
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def count(self, method: str) -> float:
        """Calls of ``method`` (the short name, like "Deconv") finished, any code."""
        return sum(
            s.value for m in self.registry.collect() if m.name == "zfnet_requests" for s in m.samples
            if s.name == "zfnet_requests_total" and s.labels["method"] == method
        )

    def _record(self, method: str, started: float, context: grpc.ServicerContext, failed: bool) -> None:
        # typeshed's grpcio stub lacks ServicerContext.code(), which grpc has had since 1.38
        code = context.code()  # pyright: ignore[reportAttributeAccessIssue]
        name = code.name if isinstance(code, grpc.StatusCode) else ("UNKNOWN" if failed else "OK")
        self.requests.labels(method, name).inc()
        self.latency.labels(method).observe(time.perf_counter() - started)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method.rpartition("/")[2]
        kind = ("stream" if handler.request_streaming else "unary") + "_" + ("stream" if handler.response_streaming else "unary")
        behavior = getattr(handler, kind)
        wrap = self._streaming if handler.response_streaming else self._unary
        return handler._replace(**{kind: wrap(method, behavior)})

    def _unary(self, method: str, behavior: Callable) -> Callable:
        def call(request, context):
            started, failed = time.perf_counter(), True
            try:
                reply = behavior(request, context)
                failed = False
                return reply
            finally:
                self._record(method, started, context, failed)

        return call

    def _streaming(self, method: str, behavior: Callable) -> Callable:
        def call(request, context):
            started, failed = time.perf_counter(), True
            try:
                yield from behavior(request, context)
                failed = False
            finally:
                self._record(method, started, context, failed)

        return call
