"""Request images -> the model's input batch: decode, RGB, frame to the input size as the model
records (:class:`zfnet.preprocessing.Framing`: resize the shorter side and centre-crop, or resize),
float32 NCHW in 0..255. Everything else (mean, scale, channel order) is done by the model's own graph.

Image headers are read before any pixel is decoded: an image larger than ``max_pixels``, with no
pixels, or in a mode Pillow cannot turn into RGB is refused, and :func:`inspect` says what
decoding it will cost so that the request can be admitted against the memory budget first."""

from __future__ import annotations

import contextlib
import io
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.preprocessing import Framing
from zfnet.wire.common import ImageInput

MAX_IMAGE_PIXELS = 64 << 20  # default bound on one request image (about 8200 x 8200)
# bytes per pixel as Pillow holds a decoded image; modes not listed cannot become RGB here
MODE_BYTES = {
    "1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4,
    "LA": 4, "La": 4, "PA": 4, "RGB": 4, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "YCbCr": 4, "LAB": 4, "HSV": 4,
}
RGB_WORK_BYTES = 4 + 3 + 4  # per pixel on top of the decoded image: RGB copy, array, resize source
# Pillow warns from 89 Mi pixels on; images are checked against max_pixels here, so its warning is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class Header:
    """What an image is before it is decoded: its size and the bytes decoding it will take at the peak."""

    height: int
    width: int
    decode_bytes: int


def _what(image: ImageInput, index: int) -> str:
    return f"image {index}" + (f" ({image.label[:200]})" if image.label else "")


def _check_size(what: str, height: int, width: int, max_pixels: int, field: str) -> None:
    if height <= 0 or width <= 0:
        raise InvalidArgument(f"{what} has no pixels ({width}x{height})", field=field, reason="BAD_IMAGE")
    if height * width > max_pixels:
        raise ResourceExhausted(
            f"{what} is {width}x{height} = {height * width:,} pixels; this server decodes at most {max_pixels:,} per image",
            field=field, reason="IMAGE_TOO_LARGE", metadata={"limit": max_pixels, "requested": height * width},
        )


def _pillow_message(err: Exception) -> str:
    """Pillow's reason, without the Python object it names (``<_io.BytesIO object at 0x...>``)."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image format this server reads: PNG, JPEG, BMP, GIF, WebP, TIFF..."
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)) or type(err).__name__


def _open(encoded: bytes, what: str, max_pixels: int, field: str) -> Image.Image:
    """The image's ``encoded`` bytes opened lazily (header only), checked before any pixel is decoded."""
    try:
        img = Image.open(io.BytesIO(encoded))
    except Image.DecompressionBombError as err:
        raise _bomb(what, err, max_pixels, field) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InvalidArgument(f"{what}: cannot decode the image bytes ({_pillow_message(err)})", field=field, reason="BAD_IMAGE") from None
    width, height = img.size
    _check_size(what, height, width, max_pixels, field)
    if img.mode not in MODE_BYTES:
        raise InvalidArgument(f"{what}: image mode {img.mode!r} is not supported; send RGB, grey or palette images", field=field, reason="BAD_IMAGE")
    return img


def _decode_bytes(img: Image.Image) -> int:
    """Bytes an opened image takes at the peak of decoding it to RGB and resizing it."""
    width, height = img.size
    return height * width * (MODE_BYTES[img.mode] + RGB_WORK_BYTES)


def _bomb(what: str, err: Exception, max_pixels: int, field: str) -> ResourceExhausted:
    return ResourceExhausted(
        f"{what}: {str(err).rstrip('.')}; this server decodes at most {max_pixels:,} pixels per image",
        field=field, reason="IMAGE_TOO_LARGE", metadata={"limit": max_pixels},
    )


def _check_rgb(rgb: np.ndarray, what: str, max_pixels: int, field: str) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidArgument(f"{what}: an RGB tensor must be (H, W, 3), got {list(rgb.shape)}", field=f"{field}.shape", reason="BAD_TENSOR")
    if rgb.dtype not in (np.uint8, np.float32):
        raise InvalidArgument(f"{what}: an RGB tensor must be uint8 or float32, got {rgb.dtype}", field=f"{field}.dtype", reason="BAD_TENSOR")
    _check_size(what, rgb.shape[0], rgb.shape[1], max_pixels, field)
    _check_finite(rgb, what, field)


