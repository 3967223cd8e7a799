"""Correspondence through the real server: Delta against a direct numpy implementation of the
paper's formula on bare onnxruntime activations; identical masks on identical images give 0."""

from __future__ import annotations

import json
from itertools import permutations
from pathlib import Path

import grpc
import numpy as np
import pytest
from perturb_testing import Bare, Conn, encoded, expect_stream_error, nchw, still_serves, stream

from zfnet.tensors import from_proto
from zfnet.v1 import zfnet_pb2 as pb

Code = grpc.StatusCode
ROOT = Path(__file__).resolve().parents[2]
DOGS = ROOT / "samples" / "cifar10" / "dog"
PARTS = ROOT / "samples" / "parts" / "dogs.json"


def annotation() -> tuple[list[Path], list[str], list[list[tuple[int, int, int, int]]]]:
    data = json.loads(PARTS.read_text())
    files = [DOGS / name for name in data["images"]]
    return files, data["parts"], [[tuple(data["images"][f.name][p]) for p in data["parts"]] for f in files]


def box_message(boxes) -> list[pb.PartBoxes]:
    return [pb.PartBoxes(boxes=[pb.Box(top=t, left=l, bottom=b, right=r) for t, l, b, r in image]) for image in boxes]


def delta_reference(bare: Bare, images: np.ndarray, masks: list[tuple[int, int, int, int]], fill: np.ndarray, layer: str) -> tuple[int, list[float]]:
    """The paper's Delta_l = sum_{i != j} H(sign(x_i - x~_i), sign(x_j - x~_j)), one image at a time;
    differences within 1e-5 of the layer's largest activation count as 0 (the documented tolerance).
    Returns Delta and the normalised distances of the pairs i < j."""
    original = bare.one_at_a_time([layer], list(images))[0].reshape(len(images), -1).astype(np.float64)
    masked_images = []
    for image, (top, left, bottom, right) in zip(images, masks):
        copy = image.copy()
        for c in range(copy.shape[0]):
            copy[c, top:bottom, left:right] = fill[c]
        masked_images.append(copy)
    masked = bare.one_at_a_time([layer], masked_images)[0].reshape(len(images), -1).astype(np.float64)
    tolerance = 1e-5 * np.abs(original).max()
    eps = [np.where(np.abs(d) > tolerance, np.sign(d), 0) for d in original - masked]
    delta = sum(int(np.sum(eps[i] != eps[j])) for i, j in permutations(range(len(images)), 2))
    pairs = [float(np.sum(eps[i] != eps[j])) / original.shape[1] for i in range(len(images)) for j in range(i + 1, len(images))]
    return delta, pairs


def test_delta_equals_numpy_on_bare_onnxruntime(conn: Conn) -> None:
    files, parts, boxes = annotation()
    request = pb.CorrespondenceRequest(model=conn.ref, images=encoded(files), parts=parts, boxes=box_message(boxes), random_trials=2, seed=7, max_batch=5)
    progress, result = stream(conn.stub.Correspondence, request)
    assert list(result.layers) == ["pool5", "relu7"]  # the paper's layers 5 and 7
    assert progress[-1].done == progress[-1].total == len(files) * len(parts) * (1 + 2)
    bare = Bare(conn.path)
    images = nchw(files)
    scores = {(s.part, s.random, s.layer): s for s in result.scores}
    assert len(scores) == len(parts) * 2 * 2
    for layer in result.layers:
        for p, part in enumerate(parts):
            score = scores[(part, False, layer)]
            delta, pairs = delta_reference(bare, images, [b[p] for b in boxes], bare.mean, layer)
            assert score.delta == delta
            assert score.mean == pytest.approx(np.mean(pairs), abs=1e-12) and score.std == pytest.approx(np.std(pairs), abs=1e-12)
            assert score.pairs == len(files) * (len(files) - 1) // 2
            control = scores[(part, True, layer)]
            assert len(control.trial_boxes) == 2
            trial_deltas, trial_pairs = [], []
            for trial in control.trial_boxes:
                masks = [(b.top, b.left, b.bottom, b.right) for b in trial.boxes]
                # the same size as the part's box in each image, inside the image
                assert [(m[2] - m[0], m[3] - m[1]) for m in masks] == [(b[p][2] - b[p][0], b[p][3] - b[p][1]) for b in boxes]
                assert all(0 <= m[0] and m[2] <= 32 and 0 <= m[1] and m[3] <= 32 for m in masks)
                d, pr = delta_reference(bare, images, masks, bare.mean, layer)
                trial_deltas.append(d)
                trial_pairs += pr
            assert list(control.trial_deltas) == trial_deltas
            assert control.delta == pytest.approx(np.mean(trial_deltas))
            assert control.mean == pytest.approx(np.mean(trial_pairs), abs=1e-12) and control.std == pytest.approx(np.std(trial_pairs), abs=1e-12)


