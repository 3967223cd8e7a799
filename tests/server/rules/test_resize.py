"""Resize and Upsample (nearest, linear) against PyTorch's interpolate where it has the same
semantics, and against onnxruntime's exact Jacobian for every mode (they are linear maps)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
import torch.nn.functional as F

from rule_testing import Case, check, make_model, node

SCALES_2X = np.array([1, 1, 2, 2], np.float32)
EMPTY = np.zeros(0, np.float32)


def resize(mode: str, coordinates: str | None = None, nearest: str | None = None, scales: Sequence[float] | np.ndarray = SCALES_2X,
           sizes: Sequence[int] | None = None, opset: int = 13, **attrs) -> onnx.ModelProto:
    """A Resize node on x (N, 2, 5, 6) with the given scales or sizes."""
    attrs = dict(attrs, mode=mode)
    if coordinates:
        attrs["coordinate_transformation_mode"] = coordinates
    if nearest:
        attrs["nearest_mode"] = nearest
    if sizes is not None:  # of the spatial axes (opset 18's axes): sizes of every axis would fix the batch
        return make_model([node("Resize", ["x", "", "", "sizes"], axes=[2, 3], **attrs)], (2, 5, 6), {"sizes": np.asarray(sizes, np.int64)}, opset=18)
    return make_model([node("Resize", ["x", "", "scales"], **attrs)], (2, 5, 6), {"scales": np.asarray(scales, np.float32)}, opset=opset)


RESIZE_CASES = {
    # the forms torch.onnx.export writes for F.interpolate, with PyTorch as the reference
    "nearest-2x": (resize("nearest", "asymmetric", "floor"), lambda x, relu: F.interpolate(x, scale_factor=2, mode="nearest")),
    "bilinear-2x": (resize("linear", "pytorch_half_pixel"), lambda x, relu: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)),
    "bilinear-align-corners": (resize("linear", "align_corners", sizes=[9, 7]),
                               lambda x, relu: F.interpolate(x, size=(9, 7), mode="bilinear", align_corners=True)),
    "bilinear-down": (resize("linear", "half_pixel", sizes=[3, 4]), lambda x, relu: F.interpolate(x, size=(3, 4), mode="bilinear", align_corners=False)),
    "nearest-exact-1.5x": (resize("nearest", "half_pixel", "round_prefer_ceil", sizes=[7, 9]),
                           lambda x, relu: F.interpolate(x, size=(7, 9), mode="nearest-exact")),
    # ONNX-only forms: onnxruntime's Jacobian is the reference
    "nearest-round-prefer-floor-1.5x": (resize("nearest", "half_pixel", scales=[1, 1, 1.5, 1.5]), None),
    "nearest-ceil-down": (resize("nearest", "asymmetric", "ceil", scales=[1, 1, 0.6, 0.5]), None),
    "linear-asymmetric-odd": (resize("linear", "asymmetric", scales=[1, 1, 1.7, 0.8]), None),
    "linear-tf-half-pixel-for-nn": (resize("nearest", "tf_half_pixel_for_nn", scales=[1, 1, 2, 3]), None),
    "linear-half-pixel-symmetric": (resize("linear", "half_pixel_symmetric", scales=[1, 1, 1.3, 1.6], opset=19), None),
    "axes-opset18": (make_model([node("Resize", ["x", "", "scales"], mode="linear", axes=[3])], (2, 5, 6), {"scales": np.array([2.0], np.float32)}, opset=18), None),
    "keep-aspect-not-larger": (make_model([node("Resize", ["x", "", "", "sizes"], mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger")],
                                          (2, 5, 6), {"sizes": np.array([8, 8], np.int64)}, opset=18), None),
    "resize-opset10": (make_model([node("Resize", ["x", "scales"], mode="nearest")], (2, 5, 6), {"scales": SCALES_2X}, opset=10), None),
    "resize-opset10-linear-down": (make_model([node("Resize", ["x", "scales"], mode="linear")], (2, 5, 6), {"scales": np.array([1, 1, 0.5, 0.5], np.float32)},
                                              opset=10), None),
    "upsample-opset9": (make_model([node("Upsample", ["x", "scales"], mode="nearest")], (2, 5, 6), {"scales": SCALES_2X}, opset=9), None),
    "upsample-opset7-linear": (make_model([node("Upsample", ["x"], mode="linear", scales=[1.0, 1.0, 2.0, 3.0])], (2, 5, 6), opset=7), None),
}


@pytest.mark.parametrize("name", RESIZE_CASES)
def test_resize(name):
    model, ref = RESIZE_CASES[name]
    check(Case(model, (2, 5, 6), ref, affine=True), f"resize-{name}")
