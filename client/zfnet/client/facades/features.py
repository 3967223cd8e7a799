"""Features of chosen layers over a data set, streamed back as rows (transfer learning)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from zfnet import errors
from zfnet.client.facades.datasets import Dataset, DatasetsFacade
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import LayerKey, layer_key
from zfnet.wire.features import FeatureBatch, FeatureHeader, FeaturesJob, Pooling


class FeatureStream:
    """A running features job: ``header`` says what the rows hold; iterating yields
    :class:`~zfnet.wire.features.FeatureBatch` es in data-set order. ``close()`` cancels the job."""

    def __init__(self, replies: Iterator[pb.FeaturesReply]) -> None:
        self._replies = replies
        first = next(replies, None)
        if first is None or not first.HasField("header"):
            raise errors.ZfnetError("the server did not start the features job (no FeaturesHeader)")
        self.header = FeatureHeader.from_proto(first.header)

    def __iter__(self) -> Iterator[FeatureBatch]:
        for reply in self._replies:
            yield FeatureBatch.from_proto(reply, self.header)

    def close(self) -> None:
        close = getattr(self._replies, "close", None)
        if close is not None:
            close()


class FeaturesFacade(DatasetsFacade):
    def features(
        self, model: str | Path, data: str | Path | Dataset, layers: Sequence[LayerKey], pool: str = "none",
        layer_pool: dict[str, str] | None = None, dtype: str = "float32", start: int = 0, stop: int = 0, batch_size: int = 0,
    ) -> FeatureStream:
        """Features of ``layers`` (numbers, tensor names, or ``"pixels"`` for the model input) over a data
        set (a local folder, a server data-set name, or a :class:`Dataset`), ``[start, stop)``. ``pool``
        (``none | avg | max | grid:S``) applies to the network layers with spatial axes; ``layer_pool``
        maps a layer (as given in ``layers``) to its own pooling. Iterate the stream for the batches."""
        layer_pool = {str(k): v for k, v in (layer_pool or {}).items()}
        unknown = sorted(set(layer_pool) - {str(x) for x in layers})
        if unknown:
            raise errors.InvalidArgument(f"pooling given for layer(s) {', '.join(unknown)} that are not among the layers asked for")
        asked = [(layer_key(x), Pooling.parse(layer_pool[str(x)]) if str(x) in layer_pool else None) for x in layers]
        default = Pooling.parse(pool)
        dataset = data if isinstance(data, Dataset) else self.dataset(data, start, stop, batch_size)
        job = FeaturesJob(asked, dataset.source, default, dtype)
        request = pb.FeaturesRequest(job=job.to_proto(self.model_ref(model)))
        return FeatureStream(self._job(self.stub.Features, request, dataset, lambda batch: pb.FeaturesRequest(batch=batch)))
