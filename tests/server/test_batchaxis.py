"""A model exported with a fixed batch (``torch.onnx.export(..., dynamo=False)`` on a 32-image example,
no dynamic axes) is made dynamic at load where the graph computes the same at any batch size
(``zfnet.server.batchaxis``): its runs are the images asked for, not 32, with torch's numbers. A graph
whose batch cannot be freed keeps running padded to 32, with one log line saying why, and answers right."""

from __future__ import annotations

import logging
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import hostile
from zfnet.client.api import Client
from zfnet.converters import expose
from zfnet.server import batchaxis
from zfnet.errors import ResourceExhausted
from zfnet.server.admission import FORWARD_FACTOR, MemoryBudget
from zfnet.server.cache import Cache
from zfnet.server.models import LOAD_FACTOR, MODEL_OVERHEAD, load
from zfnet.server.runtime import FixedBatchSession
from zfnet.wire.common import ImageInput

BATCH, SIZE = 32, 16
MAX_MEMORY = 1 << 30  # a real zfserver's --max-memory


class Net(nn.Module):
    """Two conv blocks and a classifier; ``head`` is how the feature maps reach it."""

    def __init__(self, head: str) -> None:
        super().__init__()
        self.head = head
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.token = nn.Parameter(torch.randn(1, 1, 16))
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x / 255)
        return self.fc(HEADS[self.head](self, x))


HEADS = {
    "view": lambda net, x: x.view(BATCH, -1),  # the export's batch written out: Reshape to [32, -1]
    "size": lambda net, x: x.view(x.size(0), -1),  # the batch read from the shape, folded to 32 at a fixed batch
    "flatten": lambda net, x: torch.flatten(x, 1),
    # a class token expanded to the batch (a constant of 32 equal rows once folded), tokens mixed with it
    "token": lambda net, x: (torch.cat([net.token.expand(BATCH, -1, -1), x.flatten(2).transpose(1, 2)], 1) * net.token).sum(1).repeat(1, 16),
    "mixed": lambda net, x: x.reshape(BATCH * 16, 16).relu().reshape(BATCH, -1),  # the batch merged with the channels and split again
    "batch_mean": lambda net, x: (x - x.mean(0, keepdim=True)).flatten(1),  # images of a batch mixed: padding changes the numbers
}


def exported(head: str, path: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    net = Net(head).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(BATCH, 3, SIZE, SIZE) * 255,), str(path), dynamo=False, opset_version=17)
    return net, path


def pictures(n: int) -> list[np.ndarray]:
    return list(np.random.default_rng(7).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8))


def eager(net: nn.Module, images: list[np.ndarray]) -> np.ndarray:
    """torch's probabilities for ``images``, run as the export ran: padded with blank images to the fixed batch."""
    x = torch.from_numpy(np.stack(images).astype(np.float32).transpose(0, 3, 1, 2))
    with torch.no_grad():
        return torch.softmax(net(torch.cat([x, torch.zeros(BATCH - len(x), *x.shape[1:])]))[: len(x)], 1).numpy()


class RowCount:
    """Stands in for an onnxruntime session and records the rows of each run (the real one does the work)."""

    def __init__(self, session, input_name: str) -> None:
        self.session, self.input_name, self.rows = session, input_name, []

    def run(self, names, feeds, *args):
        self.rows.append(len(feeds[self.input_name]))
        return self.session.run(names, feeds, *args)


def predicted(server, path: Path, images: list[np.ndarray], monkeypatch) -> tuple[np.ndarray, ort.InferenceSession | FixedBatchSession, list[int]]:
    """Predict's probabilities for ``images`` through the server, the model's loaded session and the rows onnxruntime ran."""
    target, engine = server
    with Client(target) as client:
        sha = client.ensure_model(path)
        model = engine.store.get(sha)
        loaded = model.session
        holder = loaded if isinstance(loaded, FixedBatchSession) else model  # onnxruntime's own session is held here
        counter = RowCount(holder.session, model.input_name)
        with monkeypatch.context() as patch:
            patch.setattr(holder, "session", counter)
            probabilities = client.probabilities(path, images)
    return probabilities, loaded, counter.rows


