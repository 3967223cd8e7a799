"""``zfclient convert torch``: a PyTorch model to ONNX with every layer exposed."""

from __future__ import annotations

from pathlib import Path

import typer

from zfnet.client.cli.common import parse_numbers
from zfnet.errors import InvalidArgument


def command(
    arch: str = typer.Argument(..., help="A built-in architecture (zfnet-cifar10) or package.module:ClassName."),
    weights: Path = typer.Option(..., "--weights", help="A state_dict file (loaded with weights_only=True)."),
    output: Path = typer.Option(..., "-o", "--output", help="The .onnx file to write."),
    input_size: str = typer.Option("32,32", "--input-size", help="H,W of the input images."),
    mean: str | None = typer.Option(None, "--mean", help="Per-channel mean R,G,B on 0..255, if the module does not subtract it itself."),
    std: str | None = typer.Option(None, "--std", help="Per-channel std R,G,B on 0..255 (divides after the mean)."),
    channel_order: str = typer.Option("rgb", "--channel-order", help="Channel order the network expects: rgb or bgr."),
    classes: str | None = typer.Option(None, "--classes", help="Class names in output order, comma-separated."),
) -> None:
    """Export to ONNX; intermediates are named after their modules and are all graph outputs."""
    import onnx  # noqa: PLC0415  (onnx and torch load only for the commands that need them)

    from zfnet.converters.graph import Preprocessing
    from zfnet.converters.pytorch import export

    size = parse_numbers(input_size, "--input-size")
    if len(size) != 2:
        raise InvalidArgument(f"--input-size must be H,W, got {input_size!r}")
    if channel_order not in ("rgb", "bgr"):
        raise InvalidArgument(f"--channel-order must be rgb or bgr, got {channel_order!r}")
    preprocessing = None
    if mean or std or channel_order != "rgb":
        stds = parse_numbers(std, "--std", float) or [1.0]
        preprocessing = Preprocessing(channel_order=channel_order, mean=parse_numbers(mean, "--mean", float) or None, scale=[1.0 / s for s in stds])
    module = export.load_weights(export.load_module(arch), weights)
    model = export.export(module, (size[0], size[1]), [c.strip() for c in classes.split(",")] if classes else None, preprocessing)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    onnx.save(model, tmp)
    tmp.replace(output)
    print(f"wrote {output}: {len(model.graph.output)} exposed tensors, input image (N, 3, {size[0]}, {size[1]}) RGB 0..255")
