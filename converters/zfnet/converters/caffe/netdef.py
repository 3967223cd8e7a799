"""Reading a Caffe net definition (prototxt) into the layers an inference graph needs.

Deploy nets (an ``Input`` layer, or ``input`` + ``input_shape``/``input_dim``) and train/test nets
(data layers per phase): the TEST phase is taken, data, label, loss and accuracy parts are dropped.
The old V1 ``layers`` format is upgraded to ``layer`` the way Caffe's UpgradeV1Net does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from zfnet.converters.caffe import caffe_pb2
from zfnet.errors import InvalidArgument, NotFound

Layer = caffe_pb2.LayerParameter
DATA_TYPES = {"Data", "ImageData", "MemoryData", "HDF5Data", "WindowData", "DummyData"}
EVAL_TYPES = {"Accuracy"}  # besides every "*Loss" type


@dataclass
class NetDef:
    """The TEST-phase inference part of a net."""

    path: Path
    name: str
    input_top: str  # the Caffe blob that is the image input
    input_shape: list[int | None]  # (C, H, W) as far as the net says; None: not said
    layers: list[Layer]  # compute layers, in order
    data_layer: Layer | None  # the TEST data layer of a train/test net


def read(path: str | Path) -> NetDef:
    """Parse a prototxt and keep what a TEST-phase forward pass computes."""
    path = Path(path)
    net = parse(path)
    layers = upgrade_v1(net, path)
    layers = [layer for layer in layers if in_test_phase(layer)]
    names = [layer.name for layer in layers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidArgument(f"{path}: layer name(s) {', '.join(duplicates)} used twice in the TEST phase; layer names must be unique")
    input_top, shape, data_layer, layers = _split_input(net, layers, path)
    return NetDef(path, net.name, input_top, shape, layers, data_layer)


def parse(path: Path) -> caffe_pb2.NetParameter:
    """Protobuf text format -> NetParameter; syntax errors name file, line and column."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise NotFound(f"net definition {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidArgument(f"net definition {path} is a directory, not a .prototxt file") from None
    except UnicodeDecodeError as err:
        raise InvalidArgument(f"{path}: not a text prototxt (byte {err.start} is not UTF-8)") from None
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as err:
        message = re.sub(r"^\d+:\d+ : ", "", str(err))
        line, column = err.GetLine(), err.GetColumn()
        where = f"{path}:{line}:{column}" if line is not None else str(path)
        raise InvalidArgument(f"{where}: {message}") from None
    return net


_V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}  # fmt: skip


def upgrade_v1(net: caffe_pb2.NetParameter, path: Path) -> list[Layer]:
    """The net's layers in the current format; V1 ``layers`` are converted field by field."""
    if net.layer and net.layers:
        raise InvalidArgument(f"{path}: mixes the current `layer` and the old V1 `layers` format; use one")
    if not net.layers:
        return list(net.layer)
    upgraded = []
    for old in net.layers:
        layer = Layer(name=old.name, bottom=old.bottom, top=old.top, include=old.include, exclude=old.exclude)
        kind = caffe_pb2.V1LayerParameter.LayerType.Name(old.type)
        if kind == "NONE":
            raise InvalidArgument(f"{path}: V1 layer '{old.name}' has no type")
        layer.type = _V1_TYPES[kind]
        for name in old.param:
            layer.param.add(name=name)
        for descriptor, value in old.ListFields():
            if descriptor.name.endswith("_param") and descriptor.name in Layer.DESCRIPTOR.fields_by_name:
                getattr(layer, descriptor.name).CopyFrom(value)
        upgraded.append(layer)
    return upgraded


def in_test_phase(layer: Layer) -> bool:
    """Caffe's StateMeetsRule for the state (phase TEST, level 0, no stages)."""

    def meets(rule: caffe_pb2.NetStateRule) -> bool:
        return (
            (not rule.HasField("phase") or rule.phase == caffe_pb2.TEST)
            and (not rule.HasField("min_level") or rule.min_level <= 0)
            and (not rule.HasField("max_level") or rule.max_level >= 0)
            and not rule.stage
        )

    if layer.include:
        return any(meets(rule) for rule in layer.include)
    return not any(meets(rule) for rule in layer.exclude)


