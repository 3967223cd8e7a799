"""``zfclient train``: train a built-in architecture (seeded, with a progress bar)."""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from zfnet.client.cli.common import ForceOption, StrictOption, parse_numbers, refuse_overwrite
from zfnet.errors import InvalidArgument, NotFound

DEFAULT_FOLDER = Path("out/train")  # where a checkpoint goes when --checkpoint is not given


def command(
    data: Path = typer.Option(..., "--data", help="Folder with train/ and test/ image trees (one folder per class)."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Where to save the state_dict (default: out/train/<arch>.pt; never the bundled models/ unless named here).",
    ),
    arch: str = typer.Option("zfnet-cifar10", "--arch", help="Built-in architecture."),
    epochs: int = typer.Option(12, "--epochs", help="Training epochs."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per step."),
    lr: float = typer.Option(0.1, "--lr", help="Peak learning rate of the one-cycle schedule."),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights, order, augmentation)."),
    snapshots: str | None = typer.Option(None, "--snapshots", help="Keep a snapshot after these epochs, e.g. 1,2,5,10 (for `zfclient evolution`)."),
    snapshot_every: int = typer.Option(0, "--snapshot-every", help="Also keep a snapshot every N epochs."),
    snapshot_dir: Path | None = typer.Option(
        None, "--snapshot-dir", help="Folder for the snapshots: epoch_<N>.pt and, exported, epoch_<N>.onnx (default: <checkpoint>_snapshots/).",
    ),
    force: bool = ForceOption,
    strict: bool = StrictOption,
) -> None:
    """Train, printing test accuracy per epoch; then `zfclient convert torch` exports it."""
    from zfnet.converters.pytorch.train import TrainConfig, train  # torch loads only here

    checkpoint = checkpoint or DEFAULT_FOLDER / f"{arch}.pt"

    for split in ("train", "test"):
        if not (data / split).is_dir():
            raise NotFound(f"{data / split} does not exist; --data must hold train/ and test/")
    epochs_kept = tuple(parse_numbers(snapshots, "--snapshots"))
    if any(not 1 <= e <= epochs for e in epochs_kept) or snapshot_every < 0:
        raise InvalidArgument(f"--snapshots must be epochs in 1..{epochs} and --snapshot-every >= 0")
    refuse_overwrite([checkpoint], force)  # after the options are checked, before any work
    config = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, snapshots=epochs_kept, snapshot_every=snapshot_every, strict=strict)
    keeps = bool(epochs_kept or snapshot_every)
    folder = snapshot_dir or checkpoint.with_name(f"{checkpoint.stem}_snapshots")
    export_snapshot = functools.partial(_export_snapshot, arch)
    top1 = train(config, data / "train", data / "test", checkpoint, snapshot_dir=folder if keeps else None, on_snapshot=export_snapshot if keeps else None)
    print(f"test top-1 {top1:.2%}; checkpoint {checkpoint}" + (f"; snapshots in {folder}/" if keeps else ""))


def _export_snapshot(arch: str, model, path: Path, epoch: int) -> None:
    """Export a snapshot beside its checkpoint as ``epoch_<N>.onnx``, every layer exposed."""
    import onnx

    from zfnet.converters.pytorch import export

    onnx.save(export.export(export.load_weights(export.load_module(arch), path)), path.with_suffix(".onnx"))
