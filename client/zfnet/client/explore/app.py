"""The explorer's web app: Starlette routes over an :class:`~zfnet.client.explore.explorer.Explorer`,
and the uvicorn server that runs it.

Pages (``/``, ``/layer``, ``/unit``, ``/live``, ``/compare``) are one HTML shell whose JavaScript
module draws the page from the JSON endpoints; pictures are PNG endpoints. A picture's URL names
everything it depends on (a report's key changes with its manifest, an upload's with its bytes and
the model), so pictures are cached by the browser as immutable; JSON is never cached; the static
files are revalidated (ETag). Errors are JSON ``{"error": message}`` with the HTTP status of their kind.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from zfnet.client.explore.explorer import UPLOAD_BYTES, Explorer
from zfnet.errors import InvalidArgument, ResourceExhausted, ZfnetError

STATIC = Path(__file__).parent / "static"
PAGES = ("/", "/layer", "/unit", "/live", "/compare")
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
NO_STORE = {"Cache-Control": "no-store"}
STATUS = {  # zfnet error code -> HTTP status
    "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 409, "RESOURCE_EXHAUSTED": 413,
    "UNAUTHENTICATED": 502, "UNAVAILABLE": 503,
}


def text(request: Request, name: str, default: str | None = None) -> str:
    """A query parameter; a clear error when a required one is missing."""
    value = request.query_params.get(name, default)
    if value is None:
        raise InvalidArgument(f"the query parameter {name!r} is missing")
    return value


def number(request: Request, name: str, default: float | None = None, kind: type = int) -> Any:
    """A numeric query parameter (``kind``: int or float)."""
    value = text(request, name, None if default is None else str(default))
    try:
        return kind(value)
    except ValueError:
        raise InvalidArgument(f"the query parameter {name!r} must be a number, got {value!r}") from None


def unit_of(request: Request) -> tuple[str, str, int]:
    """(report key, layer, channel) of a unit's URL."""
    return request.path_params["key"], text(request, "layer"), number(request, "channel")


def json(value: Any) -> JSONResponse:
    return JSONResponse(value, headers=NO_STORE)


def png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers=IMMUTABLE)


def create_app(explorer: Explorer) -> Starlette:
    """The explorer's routes over ``explorer``."""
    x = explorer

    async def upload(request: Request) -> JSONResponse:
        length = int(request.headers.get("content-length") or 0)
        if length > UPLOAD_BYTES:
            raise ResourceExhausted(f"the upload is {length / (1 << 20):.1f} MiB; the explorer takes images up to {UPLOAD_BYTES >> 20} MiB")
        data = await request.body()
        return json(await run_in_threadpool(lambda: x.upload(data, request.query_params.get("name", ""))))

    def image(request: Request) -> Response:
        path = x.report(request.path_params["key"]).image(request.path_params["index"])
        return FileResponse(path, media_type="image/png", headers=IMMUTABLE)

    routes = [
        *(Route(page, lambda _: FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})) for page in PAGES),
        Route("/api/model", lambda _: json(x.summary())),
        Route("/api/model/fields", lambda _: json(x.fields())),
        Route("/api/model/{sha}/filters.png", lambda r: png(x.filters_png(r.path_params["sha"]))),
        Route("/api/report/{key}/channels", lambda r: json(x.channels(
            r.path_params["key"], text(r, "layer"), text(r, "sort", "channel"), text(r, "class", ""), number(r, "share", 0.5, float),
            number(r, "page", 1), number(r, "channel") if "channel" in r.query_params else None,
        ))),
        Route("/api/report/{key}/unit", lambda r: json(x.unit(*unit_of(r)))),
        Route("/api/report/{key}/tile.png", lambda r: png(x.tile_png(*unit_of(r)))),
        Route("/api/report/{key}/patches.png", lambda r: png(x.patches_png(*unit_of(r)))),
        Route("/api/report/{key}/reconstructions.png", lambda r: png(x.reconstructions_png(*unit_of(r), text(r, "method", "")))),
        Route("/api/report/{key}/filter.png", lambda r: png(x.filter_png(*unit_of(r)))),
        Route("/api/report/{key}/image/{index:int}.png", image),
        Route("/api/live", upload, methods=["POST"]),
        Route("/api/live/{key}/input.png", lambda r: png(x.input_png(r.path_params["key"]))),
        Route("/api/live/{key}/maps", lambda r: json(x.maps(r.path_params["key"], text(r, "layer")))),
        Route("/api/live/{key}/maps.png", lambda r: png(x.maps_png(r.path_params["key"], text(r, "layer")))),
        Route("/api/live/{key}/unit", lambda r: json(x.live_unit(*unit_of(r)))),
        Route("/api/live/{key}/reconstruction.png", lambda r: png(x.live_reconstruction_png(*unit_of(r), text(r, "method")))),
        Route("/api/live/{key}/occlusion.png", lambda r: png(x.occlusion_png(*unit_of(r), text(r, "class", "")))),
        Route("/api/live/{key}/invariance.png", lambda r: png(x.invariance_png(r.path_params["key"], text(r, "class", "")))),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    return Starlette(
        routes=routes, middleware=[Middleware(GZipMiddleware, minimum_size=1000)],
        exception_handlers={ZfnetError: _error, 404: _not_found},
    )


async def _error(request: Request, err: Exception) -> JSONResponse:
    """A zfnet error as JSON with the HTTP status of its kind (the gRPC code's counterpart)."""
    code = err.code if isinstance(err, ZfnetError) else "INTERNAL"
    return JSONResponse({"error": str(err), "code": code}, status_code=STATUS.get(code, 500), headers=NO_STORE)


async def _not_found(request: Request, err: Exception) -> JSONResponse:
    return JSONResponse({"error": f"nothing at {request.url.path}", "code": "NOT_FOUND"}, status_code=404, headers=NO_STORE)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InvalidArgument(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _server(explorer: Explorer) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(create_app(explorer), log_level="warning", access_log=False, lifespan="off"))


def serve(explorer: Explorer, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve the explorer here until interrupted; ``on_ready`` gets its URL once it listens."""
    sock = bind(host, port)
    on_ready(url_of(sock))
    _server(explorer).run(sockets=[sock])


@contextmanager
def running(explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve the explorer on a background thread for the ``with`` block; yields its URL."""
    sock = bind(host, port)
    server = _server(explorer)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="zfnet-explore")
    thread.start()
    try:
        while not server.started and thread.is_alive():
            thread.join(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
