"""Whole projections: chains of ops, several layers, Captum, rows that must not mix, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from rule_testing import Case, METHODS, N_IMAGES, Projector, Reference, T, assert_close, check, make_model, node, weights
from zfnet.converters import expose
from zfnet.errors import FailedPrecondition, InvalidArgument
from zfnet.server import projection


# -- chains ----------------------------------------------------------------------------------------
def chain_model() -> tuple[onnx.ModelProto, Reference]:
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> Flatten -> Gemm."""
    w1, b1 = weights(21, 4, 3, 3, 3, scale=0.5), weights(22, 4)
    w2, b2 = weights(23, 5, 4, 3, 3, scale=0.5), weights(24, 5)
    fc, fb = weights(25, 6, 5 * 3 * 3, scale=0.3), weights(26, 6)
    nodes = [
        node("Conv", ["x", "w1", "b1"], "conv1", pads=[1, 1, 1, 1]),
        node("Relu", ["conv1"], "relu1"),
        node("MaxPool", ["relu1"], "pool1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("Conv", ["pool1", "w2", "b2"], "conv2"),
        node("Relu", ["conv2"], "relu2"),
        node("Flatten", ["relu2"], "flat"),
        node("Gemm", ["flat", "fc", "fb"], "y", transB=1),
    ]
    model = make_model(nodes, (3, 9, 9), dict(w1=w1, b1=b1, w2=w2, b2=b2, fc=fc, fb=fb))

    def ref(x, relu):
        x = relu(F.conv2d(x, T(w1), T(b1), padding=1))
        x = F.max_pool2d(x, 3, 2, 1)
        x = relu(F.conv2d(x, T(w2), T(b2)))
        return x.flatten(1) @ T(fc).T + T(fb)

    return model, ref


def test_chain_all_methods():
    model, ref = chain_model()
    check(Case(model, (3, 9, 9), ref), "chain")


@pytest.mark.parametrize("layer", ["relu1", "pool1", "conv2", "relu2"])
def test_chain_intermediate_layers(layer):
    model, _ = chain_model()

    def partial(x, relu):  # the reference up to ``layer``
        w = {i.name: T(numpy_helper.to_array(i)) for i in model.graph.initializer}
        x = F.conv2d(x, w["w1"], w["b1"], padding=1)
        x = relu(x)
        if layer == "relu1":
            return x
        x = F.max_pool2d(x, 3, 2, 1)
        if layer == "pool1":
            return x
        x = F.conv2d(x, w["w2"], w["b2"])
        return x if layer == "conv2" else relu(x)

    check(Case(model, (3, 9, 9), partial, layer=layer), f"chain-{layer}")


def test_chain_matches_captum():
    """The torch references' ReLUs are Captum's: Deconvolution, GuidedBackprop and the plain gradient
    of an nn.Module twin of the chain agree with the projections."""
    captum = pytest.importorskip("captum.attr")
    model, _ = chain_model()
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.relu1, self.relu2 = torch.nn.ReLU(), torch.nn.ReLU()

        def forward(self, x):
            x = F.max_pool2d(self.relu1(F.conv2d(x, w["w1"], w["b1"], padding=1)), 3, 2, 1)
            x = self.relu2(F.conv2d(x, w["w2"], w["b2"]))
            return x.flatten(1) @ w["fc"].T + w["fb"]

    twin = Twin().eval()
    x = np.random.default_rng(31).standard_normal((N_IMAGES, 3, 9, 9)).astype(np.float32)
    projector = Projector(model)
    target = 2
    g = np.zeros((N_IMAGES, 6), np.float32)
    g[:, target] = 1.0
    attributions = {
        "deconvnet": captum.Deconvolution(twin), "guided": captum.GuidedBackprop(twin), "backprop": captum.Saliency(twin),
    }
    for method, attribution in attributions.items():
        kwargs = {"abs": False} if method == "backprop" else {}
        expected = attribution.attribute(torch.tensor(x, requires_grad=True), target=target, **kwargs).detach().numpy()
        rec = projector.project(method, x, g, np.arange(N_IMAGES))
        assert_close(rec, expected.astype(np.float64), f"{method} vs captum")


def test_rows_do_not_mix():
    """M rows from N images: each row's reconstruction is the one-row projection of its own image."""
    model, _ = chain_model()
    projector = Projector(model, "relu2")
    rng = np.random.default_rng(41)
    x = rng.standard_normal((3, 3, 9, 9)).astype(np.float32)
    image_index = np.array([0, 0, 1, 2, 2], np.int64)
    g = rng.standard_normal((5, 5, 3, 3)).astype(np.float32)
    for method in METHODS:
        together = projector.project(method, x, g, image_index)
        for row, image in enumerate(image_index):
            alone = projector.project(method, x[image:image + 1], g[row:row + 1], np.array([0], np.int64))
            np.testing.assert_allclose(together[row], alone[0], rtol=1e-6, atol=1e-6, err_msg=f"{method} row {row}")
        if method != "deconvnet":  # the same signal on another image gives another reconstruction
            other = projector.project(method, x, g[:1], np.array([1], np.int64))
            assert not np.allclose(other[0], together[0])


# -- errors ----------------------------------------------------------------------------------------
def test_op_without_rule_is_named():
    model = make_model([node("Sin", ["x"], "e"), node("Relu", ["e"])], (3, 4))
    exposed = expose.expose(model)
    with pytest.raises(InvalidArgument, match="Sin"):
        projection.build(exposed, "y", "backprop")


def test_max_pool_without_switches_is_a_clear_error():
    model = make_model([node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], (1, 4, 4))
    with pytest.raises(FailedPrecondition, match="switches.*expose"):
        projection.build(onnx.shape_inference.infer_shapes(model), "y", "deconvnet")


def test_unknown_method_and_layer():
    model = expose.expose(make_model([node("Relu", ["x"])], (3, 4)))
    with pytest.raises(InvalidArgument, match="method"):
        projection.build(model, "y", "lrp")
    with pytest.raises(InvalidArgument):
        projection.build(model, "no-such-tensor", "backprop")


# -- refusals: each one CONTRIBUTING.md lists -------------------------------------------------------
F32 = np.float32
# name: (nodes, input shape, initializers, opset, layer, expected message)
REFUSALS = {
    "conv-image-filters": ([node("Conv", ["x", "x"])], (3, 3, 3), {}, 18, "y", "only constant filters"),
    "convtranspose-output-shape": ([node("ConvTranspose", ["x", "w"], output_shape=[9, 9], strides=[2, 2])], (2, 4, 4),
                                   {"w": np.ones((2, 1, 3, 3), F32)}, 18, "y", "auto_pad and output_shape"),
    "maxpool-before-opset-8": ([node("MaxPool", ["x"], kernel_shape=[2, 2])], (1, 4, 4), {}, 7, "y", "MaxPool before opset 8.*re-export"),
    "maxpool-column-major": ([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], storage_order=1)], (1, 4, 4), {}, 18, "y",
                             "storage_order=1"),
    "batchnorm-training": ([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1)], (2, 3, 3),
                           {k: np.ones(2, F32) for k in "sbmv"}, 15, "y", "training mode"),
    "dropout-training": ([node("Dropout", ["x", "r", "t"])], (2, 3), {"r": np.array(0.5, F32), "t": np.array(True)}, 18, "y", "training mode"),
    # ops that mix the images of a batch
    "softmax-over-batch": ([node("Softmax", ["x"], axis=0)], (3,), {}, 18, "y", "batch axis mixes"),
    "softmax-opset11-from-batch": ([node("Softmax", ["x"], axis=0)], (3,), {}, 11, "y", "batch axis mixes"),
    "reduce-over-batch": ([node("ReduceMean", ["x", "a"])], (3,), {"a": np.array([0], np.int64)}, 18, "y", "batch axis mixes"),
    "reduce-all-axes": ([node("ReduceSum", ["x"], keepdims=1)], (3,), {}, 18, "y", "batch axis mixes"),
    "concat-batch": ([node("Concat", ["x", "x"], axis=0)], (3,), {}, 18, "y", "batch axis mixes"),
    "slice-batch": ([node("Slice", ["x", "s", "e", "a"])], (3,), {k: np.array([v], np.int64) for k, v in zip("sea", (0, 1, 0))}, 18, "y", "batch"),
    "pad-batch": ([node("Pad", ["x", "p"])], (3,), {"p": np.array([1, 0, 0, 0], np.int64)}, 18, "y", "batch axis mixes"),
    "layernorm-from-batch": ([node("LayerNormalization", ["x", "s"], axis=0)], (3,), {"s": np.ones(3, F32)}, 17, "y", "batch"),
    "matmul-contracting-batch": ([node("Transpose", ["x"], "t", perm=[1, 0]), node("MatMul", ["t", "x"])], (3,), {}, 18, "y", "images of a batch"),
    "einsum-summing-batch": ([node("Einsum", ["x", "x"], equation="ni,nj->ij")], (3,), {}, 18, "y", "batch"),
    "flatten-merging-batch": ([node("Flatten", ["x"], "y0", axis=2), node("Relu", ["y0"])], (2, 3), {}, 18, "y", "images of a batch"),
    "reshape-merging-batch": ([node("Reshape", ["x", "s"], "y0"), node("Relu", ["y0"])], (2, 3), {"s": np.array([-1, 3], np.int64)}, 18, "y",
                              "images of a batch"),
    # what is not supported
    "gather-image-indices": ([node("ArgMax", ["x"], "i", axis=1, keepdims=0), node("Gather", ["x", "i"], axis=1)], (3,), {}, 18, "y", "constant indices"),
    "pad-reflect": ([node("Pad", ["x", "p"], mode="reflect")], (3, 4), {"p": np.array([0, 0, 1, 0, 0, 1], np.int64)}, 18, "y", "constant-mode"),
    "resize-cubic": ([node("Resize", ["x", "", "s"], mode="cubic")], (1, 3, 3), {"s": np.array([1, 1, 2, 2], F32)}, 13, "y", "nearest and linear"),
    "resize-antialias": ([node("Resize", ["x", "", "s"], mode="linear", antialias=1)], (1, 4, 4), {"s": np.array([1, 1, 0.5, 0.5], F32)}, 18, "y",
                         "antialias"),
    "gemm-trans-a": ([node("Gemm", ["x", "w"], transA=1)], (3,), {"w": np.ones((2, 4), F32)}, 18, "y", "transA"),
    "matmul-vector": ([node("MatMul", ["x", "v"])], (2, 3), {"v": np.ones(3, F32)}, 18, "y", "vector"),
    "einsum-ellipsis": ([node("Einsum", ["x", "w"], equation="...i,ij->...j")], (3,), {"w": np.ones((3, 2), F32)}, 18, "y", "ellipses"),
    "clip-image-bound": ([node("ReduceMax", ["x"], "m", axes=[1], keepdims=1), node("Clip", ["x", "", "m"])], (3,), {}, 13, "y", "constant bounds"),
    "prelu-image-slope": ([node("Sigmoid", ["x"], "s"), node("PRelu", ["x", "s"])], (3,), {}, 18, "y", "constant slope"),
    "layernorm-image-scale": ([node("Sigmoid", ["x"], "s"), node("LayerNormalization", ["x", "s"])], (3,), {}, 17, "y", "constant scale"),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_refusals_name_the_node_and_the_reason(name):
    nodes, shape, inits, opset, layer, message = REFUSALS[name]
    exposed = expose.expose(make_model(nodes, shape, inits, opset=opset))
    with pytest.raises(InvalidArgument, match=message):
        for method in METHODS:
            projection.build(exposed, layer, method)


