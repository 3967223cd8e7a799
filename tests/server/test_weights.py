"""A held model's large weights left on disk (issue 19, VGG16 under 2 GB): a model read from the
prepared-model cache keeps its graph in Python without the bytes of its large initializers, which
are read back from the cache entry where a graph needs them; uploads are streamed from the client's
disk and the server's upload buffer is let go once the cache entry is found. Every value stays equal
to the model loaded with its weights in memory."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from zfnet.client.models import ModelUpload, model_bytes
from zfnet.converters import expose
from zfnet.converters.index import EVALUATED_ELEMENTS
from zfnet.errors import NotFound
from zfnet.server import cache, runtime
from zfnet.server.cache import Cache
from zfnet.server.models import load
from zfnet.server.weights import StoredWeights, skeleton, write
from zfnet.wire.models import CHUNK_BYTES


@pytest.fixture()
def fresh_cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "zfnet"


def _large(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if int(np.prod(t.dims)) > EVALUATED_ELEMENTS]


def test_the_spans_found_in_serialised_bytes_are_each_large_initializers_raw_data(reference_onnx: Path) -> None:
    data = reference_onnx.read_bytes()
    model = onnx.ModelProto.FromString(data)
    spans = skeleton(data)[1]
    raw = {t.name: t.raw_data for t in _large(model)}
    assert raw and set(spans) == set(raw)
    for name, (offset, length) in spans.items():
        assert data[offset : offset + length] == raw[name], name


def _every_kind_of_initializer(reference_onnx: Path) -> onnx.ModelProto:
    """The exposed reference model with fields on every side of a large raw_data, and initializers
    whose bytes stay in the graph: a large one in float_data, a large string tensor, two large ones
    of one name, a small one."""
    model = expose.expose(onnx.load(reference_onnx))
    large = _large(model)
    large[0].doc_string = "a field numbered after raw_data"
    large[0].metadata_props.add(key="zfnet.test", value="another")
    rng = np.random.default_rng(0)
    values = rng.standard_normal(EVALUATED_ELEMENTS + 1).astype(np.float32)
    model.graph.initializer.append(onnx.helper.make_tensor("in_float_data", onnx.TensorProto.FLOAT, values.shape, values))
    model.graph.initializer.add(name="strings", data_type=onnx.TensorProto.STRING, dims=[EVALUATED_ELEMENTS + 1], string_data=[b"s"] * (EVALUATED_ELEMENTS + 1))
    for _ in range(2):
        model.graph.initializer.append(numpy_helper.from_array(values, "twice"))
    model.graph.initializer.append(numpy_helper.from_array(values[:4], "small"))
    return model


def test_a_streamed_model_is_byte_for_byte_its_serialisation_and_its_skeleton_the_stripped_model(reference_onnx: Path, tmp_path: Path) -> None:
    model = _every_kind_of_initializer(reference_onnx)
    whole = model.SerializeToString()
    path = tmp_path / "entry.onnx"
    with path.open("w+b") as file:
        spans, sha256 = write(model, file)
    data = path.read_bytes()
    assert data == whole and sha256 == hashlib.sha256(whole).hexdigest()
    streamed = {t.name for t in _large(model) if t.HasField("raw_data")} - {"twice"}
    assert set(spans) == streamed, "each large raw_data, one name given twice left out"
    for name, (offset, length) in spans.items():
        tensor = next(t for t in model.graph.initializer if t.name == name)
        assert data[offset : offset + length] == tensor.raw_data, name
    bones, found = skeleton(data)
    assert found == spans and len(bones) < len(whole) - sum(length for _, length in spans.values())
    with path.open("rb") as file:
        read, stored = StoredWeights.read(path, file)
        held = StoredWeights(path, file, spans).stripped(onnx.ModelProto.FromString(whole))
        assert read == held and read.SerializeToString() == bones == held.SerializeToString()
        for tensor in read.graph.initializer:
            value = stored.array(tensor)
            assert (value is None) == (tensor.name not in streamed), tensor.name
            if value is not None:
                np.testing.assert_array_equal(value, numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == tensor.name)))
        assert stored.restore(read) == onnx.ModelProto.FromString(whole)


def test_a_model_over_2_gib_is_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    """Decided from the sizes the tensors declare: this one says 2 GiB of float32 and holds 4 bytes."""
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    model.graph.initializer.add(name="huge", data_type=onnx.TensorProto.FLOAT, dims=[1 << 29], raw_data=bytes(4))
    out = io.BytesIO()
    with pytest.raises(ValueError, match="over protobuf's 2 GiB"):
        write(model, out)
    assert out.getvalue() == b""
    entry = tmp_path / "cache" / "model" / "exposed.onnx"
    assert Cache(tmp_path / "cache", 1 << 30)._write(entry, model) is None
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()], "no entry, digest or temporary file left"


def test_a_model_from_the_cache_holds_no_large_weights_and_reads_them_back_equal(fresh_cache: Path, reference_onnx: Path) -> None:
    data = reference_onnx.read_bytes()
    cold, warm = load(data, "reference"), load(data, "reference")
    entry = onnx.load(fresh_cache / cache.fingerprint() / warm.sha256 / "exposed.onnx")
    large = _large(entry)
    assert large, "the reference model has initializers over the evaluated size"
    for held in (cold, warm):
        assert held.weights is not None and held.index is not None
        stripped = {t.name: t for t in held.model.graph.initializer}
        for tensor in large:
            assert not stripped[tensor.name].HasField("raw_data"), f"{tensor.name} is held in Python"
            np.testing.assert_array_equal(held.index.constant(tensor.name), numpy_helper.to_array(tensor))
        assert held.model.ByteSize() < entry.ByteSize() - sum(len(t.raw_data) for t in large)


def test_shape_inference_runs_without_the_large_weights_and_infers_what_it_infers_with_them(reference_onnx: Path, monkeypatch) -> None:
    model = onnx.load(reference_onnx)
    large = {t.name: t.raw_data for t in _large(model)}
    assert large, "the reference model has initializers over the evaluated size"
    infer, seen = onnx.shape_inference.infer_shapes, []

    def counted(inferred: onnx.ModelProto, *args, **kwargs) -> onnx.ModelProto:
        seen.append((inferred.ByteSize(), {t.name for t in inferred.graph.initializer}))
        return infer(inferred, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", counted)
    exposed = expose.expose(model)
    assert seen, "the expose pass infers shapes"
    for size, initializers in seen:
        assert not initializers & large.keys() and size < sum(map(len, large.values())), "a large weight went to shape inference"
    reference = infer(exposed, strict_mode=True, data_prop=True)  # the whole model, its weights included
    assert {v.name: v.type for v in reference.graph.output} == {v.name: v.type for v in exposed.graph.output}
    assert {v.name: v.type for v in reference.graph.value_info} == {v.name: v.type for v in exposed.graph.value_info}
    assert {t.name: t.raw_data for t in exposed.graph.initializer if t.name in large} == large


def test_sessions_built_from_weights_left_on_disk_equal_those_of_a_model_holding_them(fresh_cache: Path, reference_onnx: Path, tmp_path: Path) -> None:
    data = reference_onnx.read_bytes()
    (tmp_path / "a-file").write_text("")
    held = load(data, "reference", cache=Cache(tmp_path / "a-file" / "zfnet", 1 << 30))  # a cache it cannot use: weights in Python
    assert held.weights is None
    stored = load(data, "reference")
    assert stored.weights is not None
    images = np.random.default_rng(0).uniform(0, 255, (3, *held.input_shape[1:])).astype(np.float32)
    names = [row.name for row in held.layers][-3:]
    for name in names:
        for exact in (True, False):
            want = runtime.tensors(held.fetching([name], exact=exact), [name], {held.input_name: images})
            got = runtime.tensors(stored.fetching([name], exact=exact), [name], {stored.input_name: images})
            np.testing.assert_array_equal(got[0], want[0])


def test_a_held_model_reads_its_weights_after_its_cache_entry_is_removed(fresh_cache: Path, reference_onnx: Path) -> None:
    data = reference_onnx.read_bytes()
    load(data, "reference")
    model = load(data, "reference")
    tensor = _large(onnx.load(fresh_cache / cache.fingerprint() / model.sha256 / "exposed.onnx"))[0]
    Cache.user().forget(model.sha256)  # trimmed by another process, or removed by hand
    assert model.weights is not None and not model.weights.path.exists()
    assert model.index is not None
    np.testing.assert_array_equal(model.index.constant(tensor.name), numpy_helper.to_array(tensor))
    images = np.zeros((1, *model.input_shape[1:]), np.float32)
    layer = model.layers[-1].name
    assert runtime.tensors(model.fetching([layer], exact=True), [layer], {model.input_name: images})[0].shape[0] == 1


def test_a_load_empties_the_buffer_it_is_given_and_a_forged_entry_then_asks_for_the_model_again(fresh_cache: Path, reference_onnx: Path) -> None:
    upload = bytearray(reference_onnx.read_bytes())
    first = load(upload, "reference")
    assert len(upload) == 0 and first.size == reference_onnx.stat().st_size
    upload = bytearray(reference_onnx.read_bytes())
    warm = load(upload, "reference")
    assert len(upload) == 0 and warm.layers == first.layers
    entry = fresh_cache / cache.fingerprint() / first.sha256 / "exposed.onnx"
    forged = onnx.load(entry)
    forged.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL  # an entry naming a file, with a matching digest
    forged.graph.initializer[0].external_data.add(key="location", value="elsewhere")
    entry.write_bytes(forged.SerializeToString())
    entry.with_name("exposed.onnx.sha256").write_text(hashlib.sha256(entry.read_bytes()).hexdigest())
    with pytest.raises(NotFound, match="send or load it again"):
        load(bytearray(reference_onnx.read_bytes()), "reference")
    assert load(bytearray(reference_onnx.read_bytes()), "reference").layers == first.layers, "the refused entry was removed and rebuilt"


def test_a_model_file_is_uploaded_in_chunks_read_from_disk(reference_onnx: Path) -> None:
    upload = ModelUpload.of(reference_onnx)
    data = reference_onnx.read_bytes()
    assert upload.inlined is None
    assert (upload.header.sha256, upload.header.size) == (hashlib.sha256(data).hexdigest(), len(data))
    chunks = list(upload.chunks())
    assert b"".join(chunks) == data and max(len(c) for c in chunks) <= CHUNK_BYTES


def test_a_model_file_with_external_data_is_uploaded_inlined(reference_onnx: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.onnx"
    onnx.save(onnx.load(reference_onnx), split, save_as_external_data=True, location="split.onnx.data", size_threshold=0)
    upload = ModelUpload.of(split)
    inlined = model_bytes(split)
    assert upload.inlined == inlined and upload.header.sha256 == hashlib.sha256(inlined).hexdigest()
    assert b"".join(upload.chunks()) == inlined
