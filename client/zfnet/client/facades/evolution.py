"""Feature evolution over training (Zeiler & Fergus 2013, Fig. 4): a top-1 job per snapshot."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from zfnet import errors, evolution
from zfnet.client.facades.activations import ActivationsFacade
from zfnet.client.facades.datasets import Dataset
from zfnet.client.facades.top import TopFacade
from zfnet.wire.common import LayerKey, Progress
from zfnet.wire.deconv import METHODS
from zfnet.wire.evolution import EvolutionColumn, EvolutionRequest, EvolutionResult, event_at
from zfnet.wire.top import Collector, TopResult

EvolutionProgress = Callable[[int, Progress], None]  # (snapshot position, progress)


class EvolutionFacade(TopFacade, ActivationsFacade):
    def evolution(
        self, models: Sequence[str | Path], dataset: Dataset, layers: Sequence[LayerKey], channels: Sequence[int] | None = None,
        method: str = "deconvnet", labels: Sequence[str] | None = None, on_progress: EvolutionProgress | None = None,
    ) -> EvolutionResult:
        """For each snapshot in turn (``models`` in training order; :func:`zfnet.evolution.in_training_order`
        sorts files), the strongest activation of each channel over ``dataset`` and its reconstruction,
        i.e. :meth:`top` with k = 1 per snapshot. A named data set runs as one Evolution call; a local
        folder, streamed, as one top-1 job per snapshot. Snapshots whose chosen layers differ in name or
        shape are refused before any image is read (SNAPSHOTS_DIFFER)."""
        METHODS.number(method, "method")
        if not models:
            raise errors.InvalidArgument("no snapshots given")
        labels = list(labels) if labels is not None else [evolution.label(m) for m in models]
        if len(labels) != len(models):
            raise errors.InvalidArgument(f"{len(labels)} labels for {len(models)} snapshots")
        report = on_progress or (lambda position, progress: None)
        if dataset.folder is None:
            results = self._evolution_call(models, dataset, layers, channels, method, labels, report)
        else:
            results = self._evolution_streamed(models, dataset, dataset.folder.files[dataset.start], layers, channels, method, labels, report)
        first = results[0].state
        columns = [EvolutionColumn(lab, str(m), r) for lab, m, r in zip(labels, models, results)]
        return EvolutionResult(list(first.layers), {name: [int(c) for c in top.channels] for name, top in first.layers.items()}, method, columns)

    def _evolution_call(self, models, dataset: Dataset, layers, channels, method: str, labels: list[str], report: EvolutionProgress) -> list[TopResult]:
        """One Evolution call over a named data set: each snapshot's replies collected as its top-1 result."""
        request = EvolutionRequest(labels, list(layers), dataset.source, list(channels) if channels else None, method)
        collectors = [Collector(dataset.classes, method) for _ in models]
        for reply in self._stream(self.stub.Evolution, request.to_proto([self.model_ref(m) for m in models])):
            position, event = event_at(reply, dataset.classes)
            if isinstance(event, Progress):
                report(position, event)
            else:
                collectors[position].take(event)
        return [c.result() for c in collectors]

    def _evolution_streamed(
        self, models, dataset: Dataset, probe: Path, layers, channels, method: str, labels: list[str], report: EvolutionProgress,
    ) -> list[TopResult]:
        """A local folder: the snapshots' chosen layers compared on one image, ``probe`` (a forward pass
        each), then a top-1 job per snapshot, streaming the folder each time."""
        signatures = []
        for label, model in zip(labels, models):
            found = [next(iter(self.activations(model, [probe], [layer]).items())) for layer in layers]  # one call per layer: a reply's map has no order
            signatures.append((label, [(name, tuple(a.shape[1:])) for name, a in found]))
        evolution.check_same(signatures)
        out = []
        for i, model in enumerate(models):
            report(i, Progress("snapshots", i, len(models)))
            out.append(self.top(model, dataset, layers, k=1, by="max", channels=channels, method=method, on_progress=functools.partial(report, i)))
        report(len(models) - 1, Progress("snapshots", len(models), len(models)))
        return out
