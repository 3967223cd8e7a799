"""``zfclient convert caffe``: a Caffe prototxt and its weights -> one ONNX file with the preprocessing inside."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console

from zfnet.client.cli.common import ForceOption, parse_numbers, refuse_overwrite
from zfnet.errors import InvalidArgument, ZfnetWarning
from zfnet.preprocessing import Preprocessing

if TYPE_CHECKING:
    import onnx


def command(
    net: Path = typer.Argument(..., help="Caffe net definition (.prototxt): a deploy net or a train/test net (its TEST phase is used)."),
    weights: Path = typer.Argument(..., help="Caffe weights: a binary .caffemodel or an HDF5 .caffemodel.h5 snapshot."),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write (written atomically)."),
    force: bool = ForceOption,
    mean_file: Optional[Path] = typer.Option(None, "--mean-file", help="mean.binaryproto to subtract per pixel (centre-cropped to the input size)."),
    mean_value: Optional[str] = typer.Option(None, "--mean-value", help="Per-channel mean, comma-separated, in the net's channel order (R,G,B for rgb nets, B,G,R for bgr); 1 or C values."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Multiply after the mean subtraction, as Caffe's transform_param scale (default: the net's, else 1)."),
    channel_order: Optional[str] = typer.Option(None, "--channel-order", help="Channel order the net was trained on: rgb or bgr (default bgr, Caffe's ImageNet convention; Caffe's CIFAR-10 example is rgb)."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Input H,W (or one number for a square), when the net does not give it or to override it."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated class names in output order, recorded in the model."),
) -> None:
    """Convert a Caffe model to ONNX; the model then takes RGB images in 0..255."""
    from zfnet.converters import caffe  # the converter (and onnx) load only for this command
    from zfnet.converters.caffe import netdef

    refuse_overwrite([output], force)

    with Console(stderr=True).status(f"converting {net.name}"):
        model = caffe.convert(
            net,
            weights,
            mean_file=mean_file,
            mean_value=parse_numbers(mean_value, "--mean-value", float) or None,
            scale=scale,
            channel_order=channel_order.lower() if channel_order else None,
            input_size=_size(input_size) if input_size is not None else None,
            classes=_names(classes) if classes is not None else None,
        )
    caffe.save(model, output)
    pre = _recorded(model)
    assumed = [rule for given, rule in ((channel_order, _order_assumed(pre)), (mean_file or mean_value, _mean_assumed(pre))) if not given and rule]
    if assumed:
        warnings.warn(
            f"assumed {' and '.join(assumed)}, as neither the options nor the net's transform_param state it; a wrong guess gives "
            f"silently wrong predictions: check the accuracy with `zfclient evaluate --model {output} --data LABELLED_IMAGES`, "
            "or pass --channel-order and --mean-file/--mean-value", ZfnetWarning, stacklevel=2,
        )
    typer.echo(f"wrote {output}: {len(netdef.read(net).layers)} layers, {_describe(model, pre)}")


def _order_assumed(pre: Preprocessing) -> str | None:
    """The channel order taken without being told (Caffe's nets record none)."""
    return f"{pre.channel_order.upper()} channel order" if pre.channel_order == "bgr" else None


def _mean_assumed(pre: Preprocessing) -> str | None:
    """No mean subtracted, where the net's transform_param gives none either."""
    return "no mean subtraction" if pre.mean is None and pre.mean_source is None else None


def _recorded(model: onnx.ModelProto) -> Preprocessing:
    """The preprocessing the converter recorded in the model."""
    from zfnet.converters.graph import PREPROCESSING_KEY, get_metadata

    recorded = get_metadata(model, PREPROCESSING_KEY)
    assert recorded is not None, "the converter records the preprocessing in every model"
    return Preprocessing.from_json(recorded)


def _describe(model: onnx.ModelProto, pre: Preprocessing) -> str:
    """Input shape and preprocessing, for the one line the command prints."""
    dims = [d.dim_param or str(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim]
    mean = pre.mean_source or (",".join(f"{v:g}" for v in pre.mean) if pre.mean else "none")
    return f"input {model.graph.input[0].name} ({'x'.join(dims)}) RGB 0..255; preprocessing: {pre.channel_order} order, mean {mean}, scale {','.join(f'{s:g}' for s in pre.scale)}"


def _size(text: str) -> tuple[int, int]:
    sizes = parse_numbers(text, "--input-size")
    if len(sizes) not in (1, 2):
        raise InvalidArgument(f"--input-size must be H,W (or one number), got {text!r}")
    return sizes[0], sizes[-1]


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise InvalidArgument(f"--classes {text!r}: give comma-separated, non-empty names")
    return names