@pytest.mark.parametrize("head", ["view", "size", "flatten", "token"])
def test_fixed_batch_is_freed_and_runs_the_images_asked_for(head: str, server, tmp_path: Path, monkeypatch, caplog) -> None:
    net, path = exported(head, tmp_path / f"{head}.onnx")
    caplog.set_level(logging.INFO, logger="zfnet.server")
    for n in (1, 3):
        images = pictures(n)
        out, session, rows = predicted(server, path, images, monkeypatch)
        assert not isinstance(session, FixedBatchSession)
        assert session.get_inputs()[0].shape[0] == "N"
        assert rows == [n], f"onnxruntime ran {rows} rows for {n} image(s)"
        np.testing.assert_allclose(out, eager(net, images), rtol=1e-5, atol=1e-6)
    assert "fixed batch of 32 made dynamic" in caplog.text


@pytest.mark.parametrize(("head", "why"), [("mixed", "merges the batch axis with another"), ("batch_mean", "differs from the padded run")])
def test_batch_that_cannot_be_freed_runs_padded_and_answers_right(head: str, why: str, server, tmp_path: Path, monkeypatch, caplog) -> None:
    net, path = exported(head, tmp_path / f"{head}.onnx")
    caplog.set_level(logging.INFO, logger="zfnet.server")
    images = pictures(3)
    out, session, rows = predicted(server, path, images, monkeypatch)
    assert isinstance(session, FixedBatchSession)
    assert rows == [BATCH]
    np.testing.assert_allclose(out, eager(net, images), rtol=1e-5, atol=1e-6)
    line = next(r.getMessage() for r in caplog.records if "keeps its fixed batch of 32" in r.getMessage())
    assert why in line and "\n" not in line


@pytest.mark.parametrize(("head", "rows"), [("view", 1), ("mixed", BATCH)])
def test_forward_estimate_counts_the_rows_run(head: str, rows: int, server, tmp_path: Path) -> None:
    """Admission charges a forward pass for the rows onnxruntime runs: the image asked for once freed,
    the whole fixed batch when each run is padded to it."""
    _, path = exported(head, tmp_path / f"{head}.onnx")
    target, engine = server
    with Client(target) as client:
        model = engine.store.get(client.ensure_model(path))
    image = ImageInput(rgb=pictures(1)[0])
    estimate = engine.estimate(model, [image], "Predict")
    assert estimate.parts["forward pass"] == FORWARD_FACTOR * rows * model.footprint.forward > 0


