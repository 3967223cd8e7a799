"""Train a built-in architecture on a one-folder-per-class image tree (seeded, CPU-friendly).

The recipe: SGD with Nesterov momentum, a one-cycle learning rate, label smoothing, random crops
(4-pixel zero padding) and horizontal flips. On 2 CPU cores the reference ``zfnet-cifar10``
reaches about 80% top-1 on CIFAR-10 in the default 12 epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from zfnet import imagefolder
from zfnet.converters.pytorch import zoo


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    arch: str = "zfnet-cifar10"
    epochs: int = 12
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    threads: int = 0  # 0: torch's default
    snapshots: tuple[int, ...] = ()  # epochs after which a snapshot is kept (the paper's Fig. 4 follows features over them)
    snapshot_every: int = 0  # also keep one every N epochs (0: none)

    def is_snapshot(self, epoch: int) -> bool:
        return epoch in self.snapshots or (self.snapshot_every > 0 and epoch % self.snapshot_every == 0)


def snapshot_path(folder: Path, epoch: int) -> Path:
    """Where the snapshot after ``epoch`` goes: ``folder/epoch_<N>.pt`` (sorted by the number, not the string)."""
    return folder / f"epoch_{epoch}.pt"


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    )


def load_split(root: Path, classes: list[str], console: Console) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an image tree to (n, 3, H, W) uint8 and (n,) int64 tensors."""
    folder = imagefolder.scan(root, classes).require_labels("train")
    with console.status(f"decoding {len(folder)} images from {root}"):
        images = imagefolder.load(folder)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(folder.labels)


def augment(batch: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of a zero-padded batch and random horizontal flip (float32 out, 0..255)."""
    n, _, h, w = batch.shape
    padded = nn.functional.pad(batch.float(), (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 3, h, w + 2 * pad)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 3, h, w)
    cropped = cropped.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    cropped[flip] = cropped[flip].flip(3)
    return cropped


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on uint8 images."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size].float())
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The one-cycle schedule (a quarter warm-up, then annealing), valid for any number of steps: with
    very few, torch's phase boundaries coincide and it divides by zero, so the cycle is stretched to
    at least 4 steps with a warm-up of at least 2 (a run that stops early just ends mid-cycle)."""
    total = max(steps, 4)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=total, pct_start=max(0.25, 2 / total))


def train(
    config: TrainConfig, train_dir: Path, test_dir: Path, checkpoint: Path, console: Console | None = None,
    snapshot_dir: Path | None = None, on_snapshot=None,
) -> float:
    """Train, print test accuracy per epoch, save the ``state_dict`` to ``checkpoint``; returns the final test top-1.

    After each snapshot epoch of ``config`` the ``state_dict`` is also saved to ``snapshot_dir``
    (:func:`snapshot_path`) and ``on_snapshot(model, path, epoch)`` is called (e.g. to export it)."""
    console = console or Console(stderr=True)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    # faster convolutions on CPU; torch's overloads of Module.to omit the memory_format form its docstring gives
    model = zoo.build(config.arch).to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
    classes = list(getattr(model, "classes", zoo.CIFAR10_CLASSES))
    x_train, y_train = load_split(train_dir, classes, console)
    x_test, y_test = load_split(test_dir, classes, console)
    steps = (len(x_train) + config.batch_size - 1) // config.batch_size
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim == 1 else decay).append(param)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, momentum=0.9, nesterov=True,
    )
    schedule = one_cycle(optimizer, config.lr, config.epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    top1 = 0.0
    started = time.monotonic()
    with _progress(console) as progress:
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(len(x_train), generator=generator)
            task = progress.add_task(f"epoch {epoch}/{config.epochs}", total=steps)
            running = 0.0
            for step in range(steps):
                index = order[step * config.batch_size : (step + 1) * config.batch_size]
                batch = augment(x_train[index], generator).contiguous(memory_format=torch.channels_last)
                loss = loss_fn(model(batch), y_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                running += loss.item()
                progress.advance(task)
            progress.remove_task(task)
            top1 = accuracy(model, x_test, y_test)
            console.print(
                f"epoch {epoch:2d}/{config.epochs}  loss {running / steps:.3f}  test top-1 {top1:.2%}  "
                f"({time.monotonic() - started:.0f} s)"
            )
            if snapshot_dir is not None and config.is_snapshot(epoch):
                path = snapshot_path(snapshot_dir, epoch)
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), path)
                if on_snapshot is not None:
                    on_snapshot(model, path, epoch)
                    model.train()
                console.print(f"snapshot after epoch {epoch}: {path}")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint)
    console.print(f"saved {checkpoint}")
    return top1
