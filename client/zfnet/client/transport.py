"""How the client reaches a server: the channel, TLS, the bearer token, replicas, a server started
in-process, and gRPC errors turned into :class:`~zfnet.errors.ZfnetError`.

With no target, :class:`Transport` starts the same service in-process, listening on a Unix socket in a
private (0700) temporary directory, and talks to it over the same gRPC path, so scripts work with
nothing else running and no other local user can reach that server. A remote server may need TLS
(``tls_ca`` / ``$ZFNET_TLS_CA`` for a private CA, ``tls=True`` / ``ZFNET_TLS=1`` for public ones,
``tls_cert``/``tls_key`` for mutual TLS) and a bearer token (``token`` / ``$ZFNET_TOKEN``).
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from zfnet import errors, status
from zfnet.client import replicas
from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.v1 import zfnet_pb2_grpc

SERVER_ENV = "ZFNET_SERVER"
TOKEN_ENV = "ZFNET_TOKEN"
TLS_ENV = "ZFNET_TLS"
TLS_CA_ENV = "ZFNET_TLS_CA"
TLS_CERT_ENV = "ZFNET_TLS_CERT"
TLS_KEY_ENV = "ZFNET_TLS_KEY"
UNARY_TIMEOUT_S = 600.0  # seconds a unary call may take
_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
}


@dataclass(frozen=True)
class Connection:
    """How to reach a server beyond its address: TLS files and a bearer token."""

    token: str | None = None
    tls: bool = False  # TLS with the system's CA certificates (implied by tls_ca)
    tls_ca: Path | None = None  # PEM CA that signed the server's certificate (a private CA)
    tls_cert: Path | None = None  # PEM client certificate (mutual TLS), with tls_key
    tls_key: Path | None = None

    @classmethod
    def from_env(cls) -> Connection:
        """``$ZFNET_TOKEN``, ``$ZFNET_TLS`` (1), ``$ZFNET_TLS_CA``, ``$ZFNET_TLS_CERT``, ``$ZFNET_TLS_KEY``."""
        env = os.environ.get
        path = lambda name: Path(value) if (value := env(name)) else None  # noqa: E731
        return cls(env(TOKEN_ENV) or None, env(TLS_ENV, "") not in ("", "0"), path(TLS_CA_ENV), path(TLS_CERT_ENV), path(TLS_KEY_ENV))

    @property
    def secure(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to ``target`` with these settings and extra channel ``options`` (the token rides on every call)."""
        if self.secure:
            if (self.tls_cert is None) != (self.tls_key is None):
                raise errors.InvalidArgument("a client certificate (--tls-cert) and its key (--tls-key) go together")
            credentials = grpc.ssl_channel_credentials(
                _read_pem(self.tls_ca, "--tls-ca"), _read_pem(self.tls_key, "--tls-key"), _read_pem(self.tls_cert, "--tls-cert"),
            )
            channel = grpc.secure_channel(target, credentials, options=[*CHANNEL_OPTIONS, *options])
        else:
            channel = grpc.insecure_channel(target, options=[*CHANNEL_OPTIONS, *options])
        if not self.token:
            return channel
        if not self.token.isascii() or not self.token.isprintable() or " " in self.token:
            raise errors.InvalidArgument("the token has spaces or characters that cannot travel in gRPC metadata")
        if not self.secure and not _is_local(target):
            warnings.warn(f"sending a bearer token to {target} without TLS; anyone on the path can read it (use --tls-ca)", stacklevel=3)
        return grpc.intercept_channel(channel, _BearerToken(self.token))


