"""Top-k activations per feature map over a data set (Zeiler & Fergus 2013, Fig. 2): the job, its
events (progress, checkpoints of the :class:`~zfnet.topk.TopK` state, the winners' images and their
reconstructions) and what a caller collects from them (:class:`TopResult`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zfnet.errors import InvalidArgument, ZfnetError
from zfnet.tensors import from_proto, to_proto
from zfnet.topk import LayerTop, TopK
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import Box, DataSource, LayerKey, Names, Progress, Skipped, array, at_most, box_of, box_proto, layer_of, layer_proto
from zfnet.wire.deconv import METHODS

BY = Names(pb.TopBy, "TOP_BY_", "max")
STAGES = Names(pb.TopStage, "TOP_", "all")
K = 9  # TopJob.k when unset
MAX_K = 1024  # TopJob.k at most
MAX_CHANNELS = 65536  # entries of TopJob.channels (and EvolutionRequest.channels) at most
ARRAYS = ("channels", "values", "activations", "indices", "locations")


def state_proto(state: TopK) -> pb.TopState:
    return pb.TopState(
        model_sha256=state.model, data=state.data, size=state.size, k=state.k, by=BY.number(state.by, "ranking"),
        layers=[pb.TopLayerState(layer=name, **{a: to_proto(getattr(top, a)) for a in ARRAYS}) for name, top in state.layers.items()],
        covered=[pb.IndexRange(start=s, stop=e) for s, e in state.covered],
        skipped_count=state.skipped_count, skipped=[s.to_proto() for s in state.skipped],
    )


def state_of(message: pb.TopState, field: str = "state") -> TopK:
    """A state from the wire, checked (:meth:`TopK.check`); ``field``: where it sits in the message."""
    layers = {
        layer.layer: LayerTop(*(from_proto(getattr(layer, a), f"TopState layer {layer.layer!r} {a}").copy() for a in ARRAYS))
        for layer in message.layers
    }
    return TopK(
        message.model_sha256, message.data, message.size, message.k, BY.name(message.by, f"{field}.by"), layers,
        [(r.start, r.stop) for r in message.covered], [Skipped.from_proto(s) for s in message.skipped], message.skipped_count,
    ).check()


@dataclass(frozen=True)
class TopJob:
    """A top-k job: scan ``data``'s range (continuing ``state``), then reconstruct the winners; or one of the two (``stage``)."""

    layers: list[LayerKey]
    data: DataSource
    k: int = K
    by: str = "max"  # a name of BY
    channels: list[int] | None = None  # tracked in every layer; None: all
    method: str | None = None  # of the reconstructions; None: not given (deconvnet), and a scan does not check it
    stage: str = "all"  # a name of STAGES
    state: TopK | None = None  # scan: continue from it; reconstruct: the winners
    checkpoint_every: int = 0  # images between checkpoints (0: the server's default)

    def __post_init__(self) -> None:
        """Unknown names are refused when the job is made, before anything is sent."""
        BY.number(self.by, "ranking")
        STAGES.number(self.stage, "stage")
        if self.method is not None:
            METHODS.number(self.method, "method")

    def to_proto(self, model: pb.ModelRef) -> pb.TopJob:
        return pb.TopJob(
            model=model, layers=[layer_proto(x) for x in self.layers], k=self.k, by=BY.number(self.by, "ranking"), channels=list(self.channels or []),
            method=METHODS.number(self.method, "method") if self.method is not None else None, data=self.data.to_proto(),
            stage=STAGES.number(self.stage, "stage"), state=state_proto(self.state) if self.state is not None else None,
            checkpoint_every=self.checkpoint_every,
        )

    @classmethod
    def from_proto(cls, job: pb.TopJob) -> TopJob:
        """The job of a TopRequest (errors name ``job.<field>``)."""
        method = METHODS.name(job.method, "job.method")
        stage = STAGES.name(job.stage, "job.stage")
        by = BY.name(job.by, "job.by")
        if job.k < 0:
            raise InvalidArgument(f"k must be positive (0 or unset means {K}), got {job.k}", field="job.k", reason="VALUE_OUT_OF_RANGE")
        at_most(job.k, MAX_K, "job.k", "images per channel")
        at_most(len(job.channels), MAX_CHANNELS, "job.channels", "channels")
        return cls(
            [layer_of(r) for r in job.layers], DataSource.from_proto(job.data), job.k or K, by, list(job.channels) or None,
            method if job.method else None, stage, state_of(job.state, "job.state") if job.HasField("state") else None, job.checkpoint_every,
        )


