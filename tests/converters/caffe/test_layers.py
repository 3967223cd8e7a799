"""One small prototxt net per layer family, weights in both formats, against an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zfnet.converters.caffe import convert

from caffe_testing import assert_close, deploy, run, write_weights


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, np.float64))


# -- Convolution, Deconvolution ------------------------------------------------------------------


def test_convolution_grouped_dilated(convert_net, rng):
    w, b = rng.normal(size=(6, 2, 3, 3)), rng.normal(size=6)
    net = deploy((1, 4, 11, 10), """
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 6 kernel_size: 3 group: 2 dilation: 2 pad: 1 stride: 2 } }""")
    x = rng.normal(size=(2, 4, 11, 10))
    got = run(convert_net(net, {"conv": [w, b]}), x)["conv"]
    assert_close(got, F.conv2d(t(x), t(w), t(b), stride=2, padding=1, dilation=2, groups=2))


def test_convolution_hw_variants_without_bias(convert_net, rng):
    w = rng.normal(size=(3, 2, 3, 2))
    net = deploy((1, 2, 9, 8), """
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 3 bias_term: false kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 } }""")
    x = rng.normal(size=(1, 2, 9, 8))
    got = run(convert_net(net, {"conv": [w]}), x)["conv"]
    assert_close(got, F.conv2d(t(x), t(w), stride=(2, 1), padding=(1, 0)))


def test_deconvolution(convert_net, rng):
    w, b = rng.normal(size=(4, 3, 4, 4)), rng.normal(size=6)
    net = deploy((1, 4, 5, 6), """
        layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
                convolution_param { num_output: 6 group: 2 kernel_size: 4 stride: 2 pad: 1 } }""")
    x = rng.normal(size=(2, 4, 5, 6))
    got = run(convert_net(net, {"up": [w, b]}), x)["up"]
    assert got.shape == (2, 6, 10, 12)  # Caffe: stride (in - 1) + kernel - 2 pad
    assert_close(got, F.conv_transpose2d(t(x), t(w), t(b), stride=2, padding=1, groups=2))


# -- Pooling -------------------------------------------------------------------------------------


def caffe_pool(x: np.ndarray, kernel, stride, pad, pool: str, ceil: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's PoolingLayer forward, written from its source: output and (MAX) mask ``h * W + w``."""
    n, c, height, width = x.shape

    def size(extent, k, s, p):
        out = int(np.ceil((extent + 2 * p - k) / s) if ceil else np.floor((extent + 2 * p - k) / s)) + 1
        return out - 1 if p > 0 and (out - 1) * s >= extent + p else out

    oh, ow = size(height, kernel[0], stride[0], pad[0]), size(width, kernel[1], stride[1], pad[1])
    out, mask = np.zeros((n, c, oh, ow)), np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
            if pool == "MAX":
                he, we, hs, ws = min(hs + kernel[0], height), min(ws + kernel[1], width), max(hs, 0), max(ws, 0)
                window = x[:, :, hs:he, ws:we].reshape(n, c, -1)
                out[:, :, i, j] = window.max(axis=2)
                flat = window.argmax(axis=2)
                mask[:, :, i, j] = (hs + flat // (we - ws)) * width + ws + flat % (we - ws)
            else:
                he, we = min(hs + kernel[0], height + pad[0]), min(ws + kernel[1], width + pad[1])
                count = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, height), min(we, width)
                out[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / count
    return out, mask


POOL_CASES = [  # (H, W), kernel, stride, pad: odd sizes, padding, overhanging last windows
    ((7, 9), 3, 2, 1),
    ((8, 8), 3, 2, 1),
    ((9, 6), 2, 2, 1),
    ((16, 16), 3, 2, 0),
    ((11, 10), 4, 3, 2),
    ((5, 7), 3, 1, 1),
]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("size,kernel,stride,pad", POOL_CASES)
def test_pooling_ceil_mode_matches_caffe(convert_net, rng, pool, size, kernel, stride, pad):
    net = deploy((1, 2, *size), f"""
        layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
                pooling_param {{ pool: {pool} kernel_size: {kernel} stride: {stride} pad: {pad} }} }}""")
    x = rng.normal(size=(2, 2, *size))
    got = run(convert_net(net, {}), x)["pool"]
    assert_close(got, caffe_pool(x, (kernel,) * 2, (stride,) * 2, (pad,) * 2, pool)[0])


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_floor_mode_and_hw_variants(convert_net, rng, pool):
    net = deploy((1, 3, 9, 10), f"""
        layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
                pooling_param {{ pool: {pool} kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1 round_mode: FLOOR }} }}""")
    x = rng.normal(size=(1, 3, 9, 10))
    got = run(convert_net(net, {}), x)["pool"]
    assert_close(got, caffe_pool(x, (3, 2), (2, 3), (1, 1), pool, ceil=False)[0])


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_global_pooling(convert_net, rng, pool):
    net = deploy((1, 3, 5, 7), f'layer {{ name: "gp" type: "Pooling" bottom: "data" top: "gp" pooling_param {{ pool: {pool} global_pooling: true }} }}')
    x = rng.normal(size=(2, 3, 5, 7))
    got = run(convert_net(net, {}), x)["gp"]
    assert_close(got, x.max(axis=(2, 3), keepdims=True) if pool == "MAX" else x.mean(axis=(2, 3), keepdims=True))


def test_max_pooling_mask_top(convert_net, rng):
    net = deploy((1, 2, 7, 9), """
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
                pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }""")
    x = rng.normal(size=(2, 2, 7, 9))
    outputs = run(convert_net(net, {}), x)
    want, mask = caffe_pool(x, (3, 3), (2, 2), (1, 1), "MAX")
    assert_close(outputs["pool"], want)
    np.testing.assert_array_equal(outputs["pool/mask"], mask)


# -- Activations ---------------------------------------------------------------------------------


ACTIVATIONS = [
    ('type: "ReLU"', lambda x: np.maximum(x, 0)),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda x: np.where(x > 0, x, 0.1 * x)),
    ('type: "Sigmoid"', lambda x: 1 / (1 + np.exp(-x))),
    ('type: "TanH"', np.tanh),
    ('type: "ELU" elu_param { alpha: 0.5 }', lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    ('type: "AbsVal"', np.abs),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 3 }', lambda x: (3 + 0.5 * x) ** 2),
    ('type: "Power" power_param { shift: -1 }', lambda x: x - 1),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', lambda x: x),
    ('type: "Softmax"', lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)),
    ('type: "Softmax" softmax_param { axis: -1 }', lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)),
]


