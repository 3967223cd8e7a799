"""A :class:`~zfnet.topk.TopK` state on the wire: ``zfnet.v1.TopState`` and back (server and client)."""

from __future__ import annotations

from zfnet.tensors import from_proto, to_proto
from zfnet.topk import LayerTop, Skip, TopK
from zfnet.v1 import zfnet_pb2 as pb

BY = {"max": pb.TOP_BY_MAX, "mean": pb.TOP_BY_MEAN}
BY_NAME = {pb.TOP_BY_UNSPECIFIED: "max", pb.TOP_BY_MAX: "max", pb.TOP_BY_MEAN: "mean"}
ARRAYS = ("channels", "values", "activations", "indices", "locations")


def data_name(source: pb.DataSource) -> str:
    """How a state names its data set (``TopState.data``): ``dataset:<name>`` on the server, or ``streamed``."""
    return f"dataset:{source.dataset}" if source.WhichOneof("source") == "dataset" else "streamed"


def to_message(state: TopK) -> pb.TopState:
    return pb.TopState(
        model_sha256=state.model, data=state.data, size=state.size, k=state.k, by=BY[state.by],
        layers=[pb.TopLayerState(layer=name, **{a: to_proto(getattr(top, a)) for a in ARRAYS}) for name, top in state.layers.items()],
        covered=[pb.IndexRange(start=s, stop=e) for s, e in state.covered],
        skipped_count=state.skipped_count, skipped=[pb.SkippedImage(index=s.index, path=s.path, reason=s.reason) for s in state.skipped],
    )


def from_message(message: pb.TopState) -> TopK:
    layers = {
        layer.layer: LayerTop(*(from_proto(getattr(layer, a), f"TopState layer {layer.layer!r} {a}").copy() for a in ARRAYS))
        for layer in message.layers
    }
    return TopK(
        message.model_sha256, message.data, message.size, message.k, BY_NAME.get(message.by, "max"), layers,
        [(r.start, r.stop) for r in message.covered], [Skip(s.index, s.path, s.reason) for s in message.skipped], message.skipped_count,
    ).check()
