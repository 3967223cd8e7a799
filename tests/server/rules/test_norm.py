"""Normalisation against autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from rule_testing import Case, T, check, make_model, node


@pytest.mark.parametrize("shape", [(4, 3, 5), (4,), (4, 6)])
def test_batch_norm(shape):
    rng = np.random.default_rng(5)
    scale, bias = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    mean, var = rng.standard_normal(4).astype(np.float32), rng.uniform(0.2, 2.0, 4).astype(np.float32)
    inits = {"scale": scale, "bias": bias, "mean": mean, "var": var}
    model = make_model([node("BatchNormalization", ["x", *inits], epsilon=1e-3)], shape, inits)

    def ref(x, relu):
        return F.batch_norm(x, T(mean), T(var), T(scale), T(bias), training=False, eps=1e-3)

    check(Case(model, shape, ref, affine=True), f"bn-{shape}")


@pytest.mark.parametrize("size, alpha, beta, bias", [(3, 0.5, 0.75, 2.0), (5, 1e-2, 0.75, 1.0), (5, 2.0, 0.5, 1.5), (3, 1e-4, 0.75, 1.0)])
def test_lrn(size, alpha, beta, bias):
    """torch's local_response_norm divides alpha by size, like ONNX (checked by the forward comparison).
    Odd sizes only: onnxruntime refuses an even one (where torch's window would differ from ONNX's)."""
    model = make_model([node("LRN", ["x"], size=size, alpha=alpha, beta=beta, bias=bias)], (7, 3, 4))

    def ref(x, relu):
        return F.local_response_norm(x, size, alpha, beta, bias)

    check(Case(model, (7, 3, 4), ref, make_x=lambda rng, shape: rng.standard_normal(shape) * 1.5), f"lrn-{size}-{alpha}")


@pytest.mark.parametrize("axis, shape", [(-1, (4, 6)), (-2, (3, 4, 5)), (1, (3, 4))])
def test_layer_norm(axis, shape):
    normalized = shape[axis:] if axis < 0 else shape[axis - 1 :]
    rng = np.random.default_rng(7)
    scale, bias = rng.uniform(0.5, 1.5, normalized).astype(np.float32), rng.standard_normal(normalized).astype(np.float32)
    model = make_model([node("LayerNormalization", ["x", "scale", "bias"], axis=axis, epsilon=1e-3)], shape, {"scale": scale, "bias": bias}, opset=17)

    def ref(x, relu):
        return F.layer_norm(x, normalized, T(scale), T(bias), eps=1e-3)

    check(Case(model, shape, ref), f"layernorm-{axis}-{shape}")


def test_layer_norm_channels_last_like_convnext():
    """Transpose to channels-last, LayerNorm over the channels, transpose back."""
    scale = np.linspace(0.5, 1.5, 4).astype(np.float32)
    nodes = [node("Transpose", ["x"], "t", perm=[0, 2, 3, 1]), node("LayerNormalization", ["t", "scale"], "n", epsilon=1e-6),
             node("Transpose", ["n"], perm=[0, 3, 1, 2])]

    def ref(x, relu):
        return F.layer_norm(x.permute(0, 2, 3, 1), (4,), T(scale), None, 1e-6).permute(0, 3, 1, 2)

    check(Case(make_model(nodes, (4, 3, 5), {"scale": scale}, opset=17), (4, 3, 5), ref), "layernorm-channels-last")


def test_instance_norm():
    rng = np.random.default_rng(9)
    scale, bias = rng.uniform(0.5, 1.5, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    model = make_model([node("InstanceNormalization", ["x", "scale", "bias"], epsilon=1e-4)], (3, 4, 5), {"scale": scale, "bias": bias})
    check(Case(model, (3, 4, 5), lambda x, relu: F.instance_norm(x, weight=T(scale), bias=T(bias), eps=1e-4)), "instancenorm")


def test_batch_norm_before_opset_9():
    """Legacy exports at opsets 7 and 8 keep BatchNormalization (and its old attributes)."""
    rng = np.random.default_rng(3)
    scale, bias = rng.uniform(0.5, 1.5, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    mean, var = rng.standard_normal(3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    inits = {"scale": scale, "bias": bias, "mean": mean, "var": var}
    model = make_model([node("BatchNormalization", ["x", *inits], epsilon=1e-5)], (3, 4, 5), inits, opset=7)
    check(Case(model, (3, 4, 5), lambda x, relu: F.batch_norm(x, T(mean), T(var), T(scale), T(bias), False, eps=1e-5), affine=True), "bn-opset7")