@pytest.mark.parametrize("params,reference", ACTIVATIONS, ids=[p for p, _ in ACTIVATIONS])
def test_elementwise_activation(convert_net, rng, params, reference):
    net = deploy((1, 3, 4, 5), f'layer {{ name: "act" {params} bottom: "data" top: "act" }}')
    x = rng.normal(size=(2, 3, 4, 5))
    assert_close(run(convert_net(net, {}), x)["act"], reference(x))


@pytest.mark.parametrize("shared", [False, True])
def test_prelu(convert_net, rng, shared):
    slope = rng.normal(size=1 if shared else 3)
    net = deploy((1, 3, 4, 5), f'layer {{ name: "prelu" type: "PReLU" bottom: "data" top: "prelu" prelu_param {{ channel_shared: {str(shared).lower()} }} }}')
    x = rng.normal(size=(2, 3, 4, 5))
    want = np.where(x > 0, x, slope.reshape(-1, 1, 1) * x)
    assert_close(run(convert_net(net, {"prelu": [slope]}), x)["prelu"], want)


# -- LRN -----------------------------------------------------------------------------------------


def lrn_across(x, n, alpha, beta, k):
    """Caffe ACROSS_CHANNELS: ``x / (k + alpha/n * sum over n channels of x^2)^beta``."""
    half, out = (n - 1) // 2, np.empty_like(x)
    for c in range(x.shape[1]):
        window = x[:, max(0, c - half) : c + half + 1] ** 2
        out[:, c] = x[:, c] / (k + alpha / n * window.sum(axis=1)) ** beta
    return out


