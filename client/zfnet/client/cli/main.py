"""``zfclient``: the command-line face of zfnet; each command lives in its own module."""

from __future__ import annotations

import typer

from zfnet.client.cli import activations, common, convert_caffe, convert_torch, deconv, evaluate, filters, layers, mean, predict, top, train
from zfnet.client.cli import correspondence, evolution, invariance, occlusion
from zfnet.client.cli import features, probe
from zfnet.edge import edge
from zfnet.server import app as server_app

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="See what a CNN has learned (Zeiler & Fergus 2013) for any ONNX model.",
)
convert_app = typer.Typer(no_args_is_help=True, help="Convert PyTorch or Caffe models to ONNX with every layer exposed.")
app.add_typer(convert_app, name="convert")
app.callback()(common.connection_options)

app.command("deconv")(edge(deconv.command))
app.command("predict")(edge(predict.command))
app.command("activations")(edge(activations.command))
app.command("layers")(edge(layers.command))
app.command("evaluate")(edge(evaluate.command))
app.command("train")(edge(train.command))
app.command("serve")(edge(server_app.command))
convert_app.command("torch")(edge(convert_torch.command))
convert_app.command("caffe")(edge(convert_caffe.command))
app.command("mean")(edge(mean.command))
app.command("occlusion")(edge(occlusion.command))
app.command("invariance")(edge(invariance.command))
app.command("correspondence")(edge(correspondence.command))
app.command("top")(edge(top.command))
app.command("filters")(edge(filters.command))
app.command("evolution")(edge(evolution.command))
app.command("features")(edge(features.command))
app.command("probe")(edge(probe.command))


def main() -> None:
    """Entry point of ``zfclient``."""
    app()