def test_identical_masks_on_identical_images_give_zero(conn: Conn, sample_images) -> None:
    files = [sample_images[0]] * 4
    boxes = [[(4, 4, 12, 12), (20, 16, 24, 30)]] * 4
    request = pb.CorrespondenceRequest(model=conn.ref, images=encoded(files), parts=["square", "bar"], boxes=box_message(boxes), random_trials=0, layers=[pb.LayerRef(number=n) for n in (1, 5, 7)])
    _, result = stream(conn.stub.Correspondence, request)
    assert len(result.scores) == 2 * 3 and not any(s.random for s in result.scores)
    for score in result.scores:
        assert score.delta == 0 and score.mean == 0 and score.std == 0
        assert not from_proto(score.pair_distances).any()


def test_random_masks_follow_the_seed(conn: Conn) -> None:
    files, parts, boxes = annotation()
    def run(seed: int) -> list:
        request = pb.CorrespondenceRequest(model=conn.ref, images=encoded(files[:3]), parts=parts[:1], boxes=box_message([b[:1] for b in boxes[:3]]), random_trials=3, seed=seed)
        return [s for s in stream(conn.stub.Correspondence, request)[1].scores if s.random]
    first, again, other = run(1), run(1), run(2)
    assert [list(s.trial_deltas) for s in first] == [list(s.trial_deltas) for s in again]
    assert [str(s.trial_boxes) for s in first] != [str(s.trial_boxes) for s in other]


def test_python_client_matches_raw_stub(conn: Conn) -> None:
    files, parts, boxes = annotation()
    got = conn.client.correspondence(conn.path, files, parts, boxes, random_trials=1, layers=[7], fill="grey")
    assert got.layers == ["relu7"] and got.parts == parts and got.fill.values == (127.5,) * 3 and got.random_trials == 1
    bare = Bare(conn.path)
    delta, _ = delta_reference(bare, nchw(files), [b[2] for b in boxes], np.full(3, 127.5), "relu7")
    score, random = got.score("nose", "relu7"), got.score("nose", "relu7", random=True)
    assert score is not None and score.delta == delta
    assert random is not None and len(random.trial_boxes) == 1


# ---- errors ------------------------------------------------------------------------------


def _request(conn: Conn, files, parts, boxes, **fields) -> pb.CorrespondenceRequest:
    return pb.CorrespondenceRequest(model=conn.ref, images=encoded(files), parts=parts, boxes=box_message(boxes), **fields)


@pytest.mark.parametrize(
    ("count", "parts", "boxes", "fields", "code", "words"),
    [
        (1, ["eye"], [[(1, 1, 4, 4)]], {}, Code.INVALID_ARGUMENT, ["at least 2 images", "got 1"]),
        (2, ["eye"], [[(1, 1, 4, 4)], [(30, 30, 34, 33)]], {}, Code.INVALID_ARGUMENT, ["image 1", "'eye'", "bottom 34", "outside the 32x32"]),
        (2, ["eye"], [[(1, 1, 4, 4)], [(5, 5, 5, 9)]], {}, Code.INVALID_ARGUMENT, ["'eye'", "empty"]),
        (2, ["eye"], [[(1, 1, 4, 4)], [(-1, 0, 3, 3)]], {}, Code.INVALID_ARGUMENT, ["top -1"]),
        (2, ["eye", "nose"], [[(1, 1, 4, 4), (5, 5, 8, 8)], [(1, 1, 4, 4)]], {}, Code.INVALID_ARGUMENT, ["1 part boxes", "one per part"]),
        (2, ["eye"], [[(1, 1, 4, 4)]], {}, Code.INVALID_ARGUMENT, ["1 sets of part boxes for 2 images"]),
        (2, [], [[], []], {}, Code.INVALID_ARGUMENT, ["no parts"]),
        (2, ["eye"], [[(1, 1, 4, 4)]] * 2, {"random_trials": -1}, Code.INVALID_ARGUMENT, ["random_trials", "-1"]),
        (2, ["eye"], [[(1, 1, 4, 4)]] * 2, {"layers": [pb.LayerRef(name="conv0")]}, Code.NOT_FOUND, ["conv0"]),
    ],
)
def test_bad_requests_name_the_problem(conn: Conn, sample_images, count, parts, boxes, fields, code, words) -> None:
    expect_stream_error(conn.stub.Correspondence, _request(conn, sample_images[:count], parts, boxes, **fields), code, *words)
    still_serves(conn, sample_images[0])
