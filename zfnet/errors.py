"""One small hierarchy of user-facing errors, mapped to gRPC status codes at the server's edge
and to a one-line message with a non-zero exit at the CLI's edge."""

from __future__ import annotations


class ZfnetError(Exception):
    """A problem the user can fix; the message names the thing (file, layer, op) and what to do."""

    code = "INVALID_ARGUMENT"


class InvalidArgument(ZfnetError):
    """Bad shape, dtype, channel, layer number or parameter."""

    code = "INVALID_ARGUMENT"


class NotFound(ZfnetError):
    """Unknown model, layer or file."""

    code = "NOT_FOUND"


class FailedPrecondition(ZfnetError):
    """The request is valid but the state is not (model not loaded, op without a backward rule)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(ZfnetError):
    """Too large: a model, a batch, a message."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(ZfnetError):
    """The server cannot be reached or cannot serve."""

    code = "UNAVAILABLE"


class Unauthenticated(ZfnetError):
    """The server wants a (valid) bearer token or client certificate."""

    code = "UNAUTHENTICATED"
