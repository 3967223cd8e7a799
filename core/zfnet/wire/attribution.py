"""Attribution: what in an image raised one value of the network, the target. Integrated gradients
(with its convergence delta), SmoothGrad and SmoothGrad-squared, input x gradient; the target they
and Grad-CAM (:mod:`zfnet.wire.gradcam`) share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.tensors import to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import ImageInput, LayerKey, Names, array, images_of, images_proto, layer_of, layer_proto

BASELINES = Names(pb.Baseline, "BASELINE_", "black")
INTEGRATION = Names(pb.IntegrationMethod, "", "gauss_legendre", aliases={"gausslegendre": "gauss_legendre"})
SMOOTHING = Names(pb.SmoothGradType, "", "smoothgrad")
GRADIENTS = Names(pb.GradientMethod, "GRADIENT_", "backprop")
STEPS, SAMPLES, NOISE_LEVEL = 50, 50, 0.15  # the defaults: Captum's 50 steps; Smilkov et al.'s 50 samples at 15 % of the range
MAX_COPIES = 4096  # steps or samples per image
MAX_NOISE_LEVEL = 10.0


def check_range(value: float, low: float, high: float, name: str) -> None:
    """Refuse ``value`` outside [low, high], naming the request field ``name``."""
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be in {low:g}..{high:g}, got {value:g}", field=name, reason="VALUE_OUT_OF_RANGE")


@dataclass(frozen=True)
class Target:
    """The value an attribution explains: a unit of ``layer`` (None: the model's output) per image."""

    layer: LayerKey | None = None
    units: list[str] = field(default_factory=list)  # per image or one for all; empty: top-1 class / strongest channel

    def to_proto(self) -> pb.Target:
        message = pb.Target(units=[str(u) for u in self.units])
        if self.layer is not None:
            message.layer.CopyFrom(layer_proto(self.layer))
        return message

    @classmethod
    def from_proto(cls, message: pb.Target) -> Target:
        return cls(layer_of(message.layer) if message.HasField("layer") else None, list(message.units))


@dataclass(frozen=True)
class TargetUnit:
    """The target explained for one image."""

    index: int  # class or channel
    label: str  # the class name ("" for a channel or a model without class names)
    chosen: bool  # no unit was given: the top-1 class or the strongest channel
    value: float  # the unit's activation summed over its map

    def describe(self) -> str:
        name = self.label or f"unit {self.index}"
        return name + (" (top-1)" if self.chosen and self.label else " (strongest)" if self.chosen else "")

    def to_proto(self) -> pb.TargetUnit:
        return pb.TargetUnit(index=self.index, label=self.label, chosen=self.chosen, value=self.value)

    @classmethod
    def from_proto(cls, message: pb.TargetUnit) -> TargetUnit:
        return cls(message.index, message.label, message.chosen, message.value)


@dataclass(frozen=True)
class IntegratedGradientsRequest:
    images: list[ImageInput]
    target: Target = field(default_factory=Target)
    baseline: str = "black"  # a name of BASELINES
    steps: int = STEPS
    method: str = "gauss_legendre"  # a name of INTEGRATION
    blur_sigma: float | None = None  # the blurred baseline's, input pixels (None: a tenth of the shorter side)
    max_batch: int = 0

    def __post_init__(self) -> None:
        BASELINES.number(self.baseline, "baseline")
        INTEGRATION.number(self.method, "method")
        riemann = INTEGRATION.aliases.get(self.method, self.method).startswith("riemann")
        check_range(self.steps, 2 if riemann else 1, MAX_COPIES, "steps")
        if self.blur_sigma is not None:
            check_range(self.blur_sigma, 1e-3, 1e4, "blur_sigma")
        check_range(self.max_batch, 0, 1 << 20, "max_batch")

    def to_proto(self, model: pb.ModelRef) -> pb.IntegratedGradientsRequest:
        return pb.IntegratedGradientsRequest(
            model=model, images=images_proto(self.images), target=self.target.to_proto(), baseline=BASELINES.number(self.baseline, "baseline"),
            steps=self.steps, method=INTEGRATION.number(self.method, "method"), blur_sigma=self.blur_sigma, max_batch=self.max_batch,
        )

    @classmethod
    def from_proto(cls, message: pb.IntegratedGradientsRequest) -> IntegratedGradientsRequest:
        return cls(
            images_of(message.images), Target.from_proto(message.target), BASELINES.name(message.baseline, "baseline"),
            message.steps if message.HasField("steps") else STEPS, INTEGRATION.name(message.method, "method"),
            message.blur_sigma if message.HasField("blur_sigma") else None, message.max_batch,
        )


@dataclass(frozen=True)
class SmoothGradRequest:
    images: list[ImageInput]
    target: Target = field(default_factory=Target)
    type: str = "smoothgrad"  # a name of SMOOTHING
    method: str = "backprop"  # a name of GRADIENTS
    samples: int = SAMPLES
    noise_level: float = NOISE_LEVEL  # sigma / (max - min) of each image
    seed: int = 0
    max_batch: int = 0

    def __post_init__(self) -> None:
        SMOOTHING.number(self.type, "type")
        GRADIENTS.number(self.method, "method")
        check_range(self.samples, 1, MAX_COPIES, "samples")
        check_range(self.noise_level, 0.0, MAX_NOISE_LEVEL, "noise_level")
        check_range(self.seed, 0, 2**64 - 1, "seed")
        check_range(self.max_batch, 0, 1 << 20, "max_batch")

    def to_proto(self, model: pb.ModelRef) -> pb.SmoothGradRequest:
        return pb.SmoothGradRequest(
            model=model, images=images_proto(self.images), target=self.target.to_proto(), type=SMOOTHING.number(self.type, "type"),
            method=GRADIENTS.number(self.method, "method"), samples=self.samples, noise_level=self.noise_level, seed=self.seed, max_batch=self.max_batch,
        )

    @classmethod
    def from_proto(cls, message: pb.SmoothGradRequest) -> SmoothGradRequest:
        return cls(
            images_of(message.images), Target.from_proto(message.target), SMOOTHING.name(message.type, "type"), GRADIENTS.name(message.method, "method"),
            message.samples if message.HasField("samples") else SAMPLES, message.noise_level if message.HasField("noise_level") else NOISE_LEVEL,
            message.seed, message.max_batch,
        )


@dataclass(frozen=True)
class InputXGradientRequest:
    images: list[ImageInput]
    target: Target = field(default_factory=Target)

    def to_proto(self, model: pb.ModelRef) -> pb.InputXGradientRequest:
        return pb.InputXGradientRequest(model=model, images=images_proto(self.images), target=self.target.to_proto())

    @classmethod
    def from_proto(cls, message: pb.InputXGradientRequest) -> InputXGradientRequest:
        return cls(images_of(message.images), Target.from_proto(message.target))


@dataclass(frozen=True)
class Attribution:
    """One image's attribution."""

    label: str
    target: TargetUnit
    pixels: np.ndarray  # (C, H, W) float32, the model's input space
    delta: float = 0.0  # integrated gradients: sum(pixels) - (target(image) - target(baseline))
    baseline: np.ndarray | None = None  # integrated gradients: (C, H, W) float32
    sigma: float = 0.0  # SmoothGrad: the noise's standard deviation, input units

    def to_proto(self) -> pb.Attribution:
        message = pb.Attribution(label=self.label, target=self.target.to_proto(), pixels=to_proto(self.pixels), delta=self.delta, sigma=self.sigma)
        if self.baseline is not None:
            message.baseline.CopyFrom(to_proto(self.baseline))
        return message

    @classmethod
    def from_proto(cls, message: pb.Attribution) -> Attribution:
        baseline = array(message.baseline) if message.HasField("baseline") else None
        return cls(message.label, TargetUnit.from_proto(message.target), array(message.pixels), message.delta, baseline, message.sigma)


@dataclass(frozen=True)
class AttributionResult:
    method: str  # integrated-gradients, smoothgrad, smoothgrad-squared or input-x-gradient
    description: str  # the parameters that ran
    target_layer: str
    classes: list[str]  # the model's
    images: list[Attribution]
    batch: int  # copies per forward pass used

    def to_proto(self) -> pb.AttributionResult:
        return pb.AttributionResult(
            method=self.method, description=self.description, target_layer=self.target_layer, classes=self.classes,
            images=[a.to_proto() for a in self.images], batch=self.batch,
        )

    @classmethod
    def from_proto(cls, message: pb.AttributionResult) -> AttributionResult:
        return cls(
            message.method, message.description, message.target_layer, list(message.classes), [Attribution.from_proto(a) for a in message.images], message.batch,
        )
