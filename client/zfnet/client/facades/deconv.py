"""Deconv: reconstructions of a layer's strongest activations, for any number of images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from zfnet.client.models import Models
from zfnet.tensors import MAX_MESSAGE_BYTES
from zfnet.wire.common import ImageInput, ImageLike, LayerKey
from zfnet.wire.deconv import TOP_K, DeconvRequest, DeconvResult

DECONV_BATCH = 32  # images per Deconv request when the client splits a long list
DECONV_ROWS = 1024  # reconstructions per Deconv request at most (the server takes up to 4096)


class DeconvFacade(Models):
    def deconv(
        self, model: str | Path, images: Sequence[ImageLike], layer: LayerKey,
        channels: Sequence[int] | None = None, top_k: int = TOP_K, mode: str = "max", method: str = "deconvnet",
    ) -> DeconvResult:
        """Reconstructions of ``layer`` for each image and channel."""
        request = DeconvRequest([ImageInput.of(i) for i in images], layer, list(channels) if channels else None, top_k, mode, method)
        return DeconvResult.from_proto(self._call(self.stub.Deconv, request.to_proto(self.model_ref(model))))

    def deconv_batches(
        self, model: str | Path, images: Sequence[ImageLike], layer: LayerKey, channels: Sequence[int] | None = None,
        top_k: int = TOP_K, mode: str = "max", method: str = "deconvnet", batch_size: int = 0,
    ) -> Iterator[tuple[int, int, DeconvResult]]:
        """:meth:`deconv` over any number of images, one request per batch: yields (start, stop,
        result) for ``images[start:stop]`` as each reply arrives (result image indices are relative
        to start). ``batch_size`` 0 picks the largest batch whose reply stays well inside the message limit."""
        if not batch_size:
            info = self.model_info(model)
            per_image = (len(channels) if channels else max(top_k, 1)) * 4 * int(np.prod(info.input_shape[1:]))
            batch_size = max(1, min(DECONV_BATCH, (MAX_MESSAGE_BYTES // 4) // max(per_image, 1), DECONV_ROWS // max(len(channels or []) or top_k, 1)))
        for start in range(0, len(images), batch_size):
            stop = min(start + batch_size, len(images))
            yield start, stop, self.deconv(model, images[start:stop], layer, channels, top_k, mode, method)
