"""``zfclient mean``: the per-pixel training-set mean as a Caffe ``mean.binaryproto``."""

from __future__ import annotations

from pathlib import Path

import typer

from zfnet.client.cli.common import ForceOption, refuse_overwrite


def command(
    data: Path = typer.Option(..., "--data", help="Training images, a class tree (root/<class>/<image>) or a flat folder, all of one size."),
    output: Path = typer.Option(..., "-o", "--output", help="mean.binaryproto to write (a Caffe BlobProto, 1 x C x H x W)."),
    force: bool = ForceOption,
    channel_order: str = typer.Option("rgb", "--channel-order", help="Channel order to store, the one the net expects: rgb or bgr."),
) -> None:
    """Compute the mean image the way Caffe's compute_image_mean does."""
    from zfnet.converters.caffe.mean import compute_mean, write_binaryproto  # the Caffe converter loads only here

    refuse_overwrite([output], force)
    mean = compute_mean(data, channel_order=channel_order.lower())
    write_binaryproto(mean, output)
    per_channel = ", ".join(f"{v:.1f}" for v in mean.mean(axis=(1, 2)))
    typer.echo(f"wrote {output}: {'x'.join(map(str, mean.shape))} {channel_order.lower()} mean, per channel {per_channel}")