def lrn_within(x, n, alpha, beta):
    """Caffe WITHIN_CHANNEL: ``x / (1 + alpha/n^2 * sum over an n x n window of x^2)^beta``."""
    half = (n - 1) // 2
    padded = np.pad(x**2, ((0, 0), (0, 0), (half, half), (half, half)))
    sums = sum(padded[:, :, i : i + x.shape[2], j : j + x.shape[3]] for i in range(n) for j in range(n))
    return x / (1 + alpha / n**2 * sums) ** beta


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_with_k(convert_net, rng, region):
    net = deploy((1, 7, 6, 5), f"""
        layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm"
                lrn_param {{ local_size: 3 alpha: 0.7 beta: 0.6 k: 2.5 norm_region: {region} }} }}""")
    x = rng.normal(size=(2, 7, 6, 5)) * 3
    got = run(convert_net(net, {}), x)["norm"]
    assert_close(got, lrn_across(x, 3, 0.7, 0.6, 2.5) if region == "ACROSS_CHANNELS" else lrn_within(x, 3, 0.7, 0.6))


# -- InnerProduct --------------------------------------------------------------------------------


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_flattens_from_axis_1(convert_net, rng, transpose):
    w, b = rng.normal(size=(60, 5)), rng.normal(size=5)  # K = 3 * 4 * 5 in C order
    net = deploy((1, 3, 4, 5), f"""
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param {{ num_output: 5 transpose: {str(transpose).lower()} }} }}""")
    x = rng.normal(size=(2, 3, 4, 5))
    got = run(convert_net(net, {"ip": [w if transpose else w.T, b]}), x)["ip"]
    assert_close(got, x.reshape(2, -1) @ w + b)


def test_inner_product_axis_2_without_bias(convert_net, rng):
    w = rng.normal(size=(4, 20))
    net = deploy((1, 3, 4, 5), """
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 4 axis: 2 bias_term: false } }""")
    x = rng.normal(size=(2, 3, 4, 5))
    got = run(convert_net(net, {"ip": [w]}), x)["ip"]
    assert_close(got, x.reshape(2, 3, 20) @ w.T)


# -- BatchNorm, Scale ----------------------------------------------------------------------------


def test_batchnorm_with_scale_factor_then_scale_with_bias(convert_net, rng):
    mean, var, gamma, beta = rng.normal(size=4), rng.uniform(0.5, 2, size=4), rng.normal(size=4), rng.normal(size=4)
    factor = 0.25  # Caffe stores sums: the statistics are blob / factor
    net = deploy((1, 4, 3, 3), """
        layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" batch_norm_param { eps: 0.001 } }
        layer { name: "scale" type: "Scale" bottom: "data" top: "data" scale_param { bias_term: true } }""")
    x = rng.normal(size=(2, 4, 3, 3))
    model = convert_net(net, {"bn": [mean * factor, var * factor, np.array([factor])], "scale": [gamma, beta]})
    outputs = run(model, x, ["bn"])
    c = (slice(None), None, None)
    normalised = (x - mean[c]) / np.sqrt(var[c] + 0.001)
    assert_close(outputs["bn"], normalised)
    assert_close(outputs["scale"], normalised * gamma[c] + beta[c])


def test_batchnorm_zero_factor_means_zero_statistics(convert_net, rng):
    net = deploy((1, 2, 3, 3), 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }')
    x = rng.normal(size=(1, 2, 3, 3))
    got = run(convert_net(net, {"bn": [np.ones(2), np.ones(2), np.zeros(1)]}), x)["bn"]
    assert_close(got, x / np.sqrt(1e-5))


def test_scale_without_bias_over_two_axes(convert_net, rng):
    gamma = rng.normal(size=(3, 4))
    net = deploy((1, 3, 4, 5), 'layer { name: "scale" type: "Scale" bottom: "data" top: "scale" scale_param { num_axes: 2 } }')
    x = rng.normal(size=(2, 3, 4, 5))
    assert_close(run(convert_net(net, {"scale": [gamma]}), x)["scale"], x * gamma[:, :, None])


def test_scale_by_second_bottom(convert_net, rng):
    """Squeeze-and-excitation style: per-image, per-channel factors from another layer."""
    net = deploy((1, 3, 4, 5), """
        layer { name: "gap" type: "Pooling" bottom: "data" top: "gap" pooling_param { pool: AVE global_pooling: true } }
        layer { name: "flat" type: "Flatten" bottom: "gap" top: "flat" }
        layer { name: "scale" type: "Scale" bottom: "data" bottom: "flat" top: "scale" scale_param { axis: 0 } }""")
    x = rng.normal(size=(2, 3, 4, 5))
    assert_close(run(convert_net(net, {}), x)["scale"], x * x.mean(axis=(2, 3))[:, :, None, None])


