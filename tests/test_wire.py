"""The wire package: every enum of the contract has one name table, generated from the proto, and the
engine's own tables agree with it; the layer-reference rule; each result type survives its codec."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import zfnet.wire
from zfnet.errors import REASONS, InvalidArgument, NotFound
from zfnet.tensors import _TO_NUMPY
from zfnet.topk import BY, TopK
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire import attribution, common, deconv, features, gradcam, invariance, top, visualise
from zfnet.wire.common import FILLS, DataSource, FillValue, ImageInput, Names, Progress, Skipped, StreamedImages, TrueClass, layer_key, layer_of, layer_proto
from zfnet.wire.attribution import Attribution, AttributionResult, IntegratedGradientsRequest, SmoothGradRequest, Target, TargetUnit
from zfnet.wire.correspondence import CorrespondenceResult, CorrespondenceScore
from zfnet.wire.deconv import DeconvResult, Reconstruction
from zfnet.wire.features import FeatureBatch, FeatureHeader, FeatureSpec, Pooling
from zfnet.wire.gradcam import GradCamMap, GradCamRequest, GradCamResult
from zfnet.wire.invariance import InvarianceResult, Sweep
from zfnet.wire.models import LayerInfo, ModelInfo
from zfnet.wire.occlusion import OcclusionMaps, OcclusionResult
from zfnet.wire.predict import PredictResult
from zfnet.wire.visualise import VisualisedUnit, VisualiseRequest, VisualiseResult

WIRE = [importlib.import_module(f"zfnet.wire.{m.name}") for m in pkgutil.iter_modules(zfnet.wire.__path__)]


def name_tables() -> dict[str, Names]:
    """Every Names table of the wire package, by its enum's name (each enum has one)."""
    found: dict[str, list[Names]] = {}
    for module in WIRE:
        for value in vars(module).values():
            if isinstance(value, Names) and all(value is not t for t in found.get(value.enum.DESCRIPTOR.name, [])):
                found.setdefault(value.enum.DESCRIPTOR.name, []).append(value)
    twice = [name for name, tables in found.items() if len(tables) > 1]
    assert not twice, f"enums with two name tables: {twice}"
    return {name: tables[0] for name, tables in found.items()}


# Enums whose values have another home than a name table: DataType is a Tensor's element type
# (zfnet.tensors), ErrorReason the error catalogue (zfnet.errors.REASONS, also in docs/clients.md).
OTHER_HOMES = {"DataType", "ErrorReason"}


def test_every_enum_of_the_contract_has_exactly_one_home() -> None:
    enums = set(pb.DESCRIPTOR.enum_types_by_name)
    tables = name_tables()
    assert set(tables) | OTHER_HOMES == enums and not set(tables) & OTHER_HOMES
    data_types = {v.number for v in pb.DataType.DESCRIPTOR.values if v.number}
    assert set(_TO_NUMPY) == data_types
    assert {v.name for v in pb.ErrorReason.DESCRIPTOR.values if v.number} == set(REASONS)


@pytest.mark.parametrize("enum", sorted(set(pb.DESCRIPTOR.enum_types_by_name) - OTHER_HOMES))
def test_a_name_table_is_its_enum_values_and_the_zero_value_is_the_documented_default(enum: str) -> None:
    table = name_tables()[enum]
    values = [v for v in getattr(pb, enum).DESCRIPTOR.values if v.number]
    assert [table.by_name[name] for name in table.names] == [v.number for v in values] and len(set(table.names)) == len(values)
    for name, value in zip(table.names, values):
        assert value.name.lower().endswith(name) and table.name(value.number, "f") == name
    unspecified = getattr(pb, enum).DESCRIPTOR.values[0]
    assert unspecified.number == 0 and unspecified.name.endswith("UNSPECIFIED")
    if table.default is None:
        with pytest.raises(InvalidArgument) as caught:
            table.name(0, "f")
        assert caught.value.reason == "UNKNOWN_ENUM_VALUE" and "(it has no default)" in str(caught.value)
    else:
        assert table.name(0, "f") == table.default


