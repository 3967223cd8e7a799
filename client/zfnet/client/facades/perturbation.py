"""The perturbation analyses (occlusion, invariance, correspondence): each streams its progress, then its result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from zfnet import errors
from zfnet.client.models import Models
from zfnet.wire.common import Box, ImageInput, ImageLike, LayerKey, Progress
from zfnet.wire.correspondence import CorrespondenceRequest, CorrespondenceResult
from zfnet.wire.invariance import InvarianceRequest, InvarianceResult
from zfnet.wire.occlusion import OcclusionRequest, OcclusionResult

ProgressCallback = Callable[[str, int, int], None]  # (stage, copies done, copies in all)


class PerturbationFacade(Models):
    def _analysis(self, method, request, progress: ProgressCallback | None):
        """Run a server-streaming analysis: report each progress message, return the final result message."""
        try:
            for reply in method(request, timeout=None):
                if reply.WhichOneof("reply") == "progress":
                    if progress is not None:
                        step = Progress.from_proto(reply.progress)
                        progress(step.stage, step.done, step.total)
                else:
                    return reply.result
        except grpc.RpcError as err:
            raise self._error(err) from None
        raise errors.Unavailable(f"the server at {self.target} ended the stream without a result")

    def occlusion(
        self, model: str | Path, images: Sequence[ImageLike], size: int | None = None, stride: int | None = None,
        fill: str = "mean", layer: LayerKey | None = None, true_classes: Sequence[str] = (), max_batch: int = 0,
        all_classes: bool = False, progress: ProgressCallback | None = None,
    ) -> OcclusionResult:
        """Occlusion sensitivity maps (b)-(e) of each image (the paper's Fig. 7)."""
        request = OcclusionRequest([ImageInput.of(i) for i in images], size, stride, fill, layer, list(true_classes), max_batch, all_classes)
        return OcclusionResult.from_proto(self._analysis(self.stub.Occlusion, request.to_proto(self.model_ref(model)), progress))

    def invariance(
        self, model: str | Path, images: Sequence[ImageLike], sweeps: Sequence[tuple[str, Sequence[float]]] = (),
        layers: Sequence[LayerKey] = (), border: str = "reflect", fill: str = "mean", true_classes: Sequence[str] = (),
        max_batch: int = 0, progress: ProgressCallback | None = None,
    ) -> InvarianceResult:
        """Feature distances and true-class probability under each sweep, ``(transform, values)``
        (empty values: the server's defaults; no sweeps: translate, scale and rotate) (the paper's Fig. 5)."""
        request = InvarianceRequest(
            [ImageInput.of(i) for i in images], [(name, list(values)) for name, values in sweeps], list(layers), border, fill, list(true_classes), max_batch,
        )
        return InvarianceResult.from_proto(self._analysis(self.stub.Invariance, request.to_proto(self.model_ref(model)), progress))

    def correspondence(
        self, model: str | Path, images: Sequence[ImageLike], parts: Sequence[str], boxes: Sequence[Sequence[Box]],
        random_trials: int | None = None, seed: int = 0, layers: Sequence[LayerKey] = (), fill: str = "mean",
        max_batch: int = 0, progress: ProgressCallback | None = None,
    ) -> CorrespondenceResult:
        """The paper's Delta per part and layer (Table 1); ``boxes[i][p]`` = (top, left, bottom, right)
        of part p in image i, model input pixels, bottom/right exclusive."""
        request = CorrespondenceRequest(
            [ImageInput.of(i) for i in images], list(parts), [list(b) for b in boxes], random_trials, seed, list(layers), fill, max_batch,
        )
        return CorrespondenceResult.from_proto(self._analysis(self.stub.Correspondence, request.to_proto(self.model_ref(model)), progress))
