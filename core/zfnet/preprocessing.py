"""What a model records about its input (metadata ``zfnet.preprocessing``), and how an image of any
size is brought to it.

Every zfnet model takes a float32 (N, 3, H, W) batch of **RGB images in 0..255**. What the network was
trained on is split in two, so that a reconstruction (deconv, guided, backprop) comes back in the
model's input space and a receptive-field box stays a box of that picture:

- **normalisation** (channel order, mean, scale) is *inside the graph*, as ``preprocess/...`` nodes
  at its input (:func:`zfnet.converters.graph.prepend_preprocessing`), and recorded here for people
  and tools;
- **framing** (resize the shorter side, centre-crop to the input size, with the recorded
  interpolation, as torchvision's and timm's evaluation transforms do) is recorded here and done by
  whoever decodes the image, before the graph: the server for request and data-set images, the
  client for the pictures it draws reconstructions on (:class:`Framing`, one implementation for
  both). A graph of fixed input size stays one, and its input is exactly the picture shown.

A model that records no normalisation takes pixels as they are (0..255); the client warns about it
(``zfclient attach-preprocessing`` records one).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from zfnet.errors import InvalidArgument, ZfnetWarning

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on pixels scaled to 0..1 (torchvision's and timm's)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # ImageNet evaluation: the centre crop is this fraction of the resized shorter side (224 of 256)
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}


@dataclass
class Preprocessing:
    """``x' = (reorder(x) - mean) * scale`` on RGB 0..255 input (in the graph), after the image was framed
    (``resize``, crop to ``input_size``; by the decoder): what the network was trained on."""

    channel_order: str = "rgb"  # order the network expects: "rgb" or "bgr"
    mean: list[float] | None = None  # per channel (in the network's order); see mean_source for per-pixel
    mean_source: str | None = None  # e.g. "mean.binaryproto (per pixel, 3x32x32)"
    scale: list[float] = field(default_factory=lambda: [1.0])  # one value, or one per channel
    input_size: tuple[int, int] | None = None  # (H, W): the centre crop (or the whole image, resized)
    resize: int = 0  # the shorter side is resized to this before the centre crop; 0: resized to input_size
    interpolation: str = "bilinear"  # a key of INTERPOLATIONS

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise InvalidArgument(f"unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        if self.resize and self.input_size is not None and self.resize < max(self.input_size):
            raise InvalidArgument(f"resize {self.resize} is smaller than the crop {self.input_size[0]}x{self.input_size[1]}: the shorter side must be at least the crop")

    @property
    def normalises(self) -> bool:
        """Whether the graph changes the pixels' scale or offset (else they go in as 0..255)."""
        return self.mean is not None or self.mean_source is not None or any(s != 1.0 for s in self.scale)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        """The recorded preprocessing; ``{}`` (none recorded) is the default: nothing done."""
        data = json.loads(text or "{}")
        if data.get("input_size") is not None:
            data["input_size"] = tuple(data["input_size"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def normalised(mean: tuple[float, ...], std: tuple[float, ...], input_size: tuple[int, int], resize: int = 0, interpolation: str = "bilinear") -> Preprocessing:
    """What a ``(x / 255 - mean) / std`` network records (mean and std on pixels in 0..1, as torchvision and timm give them)."""
    return Preprocessing(
        mean=[m * 255.0 for m in mean], scale=[1.0 / (s * 255.0) for s in std], input_size=input_size, resize=resize, interpolation=interpolation,
    )


def imagenet(input_size: tuple[int, int]) -> Preprocessing:
    """The standard ImageNet evaluation transform for a model of this input size: resize the shorter
    side to ``input size / 0.875`` (bilinear), centre-crop, ImageNet mean and std."""
    return normalised(IMAGENET_MEAN, IMAGENET_STD, input_size, round(max(input_size) / CROP_FRACTION))


PRESETS = {"imagenet": imagenet}  # --preprocess NAME: the preprocessing of a model of this input size


class UnnormalisedInput(ZfnetWarning):
    """A model records no normalisation of its input: pixels go in as RGB 0..255."""


def unnormalised(model: str, preprocessing_json: str) -> str | None:
    """The one-line warning for a model that records no normalisation (None for one that does)."""
    if Preprocessing.from_json(preprocessing_json).normalises:
        return None
    return (
        f"model {model} records no input normalisation, so pixels go in as RGB 0..255; if it was trained on "
        f"normalised input, record it: zfclient attach-preprocessing {model} --preprocess imagenet -o OUT.onnx (or --mean/--std)"
    )


@dataclass(frozen=True)
class Framing:
    """How an image becomes the model's input picture of (height, width): with ``resize``, resized so
    that its shorter side is ``resize`` (the longer one in proportion, rounded down) and centre-cropped
    (torchvision's ``Resize(resize)`` + ``CenterCrop``, on PIL images); without, resized to (height,
    width). ``channels``: the model's input channels."""

    height: int
    width: int
    resize: int = 0
    interpolation: str = "bilinear"
    channels: int = 3

    @classmethod
    def of(cls, input_shape: list[int] | tuple[int, ...], preprocessing_json: str = "{}") -> Framing:
        """The framing of a model with this (N, C, H, W) input and recorded preprocessing."""
        recorded = Preprocessing.from_json(preprocessing_json)
        return cls(int(input_shape[2]), int(input_shape[3]), recorded.resize, recorded.interpolation, int(input_shape[1]))

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) an image of (height, width) is resized to before the crop."""
        if not self.resize:
            return self.height, self.width
        if width <= height:
            return int(self.resize * height / width), self.resize
        return self.resize, int(self.resize * width / height)

    def crop(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the centre crop of a resized (height, width) image (rounded as torchvision does)."""
        return int(round((height - self.height) / 2.0)), int(round((width - self.width) / 2.0))

    def box(self, box: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int]:
        """A box (top, left, bottom, right; exclusive) in the pixels of a (height, width) image, in the
        picture's pixels: covering at least the same area, clipped to the picture."""
        rows, cols = self.resized(height, width)
        top, left = self.crop(rows, cols)
        y0, x0, y1, x1 = box
        return (
            max(0, math.floor(y0 * rows / height) - top), max(0, math.floor(x0 * cols / width) - left),
            min(self.height, math.ceil(y1 * rows / height) - top), min(self.width, math.ceil(x1 * cols / width) - left),
        )

    def frame(self, rgb: np.ndarray) -> np.ndarray:
        """An (H, W, 3) RGB image (uint8, or float32 resized per channel) as the model's picture."""
        height, width = self.resized(*rgb.shape[:2])
        if rgb.shape[:2] != (height, width):
            rgb = _resize(rgb, height, width, INTERPOLATIONS[self.interpolation])
        top, left = self.crop(height, width)
        return rgb[top : top + self.height, left : left + self.width]

    def picture(self, img: Image.Image) -> np.ndarray:
        """A PIL image as the model's (height, width, 3) uint8 RGB picture."""
        return np.ascontiguousarray(self.frame(np.asarray(img.convert("RGB"), dtype=np.uint8)))


def _resize(rgb: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """(H, W, 3) RGB at (height, width) by PIL's filter: uint8 stays uint8, float32 is resized per channel."""
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(rgb).resize((width, height), resample))
    channels = [np.asarray(Image.fromarray(rgb[..., c].astype(np.float32), mode="F").resize((width, height), resample)) for c in range(3)]
    return np.stack(channels, axis=-1)
