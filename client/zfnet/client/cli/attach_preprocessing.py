"""``zfclient attach-preprocessing``: record the preprocessing an ONNX model was trained with, so that
images go in as it expects (normalisation in the graph; resize and centre crop recorded)."""

from __future__ import annotations

from pathlib import Path

import typer

from zfnet.client.cli.common import (
    ChannelOrderOption, ForceOption, InterpolationOption, MeanOption, PreprocessOption, ResizeOption, StdOption, chosen_preprocessing, refuse_overwrite,
)
from zfnet.errors import InvalidArgument, NotFound


def command(
    model: Path = typer.Argument(..., help="An .onnx file that records no preprocessing (its external data is read)."),
    output: Path = typer.Option(..., "-o", "--output", help="The .onnx file to write (self-contained)."),
    force: bool = ForceOption,
    preprocess: str | None = PreprocessOption,
    mean: str | None = MeanOption,
    std: str | None = StdOption,
    resize: int | None = ResizeOption,
    interpolation: str | None = InterpolationOption,
    channel_order: str = ChannelOrderOption,
) -> None:
    """Prepend `(x - mean) / std` to the graph and record it, with the resize and centre crop images get
    before it: --preprocess imagenet, or explicit --mean/--std (and --resize, --interpolation)."""
    import onnx  # noqa: PLC0415  (onnx loads only for the commands that need it)

    from zfnet.client.models import model_bytes
    from zfnet.converters.graph import attach_preprocessing, image_input

    if not model.is_file():
        raise NotFound(f"model {model} does not exist")
    refuse_overwrite([output], force)
    loaded = onnx.ModelProto.FromString(model_bytes(model))
    _, size = image_input(loaded)
    preprocessing = chosen_preprocessing(preprocess, mean, std, resize, interpolation, channel_order, size)
    if preprocessing is None:
        raise InvalidArgument("nothing to attach: give --preprocess imagenet, or --mean and --std")
    attach_preprocessing(loaded, preprocessing)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    onnx.save(loaded, tmp)
    tmp.replace(output)
    framed = f"images resized to {preprocessing.resize} and centre-cropped to {size[0]}x{size[1]}" if preprocessing.resize else f"images resized to {size[0]}x{size[1]}"
    print(f"wrote {output}: {preprocessing.to_json()}; {framed}, then normalised in the graph")
