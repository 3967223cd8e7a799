"""The op registry: entries keyed by (domain, op type, ONNX schema versions), reviewed up to each op's
newest schema version, attributes bound with their schema's defaults, and a receptive-field mapping
every entry must declare."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from rule_testing import make_model, node
from zfnet.client.api import Client
from zfnet.converters import expose
from zfnet.converters.index import GraphIndex
from zfnet.errors import InvalidArgument
from zfnet.server import rules
from zfnet.server.layers import ReceptiveFields
from zfnet.server.rules import registry


def _since_versions(op_type: str, domain: str) -> set[int]:
    """Every schema version the installed onnx defines for an op (the since_version of each definition)."""
    found = set()
    for opset in range(1, onnx.defs.onnx_opset_version() + 1):
        try:
            found.add(onnx.defs.get_schema(op_type, opset, domain).since_version)
        except onnx.defs.SchemaError:
            pass
    return found


def test_every_entry_names_schema_versions_of_an_onnx_op():
    for (domain, op_type), entries in rules.RULES.items():
        assert onnx.defs.has(op_type, domain), op_type
        known = _since_versions(op_type, domain)
        for entry in entries:
            assert set(entry.versions) <= known, f"{op_type} {entry.versions}: onnx {onnx.__version__} defines {sorted(known)}"


def test_every_op_is_reviewed_up_to_its_newest_schema_version():
    """An onnx upgrade that redefines an op fails here: review the op's rules against the new
    definition, then add its since_version to the entry."""
    for (domain, op_type), entries in rules.RULES.items():
        newest = onnx.defs.get_schema(op_type, onnx.defs.onnx_opset_version(), domain).since_version
        covered = max(v for entry in entries for v in entry.versions)
        assert covered == newest, f"{op_type}: onnx {onnx.__version__} defines schema version {newest}; the rules cover up to {covered}"


@pytest.mark.parametrize("op_type, before, after", [("Clip", 10, 11), ("ReduceSum", 12, 13), ("ReduceMean", 17, 18), ("ReduceMax", 17, 18), ("MaxPool", 7, 8)])
def test_opset_ranges_pick_the_form(op_type, before, after):
    old, new = rules.lookup("", op_type, before), rules.lookup("", op_type, after)
    assert old is not None and new is not None and old is not new
    assert max(old.versions) <= before < after == min(new.versions)


def test_an_unknown_op_or_domain_has_no_entry():
    assert rules.lookup("", "Sin", 18) is None
    assert rules.lookup("com.microsoft", "Relu", 1) is None


def _without_version(op_type: str, version: int) -> dict:
    """The registry with ``version`` of ``op_type`` taken out of its entry: as if onnx had just defined it."""
    table = dict(rules.RULES)
    table[("", op_type)] = [dataclasses.replace(e, versions=tuple(v for v in e.versions if v != version)) for e in rules.RULES[("", op_type)]]
    return table


def test_a_schema_version_no_entry_covers_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "RULES", _without_version("Relu", 14))
    assert rules.lookup("", "Relu", 13) is not None  # still covered
    with pytest.raises(InvalidArgument) as refused:
        rules.lookup("", "Relu", 18)
    message = str(refused.value)
    for part in ("op Relu", "domain ai.onnx", "model opset 18", "schema version 14", "schema versions 1, 6, 13 of Relu"):
        assert part in message, message
    assert refused.value.reason == "UNSUPPORTED_OP" and refused.value.metadata["schema_version"] == "14"


def test_an_op_newer_than_the_model_opset_is_refused():
    with pytest.raises(InvalidArgument, match="op Gelu of domain ai.onnx at model opset 18 has no ONNX schema"):
        rules.lookup("", "Gelu", 18)


def test_a_model_whose_op_resolves_to_an_uncovered_schema_version_is_refused(monkeypatch, tmp_path):
    """Not silently mis-handled: the server refuses the model as it loads it (its layer table needs every
    op's role), names the op, and goes on serving."""
    paths = []
    for k in range(2):
        model = make_model([node("Conv", ["x", "w"], "c"), node("Relu", ["c"])], (3, 5, 5), {"w": np.full((2, 3, 3, 3), k, np.float32)})
        paths.append(tmp_path / f"conv-relu-{k}.onnx")
        paths[-1].write_bytes(model.SerializeToString())
    with Client() as client:
        monkeypatch.setattr(registry, "RULES", _without_version("Relu", 14))
        with pytest.raises(InvalidArgument, match="op Relu of domain ai.onnx at model opset 18 resolves to ONNX schema version 14") as refused:
            client.model_info(paths[0])
        assert refused.value.reason == "UNSUPPORTED_OP"
        monkeypatch.undo()
        assert [layer.number for layer in client.model_info(paths[1]).layers if layer.number] == [1]


def test_overlapping_entries_are_refused(monkeypatch):
    monkeypatch.setattr(registry, "RULES", {})
    registry.op({"Thing": (1, 6)}, field=registry.POINTWISE)(lambda b, n, s: s)
    registry.op({"Thing": (13,)}, field=registry.POINTWISE)(lambda b, n, s: s)
    with pytest.raises(ValueError, match="overlap"):
        registry.op({"Thing": (11, 13)}, field=registry.POINTWISE)(lambda b, n, s: s)


def test_a_learned_layer_is_declared_by_its_weights():
    with pytest.raises(ValueError, match="weights="):
        registry.op({"Thing": (1,)}, field=registry.POINTWISE, role=registry.Role.LEARNED)


def test_an_entry_must_declare_its_receptive_field():
    with pytest.raises(TypeError, match="field"):
        registry.op({"Thing": (1,)})  # pyright: ignore[reportCallIssue]  (the call leaves out field= on purpose)


@pytest.mark.parametrize("opset, axis", [(11, 1), (13, -1)])
def test_attributes_are_bound_with_the_schema_default_of_the_opset(opset, axis):
    index = GraphIndex(make_model([node("Softmax", ["x"])], (3, 4), opset=opset))
    assert index.node(0).attrs["axis"] == axis


def test_refuse_never_answers_with_the_whole_image():
    index = GraphIndex(make_model([node("Relu", ["x"])], (3, 4)))
    with pytest.raises(InvalidArgument, match="no receptive-field mapping"):
        registry.REFUSE(index, index.node(0), [(None, None, None)], 0)


def test_an_op_without_entry_has_no_receptive_field():
    exposed = expose.expose(make_model([node("Sin", ["x"], "s"), node("Relu", ["s"])], (3, 4, 4)))
    with pytest.raises(InvalidArgument, match="Sin"):
        ReceptiveFields(exposed).box("y", (1, 1), 0)


def test_static_values_of_shape_arithmetic():
    """Shape -> Gather -> Div -> Slice, as exporters compute chunk sizes in a model exported for one
    image: known once the shapes are, and folded so that shape inference sees constants."""
    nodes = [node("Shape", ["x"], "s"), node("Gather", ["s", "one"], "c", axis=0), node("Div", ["c", "two"], "h"),
             node("Unsqueeze", ["h", "zero"], "end"), node("Slice", ["x", "zero", "end", "zero1"])]
    inits = {"one": np.array(1, np.int64), "two": np.array(2, np.int64), "zero": np.array([0], np.int64), "zero1": np.array([1], np.int64)}
    model = make_model(nodes, (6, 4), inits)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    index = GraphIndex(onnx.shape_inference.infer_shapes(model))
    assert index.constant("h") == 3 and "h" not in index.live and "y" in index.live
    exposed, exposed_index = expose.expose_indexed(model)
    assert exposed_index.shape("y") == [1, 3, 4]
    assert "end" in exposed_index.constants and not any(n.op_type == "Shape" for n in exposed.graph.node)
