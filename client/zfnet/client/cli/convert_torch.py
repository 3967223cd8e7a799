"""``zfclient convert torch``: a PyTorch model to ONNX with every layer exposed, its preprocessing recorded."""

from __future__ import annotations

import ast
from pathlib import Path

import typer
from rich.console import Console

from zfnet.client.cli.common import (
    ChannelOrderOption, ForceOption, InterpolationOption, MeanOption, PreprocessOption, ResizeOption, StdOption, chosen_preprocessing, parse_numbers,
    refuse_overwrite,
)
from zfnet.errors import InvalidArgument


def command(
    arch: str = typer.Argument(..., help="A built-in architecture (zfnet-cifar10, resnet50, torchvision.resnet50, timm.vit_small_patch16_224 ...), torchvision.NAME or timm.NAME of an installed library, or package.module:factory."),
    weights: Path = typer.Option(..., "--weights", help="A state_dict file (loaded with weights_only=True); nothing is downloaded."),
    output: Path = typer.Option(..., "-o", "--output", help="The .onnx file to write."),
    force: bool = ForceOption,
    arg: list[str] = typer.Option([], "--arg", help="A keyword argument of the factory, k=v (a Python literal, else a string); repeat for several."),
    input_size: str | None = typer.Option(None, "--input-size", help="H,W of the input images (default: the architecture's crop, else 32,32)."),
    crop: int | None = typer.Option(None, "--crop", help="Square input size N (the centre crop), instead of --input-size."),
    preprocess: str | None = PreprocessOption,
    mean: str | None = MeanOption,
    std: str | None = StdOption,
    resize: int | None = ResizeOption,
    interpolation: str | None = InterpolationOption,
    channel_order: str = ChannelOrderOption,
    classes: str | None = typer.Option(None, "--classes", help="Class names in output order, comma-separated."),
) -> None:
    """Export to ONNX; intermediates are named after their modules and are all graph outputs; normalisation
    goes into the graph, the resize and crop are recorded for whoever decodes images."""
    import onnx  # noqa: PLC0415  (onnx and torch load only for the commands that need them)

    from zfnet.converters.pytorch import export

    refuse_overwrite([output], force)
    found = export.architecture(arch)
    size = _input_size(input_size, crop, found.preprocessing.input_size if found is not None else (32, 32))
    preprocessing = chosen_preprocessing(preprocess, mean, std, resize, interpolation, channel_order, size, found.preprocessing.recorded() if found is not None else None)
    with Console(stderr=True).status(f"exporting {arch}"):
        module = export.load_weights(export.load_module(arch, _arguments(arg)), weights)
        model = export.export(module, size, [c.strip() for c in classes.split(",")] if classes else None, preprocessing)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    onnx.save(model, tmp)
    tmp.replace(output)
    framed = f", images resized to {preprocessing.resize} and centre-cropped" if preprocessing is not None and preprocessing.resize else ""
    print(f"wrote {output}: {len(model.graph.output)} exposed tensors, input image (N, 3, {size[0]}, {size[1]}) RGB 0..255{framed}")


def _input_size(text: str | None, crop: int | None, default: tuple[int, int]) -> tuple[int, int]:
    """--input-size H,W or --crop N (not both), else ``default``."""
    if text is not None and crop is not None:
        raise InvalidArgument("give --input-size H,W or --crop N, not both")
    if crop is not None:
        if crop < 1:
            raise InvalidArgument(f"--crop must be positive, got {crop}")
        return crop, crop
    if text is None:
        return default
    size = parse_numbers(text, "--input-size")
    if len(size) != 2 or min(size) < 1:
        raise InvalidArgument(f"--input-size must be H,W, got {text!r}")
    return size[0], size[1]


def _arguments(pairs: list[str]) -> dict[str, object]:
    """``["num_classes=10", "img_size=64"]`` -> keyword arguments (Python literals, else strings)."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InvalidArgument(f"--arg must be NAME=VALUE, got {pair!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out
