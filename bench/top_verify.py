"""Verify ``zfclient top`` on the whole CIFAR-10 test set (10,000 images), once, and print the figures.

For the bundled model and for Caffe's cifar10_quick (5,000-iteration snapshot, converted with the
training mean), layers 1 to 5:

1. ``zfclient top`` writes the report (``--raw`` keeps every reconstruction);
2. its top-9 lists equal a brute-force reference: every image's activations from a bare
   onnxruntime session on images decoded by PIL, each channel's values sorted in Python;
3. every reconstruction equals a single-image ``Client.deconv`` of that image and channel;
4. two shards (``--scan-only``, then merged) equal the single pass;
5. a job interrupted with SIGINT after its first checkpoint and continued with ``--resume`` equals
   the single pass.

    python bench/top_verify.py [--models bundled caffe] [--out out/top-verify]

It takes tens of minutes on two cores; CI runs the same checks on subsets (tests/server/test_top.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.converters import expose
from zfnet.topk import TopK

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TEST = SHARED / "data" / "cifar10" / "test"
QUICK = SHARED / "models" / "caffe" / "cifar10_quick"
CLASSES = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"
ZFCLIENT = str(Path(sys.executable).with_name("zfclient"))
LAYERS = ["1", "2", "3", "4", "5"]


def sh(*args: object) -> subprocess.CompletedProcess:
    completed = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=ROOT)
    if completed.returncode:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{completed.stderr[-3000:]}")
    return completed


def caffe_model(out: Path) -> Path:
    """cifar10_quick at 5,000 iterations, converted as docs/guides/caffe.md says (training mean, RGB)."""
    mean, model = out / "cifar10_mean.binaryproto", out / "cifar10_quick.onnx"
    if not mean.is_file():
        sh(ZFCLIENT, "mean", "--data", SHARED / "data" / "cifar10" / "train", "-o", mean)
    if not model.is_file():
        sh(ZFCLIENT, "convert", "caffe", QUICK / "cifar10_quick.prototxt", QUICK / "cifar10_quick_iter_5000.caffemodel.h5",
           "--mean-file", mean, "--channel-order", "rgb", "--classes", CLASSES, "-o", model)
    return model


def top(model: Path, out: Path, *extra: str) -> float:
    began = time.perf_counter()
    sh(ZFCLIENT, "top", "--model", model, *(a for layer in LAYERS for a in ("--layer", layer)), "--data", TEST, "--out", out, *extra)
    return time.perf_counter() - began


def brute_force(model: Path, layers: list[str], k: int = 9) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer: (channels, k) indices and values from every image's channel maxima, sorted in Python."""
    import onnx

    exposed = expose.expose(onnx.load(model))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    folder = imagefolder.scan(TEST)
    maxima: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    with ThreadPoolExecutor(4) as pool:
        for b in range(0, len(folder), 500):
            images = np.stack(list(pool.map(imagefolder.read_rgb, folder.files[b : b + 500]))).astype(np.float32).transpose(0, 3, 1, 2)
            for layer, act in zip(layers, map(np.asarray, session.run(layers, {name: images}))):
                maxima[layer].append(act.reshape(act.shape[0], act.shape[1], -1).max(axis=2))
    out = {}
    for layer, parts in maxima.items():
        values = np.concatenate(parts)
        ranked = []
        for c in range(values.shape[1]):
            column = values[:, c].tolist()
            ranked.append(sorted(range(len(column)), key=lambda i: (-column[i], i))[:k])
        out[layer] = (np.asarray(ranked), np.take_along_axis(values.T, np.asarray(ranked), axis=1))
    return out


def check_reconstructions(model: Path, out: Path, manifest: dict) -> tuple[int, int, float]:
    """Every raw reconstruction against a single-image deconv: (compared, bit-identical, worst relative max-abs difference)."""
    folder = imagefolder.scan(TEST)
    compared = identical = 0
    worst = 0.0
    with Client() as client:
        for layer, info in manifest["layers"].items():
            wanted: dict[int, list[tuple[int, int]]] = {}
            stored = {}
            for channel, data in info["channels"].items():
                stored[int(channel)] = np.load(out / data["npy"])
                for rank, entry in enumerate(data["top"]):
                    wanted.setdefault(entry["index"], []).append((int(channel), rank))
            for index, pairs in wanted.items():
                result = client.deconv(model, [folder.files[index]], layer, [c for c, _ in pairs], mode="max")
                for (channel, rank), single in zip(pairs, result.reconstructions):
                    ours = stored[channel][rank]
                    assert single.channel == channel
                    difference = float(np.abs(ours - single.pixels).max() / max(np.abs(single.pixels).max(), 1e-30))
                    worst = max(worst, difference)
                    identical += bool(np.array_equal(ours, single.pixels))
                    compared += 1
    return compared, identical, worst


