"""Convolution and Deconvolution (N-D, grouped, dilated, ``_h``/``_w`` variants) -> Conv / ConvTranspose."""

from __future__ import annotations

from dataclasses import dataclass

from zfnet.converters.caffe import caffe_pb2
from zfnet.converters.caffe.registry import Blobs, Builder, Value, register
from zfnet.errors import InvalidArgument


@dataclass(frozen=True)
class Geometry:
    kernel: list[int]
    stride: list[int]
    pad: list[int]
    dilation: list[int]


def _per_axis(param: caffe_pb2.ConvolutionParameter, field: str, default: int | None, n: int) -> list[int]:
    """A repeated size (``kernel_size``, ``stride``, ...) or its ``_h``/``_w`` pair, one value per spatial axis."""
    short = field.removesuffix("_size")
    h, w = f"{short}_h", f"{short}_w"
    if h in param.DESCRIPTOR.fields_by_name and (param.HasField(h) or param.HasField(w)):
        if n != 2:
            raise InvalidArgument(f"{h}/{w} are for 2-D convolution; the input has {n} spatial axes")
        if len(getattr(param, field)):
            raise InvalidArgument(f"give either {field} or {h}/{w}, not both")
        return [getattr(param, h), getattr(param, w)]
    values = list(getattr(param, field))
    if not values:
        if default is None:
            raise InvalidArgument(f"{field} (or {h}/{w}) is required")
        values = [default]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise InvalidArgument(f"{field} has {len(values)} values for {n} spatial axes")
    return values


def _geometry(param: caffe_pb2.ConvolutionParameter, x: Value) -> Geometry:
    if param.axis not in (1, 1 - x.ndim):
        raise InvalidArgument(f"only channel axis 1 is supported (axis: {param.axis})")
    n = x.ndim - 2
    if n < 1:
        raise InvalidArgument(f"needs an input with spatial axes, got shape {x.shape}")
    geo = Geometry(
        _per_axis(param, "kernel_size", None, n),
        _per_axis(param, "stride", 1, n),
        _per_axis(param, "pad", 0, n),
        _per_axis(param, "dilation", 1, n),
    )
    for name in ("kernel", "stride", "dilation"):
        if min(getattr(geo, name)) < 1:
            raise InvalidArgument(f"{name} must be at least 1, got {getattr(geo, name)}")
    if param.num_output < 1 or param.group < 1:
        raise InvalidArgument(f"num_output ({param.num_output}) and group ({param.group}) must be at least 1")
    return geo


def _attrs(geo: Geometry, group: int) -> dict:
    return {"kernel_shape": geo.kernel, "strides": geo.stride, "pads": geo.pad * 2, "dilations": geo.dilation, "group": group}


def _inputs(param: caffe_pb2.ConvolutionParameter, x: Value, weight_shape: tuple[int, ...], blobs: Blobs, b: Builder) -> list[str]:
    inputs = [x.name, b.const("weight", blobs.get(0, weight_shape))]
    if param.bias_term:
        inputs.append(b.const("bias", blobs.get(1, (param.num_output,))))
    return inputs


def _channels(param: caffe_pb2.ConvolutionParameter, x: Value) -> int:
    (channels,) = x.dims(1, 2)
    if channels % param.group or param.num_output % param.group:
        raise InvalidArgument(f"group {param.group} does not divide the input channels ({channels}) and num_output ({param.num_output})")
    return channels


@register("Convolution")
def convolution(layer: caffe_pb2.LayerParameter, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Caffe's output size: ``(size + 2 pad - (dilation (kernel - 1) + 1)) // stride + 1``, as ONNX Conv."""
    param, (x,) = layer.convolution_param, bottoms
    geo, channels = _geometry(param, x), _channels(param, x)
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, k, st, p, d in zip(x.dims(2), geo.kernel, geo.stride, geo.pad, geo.dilation)]
    if min(out) < 1:
        raise InvalidArgument(f"kernel {geo.kernel} (dilation {geo.dilation}) is larger than the padded input {x.shape[2:]}")
    weight_shape = (param.num_output, channels // param.group, *geo.kernel)
    b.node("Conv", _inputs(param, x, weight_shape, blobs, b), **_attrs(geo, param.group))
    return [Value(b.top(), (x.shape[0], param.num_output, *out))]


@register("Deconvolution")
def deconvolution(layer: caffe_pb2.LayerParameter, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """The transpose of Convolution; weights are (input channels, num_output / group, *kernel), as ONNX ConvTranspose."""
    param, (x,) = layer.convolution_param, bottoms
    geo, channels = _geometry(param, x), _channels(param, x)
    out = [st * (s - 1) + d * (k - 1) + 1 - 2 * p for s, k, st, p, d in zip(x.dims(2), geo.kernel, geo.stride, geo.pad, geo.dilation)]
    if min(out) < 1:
        raise InvalidArgument(f"pad {geo.pad} leaves no output for input {x.shape[2:]}")
    weight_shape = (channels, param.num_output // param.group, *geo.kernel)
    b.node("ConvTranspose", _inputs(param, x, weight_shape, blobs, b), **_attrs(geo, param.group))
    return [Value(b.top(), (x.shape[0], param.num_output, *out))]