def _is_dropped(layer: Layer) -> bool:
    return layer.type.endswith("Loss") or layer.type in EVAL_TYPES


def _split_input(net: caffe_pb2.NetParameter, layers: list[Layer], path: Path) -> tuple[str, list[int | None], Layer | None, list[Layer]]:
    """Find the one image input, its (C, H, W), the TEST data layer; drop data, label, loss and accuracy layers."""
    declared = [(name, list(net.input_shape[i].dim) if i < len(net.input_shape) else list(net.input_dim[4 * i : 4 * i + 4])) for i, name in enumerate(net.input)]
    data_layer, dropped, kept = None, set(), []
    inputs: list[tuple[str, list[int | None]]] = []
    for layer in layers:
        if layer.type == "Input":
            shapes = layer.input_param.shape
            declared += [(top, list(shapes[min(i, len(shapes) - 1)].dim) if shapes else []) for i, top in enumerate(layer.top)]
        elif layer.type in DATA_TYPES:
            if not layer.top:
                raise InvalidArgument(f"{path}: data layer '{layer.name}' has no top")
            data_layer = layer
            inputs.append((layer.top[0], _data_shape(layer)))
            dropped.update(layer.top[1:])
        elif _is_dropped(layer) or any(b in dropped for b in layer.bottom):
            dropped.update(layer.top)
        else:
            kept.append(layer)
    for name, dims in declared:
        if len(dims) != 4:
            raise InvalidArgument(f"{path}: input '{name}' has shape {dims}; zfnet needs a 4-D (N, C, H, W) image input")
        inputs.append((name, [*dims[1:]]))
    if len(inputs) != 1:
        found = ", ".join(name for name, _ in inputs) or "none"
        raise InvalidArgument(f"{path}: zfnet converts nets with exactly one image input; found {len(inputs)} ({found})")
    top, chw = inputs[0]
    if len(chw) != 3:
        where = f"data layer '{data_layer.name}'" if data_layer is not None else f"input '{top}'"
        raise InvalidArgument(f"{path}: {where} gives a {len(chw) + 1}-D shape; zfnet needs a 4-D (N, C, H, W) image input")
    return top, chw, data_layer, kept


def _data_shape(layer: Layer) -> list[int | None]:
    """(C, H, W) as far as a data layer says: MemoryData and DummyData fully, others through crop_size."""
    if layer.type == "MemoryData":
        p = layer.memory_data_param
        return [p.channels, p.height, p.width]
    if layer.type == "DummyData":
        p = layer.dummy_data_param
        if p.shape:
            return list(p.shape[0].dim[1:])
        return [p.channels[0], p.height[0], p.width[0]] if p.channels and p.height and p.width else [None, None, None]
    t = transform(layer)
    gray = t.force_gray or (layer.type == "ImageData" and not layer.image_data_param.is_color)
    channels = 1 if gray else None
    if t.crop_size:
        return [channels, t.crop_size, t.crop_size]
    p = layer.image_data_param
    if layer.type == "ImageData" and p.new_height and p.new_width:
        return [channels, p.new_height, p.new_width]
    return [channels, None, None]


def transform(layer: Layer) -> caffe_pb2.TransformationParameter:
    """The layer's transform_param, with the pre-2014 fields of data_param & co. moved in (Caffe's upgrade)."""
    t = caffe_pb2.TransformationParameter()
    t.CopyFrom(layer.transform_param)
    for name in ("data_param", "image_data_param", "window_data_param"):
        old = getattr(layer, name)
        for key in ("scale", "mean_file", "crop_size", "mirror"):
            if old.HasField(key) and not t.HasField(key):
                setattr(t, key, getattr(old, key))
    return t
