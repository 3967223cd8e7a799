"""Who may call the server, and over what: TLS (optionally mutual), bearer tokens checked by an
interceptor on every call except the standard health service, and the rule that a server
reachable from other hosts needs both (or an explicit ``--insecure``)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from zfnet.errors import InvalidArgument, NotFound, Unauthenticated
from zfnet.status import to_grpc_status

log = logging.getLogger("zfnet.server")

HEALTH_PREFIX = "/grpc.health.v1.Health/"
AUTH_KEY = "authorization"
SCHEME = "bearer "


@dataclass(frozen=True)
class Tls:
    """PEM files: the server's certificate chain and key, and the CA that client certificates must chain to (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    except OSError as err:
        raise InvalidArgument(f"cannot read {what} {path}: {err.strerror or err}") from None


def server_credentials(tls: Tls) -> grpc.ServerCredentials:
    """TLS credentials, the PEM files checked first so that a bad file gets a clear message."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert, key = _read(tls.cert, "--tls-cert"), _read(tls.key, "--tls-key")
    ca = _read(tls.client_ca, "--tls-client-ca") if tls.client_ca else None
    for data, path, load in ((cert, tls.cert, x509.load_pem_x509_certificates), (ca, tls.client_ca, x509.load_pem_x509_certificates)):
        if data is not None:
            try:
                load(data)
            except ValueError:
                raise InvalidArgument(f"{path} holds no PEM certificate") from None
    try:
        serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{tls.key} holds no unencrypted PEM private key") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def read_tokens(path: Path) -> tuple[str, ...]:
    """The bearer tokens of a ``--token-file``: one per line; blank lines and ``#`` comments skipped."""
    text = _read(path, "--token-file").decode("utf-8", errors="replace")
    tokens = tuple(t for t in (line.strip() for line in text.splitlines()) if t and not t.startswith("#"))
    if not tokens:
        raise InvalidArgument(f"--token-file {path} holds no tokens (one per line)")
    bad = [i for i, t in enumerate(tokens) if not t.isascii() or not t.isprintable() or " " in t]
    if bad:
        raise InvalidArgument(f"--token-file {path}: token {bad[0] + 1} has spaces or characters that cannot travel in gRPC metadata")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("--token-file %s can be read by other users; chmod 600 it", str(path))
    return tokens


def is_local(address: str) -> bool:
    """Whether a bind address can be reached from this host only (loopback, Unix socket)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(address: str, tls: Tls | None, tokens: Sequence[str], insecure: bool) -> None:
    """A server other hosts can reach needs TLS and an identity (tokens or client certificates);
    without them it starts only with ``insecure``, and says so in the log."""
    if is_local(address):
        return
    missing = ([] if tls else ["TLS (--tls-cert/--tls-key)"]) + ([] if tokens or (tls and tls.client_ca) else ["tokens (--token-file) or client certificates (--tls-client-ca)"])
    if not missing:
        return
    if not insecure:
        raise InvalidArgument(
            f"refusing to serve {address} without {' and '.join(missing)}: any host that reaches it could upload models and "
            "run requests; add them, or pass --insecure to serve it anyway"
        )
    log.warning("serving %s without %s (--insecure): any host that reaches this address can call it", address, " and ".join(missing))


class Tokens:
    """The server's bearer tokens, and which of them an ``authorization`` header carries."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def match(self, header: object) -> int | None:
        """The number (1-based) of the token ``Bearer <token>`` carries, or None."""
        if not isinstance(header, str) or header[: len(SCHEME)].lower() != SCHEME:
            return None
        given = header[len(SCHEME):].strip().encode()
        found = [k for k, token in enumerate(self._tokens, 1) if hmac.compare_digest(given, token)]  # no early exit on a match
        return found[0] if found else None

    def of_call(self, metadata: Sequence[tuple[str, object]] | None) -> int | None:
        """The token a call's metadata carries (see :meth:`match`)."""
        return self.match(next((v for k, v in (metadata or ()) if k == AUTH_KEY), None))


class TokenAuth(grpc.ServerInterceptor):
    """Every call but ``grpc.health.v1`` must carry ``authorization: Bearer <token>`` with one of the tokens."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if details.method.startswith(HEALTH_PREFIX):
            return continuation(details)
        header = next((v for k, v in (details.invocation_metadata or ()) if k == AUTH_KEY), None)
        if self._tokens.match(header) is not None:
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        if header is None:
            reason = "this server needs a bearer token: pass --token or set ZFNET_TOKEN (metadata 'authorization: Bearer <token>')"
        else:
            reason = "the bearer token is not valid for this server"
        return _deny(handler, details.method, reason)


def _deny(handler: grpc.RpcMethodHandler, method: str, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that refuses the call with UNAUTHENTICATED."""

    def refuse(request, context: grpc.ServicerContext):
        log.warning("refused %s from %s: %s", method, context.peer(), "no token" if "needs" in reason else "wrong token")
        context.abort_with_status(to_grpc_status(Unauthenticated(reason, reason="UNAUTHENTICATED")))

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler, (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
