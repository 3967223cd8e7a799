"""What the CLI tests share: ``zfclient`` run in this process (Typer's runner) and its success check.
A module with a unique name, imported by the test modules; the fixtures are in conftest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner, Result

from zfnet.client.cli.main import app

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cifar10"


def invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    """``zfclient ARGS`` (each argument as its ``str``), with ``env`` added to the environment."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def ok(result: Result) -> None:
    """The command exited 0; else its output and exception in the failure message."""
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"


def messy_folder(target: Path, nested: bool = False) -> Path:
    """``target`` made a flat folder of bundled cat images (two, and a third in ``more/`` when
    ``nested``), a corrupt JPEG (``broken.jpg``) and a text file (``notes.txt``)."""
    target.mkdir(parents=True)
    good = sorted((SAMPLES / "cat").glob("*.jpg"))[:3]
    for src in good[:2]:
        shutil.copy(src, target / src.name)
    if nested:
        (target / "more").mkdir()
        shutil.copy(good[2], target / "more" / good[2].name)
    (target / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG " * 10)
    (target / "notes.txt").write_text("not an image\n")
    return target


def left_out(stderr: str, folder: Path, read: int) -> None:
    """The command's two notes: ``folder``'s corrupt JPEG by full path ("read N of N+1 images"), its text file as ignored."""
    notes = [line for line in stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2, stderr
    assert f"read {read} of {read + 1} images" in notes[0] and str((folder / "broken.jpg").absolute()) in notes[0], notes[0]
    assert "ignored 1 non-image file" in notes[1] and str((folder / "notes.txt").absolute()) in notes[1], notes[1]