def test_a_merged_batch_is_refused_as_a_layer():
    """(N, 2, 3) -> (N * 2, 3): the rows of one image are no longer on an axis of their own."""
    exposed = expose.expose(make_model([node("Reshape", ["x", "s"])], (2, 3), {"s": np.array([-1, 3], np.int64)}))
    with pytest.raises(InvalidArgument, match="first axis"):
        projection.build(exposed, "y", "backprop")


def test_a_graph_that_mixes_the_images_of_a_batch_is_refused_at_deconv():
    """Gather of image 0 along the batch axis: the graph merges the batch axis away, so deconv would run
    image by image; the batch's own forward pass differs from that, and deconv says so."""
    from zfnet.server.engine import Engine
    from zfnet.server.images import ImageInput
    from zfnet.server.models import ModelStore, load

    nodes = [node("Gather", ["x", "i"], "g", axis=0), node("Relu", ["g"])]
    model = make_model(nodes, (3, 4, 4), {"i": np.array([0], np.int64)})
    loaded = load(model.SerializeToString(), "mixing")
    images = [ImageInput(model_input=np.random.default_rng(k).standard_normal((3, 4, 4)).astype(np.float32)) for k in range(2)]
    with pytest.raises(InvalidArgument, match="mixes the images of a batch"):
        Engine(ModelStore()).deconv(loaded, images, "y", None, 1, "max", "backprop")
    assert Engine(ModelStore()).deconv(loaded, images[:1], "y", None, 1, "max", "backprop")[1]  # one image: nothing to mix
