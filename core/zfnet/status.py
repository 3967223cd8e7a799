"""Errors on the wire: a :class:`~zfnet.errors.ZfnetError` <-> a ``google.rpc.Status`` with details.

The server (``server/zfnet/server/service.py``) ends a failed call with :func:`to_grpc_status`; the status
carries, in this order:

- ``google.rpc.ErrorInfo``: ``reason`` (a stable code from :data:`zfnet.errors.REASONS`), ``domain``
  ``zfnet.dev``, ``metadata`` (limits, values);
- ``google.rpc.BadRequest`` with one field violation when the error names a request field
  (``layer.name``, ``channels.top_k``, ``images[3]``);
- ``google.rpc.ResourceInfo`` when it names something that does not exist (a model, layer, data set).

Clients in any language read them from the ``grpc-status-details-bin`` trailer; the Python client
reads them back with :func:`details_of`.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from zfnet.errors import DOMAIN, Resource, ZfnetError

# Details travel in HTTP/2 trailers, which clients cap (gRPC's default is 8 KiB for all metadata):
# the message appears three times (grpc-message, Status.message, a description), so it is kept short.
MAX_MESSAGE = 1024
MAX_VALUE = 256


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rich_status(
    code: grpc.StatusCode, message: str, reason: str, field: str | None = None,
    resource: Resource | None = None, metadata: Mapping[str, str] | None = None,
) -> status_pb2.Status:
    """A ``google.rpc.Status`` with ErrorInfo, and BadRequest / ResourceInfo when they apply."""
    message = _clip(message, MAX_MESSAGE)
    info = error_details_pb2.ErrorInfo(
        reason=reason, domain=DOMAIN, metadata={k: _clip(v, MAX_VALUE) for k, v in (metadata or {}).items()},
    )
    details = [_pack(info)]
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if resource:
        details.append(_pack(error_details_pb2.ResourceInfo(
            resource_type=resource.type, resource_name=_clip(resource.name, MAX_VALUE), owner=resource.owner, description=message,
        )))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def to_grpc_status(err: ZfnetError, code: str | None = None) -> grpc.Status:
    """What ``context.abort_with_status`` takes for ``err``: its code (or ``code``), message and details."""
    status_code: grpc.StatusCode = getattr(grpc.StatusCode, code or err.code)
    return rpc_status.to_status(rich_status(status_code, str(err), err.reason, err.field, err.resource, err.metadata))


def details_of(call: grpc.Call) -> dict:
    """The zfnet details of a failed call as ZfnetError keyword arguments (``field``, ``reason``,
    ``resource``, ``metadata``); empty when the call carries none (or another domain's)."""
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # code or message of the trailer disagree with the call's: not ours
        return {}
    if status is None:
        return {}
    out: dict = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                out["reason"], out["metadata"] = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                out["field"] = bad.field_violations[0].field
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            res = error_details_pb2.ResourceInfo()
            detail.Unpack(res)
            out["resource"] = Resource(res.resource_type, res.resource_name, res.owner)
    return out