def test_name_tables_read_as_the_proto_documents_them() -> None:
    assert (FILLS.names, FILLS.default) == (("mean", "grey", "zero"), "mean")
    assert (deconv.MODES.names, deconv.MODES.default) == (("max", "map"), "max")
    assert (deconv.METHODS.names, deconv.METHODS.default) == (("deconvnet", "backprop", "guided"), "deconvnet")
    assert (top.BY.names, top.BY.default) == (("max", "mean"), "max")
    assert (top.STAGES.names, top.STAGES.default) == (("all", "scan", "reconstruct"), "all")
    assert (invariance.TRANSFORMS.names, invariance.TRANSFORMS.default) == (("translate", "scale", "rotate"), None)
    assert (invariance.BORDERS.names, invariance.BORDERS.default) == (("reflect", "constant"), "reflect")
    assert features.POOL_KINDS.names == ("none", "avg", "max", "grid")
    assert FILLS.number("0", "fill") == pb.FILL_ZERO  # the CLI's spelling of zero
    assert (attribution.BASELINES.names, attribution.BASELINES.default) == (("black", "mean", "blurred"), "black")
    assert attribution.INTEGRATION.default == "gauss_legendre" and attribution.INTEGRATION.number("gausslegendre", "method") == pb.GAUSS_LEGENDRE
    assert (attribution.SMOOTHING.names, attribution.GRADIENTS.names) == (("smoothgrad", "smoothgrad_squared"), ("backprop", "guided"))
    assert (gradcam.VARIANTS.names, visualise.OBJECTIVES.names) == (("grad_cam", "grad_cam_plus_plus"), ("channel", "neuron"))


def test_the_engines_own_tables_agree_with_the_wire() -> None:
    pytest.importorskip("onnxruntime")
    from zfnet.server import attribution as engine_attribution  # noqa: PLC0415
    from zfnet.server import deconv as engine_deconv  # noqa: PLC0415
    from zfnet.server import gradcam as engine_gradcam  # noqa: PLC0415
    from zfnet.server import features as engine_features  # noqa: PLC0415
    from zfnet.server import invariance as engine_invariance  # noqa: PLC0415
    from zfnet.server import perturbation, projection  # noqa: PLC0415
    from zfnet.server import top as engine_top  # noqa: PLC0415

    assert tuple(engine_deconv.MODES) == deconv.MODES.names
    assert tuple(projection.METHODS) == deconv.METHODS.names
    assert tuple(engine_top.STAGES) == top.STAGES.names
    assert tuple(BY) == top.BY.names
    assert tuple(engine_invariance.TRANSFORMS) == invariance.TRANSFORMS.names
    assert tuple(engine_invariance.BORDERS) == invariance.BORDERS.names
    assert tuple(engine_features.POOLS) == features.POOL_KINDS.names
    assert tuple(engine_attribution.BASELINES) == attribution.BASELINES.names
    assert tuple(engine_attribution.INTEGRATION) == attribution.INTEGRATION.names
    assert tuple(engine_gradcam.WEIGHTS) == gradcam.VARIANTS.names
    assert tuple(engine_features.DTYPES) == tuple(features.DTYPES)
    assert [pb.DataType.Name(code).lower() for code in features.DTYPES.values()] == list(features.DTYPES)
    with pytest.raises(InvalidArgument, match="choose one of mean, grey, zero"):
        perturbation.fill_value(None, "pink")  # type: ignore[arg-type]


def test_an_unknown_enum_number_is_refused_naming_the_field_and_the_values() -> None:
    with pytest.raises(InvalidArgument) as caught:
        deconv.METHODS.name(9, "job.method")
    assert str(caught.value) == "job.method 9 is not a DeconvMethod: use DECONVNET (1), BACKPROP (2), GUIDED (3), or leave it unset for DECONVNET"
    assert (caught.value.field, caught.value.reason, caught.value.metadata) == ("job.method", "UNKNOWN_ENUM_VALUE", {"enum": "zfnet.v1.DeconvMethod", "value": "9"})
    with pytest.raises(InvalidArgument, match="unknown border 'wrap'; choose one of reflect, constant"):
        invariance.BORDERS.number("wrap", "border")