def _check_finite(array: np.ndarray, what: str, field: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise InvalidArgument(f"{what}: {bad} pixel value(s) are NaN or infinite", field=field, reason="BAD_TENSOR")


def inspect(image: ImageInput, index: int, max_pixels: int = MAX_IMAGE_PIXELS) -> Header:
    """Check one image without decoding it; what decoding and resizing it will cost."""
    what = _what(image, index)
    if image.encoded is not None:
        with _open(image.encoded, what, max_pixels, f"images[{index}].encoded") as img:
            width, height = img.size
            return Header(height, width, _decode_bytes(img))
    if image.rgb is not None:
        _check_rgb(image.rgb, what, max_pixels, f"images[{index}].rgb")
        height, width = image.rgb.shape[:2]
        per_pixel = 4 if image.rgb.dtype == np.uint8 else 3 * 4 * 2  # float: one image per channel, then stacked
        return Header(height, width, height * width * per_pixel)
    if image.model_input is not None:
        _check_finite(image.model_input, what, f"images[{index}].model_input")
        shape = image.model_input.shape
        return Header(shape[-2] if len(shape) >= 2 else 0, shape[-1] if shape else 0, 0)
    raise InvalidArgument(f"{what}: no image data", field=f"images[{index}]", reason="FIELD_REQUIRED")


ENCODED_BYTES_PER_PIXEL = 8  # the most an encoding Pillow reads here spends per pixel (16-bit RGBA PNG, uncompressed)


def max_encoded_bytes(max_pixels: int) -> int:
    """The largest file an image of at most ``max_pixels`` pixels can be (its pixels stored
    uncompressed at 8 bytes each, and 1 MiB of headers and metadata): larger ones are not read."""
    return ENCODED_BYTES_PER_PIXEL * max_pixels + (1 << 20)


class DecodeGate:
    """Bounds the bytes of images being decoded at once across threads (data-set jobs decode on
    several, and several jobs may run): a decode waits, in arrival order, until its cost fits under
    ``limit``. An image that costs more than ``limit`` is refused (RESOURCE_EXHAUSTED; a data-set
    job skips it), whatever else runs, so what a job computes never depends on timing."""

    def __init__(self, limit: int | Callable[[], int]) -> None:
        self._limit = limit if callable(limit) else (lambda: limit)
        self.used = 0
        self._changed = threading.Condition()
        self._next = self._serving = 0  # tickets: decodes enter in the order they arrived

    @property
    def limit(self) -> int:
        """The bytes decoded at once, at most (a fixed number, or a share of a budget as it is now)."""
        return self._limit()

    @contextlib.contextmanager
    def held(self, nbytes: int, what: str = "the image") -> Iterator[None]:
        if nbytes > self.limit:
            raise ResourceExhausted(
                f"{what}: decoding it takes {nbytes:,} bytes, over the {self.limit:,} this server decodes at once for data-set jobs",
                reason="IMAGE_TOO_LARGE", metadata={"limit": self.limit, "requested": nbytes},
            )
        with self._changed:
            ticket, self._next = self._next, self._next + 1
            self._changed.wait_for(lambda: self._serving == ticket and self.used + nbytes <= self.limit)
            self._serving += 1
            self.used += nbytes
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self.used -= nbytes
                self._changed.notify_all()


@contextlib.contextmanager
def decoded(image: ImageInput, index: int, max_pixels: int = MAX_IMAGE_PIXELS, gate: DecodeGate | None = None) -> Iterator[np.ndarray]:
    """One image as (H, W, 3) RGB (uint8 or float32), its header checked before decoding; with a
    ``gate``, the decoding's cost (as :func:`inspect` counts it) is held there while the block runs,
    the caller's resize included."""
    what = _what(image, index)
    if image.encoded is not None:
        field = f"images[{index}].encoded"
        with _open(image.encoded, what, max_pixels, field) as img:
            with gate.held(_decode_bytes(img), what) if gate else contextlib.nullcontext():
                try:
                    rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
                except Image.DecompressionBombError as err:
                    raise _bomb(what, err, max_pixels, field) from None
                except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
                    raise InvalidArgument(f"{what}: cannot decode the image bytes ({_pillow_message(err)})", field=field, reason="BAD_IMAGE") from None
                yield rgb
        return
    if image.rgb is not None:
        _check_rgb(image.rgb, what, max_pixels, f"images[{index}].rgb")
        yield image.rgb
        return
    raise InvalidArgument(f"{what}: no image data", field=f"images[{index}]", reason="FIELD_REQUIRED")


def pixels(image: ImageInput, index: int, framing: Framing, max_pixels: int = MAX_IMAGE_PIXELS, gate: DecodeGate | None = None) -> np.ndarray:
    """One image framed to the model's input, channels last: (H, W, 3) RGB as decoded (uint8 or
    float32), or a model_input tensor's (C, H, W) values as (H, W, C). :func:`stack` makes the batch."""
    channels, height, width = framing.channels, framing.height, framing.width
    if image.model_input is not None:
        if list(image.model_input.shape) != [channels, height, width]:
            raise InvalidArgument(f"image {index}: model_input must be {[channels, height, width]}, got {list(image.model_input.shape)}", field=f"images[{index}].model_input.shape", reason="BAD_TENSOR")
        _check_finite(image.model_input, _what(image, index), f"images[{index}].model_input")
        return image.model_input.transpose(1, 2, 0)
    if channels != 3:
        raise InvalidArgument(f"this model takes {channels} input channels; send model_input tensors, not RGB images", field=f"images[{index}]")
    with decoded(image, index, max_pixels, gate) as rgb:
        return framing.frame(rgb)


def stack(images: list[np.ndarray]) -> np.ndarray:
    """The model's (N, C, H, W) float32 input from :func:`pixels` of each image: one cast and
    transpose for the whole batch (per image, they cost a quarter of decoding a 32x32 JPEG)."""
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32)


def to_batch(images: list[ImageInput], framing: Framing, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Stack request images into the model's (N, C, H, W) float32 input."""
    if not images:
        raise InvalidArgument("the request has no images", field="images", reason="FIELD_REQUIRED")
    return stack([pixels(image, i, framing, max_pixels) for i, image in enumerate(images)])
