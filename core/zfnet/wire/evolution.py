"""Feature evolution over training (Zeiler & Fergus 2013, Fig. 4): for each snapshot in turn, the
top-1 job of :mod:`zfnet.wire.top` over a named data set; the replies carry the snapshot's position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zfnet.errors import InvalidArgument
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import DataSource, LayerKey, at_most, layer_of, layer_proto
from zfnet.wire.deconv import METHODS
from zfnet.wire.top import MAX_CHANNELS, Event, Entry, TopResult, event_of, reply_proto


@dataclass(frozen=True)
class EvolutionRequest:
    labels: list[str]  # per snapshot, for messages and columns
    layers: list[LayerKey]
    data: DataSource  # a named data set and the range to read
    channels: list[int] | None = None  # followed in every layer; None: all
    method: str = "deconvnet"  # a name of METHODS

    def __post_init__(self) -> None:
        """An unknown method is refused when the request is made, before anything is sent."""
        METHODS.number(self.method, "method")

    def to_proto(self, models: list[pb.ModelRef]) -> pb.EvolutionRequest:
        return pb.EvolutionRequest(
            models=models, labels=self.labels, layers=[layer_proto(x) for x in self.layers], channels=list(self.channels or []),
            method=METHODS.number(self.method, "method"), data=self.data.to_proto(),
        )

    @classmethod
    def from_proto(cls, message: pb.EvolutionRequest) -> EvolutionRequest:
        """The request, its snapshots' labels defaulting to their names (the ModelRefs are checked where they are resolved)."""
        if not message.models:
            raise InvalidArgument("Evolution: no snapshots given (EvolutionRequest.models)", field="models", reason="FIELD_REQUIRED")
        if message.labels and len(message.labels) != len(message.models):
            raise InvalidArgument(f"{len(message.labels)} labels for {len(message.models)} snapshots; give one per snapshot or none", field="labels")
        if message.data.WhichOneof("source") != "dataset":
            raise InvalidArgument(
                "Evolution reads a named data set on the server (DataSource.dataset); for images only the client has, "
                "run TopActivations with k=1 on each snapshot", field="data.dataset", reason="FIELD_REQUIRED",
            )
        method = METHODS.name(message.method, "method")
        at_most(len(message.channels), MAX_CHANNELS, "channels", "channels")
        labels = list(message.labels) or [ref.name or ref.sha256[:12] for ref in message.models]
        return cls(labels, [layer_of(r) for r in message.layers], DataSource.from_proto(message.data), list(message.channels) or None, method)


def reply_proto_at(snapshot: int, event: Event) -> pb.EvolutionReply:
    return pb.EvolutionReply(snapshot=snapshot, reply=reply_proto(event))


def event_at(reply: pb.EvolutionReply, classes: Sequence[str] = ()) -> tuple[int, Event]:
    """(snapshot position, the event of its top-1 job); ``classes`` name the images' classes."""
    return reply.snapshot, event_of(reply.reply, classes)


@dataclass(frozen=True)
class EvolutionColumn:
    """One snapshot: its label ("epoch 3"), its model, and its top-1 result."""

    label: str
    model: str
    result: TopResult


@dataclass(frozen=True)
class EvolutionResult:
    """One top-1 result per snapshot, in training order."""

    layers: list[str]  # tensor names
    channels: dict[str, list[int]]  # layer -> the channels followed
    method: str
    columns: list[EvolutionColumn]

    def entry(self, layer: str, channel: int, column: int) -> Entry | None:
        """The strongest activation of ``channel`` in snapshot ``column`` (None: no image could be read)."""
        ranked = self.columns[column].result.entries[layer][channel]
        return ranked[0] if ranked else None
