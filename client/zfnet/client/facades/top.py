"""Top-k images per feature map over a data set and their reconstructions (Zeiler & Fergus 2013, Fig. 2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from zfnet import errors
from zfnet.client.facades.datasets import Dataset, DatasetsFacade
from zfnet.topk import TopK
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import LayerKey, Progress
from zfnet.wire.top import K, Checkpoint, Collector, TopJob, TopResult, event_of

OnProgress = Callable[[Progress], None]


class TopFacade(DatasetsFacade):
    def top_scan(
        self, model: str | Path, dataset: Dataset, layers: Sequence[LayerKey], k: int = K, by: str = "max",
        channels: Sequence[int] | None = None, state: TopK | None = None, checkpoint_every: int = 0,
        on_progress: OnProgress | None = None, on_checkpoint: Callable[[TopK], object] | None = None, method: str | None = None,
    ) -> TopK:
        """The first pass of a top-k job: the running top-``k`` of every channel over ``dataset``'s range.
        With ``state`` (a checkpoint, or a shard's state), it reads only what the state has not read yet
        and returns the merged state. ``on_checkpoint`` gets the state every ``checkpoint_every`` images.
        Given the ``method`` of the reconstructions to come, the server refuses a layer it cannot project
        before reading any image."""
        if k <= 0:
            raise errors.InvalidArgument(f"k must be positive, got {k}")
        ranges = state.remaining(dataset.start, dataset.stop) if state is not None else [(dataset.start, dataset.stop)]
        job = TopJob(list(layers), dataset.source, k, by, list(channels) if channels else None, method, "scan", state, checkpoint_every)
        ref = self.model_ref(model)
        for start, stop in ranges:
            part = dataset.part(start, stop)
            final = None
            request = pb.TopRequest(job=replace(job, data=part.source, state=state).to_proto(ref))
            for reply in self._job(self.stub.TopActivations, request, part, lambda b: pb.TopRequest(batch=b)):
                event = event_of(reply, dataset.classes)
                if isinstance(event, Progress) and on_progress is not None:
                    on_progress(event)
                elif isinstance(event, Checkpoint) and not event.final and on_checkpoint is not None:
                    on_checkpoint(event.state)
                elif isinstance(event, Checkpoint) and event.final:
                    final = event.state
            if final is None:
                raise errors.ZfnetError("the server ended the top-k scan without its final state")
            state = final
        assert state is not None
        return state

    def top_reconstruct(
        self, model: str | Path, dataset: Dataset, state: TopK, method: str = "deconvnet", on_progress: OnProgress | None = None,
    ) -> TopResult:
        """The second pass: every winner of ``state`` with its image, patch box and reconstruction."""
        job = TopJob([], dataset.source, state.k, state.by, None, method, "reconstruct", state)
        collected = Collector(dataset.classes, method, state)
        request = pb.TopRequest(job=job.to_proto(self.model_ref(model)))
        for reply in self._job(self.stub.TopActivations, request, dataset, lambda b: pb.TopRequest(batch=b), state.winner_indices()):
            event = event_of(reply, dataset.classes)
            if isinstance(event, Progress):
                if on_progress is not None:
                    on_progress(event)
            else:
                collected.take(event)
        return collected.result()

    def top(
        self, model: str | Path, dataset: Dataset, layers: Sequence[LayerKey], k: int = K, by: str = "max",
        channels: Sequence[int] | None = None, method: str = "deconvnet", state: TopK | None = None,
        on_progress: OnProgress | None = None, on_checkpoint: Callable[[TopK], object] | None = None, checkpoint_every: int = 0,
    ) -> TopResult:
        """Top-``k`` images per channel of ``layers`` over ``dataset`` and their reconstructions (Zeiler &
        Fergus 2013, Fig. 2): :meth:`top_scan`, then :meth:`top_reconstruct`."""
        state = self.top_scan(model, dataset, layers, k, by, channels, state, checkpoint_every, on_progress, on_checkpoint, method)
        return self.top_reconstruct(model, dataset, state, method, on_progress)
