"""``zfclient train``: train a built-in architecture (seeded, with a progress bar)."""

from __future__ import annotations

from pathlib import Path

import typer

from zfnet.errors import NotFound


def command(
    data: Path = typer.Option(..., "--data", help="Folder with train/ and test/ image trees (one folder per class)."),
    checkpoint: Path = typer.Option(Path("models/zfnet-cifar10.pt"), "--checkpoint", help="Where to save the state_dict."),
    arch: str = typer.Option("zfnet-cifar10", "--arch", help="Built-in architecture."),
    epochs: int = typer.Option(12, "--epochs", help="Training epochs."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per step."),
    lr: float = typer.Option(0.1, "--lr", help="Peak learning rate of the one-cycle schedule."),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights, order, augmentation)."),
) -> None:
    """Train, printing test accuracy per epoch; then `zfclient convert torch` exports it."""
    from zfnet.converters.pytorch.train import TrainConfig, train  # torch loads only here

    for split in ("train", "test"):
        if not (data / split).is_dir():
            raise NotFound(f"{data / split} does not exist; --data must hold train/ and test/")
    config = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    top1 = train(config, data / "train", data / "test", checkpoint)
    print(f"test top-1 {top1:.2%}; checkpoint {checkpoint}")
