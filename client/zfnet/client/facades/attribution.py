"""Attribution: Grad-CAM(++) and input x gradient in one reply; integrated gradients and SmoothGrad
stream their progress, then their result."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zfnet.client.facades.perturbation import PerturbationFacade, ProgressCallback
from zfnet.wire.attribution import AttributionResult, InputXGradientRequest, IntegratedGradientsRequest, SmoothGradRequest, Target
from zfnet.wire.common import ImageInput, ImageLike, LayerKey
from zfnet.wire.gradcam import GradCamRequest, GradCamResult


def target(layer: LayerKey | None, units: Sequence[str | int]) -> Target:
    """A target: units (class names or indices at the output, channels elsewhere) of ``layer`` (None: the output)."""
    return Target(layer, [str(u) for u in units])


class AttributionFacade(PerturbationFacade):
    def grad_cam(
        self, model: str | Path, images: Sequence[ImageLike], layer: LayerKey | None = None, target_layer: LayerKey | None = None,
        units: Sequence[str | int] = (), variant: str = "grad_cam",
    ) -> GradCamResult:
        """Grad-CAM (or ``variant="grad_cam_plus_plus"``) of ``layer`` (None: the last convolutional
        layer) explaining ``units`` of ``target_layer`` (None: the output; no units: the top-1 class)."""
        request = GradCamRequest([ImageInput.of(i) for i in images], layer, target(target_layer, units), variant)
        return GradCamResult.from_proto(self._call(self.stub.GradCam, request.to_proto(self.model_ref(model))))

    def integrated_gradients(
        self, model: str | Path, images: Sequence[ImageLike], target_layer: LayerKey | None = None, units: Sequence[str | int] = (),
        baseline: str = "black", steps: int = 50, method: str = "gauss_legendre", blur_sigma: float | None = None, max_batch: int = 0,
        progress: ProgressCallback | None = None,
    ) -> AttributionResult:
        """Integrated gradients from ``baseline`` (black, mean, blurred) with the convergence delta."""
        request = IntegratedGradientsRequest(
            [ImageInput.of(i) for i in images], target(target_layer, units), baseline, steps, method, blur_sigma, max_batch,
        )
        return AttributionResult.from_proto(self._analysis(self.stub.IntegratedGradients, request.to_proto(self.model_ref(model)), progress))

    def smoothgrad(
        self, model: str | Path, images: Sequence[ImageLike], target_layer: LayerKey | None = None, units: Sequence[str | int] = (),
        type: str = "smoothgrad", method: str = "backprop", samples: int = 50, noise_level: float = 0.15, seed: int = 0, max_batch: int = 0,
        progress: ProgressCallback | None = None,
    ) -> AttributionResult:
        """SmoothGrad (``type="smoothgrad_squared"``: of squares) over ``method`` (backprop or guided)."""
        request = SmoothGradRequest([ImageInput.of(i) for i in images], target(target_layer, units), type, method, samples, noise_level, seed, max_batch)
        return AttributionResult.from_proto(self._analysis(self.stub.SmoothGrad, request.to_proto(self.model_ref(model)), progress))

    def input_x_gradient(self, model: str | Path, images: Sequence[ImageLike], target_layer: LayerKey | None = None, units: Sequence[str | int] = ()) -> AttributionResult:
        """The target's gradient times each image."""
        request = InputXGradientRequest([ImageInput.of(i) for i in images], target(target_layer, units))
        return AttributionResult.from_proto(self._call(self.stub.InputXGradient, request.to_proto(self.model_ref(model))))