# -- Eltwise -------------------------------------------------------------------------------------


@pytest.mark.parametrize("params,reference", [
    ("operation: SUM coeff: 0.5 coeff: -2 coeff: 1", lambda a, b, c: 0.5 * a - 2 * b + c),
    ("operation: SUM", lambda a, b, c: a + b + c),
    ("operation: PROD", lambda a, b, c: a * b * c),
    ("operation: MAX", lambda a, b, c: np.maximum(np.maximum(a, b), c)),
])  # fmt: skip
def test_eltwise(convert_net, rng, params, reference):
    net = deploy((1, 2, 3, 3), f"""
        layer {{ name: "a" type: "TanH" bottom: "data" top: "a" }}
        layer {{ name: "b" type: "Sigmoid" bottom: "data" top: "b" }}
        layer {{ name: "sum" type: "Eltwise" bottom: "a" bottom: "b" bottom: "data" top: "sum" eltwise_param {{ {params} }} }}""")
    x = rng.normal(size=(2, 2, 3, 3))
    assert_close(run(convert_net(net, {}), x)["sum"], reference(np.tanh(x), 1 / (1 + np.exp(-x)), x))


# -- Concat, Flatten, Reshape, Split, Slice, Silence ---------------------------------------------


def test_split_slice_concat_silence(convert_net, rng):
    net = deploy((1, 6, 3, 4), """
        layer { name: "split" type: "Split" bottom: "data" top: "s1" top: "s2" }
        layer { name: "slice" type: "Slice" bottom: "s1" top: "p1" top: "p2" top: "p3" slice_param { axis: 1 slice_point: 1 slice_point: 4 } }
        layer { name: "halves" type: "Slice" bottom: "s2" top: "h1" top: "h2" slice_param { axis: -1 } }
        layer { name: "cat" type: "Concat" bottom: "p3" bottom: "p1" top: "cat" }
        layer { name: "quiet" type: "Silence" bottom: "p2" bottom: "h1" }""")
    x = rng.normal(size=(2, 6, 3, 4))
    model = convert_net(net, {})
    assert [o.name for o in model.graph.output] == ["halves/h2", "cat"]  # Caffe's net outputs: tops nobody consumes
    outputs = run(model, x, ["split", "split/s2", "slice", "slice/p2"])
    assert_close(outputs["split"], x)
    assert_close(outputs["split/s2"], x)
    assert_close(outputs["slice"], x[:, :1])
    assert_close(outputs["slice/p2"], x[:, 1:4])
    assert_close(outputs["halves/h2"], x[..., 2:])
    assert_close(outputs["cat"], np.concatenate([x[:, 4:], x[:, :1]], axis=1))


@pytest.mark.parametrize("params,shape", [
    ('type: "Flatten"', (2, 60)),
    ('type: "Flatten" flatten_param { axis: 2 end_axis: -1 }', (2, 3, 20)),
    ('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', (2, 12, 5)),
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }', (2, 30, 2)),
    ('type: "Reshape" reshape_param { shape { dim: -1 dim: 60 } }', (2, 60)),
    ('type: "Reshape" reshape_param { shape { dim: 3 dim: 1 } axis: 1 num_axes: 1 }', (2, 3, 1, 4, 5)),
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: 5 dim: 1 } axis: -3 }', (2, 3, 4, 5, 1)),
])  # fmt: skip
def test_flatten_and_reshape(convert_net, rng, params, shape):
    net = deploy((1, 3, 4, 5), f'layer {{ name: "r" {params} bottom: "data" top: "r" }}')
    x = rng.normal(size=(2, 3, 4, 5))
    model = convert_net(net, {})
    dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", *shape[1:]]
    assert_close(run(model, x)["r"], x.reshape(shape))


# -- Nets: in-place layers, V1 format, inputs, train/test phases, shared weights -----------------


