"""The wire: one module per analysis, shared by the server and the client.

Each module holds, once, what its analysis sends and returns: the request and result types (frozen
dataclasses of numpy arrays and plain fields), their codec to and from the ``zfnet.v1`` messages in
both directions, and the request's validation (errors name the request field). The server's
handlers decode a request, call the engine and encode its result; the client encodes the request
and decodes the reply into the same result types. :mod:`zfnet.wire.common` holds what the analyses
share (images, layer references, boxes, fills, true classes, progress, skipped images, data sources,
and the enum name tables, all derived from the proto).
"""