def interrupted_then_resumed(model: Path, out: Path) -> tuple[float, list]:
    """Start a scan, SIGINT it once its first checkpoint is on disk, then --resume it."""
    args = [ZFCLIENT, "top", "--model", model, *(a for layer in LAYERS for a in ("--layer", layer)), "--data", TEST, "--out", out,
            "--scan-only", "--checkpoint-every", "2048"]
    partial = out / "partial-state.npz"
    process = subprocess.Popen(  # with SIGINT's default action even when this script runs in the background (nohup ... &)
        [str(a) for a in args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while not partial.is_file() and process.poll() is None:
        time.sleep(0.2)
    if process.poll() is not None:
        raise SystemExit(f"the scan to interrupt ended first (exit {process.returncode}): {process.stderr.read()[-2000:] if process.stderr else ''}")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode != 130 or "--resume" not in stderr:
        raise SystemExit(f"the interrupted scan ended with exit {process.returncode}: {stderr[-2000:]}")
    covered = TopK.load(partial).covered
    began = time.perf_counter()
    sh(*args, "--resume")
    return time.perf_counter() - began, covered


def same(a: TopK, b: TopK) -> bool:
    return a.covered == b.covered and all(
        np.array_equal(x.indices, b.layers[n].indices) and np.array_equal(x.values, b.layers[n].values)
        and np.array_equal(x.locations, b.layers[n].locations) for n, x in a.layers.items())


def verify(label: str, model: Path, out: Path) -> dict:
    report = out / label
    seconds = top(model, report, "--raw")
    manifest = json.loads((report / "manifest.json").read_text())
    state = TopK.load(report / "state.npz")
    reference = brute_force(model, list(state.layers))
    equal = {layer: bool(np.array_equal(state.layers[layer].indices, reference[layer][0]) and np.array_equal(state.layers[layer].values, reference[layer][1]))
             for layer in state.layers}
    compared, identical, worst = check_reconstructions(model, report, manifest)
    shard_seconds = [top(model, out / f"{label}-shard{i}", "--start", str(a), "--stop", str(b), "--scan-only") for i, (a, b) in enumerate(((0, 5000), (5000, 10000)))]
    merged = TopK.load(out / f"{label}-shard1" / "state.npz").merge(TopK.load(out / f"{label}-shard0" / "state.npz"))
    resume_seconds, checkpoint = interrupted_then_resumed(model, out / f"{label}-resumed")
    resumed = TopK.load(out / f"{label}-resumed" / "state.npz")
    return {
        "model": str(model), "layers": {n: len(t.channels) for n, t in state.layers.items()}, "images": state.images_read,
        "skipped": state.skipped_count, "report_seconds": round(seconds, 1), "sheets": sum(len(i["sheets"]) for i in manifest["layers"].values()),
        "brute_force_equal": equal, "reconstructions_compared": compared, "reconstructions_bit_identical": identical,
        "worst_relative_difference": worst, "shards_merged_equal": same(merged, state), "shard_seconds": [round(s, 1) for s in shard_seconds],
        "interrupted_at": checkpoint, "resumed_equal": same(resumed, state), "resume_seconds": round(resume_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--models", nargs="+", default=["bundled", "caffe"], choices=["bundled", "caffe"])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "top-verify")
    args = parser.parse_args()
    if not TEST.is_dir():
        raise SystemExit(f"{TEST} is absent")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.pop("ZFNET_SERVER", None)
    results = {}
    for label in args.models:
        model = ROOT / "models" / "zfnet-cifar10.onnx" if label == "bundled" else caffe_model(args.out)
        results[label] = verify(label, model, args.out)
        print(json.dumps({label: results[label]}, indent=1), flush=True)
    (args.out / "verify.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
