"""Feature evolution over training (Zeiler & Fergus 2013, Fig. 4): what server and client share.

Snapshots of one training run are put in training order by the number in their file names
(``epoch_3``, ``cifar10_quick_iter_5000``; ``iter_10000`` comes after ``iter_5000``), labelled by it,
and must agree on the chosen layers: the same tensor name and the same shape per image, else the
comparison across them would mean nothing and the job is refused naming the difference.

Pure Python, no gRPC::

    ordered = in_training_order(["snaps/epoch_10.onnx", "snaps/epoch_2.onnx"])   # epoch_2 first
    label(ordered[0])                                                           # "epoch 2"
    difference("epoch 2", [("relu1", (96, 16, 16))], "epoch 10", [("relu1", (64, 16, 16))])
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from zfnet.errors import InvalidArgument

# "epoch_3", "epoch-3", "epoch3", "iter_5000", "iteration_5000", "step_200" (the word is kept as the label's unit)
_NAMED = re.compile(r"(epoch|iter(?:ation)?|step)[_\-]?(\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")

Signature = list[tuple[str, tuple]]  # per chosen layer: (tensor name, shape per image)


def _stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".onnx", ".h5", ".caffemodel", ".pt", ".pth"):
        name = name.removesuffix(suffix)
    return name


def number(path: str | Path) -> tuple[str, int] | None:
    """The training step a snapshot's file name gives: (unit, number), e.g. ("epoch", 3), ("iter", 5000);
    the last number in the name when no word names it ("", n); None when the name has no number."""
    stem = _stem(path)
    named = _NAMED.findall(stem)
    if named:
        word, digits = named[-1]
        return ("iter" if word.lower().startswith("iter") else word.lower(), int(digits))
    plain = _NUMBER.findall(stem)
    return ("", int(plain[-1])) if plain else None


def label(path: str | Path) -> str:
    """A snapshot's column label: "epoch 3", "iter 5000", or the file's stem when it has no number."""
    found = number(path)
    if found is None:
        return _stem(path)
    unit, n = found
    return f"{unit} {n}" if unit else f"{_stem(path)}"


def in_training_order(paths: Sequence[str | Path]) -> list[Path]:
    """Snapshots sorted by the number in their names (numerically, not as strings); names without a
    number are refused, since their place in training is unknown."""
    steps = [(Path(p), number(p)) for p in paths]
    unnumbered = [str(p) for p, step in steps if step is None]
    if unnumbered:
        raise InvalidArgument(
            f"cannot tell where {', '.join(unnumbered)} comes in training: name snapshots with their epoch or iteration "
            f"(epoch_3.onnx, net_iter_5000.onnx), or pass them one by one with --model in training order"
        )
    return [p for _, _, p in sorted((step[1], str(p), p) for p, step in steps if step is not None)]


def _describe(name: str, shape: tuple) -> str:
    return f"{name} {tuple(shape)}"


def difference(first_label: str, first: Signature, other_label: str, other: Signature) -> str | None:
    """Why snapshot ``other_label``'s chosen layers differ from ``first_label``'s (name or shape), or None."""
    for k, ((name_a, shape_a), (name_b, shape_b)) in enumerate(zip(first, other)):
        if name_a != name_b or tuple(shape_a) != tuple(shape_b):
            what = "name" if name_a != name_b else "shape"
            return (
                f"snapshot {other_label!r} differs from {first_label!r} in the {what} of chosen layer {k + 1}: "
                f"{_describe(name_b, shape_b)} there, {_describe(name_a, shape_a)} in {first_label!r}; "
                f"snapshots of one training run share their architecture"
            )
    if len(first) != len(other):
        return f"snapshot {other_label!r} has {len(other)} of the chosen layers, {first_label!r} has {len(first)}"
    return None


def check_same(signatures: Sequence[tuple[str, Signature]]) -> None:
    """Refuse snapshots whose chosen layers differ from the first snapshot's (InvalidArgument, SNAPSHOTS_DIFFER)."""
    if not signatures:
        raise InvalidArgument("no snapshots given", reason="FIELD_REQUIRED")
    first_label, first = signatures[0]
    for other_label, other in signatures[1:]:
        why = difference(first_label, first, other_label, other)
        if why:
            raise InvalidArgument(why, reason="SNAPSHOTS_DIFFER", metadata={"snapshot": other_label, "reference": first_label})