def test_in_place_layers_are_exposed_as_their_own_tensors(convert_net, rng):
    w, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    net = deploy((1, 3, 6, 6), """
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
        layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
        layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" }
        layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }""")
    x = rng.normal(size=(2, 3, 6, 6))
    outputs = run(convert_net(net, {"conv1": [w, b]}), x, ["conv1", "relu1", "drop1"])
    conv = F.conv2d(t(x), t(w), t(b)).numpy()
    assert (conv < 0).any()
    assert_close(outputs["conv1"], conv)
    assert_close(outputs["relu1"], np.maximum(conv, 0))
    assert_close(outputs["drop1"], np.maximum(conv, 0))
    assert_close(outputs["pool1"], F.max_pool2d(t(np.maximum(conv, 0)), 2))


V1_NET = """name: "v1"
input: "data"
input_dim: 1 input_dim: 2 input_dim: 6 input_dim: 6
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" convolution_param { num_output: 3 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layers { name: "ip" type: INNER_PRODUCT bottom: "pool" top: "ip" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "ip" top: "prob" }
"""


def test_v1_layers_format_with_legacy_4d_blobs(convert_net, rng):
    w, b, w_ip, b_ip = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), rng.normal(size=(5, 12)), rng.normal(size=5)
    blobs = {"conv": [w, b.reshape(1, 1, 1, 3)], "ip": [w_ip.reshape(1, 1, 5, 12), b_ip.reshape(1, 1, 1, 5)]}
    x = rng.normal(size=(2, 2, 6, 6))
    outputs = run(convert_net(V1_NET, blobs, v1=True), x, ["relu", "pool"])
    pooled = caffe_pool(np.maximum(F.conv2d(t(x), t(w), t(b)).numpy(), 0), (3, 3), (2, 2), (0, 0), "AVE")[0]
    assert_close(outputs["pool"], pooled)
    logits = pooled.reshape(2, -1) @ w_ip.T + b_ip
    assert_close(outputs["prob"], np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("header", [
    'input: "img" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }',
    'input: "img" input_dim: 10 input_dim: 3 input_dim: 5 input_dim: 5',
    'layer { name: "in" type: "Input" top: "img" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } } }',
])  # fmt: skip
def test_deploy_input_forms(convert_net, rng, header):
    model = convert_net(f'{header}\nlayer {{ name: "act" type: "AbsVal" bottom: "img" top: "act" }}', {})
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert (model.graph.input[0].name, dims) == ("data", ["N", 3, 5, 5])
    x = rng.normal(size=(4, 3, 5, 5))
    assert_close(run(model, x)["act"], np.abs(x))


TRAIN_TEST = """name: "tt"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.5 crop_size: 5 } data_param { source: "train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.25 crop_size: 4 mean_value: 3 } data_param { source: "test_lmdb" batch_size: 100 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "noise" type: "Dropout" bottom: "ip" top: "ip" include { phase: TRAIN } }
layer { name: "tail" type: "TanH" bottom: "ip" top: "tail" exclude { phase: TRAIN } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "silence_label" type: "Silence" bottom: "label" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_train_test_net_takes_the_test_phase(convert_net, rng):
    w, b = rng.normal(size=(2, 48)), rng.normal(size=2)
    model = convert_net(TRAIN_TEST, {"ip": [w, b]})
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 4, 4]  # C from the default 3, H, W from the TEST crop_size
    assert [o.name for o in model.graph.output] == ["tail"]
    assert {n.op_type for n in model.graph.node} == {"Sub", "Mul", "Flatten", "Gemm", "Tanh"}
    x = rng.uniform(0, 255, size=(2, 3, 4, 4))
    assert_close(run(model, x)["tail"], np.tanh(((x - 3) * 0.25).reshape(2, -1) @ w.T + b))


def test_shared_weights_absent_from_hdf5_come_from_their_owner(tmp_path, rng):
    w = rng.normal(size=(2, 2, 1, 1))
    net = tmp_path / "net.prototxt"
    net.write_text(deploy((1, 2, 3, 3), """
        layer { name: "a" type: "Convolution" bottom: "data" top: "a" param { name: "shared_w" } convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }
        layer { name: "b" type: "Convolution" bottom: "a" top: "b" param { name: "shared_w" } convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }"""))
    weights = write_weights(tmp_path, {"a": [w]})["h5"]
    x = rng.normal(size=(1, 2, 3, 3))
    got = run(convert(net, weights, channel_order="rgb"), x)["b"]
    assert_close(got, F.conv2d(F.conv2d(t(x), t(w)), t(w)))
