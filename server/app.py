"""Server start-up: ``create_server`` (tests bind port 0) and the ``zfserver`` command."""

from __future__ import annotations

import logging
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import typer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from zfnet.edge import edge
from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.v1 import zfnet_pb2, zfnet_pb2_grpc

if TYPE_CHECKING:
    from zfnet.server.engine import Engine

log = logging.getLogger("zfnet.server")

SERVICE_NAME = zfnet_pb2.DESCRIPTOR.services_by_name["Zfnet"].full_name


def create_server(address: str = "127.0.0.1:0", model_dir: Path | None = None, max_model_mb: int = 2048, workers: int = 8) -> tuple[grpc.Server, int, Engine]:
    """A started server with the zfnet, health and reflection services; returns (server, port, engine)."""
    from zfnet.server import runtime  # onnxruntime, onnx and the rules load with the server, not with every CLI command
    from zfnet.server.engine import Engine
    from zfnet.server.models import ModelStore
    from zfnet.server.service import ZfnetServicer

    engine = Engine(ModelStore(model_dir, max_model_mb << 20))
    provider = runtime.providers()[0]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=CHANNEL_OPTIONS)
    zfnet_pb2_grpc.add_ZfnetServicer_to_server(ZfnetServicer(engine, provider), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, engine


def serve(host: str, port: int, model_dir: Path | None, max_model_mb: int, workers: int) -> None:
    """Run until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server, bound, _ = create_server(f"{host}:{port}", model_dir, max_model_mb, workers)
    log.info("zfnet serving on %s:%d", host, bound)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=2).wait()


def command(
    host: str = typer.Option("127.0.0.1", help="Address to bind; 127.0.0.1 unless told otherwise."),
    port: int = typer.Option(50051, help="Port to bind (0: any free port)."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Serve the .onnx files in this folder by name (file stem)."),
    max_model_mb: int = typer.Option(2048, help="Largest model accepted for upload, in MiB."),
    workers: int = typer.Option(8, help="Request threads."),
) -> None:
    """Run the zfnet gRPC server."""
    serve(host, port, model_dir, max_model_mb, workers)


def main() -> None:
    """Entry point of ``zfserver``."""
    typer.run(edge(command))
