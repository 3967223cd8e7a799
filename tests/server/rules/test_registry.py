"""The op registry: entries keyed by (domain, op type, opset range), attributes bound with their
schema's defaults, and a receptive-field mapping every entry must declare."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from rule_testing import make_model, node
from zfnet.converters import expose
from zfnet.converters.index import GraphIndex
from zfnet.errors import InvalidArgument
from zfnet.server import rules
from zfnet.server.layers import ReceptiveFields
from zfnet.server.rules import registry


def test_every_entry_names_an_onnx_op_of_its_opsets():
    for (domain, op_type), entries in rules.RULES.items():
        for entry in entries:
            assert onnx.defs.has(op_type, domain), op_type
            schema = onnx.defs.get_schema(op_type, entry.last or onnx.defs.onnx_opset_version(), domain)
            assert entry.last is None or schema.since_version <= entry.last, f"{op_type} {entry.first}..{entry.last}"


@pytest.mark.parametrize("op_type, before, after", [("Clip", 10, 11), ("ReduceSum", 12, 13), ("ReduceMean", 17, 18), ("ReduceMax", 17, 18)])
def test_opset_ranges_pick_the_form(op_type, before, after):
    old, new = rules.lookup("", op_type, before), rules.lookup("", op_type, after)
    assert old is not None and new is not None and old is not new
    assert (old.first, old.last) == (1, before) and new.first == after


def test_an_unknown_op_or_domain_has_no_entry():
    assert rules.lookup("", "Sin", 18) is None
    assert rules.lookup("com.microsoft", "Relu", 1) is None


def test_overlapping_entries_are_refused(monkeypatch):
    monkeypatch.setattr(registry, "RULES", {})
    registry.op("Thing", field=registry.POINTWISE, opsets=(1, 12))(lambda b, n, s: s)
    registry.op("Thing", field=registry.POINTWISE, opsets=(13, None))(lambda b, n, s: s)
    with pytest.raises(ValueError, match="overlap"):
        registry.op("Thing", field=registry.POINTWISE, opsets=(11, 14))(lambda b, n, s: s)


def test_an_entry_must_declare_its_receptive_field():
    with pytest.raises(TypeError, match="field"):
        registry.op("Thing")


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
