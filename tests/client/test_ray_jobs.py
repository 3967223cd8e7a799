"""Top-k on Ray (local Ray, 2 actors, 2 logical CPUs): the report and state equal the single-process
job's exactly, and a worker killed mid-job is retried with the result still exact."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from zfnet.topk import TopK

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

from zfnet.client import ray_jobs  # noqa: E402
from zfnet.client.cli.main import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
PER_CLASS = 60  # 600 CIFAR-10 test images: the two jobs and the Ray start-up stay well under two minutes here
LAYERS = ("--layer", "2", "--layer", "5")


@pytest.fixture(scope="module", autouse=True)
def _ray_env() -> Iterator[None]:
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a throw-away local cluster
    yield
    ray_jobs.shutdown()


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """The first PER_CLASS images of every class of the CIFAR-10 test set (../shared), else the bundled samples."""
    test = ROOT.parent / "shared" / "data" / "cifar10" / "test"
    if not test.is_dir():
        return ROOT / "samples" / "cifar10"
    root = tmp_path_factory.mktemp("cifar10-test")
    for folder in sorted(p for p in test.iterdir() if p.is_dir()):
        (root / folder.name).mkdir()
        for image in sorted(folder.glob("*.jpg"))[:PER_CLASS]:
            (root / folder.name / image.name).symlink_to(image)
    return root


def top(*args: str):
    result = CliRunner().invoke(app, ["top", "--model", str(MODEL), *LAYERS, "--raw", "--json", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def single(subset: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    top("--data", os.path.relpath(subset), "--out", str(out))  # relative: image paths are shown as given
    return out


def assert_same_state(a: TopK, b: TopK) -> None:
    assert (a.model, a.data, a.size, a.k, a.by, a.covered, a.skipped_count) == (b.model, b.data, b.size, b.k, b.by, b.covered, b.skipped_count)
    assert list(a.layers) == list(b.layers)
    for name, top_a in a.layers.items():
        for what in ("channels", "values", "activations", "indices", "locations"):
            np.testing.assert_array_equal(getattr(top_a, what), getattr(b.layers[name], what), err_msg=f"{name} {what}")


def manifest(out: Path) -> dict:
    data = json.loads((out / "manifest.json").read_text())
    data.pop("seconds")
    return data


def test_top_on_ray_equals_the_single_process_report(single: Path, subset: Path, tmp_path: Path) -> None:
    top("--data", os.path.relpath(subset), "--out", str(tmp_path), "--ray", "--ray-workers", "2")
    assert manifest(tmp_path) == manifest(single)
    assert manifest(single)["images_read"] == len(list(subset.glob("*/*.jpg")))
    assert_same_state(TopK.load(tmp_path / "state.npz"), TopK.load(single / "state.npz"))
    raw = sorted((single / "raw").rglob("*.npy"))
    assert len(raw) == sum(len(t.channels) for t in TopK.load(single / "state.npz").layers.values())  # one per channel
    for path in raw:
        np.testing.assert_array_equal(np.load(tmp_path / path.relative_to(single)), np.load(path), err_msg=str(path))


class DiesOnce(ray_jobs.ScanWorker):
    """Exits its process on the block holding image ``victim``, the first time only (a marker file)."""

    victim = 300
    marker: str = ""

    def __call__(self, batch):
        if self.victim in batch["index"] and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().__call__(batch)


def test_a_worker_killed_mid_job_is_retried_and_the_result_stays_exact(single: Path, subset: Path, tmp_path: Path) -> None:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor class travels with the job
    DiesOnce.marker = str(tmp_path / "died")
    DiesOnce.victim = min(300, len(list(subset.glob("*/*.jpg"))) - 1)
    cluster = ray_jobs.Cluster(workers=2, num_cpus=2)
    checkpoints: list[TopK] = []
    state = ray_jobs.top(MODEL, subset, [2, 5], batch_size=16, cluster=cluster, scan_only=True, scan_worker=DiesOnce,  # blocks of 64: several even on the 200 bundled samples
                         on_checkpoint=lambda s: checkpoints.append(s.copy()), checkpoint_every=1)
    assert Path(DiesOnce.marker).is_file(), "the worker was never killed"
    assert isinstance(state, TopK)  # scan_only: the state, no reconstructions
    reference = TopK.load(single / "state.npz")
    assert_same_state(state, reference)
    # a job interrupted after its first block resumes from that checkpoint and ends exactly where one pass ends
    assert checkpoints and checkpoints[0].images_read < reference.images_read
    resumed = ray_jobs.top(MODEL, subset, [2, 5], batch_size=64, cluster=cluster, scan_only=True, state=checkpoints[0])
    assert isinstance(resumed, TopK)
    assert_same_state(resumed, reference)


def test_bad_ray_input_ends_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in [
        (["--data", "cifar10/test", "--ray"], "--ray reads a local image folder"),
        (["--data", str(ROOT / "samples" / "cifar10"), "--ray", "--server", "127.0.0.1:1"], "not on --server"),
    ]:
        result = runner.invoke(app, ["top", "--model", str(MODEL), "--layer", "2", "--out", str(tmp_path), *args])
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output, result.output


def test_features_on_ray_write_the_single_process_files(subset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    outs = {}
    for name, extra in (("single", []), ("ray", ["--ray", "--ray-workers", "2"])):
        outs[name] = tmp_path / name
        args = ["features", "--model", str(MODEL), "--data", os.path.relpath(subset), "--out", str(outs[name]),
                "--layer", "all", "--pool", "grid:2", "--pool", "1=max", *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    index = json.loads((outs["single"] / "index.json").read_text())
    assert index["complete"] and index["rows"] == len(list(subset.glob("*/*.jpg")))
    assert json.loads((outs["ray"] / "index.json").read_text()) == index  # job, layers, paths, checksums of every file
    files = sorted(p.name for p in outs["single"].iterdir())
    assert files == sorted(p.name for p in outs["ray"].iterdir()) and "labels.npy" in files
    for name in files:
        assert (outs["ray"] / name).read_bytes() == (outs["single"] / name).read_bytes(), name
