"""One small hierarchy of user-facing errors, mapped to gRPC status codes at the server's edge
and to a one-line message with a non-zero exit at the CLI's edge.

An error may also say which request field is wrong (``field``, a path such as ``layer.name``,
``channels.top_k`` or ``images[3].rgb``), a stable machine-readable ``reason`` from :data:`REASONS`,
the ``resource`` it could not find, and a few ``metadata`` strings (limits, values). The server
sends them as ``google.rpc`` error details (``zfnet.status``); the Python client reads them back
onto the error it raises. ``InvalidArgument("message")`` alone stays valid everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

DOMAIN = "zfnet.dev"  # ErrorInfo.domain of every error the server sends

# Stable reason codes (ErrorInfo.reason): clients may branch on them. Documented in
# proto/zfnet/v1/zfnet.proto and docs/clients.md (a test keeps the three in step).
REASONS: dict[str, str] = {
    # one per status code, for errors without a finer reason
    "INVALID_ARGUMENT": "the request is wrong in a way without a finer reason; the message says how",
    "NOT_FOUND": "something named in the request does not exist; the message says what",
    "FAILED_PRECONDITION": "the model cannot serve this request (for example, a tensor's shape is unknown)",
    "RESOURCE_EXHAUSTED": "the request is over one of the server's limits",
    "INTERNAL": "the server failed; its log has the details",
    "UNAVAILABLE": "the server cannot be reached (raised by clients, never sent)",
    # finer reasons
    "FIELD_REQUIRED": "a required field or oneof is not set (model, layer, images, an image's data, a tensor's dtype)",
    "UNKNOWN_ENUM_VALUE": "an enum field holds a number its enum does not define (mode, method, dtype)",
    "VALUE_OUT_OF_RANGE": "a number is outside its allowed range (channel, top_k, data range, batch size, label)",
    "BAD_TENSOR": "a Tensor's bytes do not fit its dtype and shape, or its shape does not fit its role",
    "BAD_IMAGE": "encoded image bytes cannot be decoded",
    "BAD_MODEL": "the bytes are not an ONNX model zfnet can serve (not ONNX, empty, refused by onnxruntime, input not (N, C, H, W))",
    "UPLOAD_MISMATCH": "an upload's bytes do not match its UploadHeader (sha256 or size)",
    "STREAM_OUT_OF_ORDER": "a streamed request arrived out of order (a chunk before the header, image batches not consecutive)",
    "MODEL_NOT_FOUND": "no model with this sha256 or name on the server; upload it",
    "LAYER_NOT_FOUND": "no layer with this number or name in the model; GetModelInfo lists them",
    "DATASET_NOT_FOUND": "no data set with this name on the server; ListDatasets lists them",
    "UNSUPPORTED_OP": "an op between the layer and the input has no backward rule",
    "TOO_MANY_IMAGES": "more images in one request than the server takes (metadata: limit, requested)",
    "TOO_MANY_RECONSTRUCTIONS": "more (image, channel) reconstructions in one request than the server makes (metadata: limit, requested)",
    "MODEL_TOO_LARGE": "the model is over the server's --max-model-mb (metadata: limit, requested, in bytes)",
    "OUT_OF_MEMORY": "the server ran out of memory on this request; send fewer images or channels",
    "OVER_MEMORY_BUDGET": "the request's estimated memory does not fit the server's --max-memory budget now or ever (metadata: limit, requested)",
    "REPLY_TOO_LARGE": "the reply would not fit one message; ask for less per request (metadata: limit, requested, in bytes)",
    "IMAGE_TOO_LARGE": "an image has more pixels than the server decodes, or is a decompression bomb (metadata: limit)",
    "EXTERNAL_DATA": "the model keeps tensors in external files, which the server never reads for an upload: inline them",
    "UNAUTHENTICATED": "no bearer token, or one this server does not accept (UNAUTHENTICATED)",
    "SNAPSHOTS_DIFFER": "Evolution: a snapshot's chosen layer differs from the first snapshot's in name or shape (metadata: snapshot, reference)",
    "TOO_MANY_VALUES": "a request field holds more values than the server takes: k, channels, transformation values, occluder positions, parts (metadata: limit, requested)",
    "TOO_MANY_CALLS": "this client has as many calls open as the server allows one client (--max-calls-per-client; metadata: limit)",
}


class Resource(NamedTuple):
    """What could not be found: ``("model", sha_or_name)``, ``("layer", name)``, ``("dataset", name)``."""

    type: str
    name: str
    owner: str = ""


class ZfnetError(Exception):
    """A problem the user can fix; the message names the thing (file, layer, op) and what to do."""

    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"

    def __init__(
        self, message: str = "", *, field: str | None = None, reason: str | None = None,
        resource: Resource | tuple[str, ...] | None = None, metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field or None
        if reason:
            self.reason = reason
        self.resource = Resource(*resource) if resource else None
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}

    def __reduce__(self):
        """Picklable with its details (Ray and multiprocessing move errors between processes)."""
        return _rebuild, (type(self), str(self), self.field, self.reason, self.resource, self.metadata, self.code)


def _rebuild(cls: type[ZfnetError], message: str, field, reason, resource, metadata, code) -> ZfnetError:
    err = cls(message, field=field, reason=reason, resource=resource, metadata=metadata)
    if code != cls.code:
        err.code = code
    return err


class InvalidArgument(ZfnetError):
    """Bad shape, dtype, channel, layer number or parameter."""

    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"


class NotFound(ZfnetError):
    """Unknown model, layer or file."""

    code = "NOT_FOUND"
    reason = "NOT_FOUND"


class FailedPrecondition(ZfnetError):
    """The request is valid but the model cannot serve it (a tensor's shape unknown, a MaxPool without switches)."""

    code = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(ZfnetError):
    """Too large: a model, a batch, a message."""

    code = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(ZfnetError):
    """The server cannot be reached or cannot serve."""

    code = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class Unauthenticated(ZfnetError):
    """The server wants a (valid) bearer token or client certificate."""

    code = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class ZfnetWarning(UserWarning):
    """Something the user may want to fix that does not stop the work (the CLI shows it as one line)."""
