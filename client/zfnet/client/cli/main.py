"""``zfclient``: the command-line face of zfnet; each command lives in its own module.

No command module imports onnx, onnxruntime, torch, scikit-learn or the server at import time: a
client-only install (``pip install zfnet``) runs every command that talks to a server, and a command
that needs an extra says which one in one line (``zfnet.extras``)."""

from __future__ import annotations

from collections.abc import Callable

import typer

from zfnet import extras
from zfnet.client.cli import activations, attach_preprocessing, common, convert_caffe, convert_torch, deconv, evaluate, filters, layers, mean, predict, top, train
from zfnet.client.cli import correspondence, evolution, invariance, occlusion
from zfnet.client.cli import data, explore, inventory
from zfnet.client.cli import features, probe
from zfnet.client.cli import attribution, gradcam, visualise
from zfnet.edge import edge

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="See what a CNN has learned (Zeiler & Fergus 2013) for any ONNX model.",
)
convert_app = typer.Typer(no_args_is_help=True, help="Convert PyTorch or Caffe models to ONNX with every layer exposed.")
app.add_typer(convert_app, name="convert")
data_app = typer.Typer(no_args_is_help=True, help="Get data sets as image folders.")
app.add_typer(data_app, name="data")
app.callback()(common.connection_options)


def at_the_edge(command: Callable, extra: str | None = None) -> Callable:
    """A command (that needs ``extra``, if any) whose user errors, a missing extra included, end in
    one line and exit code 1."""
    return edge(extras.explained(common.noted(command), extra))


def serve(ctx: typer.Context) -> None:
    """Run the zfnet gRPC server, as zfserver does, with its options (zfclient serve --help); needs the server extra."""
    from zfnet.server import app as server  # only here: a client-only install has no server dependencies

    server_cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    server_cli.command()(edge(server.command))
    server_cli(args=ctx.args, prog_name="zfclient serve")


app.command("deconv")(at_the_edge(deconv.command))
app.command("predict")(at_the_edge(predict.command))
app.command("activations")(at_the_edge(activations.command))
app.command("layers")(at_the_edge(layers.command))
app.command("models")(at_the_edge(inventory.models))
app.command("datasets")(at_the_edge(inventory.datasets))
app.command("evaluate")(at_the_edge(evaluate.command))
app.command("train")(at_the_edge(train.command, "convert"))
app.command("serve", add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(at_the_edge(serve, "server"))
convert_app.command("torch")(at_the_edge(convert_torch.command, "convert"))
convert_app.command("caffe")(at_the_edge(convert_caffe.command, "convert"))
data_app.command("cifar10")(at_the_edge(data.cifar10))
app.command("mean")(at_the_edge(mean.command, "convert"))
app.command("attach-preprocessing")(at_the_edge(attach_preprocessing.command, "server"))
app.command("occlusion")(at_the_edge(occlusion.command))
app.command("invariance")(at_the_edge(invariance.command))
app.command("correspondence")(at_the_edge(correspondence.command))
app.command("top")(at_the_edge(top.command))
app.command("filters")(at_the_edge(filters.command))
app.command("evolution")(at_the_edge(evolution.command))
app.command("features")(at_the_edge(features.command))
app.command("probe")(at_the_edge(probe.command, "probe"))
app.command("gradcam")(at_the_edge(gradcam.command))
app.command("integrated-gradients")(at_the_edge(attribution.integrated_gradients))
app.command("smoothgrad")(at_the_edge(attribution.smoothgrad))
app.command("input-x-gradient")(at_the_edge(attribution.input_x_gradient))
app.command("visualise")(at_the_edge(visualise.command))
app.command("explore")(at_the_edge(explore.command, "explore"))


def main() -> None:
    """Entry point of ``zfclient``."""
    app()