def test_a_layer_number_is_written_in_ascii_digits() -> None:
    assert [layer_key(x) for x in (3, "3", "relu3", "٣", "03")] == [3, 3, "relu3", "٣", 3]
    assert layer_proto("12") == pb.LayerRef(number=12) and layer_proto("٣") == pb.LayerRef(name="٣")
    assert layer_of(pb.LayerRef(name="12")) == 12 and layer_of(pb.LayerRef(name="conv1")) == "conv1"
    with pytest.raises(NotFound) as caught:
        layer_of(pb.LayerRef(name="٣"))
    assert (caught.value.field, caught.value.reason) == ("layer.name", "LAYER_NOT_FOUND")
    with pytest.raises(InvalidArgument) as caught:
        layer_of(pb.LayerRef())
    assert (caught.value.field, caught.value.reason) == ("layer", "FIELD_REQUIRED")


# ---- codecs: what is encoded decodes to an equal value ----------------------------------------


def same(a, b) -> None:
    """Dataclasses, lists, dicts and tuples compared field by field, arrays exactly (dtype and values)."""
    if hasattr(a, "__dataclass_fields__"):
        assert type(a) is type(b)
        for name in a.__dataclass_fields__:
            same(getattr(a, name), getattr(b, name))
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            same(a[key], b[key])
    else:
        assert a == b, (a, b)


RNG = np.random.default_rng(7)
FILL = FillValue("grey", (127.5, 127.5, 127.5), "mid-grey 127.5")


def test_the_perturbation_results_survive_their_codec() -> None:
    recon = Reconstruction(1, 4, 2.5, (3, 4), (0, 1, 9, 10), RNG.normal(size=(3, 8, 8)).astype(np.float32), "b.jpg")
    maps = OcclusionMaps(
        "b.jpg", TrueClass(3, "cat", True), 4, 12.0, 0.75, 3, RNG.random((2, 3), np.float32), recon, "",
        RNG.random((2, 3), np.float32), np.arange(6, dtype=np.int32).reshape(2, 3), RNG.random((2, 3, 10), np.float32),
    )
    maps2 = replace(maps, label="c.jpg", projection=replace(recon, image=1, label="c.jpg"))
    occlusion = OcclusionResult("relu5", 4, 2, FILL, np.array([0, 2], np.int32), np.array([0, 2, 4], np.int32), ["a", "b"], [replace(maps, projection=replace(recon, image=0)), maps2], 64)
    same(OcclusionResult.from_proto(occlusion.to_proto()), occlusion)
    sweep = Sweep(
        "rotate", "degrees", np.array([0, 90], np.float32), RNG.random((2, 1, 2), np.float32), RNG.random((2, 2), np.float32),
        RNG.integers(0, 256, (2, 2, 4, 4, 3), dtype=np.uint8), np.array([0, 1], np.int32),
    )
    result = InvarianceResult(["relu1"], "constant", FILL, ["a", "b"], [TrueClass(0, "", False)] * 2, RNG.random((2, 1), np.float32), [sweep], [], 8)
    same(InvarianceResult.from_proto(result.to_proto()), result)
    score = CorrespondenceScore("eye", True, "relu5", 4.0, 0.1, 0.01, 3, 100, RNG.random((3, 3), np.float32), [4.0], [[(0, 0, 2, 2)] * 3])
    corr = CorrespondenceResult(["relu5"], ["eye"], FILL, ["a", "b", "c"], [score], 1, 5, 16)
    same(CorrespondenceResult.from_proto(corr.to_proto()), corr)


