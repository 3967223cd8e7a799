"""Linear probes on feature folders: splits, equality with scikit-learn run directly, errors, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from zfnet.client import features, probe
from zfnet.wire.common import Skipped
from zfnet.wire.features import FeatureBatch, FeatureHeader, FeatureSpec
from zfnet.client.cli.main import app
from zfnet.errors import InvalidArgument, NotFound

CLASSES = ["ant", "bee", "cow", "dog"]
PER_CLASS = 24
SKIPPED_ROW = 5


def write_synthetic(out: Path, seed: int = 0) -> features.FeatureSet:
    """A features folder written by the real writer from synthetic rows: ``signal`` separates the
    classes, ``noise`` does not, ``pixels`` a little; one image of class 0 is skipped."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    n = len(labels)
    centres = rng.normal(size=(len(CLASSES), 12)) * 2.5
    arrays = {
        "signal": (centres[labels] + rng.normal(size=(n, 12))).astype(np.float32),
        "noise": rng.normal(size=(n, 40)).astype(np.float32),
        "pixels": (0.4 * centres[labels][:, :6].repeat(2, axis=1) + rng.normal(size=(n, 12))).astype(np.float32),
    }
    specs = [
        FeatureSpec("signal", 3, "avg", (12, 4, 4), (12,)),
        FeatureSpec("noise", 5, "none", (40,), (40,)),
        FeatureSpec("pixels", None, "none", (3, 2, 2), (3, 2, 2)),
    ]
    job = {
        "model_sha256": "0" * 64, "model_name": "synthetic.onnx", "data": {"name": "synthetic", "size": n, "streamed": False},
        "classes": CLASSES, "start": 0, "stop": n, "dtype": "float32", "batch_size": 16, "format": "npy", "asked": {},
    }
    writer = features.FeatureWriter(out, job)
    writer.begin(FeatureHeader(job["model_sha256"], specs, "float32", n, CLASSES, 0, n, 16))
    for begin in range(0, n, 16):
        rows = [r for r in range(begin, min(begin + 16, n)) if r != SKIPPED_ROW]
        skipped = [Skipped(SKIPPED_ROW, f"img/{SKIPPED_ROW}.jpg", "cannot decode")] if begin <= SKIPPED_ROW < begin + 16 else []
        writer.write(FeatureBatch(
            np.asarray(rows), labels[rows], [f"img/{r}.jpg" for r in rows], [arrays[s.name][rows] for s in specs], skipped,
        ))
    writer.finish()
    return features.load(out)


@pytest.fixture()
def synthetic(tmp_path: Path) -> features.FeatureSet:
    return write_synthetic(tmp_path / "feats")


def test_splits_are_drawn_per_class_with_the_seed_and_never_overlap(synthetic: features.FeatureSet) -> None:
    usable = np.ones(len(synthetic.labels), bool)
    usable[synthetic.skipped_rows] = False
    assert synthetic.skipped_rows.tolist() == [SKIPPED_ROW] and synthetic.labels[SKIPPED_ROW] == -1
    draw = lambda seed: probe.draw_splits(synthetic.labels, usable, CLASSES, 10, 12, 3, seed)  # noqa: E731
    first, again, other = draw(0), draw(0), draw(1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.train, b.train)
        np.testing.assert_array_equal(a.test, b.test)
    assert any(not np.array_equal(a.train, b.train) for a, b in zip(first, other))
    assert not np.array_equal(first[0].train, first[1].train)  # folds differ
    for split in first:
        assert not set(split.train) & set(split.test)
        assert SKIPPED_ROW not in set(split.train) | set(split.test)
        assert np.bincount(synthetic.labels[split.train]).tolist() == [10] * 4
        assert np.bincount(synthetic.labels[split.test]).tolist() == [12] * 4
    # a class with fewer images than asked: test takes what is left
    short = probe.draw_splits(synthetic.labels, usable, CLASSES, 20, 50, 1, 0)[0]
    assert np.bincount(synthetic.labels[short.test]).tolist() == [PER_CLASS - 1 - 20, 4, 4, 4]


def test_train_per_class_larger_than_a_class_is_refused(synthetic: features.FeatureSet) -> None:
    usable = np.ones(len(synthetic.labels), bool)
    usable[SKIPPED_ROW] = False
    with pytest.raises(InvalidArgument, match="--train-per-class 23 leaves no test image in 1 class.*'ant' has 23 image.*use at most 22"):
        probe.draw_splits(synthetic.labels, usable, CLASSES, 23, 5, 1, 0)
    with pytest.raises(InvalidArgument, match="'ant' has 23"):
        probe.run(synthetic, train_per_class=40)
    with pytest.raises(InvalidArgument, match="every label is -1"):
        probe.draw_splits(np.full(10, -1), np.ones(10, bool), CLASSES, 2, 2, 1, 0)


def direct_sklearn(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, max_dim: int) -> tuple[float, float]:
    """The probe written out with scikit-learn directly: (mean per-class accuracy, C); on one thread
    as the probe runs, so that the sums are taken in the same order."""
    with threadpool_limits(1):
        return _direct_sklearn(x, y, train, test, max_dim)


