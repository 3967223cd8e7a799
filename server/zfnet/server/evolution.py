"""Feature evolution over training (Zeiler & Fergus 2013, Fig. 4): a top-1 job per snapshot.

For each snapshot of a training run, one after another, the strongest activation of every chosen
channel over a data set and its reconstruction: exactly the top-k job of :mod:`zfnet.server.top`
with k = 1, ranked by the map's maximum, so a column of the comparison is what ``top --k 1`` gives
on that snapshot alone. Snapshots are loaded when their turn comes and nothing of one is kept for
the next (bounded memory); every snapshot's chosen layers are checked against the first's before
any image is read (:func:`zfnet.evolution.check_same`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from zfnet import evolution
from zfnet.errors import InvalidArgument, NotFound
from zfnet.server import top
from zfnet.server.datasets import Source
from zfnet.server.layers import resolve
from zfnet.server.models import LoadedModel
from zfnet.wire.common import Progress
from zfnet.wire.top import Checkpoint, Event

SNAPSHOTS = "snapshots"  # the stage of the progress across snapshots


@dataclass(frozen=True)
class Snapshot:
    """A snapshot to load when its turn comes, and its label for messages."""

    label: str
    load: Callable[[], LoadedModel]


def signature(model: LoadedModel, layers: Sequence[str | int], label: str, first: bool) -> evolution.Signature:
    """(tensor name, shape per image) of each chosen layer; a layer the first snapshot has and a later
    one lacks is a difference between them (SNAPSHOTS_DIFFER), not an unknown layer."""
    out = []
    for ref in layers:
        try:
            row = resolve(model.layers, ref)
        except NotFound as err:
            if first:
                raise
            raise InvalidArgument(f"snapshot {label!r} has no layer {ref!r} ({err}); snapshots of one training run share their architecture", reason="SNAPSHOTS_DIFFER", metadata={"snapshot": label}) from None
        out.append((row.name, tuple(row.shape[1:])))
    return out


def job(
    snapshots: Sequence[Snapshot], source: Callable[[], Source], *, data: str, layers: list[str | int],
    channels: list[int] | None, method: str,
) -> Iterator[tuple[int, Event]]:
    """(snapshot position, event) for every snapshot in turn: progress across snapshots, then that
    snapshot's top-1 job (``source()`` gives a fresh reading of the data set each time); the final
    state of each scan, no intermediate checkpoints."""
    if not snapshots:
        raise InvalidArgument("no snapshots given", field="models", reason="FIELD_REQUIRED")
    if not layers:
        raise InvalidArgument("no layers asked for", field="layers", reason="FIELD_REQUIRED")
    evolution.check_same([(s.label, signature(s.load(), layers, s.label, i == 0)) for i, s in enumerate(snapshots)])
    total = len(snapshots)
    for i, snapshot in enumerate(snapshots):
        yield i, Progress(SNAPSHOTS, i, total, [])
        model = snapshot.load()
        for event in top.job(model, source(), data=data, layers=layers, channels=channels, k=1, by="max", method=method, stage="all", state=None):
            if not (isinstance(event, Checkpoint) and not event.final):
                yield i, event
        del model
    yield total - 1, Progress(SNAPSHOTS, total, total, [])