def test_deconv_and_predict_results_survive_their_codec() -> None:
    recons = [Reconstruction(i, c, float(c), (1, 2), (0, 0, 5, 5), RNG.normal(size=(3, 4, 4)).astype(np.float32), "ab"[i]) for i in (0, 1) for c in (7, 2)]
    result = DeconvResult("relu2", "map", "guided", ["a", "b"], recons)
    same(DeconvResult.from_proto(result.to_proto()), result)
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]], np.float32)
    predicted = PredictResult.of(probs, True, ["x", "y"], 2)
    assert [[(s.index, s.label) for s in p.top] for p in predicted.predictions] == [[(1, "y"), (2, "2")], [(0, "x"), (1, "y")]]
    same(PredictResult.from_proto(predicted.to_proto()), predicted)


def test_top_events_and_jobs_survive_their_codec() -> None:
    state = TopK.empty("ab" * 32, "streamed", 20, 2, "mean", {"relu1": (np.arange(3), 2), "fc": (np.arange(2), 0)})
    state.observe({"relu1": RNG.random((4, 3, 5, 5), np.float32), "fc": RNG.random((4, 2), np.float32)}, np.arange(4))
    state.cover(0, 4, [Skipped(3, "c/3.jpg", "cannot decode")])
    events = [
        Progress("scan", 4, 20, [Skipped(3, "c/3.jpg", "cannot decode")]), top.Checkpoint(state, True), top.Checkpoint(state, False),
        top.TopImage.of(2, "b/2.jpg", 1, ["a", "b"], RNG.random((3, 5, 5), np.float32)),
        top.Entry("relu1", 2, 0, 2, 0.5, 0.75, (1, 2), (0, 0, 3, 3), (-1, -1, 4, 4), RNG.random((3, 5, 5), np.float32)),
    ]
    for event in events:
        same(top.event_of(top.reply_proto(event), ["a", "b"]), event)
    assert events[3].label == "b"
    data = DataSource(streamed=StreamedImages(20, ("a", "b")), start=4, stop=12, batch_size=8)
    job = top.TopJob([1, "relu3"], data, 3, "mean", [0, 2], "guided", "scan", state, 100)
    same(top.TopJob.from_proto(job.to_proto(pb.ModelRef(name="m"))), job)
    assert (data.name, DataSource(dataset="cifar").name) == ("streamed", "dataset:cifar")


def test_features_travel_in_replies_of_bounded_size(monkeypatch) -> None:
    specs = [FeatureSpec("pool1", 1, "grid:2", (4, 8, 8), (4, 2, 2)), FeatureSpec("pixels", None, "none", (3, 2, 2), (3, 2, 2))]
    header = FeatureHeader("cd" * 32, specs, "float16", 10, ["a"], 0, 10, 5)
    same(FeatureHeader.from_proto(header.to_proto()), FeatureHeader(*[getattr(header, f) for f in header.__dataclass_fields__]))
    rows = [RNG.random((5, 16)).astype(np.float16), RNG.random((5, 12)).astype(np.float16)]
    batch = FeatureBatch(np.arange(5), np.array([0, 0, -1, 0, 0]), [f"{i}.jpg" for i in range(5)], rows, [Skipped(5, "5.jpg", "bad")], 6, 10)
    monkeypatch.setattr(features, "REPLY_BYTES", 2 * (16 + 12) * 2)  # two rows per reply
    replies = list(batch.replies())
    parts = [FeatureBatch.from_proto(r, header) for r in replies]
    assert [len(p.indices) for p in parts] == [2, 2, 1] and [len(p.skipped) for p in parts] == [1, 0, 0]
    for k in range(2):
        np.testing.assert_array_equal(np.concatenate([p.features[k] for p in parts]), rows[k])
    assert Pooling.from_proto(Pooling.parse("grid:3").to_proto(), "p") == Pooling("grid", 3)


