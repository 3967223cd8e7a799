"""Request images -> the model's input batch: decode, RGB, resize to the input size, float32 NCHW
in 0..255. Everything else (mean, scale, channel order) is done by the model's own graph."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from zfnet.errors import InvalidArgument


@dataclass(frozen=True)
class ImageInput:
    """One image as it arrived: exactly one of ``encoded``, ``rgb`` (H, W, 3), ``model_input`` (C, H, W)."""

    encoded: bytes | None = None
    rgb: np.ndarray | None = None
    model_input: np.ndarray | None = None
    label: str = ""


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb.astype(np.float32)
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR), dtype=np.float32)
    channels = [np.asarray(Image.fromarray(rgb[..., c].astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)) for c in range(3)]
    return np.stack(channels, axis=-1)


def decode(image: ImageInput, index: int) -> np.ndarray:
    """One image as (H, W, 3) RGB (uint8 or float32), or the model input as given."""
    what = f"image {index}" + (f" ({image.label})" if image.label else "")
    if image.encoded is not None:
        try:
            with Image.open(io.BytesIO(image.encoded)) as img:
                return np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise InvalidArgument(f"{what}: cannot decode the image bytes ({err})", field=f"images[{index}].encoded", reason="BAD_IMAGE") from None
    if image.rgb is not None:
        rgb = image.rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InvalidArgument(f"{what}: an RGB tensor must be (H, W, 3), got {list(rgb.shape)}", field=f"images[{index}].rgb.shape", reason="BAD_TENSOR")
        if rgb.dtype not in (np.uint8, np.float32):
            raise InvalidArgument(f"{what}: an RGB tensor must be uint8 or float32, got {rgb.dtype}", field=f"images[{index}].rgb.dtype", reason="BAD_TENSOR")
        return rgb
    raise InvalidArgument(f"{what}: no image data", field=f"images[{index}]", reason="FIELD_REQUIRED")


def to_batch(images: list[ImageInput], input_shape: list[int]) -> np.ndarray:
    """Stack request images into the model's (N, C, H, W) float32 input."""
    if not images:
        raise InvalidArgument("the request has no images", field="images", reason="FIELD_REQUIRED")
    channels, height, width = input_shape[1:]
    batch = np.empty((len(images), channels, height, width), np.float32)
    for i, image in enumerate(images):
        if image.model_input is not None:
            if list(image.model_input.shape) != [channels, height, width]:
                raise InvalidArgument(f"image {i}: model_input must be {[channels, height, width]}, got {list(image.model_input.shape)}", field=f"images[{i}].model_input.shape", reason="BAD_TENSOR")
            batch[i] = image.model_input
            continue
        if channels != 3:
            raise InvalidArgument(f"this model takes {channels} input channels; send model_input tensors, not RGB images", field=f"images[{i}]")
        batch[i] = _resize(decode(image, i), height, width).transpose(2, 0, 1)
    return batch
