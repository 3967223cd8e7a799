"""Server start-up: ``create_server`` (tests bind port 0) and the ``zfserver`` command."""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import typer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from zfnet.edge import edge
from zfnet.errors import InvalidArgument
from zfnet.server import reflection
from zfnet.server.admission import (
    DEFAULT_FRACTION, MAX_INPUT_PIXELS, MemoryBudget, fmt_bytes, keep_freed_memory_until_idle, limit_malloc_arenas, machine_memory, message_limit, parse_bytes,
)
from zfnet.server.calls import IDLE_S, PER_CLIENT, Guard
from zfnet.server.metrics import Metrics
from zfnet.server.security import Tls, TokenAuth, Tokens, check_exposure, read_tokens, server_credentials
from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.v1 import zfnet_pb2, zfnet_pb2_grpc

if TYPE_CHECKING:
    from zfnet.server.engine import Engine

log = logging.getLogger("zfnet.server")

SERVICE_NAME = zfnet_pb2.DESCRIPTOR.services_by_name["Zfnet"].full_name
WORKERS = 64  # threads serving calls, and the most calls open at once
# A dead peer's connection (and its calls) goes after a ping it does not answer.
KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000)]


class Health(health.HealthServicer):
    """The standard health service, able to end its Watch streams when the server drains."""

    def end_watches(self) -> None:
        """End every Watch stream (after NOT_SERVING went out): an open Watch would otherwise count
        as an in-flight call and hold the whole grace period."""
        # typeshed's grpcio-health-checking stub declares HealthServicer's public methods only, not the
        # lock its implementation guards the Watch callbacks with
        with self._lock:  # pyright: ignore[reportAttributeAccessIssue]
            ends = [send for sends in getattr(self, "_send_response_callbacks", {}).values() for send in sends]
        for send in ends:
            send(None)


@dataclass
class Running:
    """A started server and what stopping it gracefully needs."""

    server: grpc.Server
    port: int  # the bound TCP port (1 for a Unix socket)
    engine: Engine
    health: Health
    metrics: Metrics
    guard: Guard
    metrics_port: int | None = None  # where /metrics is served, when it is

    def shutdown(self, grace: float) -> None:
        """Health NOT_SERVING, no new calls, in-flight calls get ``grace`` seconds, then stop; the
        private cache of prepared models goes with the server."""
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace)
        self.health.end_watches()
        stopped.wait()
        self.metrics.close()
        self.guard.close()
        self.engine.store.cache.close()


def start(
    address: str = "127.0.0.1:0", model_dir: Path | None = None, max_model_mb: int = 2048, workers: int = WORKERS, data_dir: Path | None = None,
    *, max_memory: int | None = None, max_input_pixels: int = MAX_INPUT_PIXELS, tls: Tls | None = None, tokens: Sequence[str] = (),
    insecure: bool = False, metrics_port: int | None = None, stream_idle_timeout: float = IDLE_S, max_calls_per_client: int = PER_CLIENT,
    user_cache: bool = False,
) -> Running:
    """Start a server with the zfnet, health and reflection services on ``address`` (``host:port``
    or ``unix:/path``); off-host addresses need TLS and tokens unless ``insecure``. ``metrics_port``
    (0: any free port) serves Prometheus metrics on the same host (see :mod:`zfnet.server.metrics`).
    ``workers`` threads serve at most as many calls at once, ``max_calls_per_client`` of them from one
    client, and a call waiting on its client longer than ``stream_idle_timeout`` is cancelled
    (:mod:`zfnet.server.calls`). Prepared models are cached in a private temporary directory removed
    with the server, or, with ``user_cache`` (a server in the client's own process), in the user's
    cache directory (:mod:`zfnet.server.cache`)."""
    check_exposure(address, tls, tokens, insecure)
    credentials = server_credentials(tls) if tls else None
    from zfnet.server import runtime  # onnxruntime, onnx and the rules load with the server, not with every CLI command
    from zfnet.server.cache import Cache
    from zfnet.server.datasets import DatasetStore
    from zfnet.server.engine import Engine
    from zfnet.server.models import ModelStore
    from zfnet.server.service import ZfnetServicer

    keep_freed_memory_until_idle()  # onnxruntime's CPU arena is off: glibc's heap reuses freed tensors instead
    budget = MemoryBudget.for_process(max_memory)
    valid = Tokens(tokens)
    guard = Guard(stream_idle_timeout, max_calls_per_client, valid)
    cache = Cache.user() if user_cache else Cache.private()
    engine = Engine(ModelStore(model_dir, max_model_mb << 20, budget, max_input_pixels, cache), DatasetStore(data_dir))
    provider = runtime.providers()[0]
    metrics = Metrics(engine)
    interceptors = [guard, metrics, *([TokenAuth(valid)] if tokens else [])]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zfnet-call"), options=[*_options(budget), *KEEPALIVE_OPTIONS],
        interceptors=interceptors, maximum_concurrent_rpcs=workers,
    )
    zfnet_pb2_grpc.add_ZfnetServicer_to_server(ZfnetServicer(engine, provider), server)
    health_servicer = Health()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable((SERVICE_NAME, health.SERVICE_NAME), server)  # grpc.reflection.v1 and v1alpha
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    served = metrics.serve(_metrics_host(address), metrics_port, valid, tls) if metrics_port is not None else None
    return Running(server, port, engine, health_servicer, metrics, guard, served)


