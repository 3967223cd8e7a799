"""``zfclient data cifar10``: CIFAR-10's test and training sets as class folders of images."""

from __future__ import annotations

from pathlib import Path

import typer

from zfnet.client.cli.common import ForceOption, job_progress, refuse_overwrite
from zfnet.errors import InvalidArgument


def cifar10(
    out: Path = typer.Option(Path("out/data/cifar10"), "--out", help="Folder for train/<class>/ and test/<class>/ (50,000 and 10,000 images)."),
    archive: Path | None = typer.Option(
        None, "--archive", help="A local cifar-10-python.tar.gz (default: download it from www.cs.toronto.edu into --out, MD5 checked).",
    ),
    image_format: str = typer.Option("png", "--format", help="png (lossless) or jpeg (quality 95)."),
    force: bool = ForceOption,
) -> None:
    """Write CIFAR-10 (Krizhevsky 2009) as OUT/train/<class>/<index>.png and OUT/test/<class>/<index>.png."""
    from zfnet.client import cifar10 as source

    if image_format not in source.FORMATS:
        raise InvalidArgument(f"--format must be {' or '.join(source.FORMATS)}, got {image_format!r}")
    existing = [out / split for split in source.SPLITS if (out / split).exists()]
    refuse_overwrite(existing, force)
    with job_progress() as bar:
        if archive is None:
            archive = out / "cifar-10-python.tar.gz"
            if not archive.is_file():
                task = bar.add_task("downloading", total=None)
                source.download(archive, lambda done, total: bar.update(task, completed=done, total=total or None))
        classes, splits = source.read(archive)
        task = bar.add_task("writing images", total=sum(len(s.labels) for s in splits))
        written = source.write(out, classes, splits, image_format, lambda n: bar.advance(task, n))
    for split in splits:
        print(f"{split.name}: {len(split.labels)} images in {len(classes)} class folders under {out / split.name}/")
    print(f"wrote {len(written)} images ({image_format}) from {archive}")