def _direct_sklearn(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, max_dim: int) -> tuple[float, float]:
    scaler = StandardScaler().fit(x[train])
    a, b = np.asarray(scaler.transform(x[train])), np.asarray(scaler.transform(x[test]))
    if a.shape[1] > max_dim:
        pca = PCA(max_dim, svd_solver="randomized", random_state=0).fit(a)
        a, b = pca.transform(a), pca.transform(b)
    # sklearn has no type hints: pyright takes the parameters' types from their defaults (Cs=10, l1_ratios="warn")
    model = LogisticRegressionCV(
        Cs=list(probe.CS), l1_ratios=(0.0,), cv=StratifiedKFold(3, shuffle=True, random_state=0), scoring="accuracy",  # pyright: ignore[reportArgumentType]
        max_iter=probe.MAX_ITER, use_legacy_attributes=False,  # pyright: ignore[reportArgumentType]
    ).fit(a, y[train])
    predicted = model.predict(b)
    per_class = [np.mean(predicted[y[test] == c] == c) for c in np.unique(y[test])]
    return float(np.mean(per_class)), float(np.ravel(model.C_)[0])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("max_dim,jobs", [(256, 1), (8, 2)])
def test_the_probe_equals_scikit_learn_run_directly(synthetic: features.FeatureSet, max_dim: int, jobs: int) -> None:
    result = probe.run(synthetic, train_per_class=12, test_per_class=10, folds=2, seed=0, max_dim=max_dim, jobs=jobs)
    assert [r.name for r in result.layers] == ["pixels", "signal", "noise"]
    usable = np.ones(len(synthetic.labels), bool)
    usable[SKIPPED_ROW] = False
    splits = probe.draw_splits(synthetic.labels, usable, CLASSES, 12, 10, 2, 0)
    for row in result.layers:
        x = np.asarray(synthetic.arrays[row.name])
        expected = [direct_sklearn(x, synthetic.labels, s.train, s.test, max_dim) for s in splits]
        assert row.accuracy == [a for a, _ in expected] and row.c == [c for _, c in expected]
        assert row.used_dim == min(row.dim, max_dim)
    signal, noise = result.layers[1], result.layers[2]
    assert signal.mean > 0.9 and noise.mean < 0.5 and signal.mean > result.pixels.mean
    assert result.splits[0]["train"] == splits[0].train.tolist()
    again = probe.ProbeResult.from_dict(json.loads(result.to_json()))
    assert [(r.name, r.accuracy, r.c) for r in again.layers] == [(r.name, r.accuracy, r.c) for r in result.layers]


def test_layers_are_chosen_by_name_or_number_and_pixels_are_required(synthetic: features.FeatureSet, tmp_path: Path) -> None:
    assert probe._choose(synthetic, ["5"])[1]["name"] == "noise"
    assert [x["name"] for x in probe._choose(synthetic, ["signal", "pixels"])] == ["pixels", "signal"]
    with pytest.raises(NotFound, match="no layer '7' in .*signal .3., noise .5., pixels"):
        probe._choose(synthetic, ["7"])
    index = json.loads((synthetic.folder / "index.json").read_text())
    index["layers"] = [x for x in index["layers"] if x["name"] != "pixels"]
    (synthetic.folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(NotFound, match="no raw-pixel features"):
        probe.run(synthetic.folder)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_probe_command(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "a", seed=0)
    write_synthetic(tmp_path / "b", seed=1)
    runner = CliRunner()
    args = ["probe", "--features", str(tmp_path / "a"), "--train-per-class", "10", "--test-per-class", "10", "--folds", "2", "--jobs", "1"]
    result = runner.invoke(app, [*args, "--per-class"])
    assert result.exit_code == 0, result.output
    assert "synthetic.onnx on synthetic" in result.output and "accuracy per class" in result.output and "bee" in result.output
    assert (tmp_path / "a" / "probe.png").is_file()
    result = runner.invoke(app, [*args, "--features", str(tmp_path / "b"), "--json", "--plot", str(tmp_path / "both.png")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [len(r["layers"]) for r in out] == [3, 3] and out[0]["layers"][0]["name"] == "pixels"
    assert set(out[0]["layers"][1]["per_class"]) == set(CLASSES) and len(out[0]["splits"]) == 2
    assert (tmp_path / "both.png").stat().st_size > 10_000
    for bad, message in (
        (["--train-per-class", "30"], "'ant' has 23"),
        (["--layer", "9"], "no layer '9'"),
        (["--cv", "1"], "--cv must be at least 2"),
    ):
        result = runner.invoke(app, [*args, *bad])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    result = runner.invoke(app, ["probe", "--features", str(tmp_path)])
    assert result.exit_code == 1 and "has no index.json" in result.output


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_probe_warns_when_the_best_c_is_at_an_edge_of_the_grid(tmp_path: Path) -> None:
    """On a grid of two values every chosen C is at an edge: the warning names the layers and the option
    that widens the grid; the JSON on stdout stays clean."""
    write_synthetic(tmp_path / "a")
    args = ["probe", "--features", str(tmp_path / "a"), "--train-per-class", "10", "--test-per-class", "10", "--folds", "1", "--jobs", "1"]
    result = CliRunner().invoke(app, [*args, "--c-grid", "1e-6,1e-5", "--json"])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "--c-grid" in warning[0] and "signal" in warning[0] and "pixels" in warning[0], result.stderr
    assert json.loads(result.stdout)[0]["cs"] == [1e-6, 1e-5]
    bad = CliRunner().invoke(app, [*args, "--c-grid", "0.1"])
    assert bad.exit_code == 1 and "--c-grid" in bad.stderr