def test_cold_check_is_reserved_and_stays_under_the_budget(tmp_path: Path) -> None:
    """A fixed-batch model whose padded check holds far more than its file (convolutions at 96 px,
    32 images), loaded cold in a real ``zfserver`` with a small ``--max-memory``: it is freed, and the
    server's sampled RSS grows over the load by less than the load's estimate and the check's reservation together
    (:func:`zfnet.server.batchaxis.estimate`), and stays under ``--max-memory``."""
    torch.manual_seed(0)
    net = nn.Sequential(*(layer for k in range(4) for layer in (nn.Conv2d(3 if k == 0 else 32, 32, 3, padding=1), nn.ReLU())), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    path, warm = tmp_path / "wide.onnx", tmp_path / "warm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(BATCH, 3, 96, 96) * 255,), str(path), dynamo=False, opset_version=17)
        torch.onnx.export(net, (torch.rand(1, 3, 96, 96) * 255,), str(warm), dynamo=False, opset_version=17)  # one image: nothing to free
    model, index = expose.expose_indexed(onnx.load(str(path)))
    reserved = LOAD_FACTOR * path.stat().st_size + MODEL_OVERHEAD + batchaxis.estimate(model, index, "wide", BATCH).total
    assert batchaxis.check_bytes(model, index, BATCH) > 20 * path.stat().st_size  # the check, not the file, is what the load holds
    server = hostile.Zfserver("--max-memory", str(MAX_MEMORY), "--metrics-port", "0", log=tmp_path / "zfserver.log", kill_at=2 * MAX_MEMORY)
    try:
        with Client(server.target) as client:
            client.probabilities(warm, pictures(1))  # the server's imports and first session, before the RSS it grows from
            idle = server.rss.settle(10)
            start = time.monotonic()
            client.ensure_model(path)  # uploaded and loaded: exposed, freed and checked
            peak = server.rss.peak(start)
            assert client.probabilities(path, pictures(1)).shape == (1, 10)
    finally:
        server.close()
    assert not server.rss.killed
    assert "fixed batch of 32 made dynamic" in (tmp_path / "zfserver.log").read_text()
    assert peak - idle <= reserved, f"RSS grew by {(peak - idle) >> 20} MiB over the {reserved >> 20} MiB reserved"
    assert peak < MAX_MEMORY


def test_a_budget_without_room_for_the_check_runs_the_model_padded_for_now(tmp_path: Path) -> None:
    """The copy and the check reserve their estimate: one byte short of it, the model loads padded
    and nothing is cached (the next load checks again); the whole of it frees the batch, cached."""
    _, path = exported("view", tmp_path / "view.onnx")
    model, index = expose.expose_indexed(onnx.load(str(path)))
    need = batchaxis.estimate(model, index, "view", BATCH).total
    _, kept, final = batchaxis.freed(model, index, "view", budget=MemoryBudget(need - 1, wait_s=0))
    assert batchaxis.fixed_batch(kept) == BATCH and not final
    budget = MemoryBudget(need)
    _, free_index, final = batchaxis.freed(model, index, "view", budget=budget)
    assert batchaxis.fixed_batch(free_index) == 0 and final and budget.used == 0
    cache = Cache(tmp_path / "cache", 1 << 30)
    padded = load(path.read_bytes(), "view", cache=cache, budget=MemoryBudget(need - 1, wait_s=0))
    assert isinstance(padded.session, FixedBatchSession) and not list((tmp_path / "cache").rglob("exposed.onnx"))
    assert not isinstance(load(path.read_bytes(), "view", cache=cache, budget=MemoryBudget(4 * need)).session, FixedBatchSession)
    assert list((tmp_path / "cache").rglob("exposed.onnx"))


def test_parts_each_make_at_most_a_share_of_the_tensor_bytes(tmp_path: Path) -> None:
    """The check's parts (:class:`zfnet.server.batchaxis.Parts`) keep the graph's nodes in order, and a
    part of more than one node makes at most 1/SEGMENTS of the bytes per image of the tensors
    onnxruntime gives (measured on a padded run); a part ends only where its next node would pass that."""
    _, path = exported("flatten", tmp_path / "flatten.onnx")
    model, index = expose.expose_indexed(onnx.load(str(path)))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    images = np.stack(pictures(BATCH)).astype(np.float32).transpose(0, 3, 1, 2)
    measured = {n: np.asarray(value).nbytes // BATCH for n, value in zip(names, session.run(names, {index.image: images}))}

    def made(nodes: list[onnx.NodeProto]) -> int:
        return sum(measured.get(n, 0) for node in nodes for n in node.output)

    split = batchaxis.Parts(model.graph, index)
    share = made(list(model.graph.node)) / batchaxis.SEGMENTS
    assert [node for part in split.parts for node in part] == list(model.graph.node)
    assert 1 < len(split.parts) < len(model.graph.node)  # cut, and not one node a part
    for part, after in zip(split.parts, [*split.parts[1:], []]):
        assert len(part) == 1 or made(part) <= share
        assert not after or made(part) + made(after[:1]) > share


def test_the_rewrite_makes_no_copy_of_the_weights(tmp_path: Path) -> None:
    """:func:`zfnet.server.batchaxis.dynamic_copy` reads a constant's shape before its value: the
    weights are never turned into numpy arrays (the index would keep them, a second copy of the
    model through the check). tracemalloc sees numpy's allocations, not protobuf's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * SIZE * SIZE, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    path = tmp_path / "dense.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(BATCH, 3, SIZE, SIZE) * 255,), str(path), dynamo=False, opset_version=17)
    model, index = expose.expose_indexed(onnx.load(str(path)))
    weights = sum(p.numel() * p.element_size() for p in net.parameters())  # 4 MiB
    tracemalloc.start()
    try:
        _, free_index = batchaxis.dynamic_copy(model, index, BATCH)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert batchaxis.fixed_batch(free_index) == 0
    assert peak < weights / 10, f"{peak >> 10} KiB allocated in numpy for {weights >> 10} KiB of weights"
