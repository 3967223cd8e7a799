"""Feature visualisation by optimisation (Olah et al. 2017): images optimised to excite a unit,
channel or class, with their objective and every unit's response."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.tensors import to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.attribution import check_range
from zfnet.wire.common import LayerKey, Names, array, layer_of, layer_proto

OBJECTIVES = Names(pb.VisualObjective, "VISUAL_", "channel")
STEPS, LEARNING_RATE = 512, 0.05  # Lucid's and Lucent's defaults (render_vis: 512 steps of Adam at 5e-2)
SCALE, ROTATE = 0.1, 10.0  # Lucid's standard transforms: scales 0.9..1.1, rotations of -10..10 degrees
MAX_UNITS, MAX_STEPS, MAX_IMAGES_PER_UNIT = 256, 10_000, 16


def default_jitter(height: int) -> int:
    """Lucid's jitter (8 pixels at 224) scaled to the input, at least 1."""
    return 1 + height // 32


@dataclass(frozen=True)
class VisualiseRequest:
    units: list[str]  # channel indices (at the output: class names or indices)
    layer: LayerKey | None = None  # None: the model's output
    objective: str = "channel"  # a name of OBJECTIVES
    steps: int = STEPS
    learning_rate: float = LEARNING_RATE
    seed: int = 0
    jitter: int | None = None  # pixels (None: :func:`default_jitter` of the input's height)
    scale: float = SCALE
    rotate: float = ROTATE  # degrees
    diversity: float = 0.0
    images_per_unit: int = 1
    pixels: bool = False  # optimise pixels directly (no Fourier spectrum, no colour decorrelation)

    def __post_init__(self) -> None:
        OBJECTIVES.number(self.objective, "objective")
        if not self.units:
            raise InvalidArgument("no units to visualise: give channel indices (or class names at the output)", field="units", reason="FIELD_REQUIRED")
        check_range(len(self.units), 1, MAX_UNITS, "units")
        check_range(self.steps, 1, MAX_STEPS, "steps")
        check_range(self.learning_rate, 1e-6, 10.0, "learning_rate")
        check_range(self.seed, 0, 2**64 - 1, "seed")
        if self.jitter is not None:
            check_range(self.jitter, 0, 4096, "jitter")
        check_range(self.scale, 0.0, 0.5, "scale")
        check_range(self.rotate, 0.0, 180.0, "rotate")
        check_range(self.diversity, 0.0, 1e6, "diversity")
        check_range(self.images_per_unit, 1, MAX_IMAGES_PER_UNIT, "images_per_unit")

    def to_proto(self, model: pb.ModelRef) -> pb.VisualiseRequest:
        message = pb.VisualiseRequest(
            model=model, units=[str(u) for u in self.units], objective=OBJECTIVES.number(self.objective, "objective"), steps=self.steps,
            learning_rate=self.learning_rate, seed=self.seed, jitter=self.jitter, scale=self.scale, rotate=self.rotate,
            diversity=self.diversity, images_per_unit=self.images_per_unit, pixels=self.pixels,
        )
        if self.layer is not None:
            message.layer.CopyFrom(layer_proto(self.layer))
        return message

    @classmethod
    def from_proto(cls, message: pb.VisualiseRequest) -> VisualiseRequest:
        def given(name: str, default):
            return getattr(message, name) if message.HasField(name) else default

        return cls(
            list(message.units), layer_of(message.layer) if message.HasField("layer") else None, OBJECTIVES.name(message.objective, "objective"),
            given("steps", STEPS), given("learning_rate", LEARNING_RATE), message.seed, given("jitter", None), given("scale", SCALE),
            given("rotate", ROTATE), message.diversity, given("images_per_unit", 1), message.pixels,
        )


@dataclass(frozen=True)
class VisualisedUnit:
    unit: int
    label: str  # the class name at the output, else ""
    images: np.ndarray  # (K, C, H, W) float32, RGB 0..255
    objective: np.ndarray  # (K,) float32, on each final image without transforms
    layer_means: np.ndarray  # (K, C_layer) float32: every unit's mean over its map on each final image
    curve: np.ndarray  # (steps,) float32: the objective at each step (mean over K), under the transforms

    def rank(self) -> np.ndarray:
        """(K,) the unit's place among the layer's units by mean response on each image (0: first)."""
        own = self.layer_means[:, self.unit : self.unit + 1]
        return (self.layer_means > own).sum(axis=1)

    def to_proto(self) -> pb.VisualisedUnit:
        return pb.VisualisedUnit(
            unit=self.unit, label=self.label, images=to_proto(self.images), objective=to_proto(self.objective),
            layer_means=to_proto(self.layer_means), curve=to_proto(self.curve),
        )

    @classmethod
    def from_proto(cls, message: pb.VisualisedUnit) -> VisualisedUnit:
        return cls(message.unit, message.label, array(message.images), array(message.objective), array(message.layer_means), array(message.curve))


@dataclass(frozen=True)
class VisualiseResult:
    layer: str
    objective: str
    steps: int
    seed: int
    description: str  # the parameterisation and transforms that ran
    units: list[VisualisedUnit]

    def to_proto(self) -> pb.VisualiseResult:
        return pb.VisualiseResult(
            layer=self.layer, objective=OBJECTIVES.number(self.objective, "objective"), steps=self.steps, seed=self.seed,
            description=self.description, units=[u.to_proto() for u in self.units],
        )

    @classmethod
    def from_proto(cls, message: pb.VisualiseResult) -> VisualiseResult:
        return cls(
            message.layer, OBJECTIVES.name(message.objective, "objective"), message.steps, message.seed, message.description,
            [VisualisedUnit.from_proto(u) for u in message.units],
        )