@dataclass(frozen=True)
class Checkpoint:
    """The scan's state: a copy taken every so many images, and the final one (``final``)."""

    state: TopK
    final: bool


@dataclass(frozen=True)
class TopImage:
    """A winner's image as the model saw it: (C, H, W) float32, RGB 0..255, the model's input size."""

    index: int  # data-set index
    path: str  # relative to the data set, or the client's own path
    label: str  # class name, "" when unknown
    pixels: np.ndarray
    class_index: int = -1  # into the data set's classes, -1 when unknown

    @classmethod
    def of(cls, index: int, path: str, class_index: int, classes: Sequence[str], pixels: np.ndarray) -> TopImage:
        return cls(index, path, classes[class_index] if 0 <= class_index < len(classes) else "", pixels, class_index)


@dataclass(frozen=True)
class Entry:
    """One (layer, channel, rank) of a top-k job (a TopEntry on the wire), with the reconstruction of its strongest activation."""

    layer: str
    channel: int
    rank: int  # 0 = strongest
    index: int  # data-set index; the image is TopResult.images[index]
    value: float  # the ranking value (the map's max or mean)
    activation: float  # the activation reconstructed
    location: tuple[int, ...]
    receptive_field: Box  # clipped to the image
    patch: Box  # the whole field; it may leave the image
    reconstruction: np.ndarray  # (C, H, W) float32


Event = Progress | Checkpoint | TopImage | Entry


def reply_proto(event: Event) -> pb.TopReply:
    """One event of a top-k job as its reply."""
    if isinstance(event, Progress):
        return pb.TopReply(progress=event.to_proto())
    if isinstance(event, Checkpoint):
        state = state_proto(event.state)
        return pb.TopReply(state=state) if event.final else pb.TopReply(checkpoint=state)
    if isinstance(event, TopImage):
        return pb.TopReply(image=pb.TopImage(index=event.index, path=event.path, label=event.class_index, pixels=to_proto(event.pixels)))
    return pb.TopReply(entry=pb.TopEntry(
        layer=event.layer, channel=event.channel, rank=event.rank, index=event.index, value=event.value, activation=event.activation,
        location=list(event.location), receptive_field=box_proto(event.receptive_field), patch=box_proto(event.patch),
        reconstruction=to_proto(event.reconstruction),
    ))


def event_of(reply: pb.TopReply, classes: Sequence[str] = ()) -> Event:
    """The event a reply carries; ``classes`` name its images' classes."""
    kind = reply.WhichOneof("part")
    if kind == "progress":
        return Progress.from_proto(reply.progress)
    if kind in ("checkpoint", "state"):
        return Checkpoint(state_of(getattr(reply, kind)), final=kind == "state")
    if kind == "image":
        m = reply.image
        return TopImage.of(m.index, m.path, m.label, classes, array(m.pixels))
    e = reply.entry
    return Entry(
        e.layer, e.channel, e.rank, e.index, e.value, e.activation, tuple(e.location), box_of(e.receptive_field), box_of(e.patch), array(e.reconstruction),
    )


@dataclass(frozen=True)
class TopResult:
    """A finished top-k job: the scan's state, the winners' images and every reconstruction."""

    state: TopK
    method: str
    classes: list[str]
    images: dict[int, TopImage]  # by data-set index
    entries: dict[str, dict[int, list[Entry]]]  # layer -> channel -> entries by rank


class Collector:
    """The events of a top-k job gathered into a :class:`TopResult`; ``state``: the scan's state when
    it is known already (a reconstruction-only job), else the final state the events carry."""

    def __init__(self, classes: list[str], method: str, state: TopK | None = None) -> None:
        self.classes, self.method = classes, method
        self.state: TopK | None = None
        self.images: dict[int, TopImage] = {}
        self.entries: dict[str, dict[int, list[Entry]]] = {}
        if state is not None:
            self._expect(state)

    def _expect(self, state: TopK) -> None:
        self.state = state
        self.entries = {layer: {int(c): [] for c in top.channels} for layer, top in state.layers.items()}

    def take(self, event: Event) -> None:
        if isinstance(event, Checkpoint) and event.final:
            self._expect(event.state)
        elif isinstance(event, TopImage):
            self.images[event.index] = event
        elif isinstance(event, Entry):
            self.entries[event.layer][event.channel].append(event)

    def result(self) -> TopResult:
        if self.state is None:
            raise ZfnetError("the server ended the top-k job without its final state")
        for per_channel in self.entries.values():
            for ranked in per_channel.values():
                ranked.sort(key=lambda entry: entry.rank)
        return TopResult(self.state, self.method, list(self.classes), self.images, self.entries)
