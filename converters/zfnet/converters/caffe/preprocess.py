"""What the network was trained on (channel order, mean, scale) and its input size, from the
caller's options first, then the TEST data layer's ``transform_param``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zfnet.converters.caffe.mean import CHANNEL_ORDERS, read_binaryproto
from zfnet.converters.caffe.netdef import NetDef, transform
from zfnet.converters.graph import Preprocessing
from zfnet.errors import InvalidArgument


def resolve(
    net: NetDef,
    *,
    mean_file: str | Path | None,
    mean_value: Sequence[float] | None,
    scale: float | None,
    channel_order: str | None,
    input_size: tuple[int, int] | None,
) -> tuple[Preprocessing, np.ndarray | None, tuple[int, int, int]]:
    """The preprocessing, the per-pixel mean (cropped to the input) if any, and the input (C, H, W).

    Caffe computes ``(x - mean) * scale`` in the network's channel order; mean files and mean values
    are in that order too. The channel order defaults to bgr (Caffe's ImageNet convention) for
    3-channel inputs, and is rgb (no reordering) for others.
    """
    if channel_order not in (None, *CHANNEL_ORDERS):
        raise InvalidArgument(f"channel order {channel_order!r}: use rgb or bgr")
    if mean_file is not None and mean_value:
        raise InvalidArgument("give a mean file or mean values, not both")
    data = net.data_layer
    t = transform(data) if data is not None else None
    if data is not None and t is not None and mean_file is None and not mean_value:
        if t.mean_file and t.mean_value:
            raise InvalidArgument(f"{net.path}: data layer '{data.name}' has both mean_file and mean_value; Caffe refuses that too")
        mean_file = _find_mean_file(t.mean_file, net, data.name) if t.mean_file else None
        mean_value = list(t.mean_value)
    if scale is None:
        scale = t.scale if t is not None else 1.0
    channels, height, width = net.input_shape
    if input_size is not None:
        if len(input_size) != 2 or min(input_size) < 1:
            raise InvalidArgument(f"input size {input_size}: give two positive numbers H,W")
        height, width = input_size
    mean_array, mean_source = None, None
    if mean_file is not None:
        full = read_binaryproto(mean_file)
        channels = channels or full.shape[0]
        if height is None or width is None:  # Caffe: without crop_size the data has the mean's size
            height, width = full.shape[1:]
        mean_array = _centre_crop(full, (channels, height, width), mean_file)
        cropped = "" if full.shape == mean_array.shape else f", centre crop of {'x'.join(map(str, full.shape))}"
        mean_source = f"{Path(mean_file).name} (per pixel, {'x'.join(map(str, mean_array.shape))}{cropped})"
    if height is None or width is None:
        where = f"the TEST data layer '{data.name}' ({data.type})" if data is not None else "the net"
        raise InvalidArgument(
            f"{net.path}: {where} does not give the image size (no crop_size); "
            "pass --input-size H,W (input_size=(H, W)) or a mean file of that size"
        )
    mean_value = [float(v) for v in mean_value or []]
    channels = channels or (len(mean_value) if len(mean_value) > 1 else 3)
    if min(channels, height, width) < 1:
        raise InvalidArgument(f"{net.path}: input shape {channels}x{height}x{width} has an empty axis")
    if len(mean_value) not in (0, 1, channels):
        raise InvalidArgument(f"{len(mean_value)} mean values for {channels} channels; give 1 or {channels}")
    order = channel_order or ("bgr" if channels == 3 else "rgb")
    if order == "bgr" and channels != 3:
        raise InvalidArgument(f"channel order bgr needs 3 channels; the input has {channels}")
    preprocessing = Preprocessing(
        channel_order=order,
        mean=mean_value * (channels if len(mean_value) == 1 else 1) or None,
        mean_source=mean_source,
        scale=[float(scale)],
        input_size=(int(height), int(width)),
    )
    return preprocessing, mean_array, (int(channels), int(height), int(width))


def _find_mean_file(name: str, net: NetDef, layer: str) -> Path:
    """Data layer ``layer``'s mean_file as written, else next to the prototxt."""
    for candidate in (Path(name), net.path.parent / name):
        if candidate.is_file():
            return candidate
    raise InvalidArgument(
        f"{net.path}: the TEST data layer '{layer}' uses mean_file {name}, which does not exist on this machine; "
        "pass --mean-file (mean_file=...) with that mean, or --mean-value"
    )


def _centre_crop(mean: np.ndarray, shape: tuple[int, int, int], path: str | Path) -> np.ndarray:
    """Crop a mean to (C, H, W) around its centre, as Caffe crops the data at test time."""
    channels, height, width = shape
    c, h, w = mean.shape
    if c != channels or h < height or w < width:
        raise InvalidArgument(f"mean file {path} is {c}x{h}x{w}; the input needs {channels}x{height}x{width} (or larger, to crop)")
    top, left = (h - height) // 2, (w - width) // 2
    return mean[:, top : top + height, left : left + width]