def _read_pem(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise errors.NotFound(f"{what} {path}: {err.strerror or err}") from None


def _is_local(target: str) -> bool:
    """Whether every address of ``target`` (one, a list, or a ``dns:``/``ipv4:`` target) is this machine."""
    if target.startswith("unix"):
        return True
    addresses = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:").split(",")
    return all(a.strip().rpartition(":")[0].strip("[]") in ("localhost", "127.0.0.1", "::1") for a in addresses)


class _Details(collections.namedtuple("_Details", "method timeout metadata credentials wait_for_ready compression"), grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> _Details:
        return _Details(d.method, d.timeout, [*(d.metadata or ()), self._header], d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


# What ``zfclient``'s global options (--token, --tls-ca, ...) set; None: read the environment.
cli_connection: Connection | None = None


class Transport:
    """A live connection to a zfnet server at ``target`` (``host:port``, ``unix:/path``), ``$ZFNET_SERVER``,
    or one started in-process on a private Unix socket; or to several replicas, ``dns:///host:port`` or
    ``host1:port,host2:port``, balanced per call (:mod:`zfnet.client.replicas`). ``connection`` (TLS,
    token) defaults to the environment; keyword arguments override single fields of it."""

    def __init__(self, target: str | None = None, connection: Connection | None = None, **overrides: Any) -> None:
        target = target or os.environ.get(SERVER_ENV) or None
        self._server = None
        self._private_dir: str | None = None
        if target is None:
            target = self._start_in_process()
            connection = Connection()  # a private socket: no TLS, no token
        else:
            connection = connection or cli_connection or Connection.from_env()
        self.connection = replace(connection, **overrides)
        self.target = target
        balanced = replicas.is_replicated(target)
        if balanced:
            self._channel = self.connection.channel(replicas.channel_target(target), replicas.channel_options())
        else:
            self._channel = self.connection.channel(target)
        self.stub = zfnet_pb2_grpc.ZfnetStub(self._channel)
        self._replicas: dict[str, tuple[grpc.Channel, zfnet_pb2_grpc.ZfnetStub]] | None = {} if balanced else None

    def _start_in_process(self) -> str:
        """Serve in this process on a Unix socket in a fresh 0700 directory; the target."""
        try:
            from zfnet.server.app import create_server  # noqa: PLC0415  (the one way the client reaches into the server)
        except ImportError as err:
            raise errors.Unavailable(
                f"no server given and none can start in-process here ({err.name or err} is not installed): "
                "pip install 'zfnet[server]', or give --server HOST:PORT"
            ) from None

        base = None if len(tempfile.gettempdir()) < 60 else "/tmp"  # a socket path is limited to about 107 bytes
        self._private_dir = tempfile.mkdtemp(prefix="zfnet-", dir=base)  # mode 0700: only this user can reach the socket
        target = f"unix:{self._private_dir}/zfnet.sock"
        try:
            self._server, _, _ = create_server(target, user_cache=True)  # prepared models cached for the next run, privately
        except BaseException:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            raise
        return target

    def replica_stubs(self) -> Iterator[tuple[str, zfnet_pb2_grpc.ZfnetStub]]:
        """Each replica's address and a stub over its own channel (a balanced call cannot choose its replica)."""
        assert self._replicas is not None
        for address in replicas.addresses(self.target):
            if address not in self._replicas:
                channel = self.connection.channel(address, replicas.name_override(self.target) if self.connection.secure else ())
                self._replicas[address] = (channel, zfnet_pb2_grpc.ZfnetStub(channel))
            yield address, self._replicas[address][1]

    def close(self) -> None:
        self._channel.close()
        for channel, _ in (self._replicas or {}).values():
            channel.close()
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None = UNARY_TIMEOUT_S):
        """A unary call, gRPC errors turned into zfnet errors; a NOT_FOUND that :meth:`_recover` mends
        (a model this client uploaded, lost by the server) is retried once."""
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND or not self._recover(request):
                raise self._error(err) from None
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _recover(self, request) -> bool:
        """Mend what made ``request`` fail with NOT_FOUND, if this client can; False when it cannot."""
        return False

    def _stream(self, method, requests, timeout: float | None = None) -> Iterator:
        """The replies of a streaming call, gRPC errors turned into zfnet errors."""
        try:
            yield from method(requests, timeout=timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _error(self, err: grpc.RpcError) -> errors.ZfnetError:
        """The zfnet error for a failed call, with the server's details (field, reason, resource, metadata)."""
        code = err.code()
        details = err.details() or str(code)
        if code == grpc.StatusCode.UNAVAILABLE:
            return errors.Unavailable(f"cannot reach the zfnet server at {self.target}: {details}")
        cls = _CODES.get(code, errors.ZfnetError)
        sent = status.details_of(err) if isinstance(err, grpc.Call) else {}  # what grpc raises for a call is that call
        error = cls(details, **sent)
        if cls is errors.ZfnetError and code is not None:  # INTERNAL, DEADLINE_EXCEEDED, ...: keep the real code
            error.code = code.name
            error.reason = sent.get("reason") or code.name
        return error
