"""Sessions that compute only what a job fetches (``LoadedModel.fetching``), and reconstructions in
chunks sized by the memory budget: the graph up to the tensors asked for, the weights it reads and
no others, built once per set of names and kind: the exact kind the exposed session's values bit for
bit (BatchNorm not folded into its Conv), the fused kind within float32 rounding of them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from zfnet.converters.pytorch import export
from zfnet.server import deconv, top
from zfnet.server.admission import MemoryBudget
from zfnet.server.models import FUSED_ROUNDING, PROJECTION_BUILD_FACTOR, load, pruned


class Small(nn.Module):
    """Two Conv-BatchNorm-ReLU blocks and a classifier: a BatchNorm onnxruntime folded into its Conv
    would round otherwise than the exposed session."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block2(self.block1(x / 255)).flatten(1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    net = Small().eval()
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):  # statistics away from the identity
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return load(export.export(net, (32, 32)).SerializeToString(), "small")


def test_a_pruned_graph_holds_the_nodes_and_weights_up_to_its_outputs(small) -> None:
    part = pruned(small.model, ["block1"])
    kept = {t.name for t in part.graph.initializer}
    assert [o.name for o in part.graph.output] == ["block1"]
    assert len(part.graph.node) < len(small.model.graph.node)
    assert kept and kept < {t.name for t in small.model.graph.initializer}
    fc = {t.name for t in small.model.graph.initializer if tuple(t.dims) in {(10, 16), (16, 8, 3, 3)}}
    assert fc and not kept & fc  # neither the classifier's nor block2's weights
    onnx.checker.check_model(part)


def test_fetching_equals_the_exposed_session_bit_for_bit_and_is_built_once(small) -> None:
    """Bit for bit: the forward tensors a projection graph reads (switches, ReLU masks) are the ones
    it assumes; with BatchNorm folded into its Conv they were 1e-7 apart, and integrated gradients
    moved 2.6e-4 (relative L2) from Captum where a ReLU input was within rounding of 0."""
    images = np.random.default_rng(0).uniform(0, 255, (5, 3, 32, 32)).astype(np.float32)
    for names in (["block1"], ["block2", "block1"], [small.output_name]):
        session = small.fetching(names, exact=True)
        assert small.fetching(list(reversed(names)), exact=True) is session
        assert [o.name for o in session.get_outputs()] == sorted(names)
        got = session.run(names, {small.input_name: images})
        want = small.session.run(names, {small.input_name: images})
        for name, g, w in zip(names, got, want):
            np.testing.assert_array_equal(g, w, err_msg=name)


def test_the_fused_session_folds_batchnorm_and_equals_the_exact_one_to_rounding(small) -> None:
    """The fused kind is a session of its own, held under its own key: onnxruntime folds each BatchNorm
    into its Conv there (its values are not the exposed session's bit for bit, as the exact kind's
    are) and they stay within :data:`FUSED_ROUNDING` of them (measured here: 1.4e-7)."""
    images = np.random.default_rng(1).uniform(0, 255, (5, 3, 32, 32)).astype(np.float32)
    names = ["block1", small.output_name]
    small.budget = MemoryBudget(1 << 40)
    try:
        fused, exact = small.fetching(names, exact=False), small.fetching(names, exact=True)
        assert fused is not exact and small.fetching(names, exact=False) is fused
        assert small.budget.held(small.fetching_key(names, exact=False)) and small.budget.held(small.fetching_key(names, exact=True))
        got = dict(zip(names, fused.run(names, {small.input_name: images})))
        want = dict(zip(names, small.session.run(names, {small.input_name: images})))
        assert not np.array_equal(got["block1"], want["block1"]), "BatchNorm was not folded into its Conv"
        for name in names:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=FUSED_ROUNDING * float(np.abs(want[name]).max()), err_msg=name)
    finally:
        small.drop_projections()
        small.budget = None


def test_reconstructions_run_in_chunks_the_budget_has_room_for(small) -> None:
    plans = {"block2": (np.arange(16), 2)}
    assert top.projection_rows(small, plans) == deconv.CHUNK_ROWS  # no budget: nothing lowered
    row = top.row_bytes(small, plans)
    small.budget = MemoryBudget(40 * row)  # a job's share of it holds a few rows only
    try:
        rows = top.projection_rows(small, plans)
        assert 1 <= rows < deconv.CHUNK_ROWS and rows * row <= small.room(0) // 2
    finally:
        small.budget = None


def test_a_request_admits_a_sessions_build_until_it_is_built(small) -> None:
    """What a request reserves for building the sessions it will run: the forward session to the
    tensors it fetches, and a projection's with the forward session it reads from (engine estimates,
    top-k and features jobs); nothing once they are built."""
    build = PROJECTION_BUILD_FACTOR * small.size
    assert small.fetching_build(["block2"], exact=True) == build and small.fetching_build([], exact=True) == 0
    small.fetching(["block2"], exact=True)
    assert small.fetching_build(["block2"], exact=True) == 0
    assert small.fetching_build(["block2"], exact=False) == build  # the other kind is another session
    assert small.projection_build("block2", "deconvnet") == build
    proj, _ = small.projection("block2", "deconvnet")
    names = small.fetched(proj, "block2")
    assert names[0] == "block2" and small.input_name not in names
    assert small.projection_build("block2", "deconvnet") == build  # its forward session is not built yet
    small.fetching(names, exact=True)
    assert small.projection_build("block2", "deconvnet") == 0