def test_images_and_model_info_survive_their_codec(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG...")
    rgb, model_input = RNG.integers(0, 255, (4, 5, 3), dtype=np.uint8), RNG.random((3, 4, 5)).astype(np.float64)
    images = [ImageInput.of(tmp_path / "x.png"), ImageInput.of(b"raw"), ImageInput.of(rgb), ImageInput.of(model_input)]
    assert (images[0].label, images[0].encoded, np.asarray(images[3].model_input).dtype) == ("x.png", b"\x89PNG...", np.float32)
    same(common.images_of(common.images_proto(images)), images)
    info = ModelInfo("ef" * 32, "m", "image", (-1, 3, 32, 32), "{}", ["a"], [LayerInfo(0, "conv1", "Conv", (-1, 8, 32, 32), 1, ("c1",))], "fc", "CPU")
    same(ModelInfo.from_proto(info.to_proto()), info)


def test_attribution_requests_and_results_survive_their_codec() -> None:
    ref = pb.ModelRef(name="m")
    image = ImageInput.of(RNG.integers(0, 255, (4, 5, 3), dtype=np.uint8))
    for request in (
        IntegratedGradientsRequest([image], Target("relu6", ["3"]), "blurred", 7, "riemann_trapezoid", 2.5, 16),
        IntegratedGradientsRequest([image]),
        SmoothGradRequest([image], Target(None, ["cat", "dog"]), "smoothgrad_squared", "guided", 9, 0.25, 2**63, 4),
        GradCamRequest([image], 5, Target(7, []), "grad_cam_plus_plus"),
        GradCamRequest([image]),
    ):
        same(type(request).from_proto(request.to_proto(ref)), request)  # pyright: ignore[reportArgumentType]  (each request type reads its own message)
    unit = TargetUnit(3, "cat", True, 2.5)
    items = [Attribution("a", unit, RNG.random((3, 4, 4), np.float32), -0.25, RNG.random((3, 4, 4), np.float32)), Attribution("b", unit, RNG.random((3, 4, 4), np.float32), sigma=3.5)]
    result = AttributionResult("integrated-gradients", "50 steps", "fc8", ["cat"], items, 32)
    same(AttributionResult.from_proto(result.to_proto()), result)
    maps = GradCamResult("pool5", "fc8", "grad_cam", "tokens", ["cat"], [GradCamMap("a", unit, RNG.random(8, np.float32), RNG.random((2, 2), np.float32), RNG.random((4, 4), np.float32))])
    same(GradCamResult.from_proto(maps.to_proto()), maps)


def test_visualise_requests_and_results_survive_their_codec() -> None:
    request = VisualiseRequest(["3", "cat"], "relu5", "neuron", 10, 0.125, 7, 3, 0.25, 5.0, 2.0, 4, True)
    same(VisualiseRequest.from_proto(request.to_proto(pb.ModelRef(name="m"))), request)
    defaults = VisualiseRequest(["1"])  # floats travel as float32
    same(VisualiseRequest.from_proto(defaults.to_proto(pb.ModelRef(name="m"))), replace(defaults, learning_rate=float(np.float32(defaults.learning_rate)), scale=float(np.float32(defaults.scale))))
    unit = VisualisedUnit(3, "", RNG.random((2, 3, 4, 4), np.float32), RNG.random(2, np.float32), RNG.random((2, 8), np.float32), RNG.random(10, np.float32))
    result = VisualiseResult("relu5", "channel", 10, 2**64 - 1, "pixels", [unit])
    same(VisualiseResult.from_proto(result.to_proto()), result)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: IntegratedGradientsRequest([], steps=0), "steps"),
        (lambda: IntegratedGradientsRequest([], steps=1, method="riemann_left"), "steps"),
        (lambda: IntegratedGradientsRequest([], blur_sigma=0.0), "blur_sigma"),
        (lambda: SmoothGradRequest([], noise_level=-0.1), "noise_level"),
        (lambda: SmoothGradRequest([], samples=5000), "samples"),
        (lambda: VisualiseRequest([]), "units"),
        (lambda: VisualiseRequest(["1"], images_per_unit=17), "images_per_unit"),
        (lambda: VisualiseRequest(["1"], scale=0.9), "scale"),
    ],
)
def test_out_of_range_parameters_are_refused_naming_their_field(make, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        make()
    assert caught.value.field == field and field in str(caught.value)