def _options(budget: MemoryBudget) -> list[tuple[str, int]]:
    """The protocol's channel options, the largest request message received bounded by the budget
    (:func:`zfnet.server.admission.message_limit`)."""
    receive = "grpc.max_receive_message_length"
    return [*(option for option in CHANNEL_OPTIONS if option[0] != receive), (receive, message_limit(budget))]


def _metrics_host(address: str) -> str:
    """The host the metrics endpoint binds: the gRPC address's host (loopback for a Unix socket)."""
    if address.startswith("unix"):
        return "127.0.0.1"
    return address.rpartition(":")[0].strip("[]") or "127.0.0.1"


def create_server(
    address: str = "127.0.0.1:0", model_dir: Path | None = None, max_model_mb: int = 2048, workers: int = WORKERS, data_dir: Path | None = None,
    **options,
) -> tuple[grpc.Server, int, Engine]:
    """A started server (see :func:`start` for ``options``); returns (server, port, engine)."""
    running = start(address, model_dir, max_model_mb, workers, data_dir, **options)
    return running.server, running.port, running.engine


def serve(
    host: str, port: int, model_dir: Path | None, max_model_mb: int, workers: int, data_dir: Path | None = None, grace: float = 20.0, **options,
) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully (see :meth:`Running.shutdown`) and return."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limit_malloc_arenas()  # a process of its own: memory handed back after a burst (docs/security.md)
    stop = threading.Event()
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: (received.append(number), stop.set()))
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: every thread's stack on stderr
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    running = start(address, model_dir, max_model_mb, workers, data_dir, **options)
    budget = running.engine.budget
    log.info(
        "zfnet serving on %s:%d (%s, %s; memory budget %s)", host, running.port, "TLS" if options.get("tls") else "plaintext",
        "bearer tokens" if options.get("tokens") else "no tokens", fmt_bytes(budget.limit),
    )
    if running.metrics_port is not None:
        log.info("metrics on %s://%s:%d/metrics", "https" if options.get("tls") else "http", _metrics_host(address), running.metrics_port)
    while not stop.wait(1.0):
        pass
    name = signal.Signals(received[0]).name if received else "stop"
    log.info("%s: health NOT_SERVING, no new calls; in-flight calls have %.0f s to finish", name, grace)
    running.shutdown(grace)
    log.info("stopped")


def command(
    host: str = typer.Option("127.0.0.1", help="Address to bind. Anything but loopback needs --tls-cert/--tls-key and --token-file (or --insecure)."),
    port: int = typer.Option(50051, help="Port to bind (0: any free port)."),
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="Serve the .onnx files in this folder by name (file stem); their external data must stay inside it. A file changed on disk is a new model (its SHA-256) on its next load.",
    ),
    max_model_mb: int = typer.Option(2048, help="Largest model accepted for upload, in MiB."),
    workers: int = typer.Option(WORKERS, help="Threads serving calls, and the most calls open at once (more are refused with RESOURCE_EXHAUSTED); health checks have threads of their own."),
    max_calls_per_client: int = typer.Option(
        PER_CLIENT, "--max-calls-per-client", help="Most calls one client (its bearer token, else its address) may have open at once; health checks are not counted.",
    ),
    stream_idle_timeout: float = typer.Option(
        IDLE_S, "--stream-idle-timeout", help="Seconds a call may wait on its client (a request message, or room to send a reply) before it is cancelled and its memory freed.",
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir",
        help="Serve the image folders under DIR as named data sets (DIR/<name>/<class>/<image>; clients send names, never paths). Only regular files are read; a symbolic link is followed only when it resolves inside DIR.",
    ),
    max_memory: str = typer.Option(
        f"{int(DEFAULT_FRACTION * 100)}%", "--max-memory",
        help="Most memory (RSS) the server may take: 8G, 512M or a share of the machine's memory like 50%. Requests and loaded models are admitted against it.",
    ),
    max_input_pixels: int = typer.Option(MAX_INPUT_PIXELS, "--max-input-pixels", help="Largest input (H x W pixels) a model may declare."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate chain: serve over TLS (with --tls-key)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
    tls_client_ca: Path | None = typer.Option(None, "--tls-client-ca", help="PEM CA: clients must present a certificate it signed (mutual TLS)."),
    token_file: Path | None = typer.Option(None, "--token-file", help="Bearer tokens, one per line: every call but health must carry one."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve a non-loopback address without TLS and tokens anyway (logged as a warning)."),
    grace: float = typer.Option(20.0, "--grace", help="Seconds in-flight calls get to finish after SIGTERM."),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port",
        help="Serve Prometheus metrics (requests, latencies, memory, cache) at http://HOST:PORT/metrics (0: any free port); over TLS with --tls-cert, and only with a bearer token (Authorization: Bearer) with --token-file.",
    ),
) -> None:
    """Run the zfnet gRPC server (zfnet.v1.Zfnet, grpc.health.v1 and reflection).

    Exposed: model upload, listing and deletion, predictions, activations and deconv reconstructions, to any caller that reaches the address; with --token-file only to callers that hold a token (health needs none).

    Refused: models that keep tensors in external files, models declaring an input over --max-input-pixels, images over 64 Mi pixels, and any request whose estimated memory cannot fit --max-memory (RESOURCE_EXHAUSTED, with the numbers). Every analysis, upload and streamed image is counted against --max-memory; see docs/security.md.

    Off-host: --host 0.0.0.0 --tls-cert server.pem --tls-key server.key --token-file tokens.txt; clients pass --tls-ca (or ZFNET_TLS_CA) and --token (or ZFNET_TOKEN).

    SIGTERM: health turns NOT_SERVING, new calls are refused, in-flight calls finish within --grace, exit 0.
    """
    if (tls_cert is None) != (tls_key is None):
        raise InvalidArgument("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key")
    tls = Tls(tls_cert, tls_key, tls_client_ca) if tls_cert is not None and tls_key is not None else None
    tokens = read_tokens(token_file) if token_file is not None else ()
    serve(
        host, port, model_dir, max_model_mb, workers, data_dir, grace, max_memory=parse_bytes(max_memory, machine_memory()),
        max_input_pixels=max_input_pixels, tls=tls, tokens=tokens, insecure=insecure, metrics_port=metrics_port,
        stream_idle_timeout=stream_idle_timeout, max_calls_per_client=max_calls_per_client,
    )


def main() -> None:
    """Entry point of ``zfserver``."""
    typer.run(edge(command))
