"""ImageNet models at 224 px (issue 19): every job against decode + resize + a bare onnxruntime forward
pass of the same model, side by side in one run, with peak memory, batch size and load average.

Models: ResNet-50 (zfnet's replica of torchvision's, random weights, seeded) exported as ``zfclient
convert torch resnet50 --preprocess imagenet`` does (dynamic batch axis) and the same graph with its
batch axis fixed at ``--batch``; VGG16 the same way (its 528 MB of weights test memory). Images: Tiny
ImageNet's validation pictures from ../shared, upscaled to 224 px JPEGs once into the scratch folder,
read by a real ``zfserver``'s ``--data-dir`` (in process, over gRPC on loopback).

Each measurement runs in its own process, so that its peak resident size (VmHWM, client and
server together) is its own; the floor runs before and after the jobs of each model, and each job's
ratio is against the mean of the two. Measured:

- ``floor``: decode + resize 256 + centre crop 224 (PIL, 4 threads as the server) and a plain
  onnxruntime session of the bare model (the same file with the logits as its only output, as its
  user has it before zfnet exposes every tensor) at the batch size;
- ``scan`` of each layer in ``--layers``: ``top --scan-only`` of all its channels (k = 9) over ``--images``;
- ``reconstruct`` of each layer: the second pass for ``--channels`` channels of the scan's state (9 per
  channel), after a first pass for one channel that builds the projection graph (timed apart); the
  cost of all channels is the scan, the build and the time per reconstruction times 9 x channels (the
  projections are independent and alike: linear), reported as ``all_channels_seconds``;
- ``features`` of the four stages (``--pool avg``), ``layers`` cold (empty cache) and warm;
- ``deconv`` of one image, 9 channels of ``--deconv-layer``, against Captum's ``NeuronDeconvolution``
  for the same 9 channels on the torch twin (``bench/deconv_bench.py``'s side-by-side rows);
- VGG16: ``layers`` and a 9-channel ``deconv`` of one image, peak memory.

    python bench/imagenet_bench.py [--images 1000] [--batch 32] [--layers layer1 layer2 layer3 layer4] [--channels 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT.parent / "shared" / "data" / "tiny-imagenet" / "test"
STAGES = ["layer1", "layer2", "layer3", "layer4"]
K = 9


def peak_mib() -> float:
    """This process's peak resident size (VmHWM: ru_maxrss would include the parent's size at the fork)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def load() -> float:
    return os.getloadavg()[0]


def photos(folder: Path, images: int) -> Path:
    """``images`` Tiny ImageNet pictures as 224-px JPEGs (quality 90) in ``folder``/<class>/ (made once)."""
    from PIL import Image

    from zfnet import imagefolder

    done = sorted(folder.glob("*/*.jpg"))
    if len(done) >= images:
        return folder
    sources = imagefolder.scan(TINY).files[:images]

    def upscale(path: Path) -> None:
        target = folder / path.parent.name / (path.stem + ".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as img:
            img.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC).save(target, quality=90)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(upscale, sources))
    return folder


def fixed_batch(model, batch: int):
    """The same graph with its batch axis (``N`` of the dynamic export) fixed at ``batch``."""
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_param:
            dims[0].dim_value = batch
    return model


def bare(model):
    """The graph with only its own output (the logits): the model as its user has it, before zfnet
    exposes every tensor as an output."""
    del model.graph.output[1:]
    return model


def models(scratch: Path, batch: int) -> dict[str, Path]:
    """ResNet-50 (dynamic and fixed batch) and VGG16 as ``convert torch NAME --preprocess imagenet``
    writes them, and each ResNet-50 bare (``NAME-bare.onnx``, the floor's); made once."""
    import onnx
    import torch

    from zfnet.converters.pytorch import export
    from zfnet.converters.pytorch.imagenet import REGISTRY

    paths = {"resnet50": scratch / "resnet50.onnx", f"resnet50-batch{batch}": scratch / f"resnet50-batch{batch}.onnx", "vgg16": scratch / "vgg16.onnx"}
    for name in ("resnet50", "vgg16"):
        if not paths[name].exists():
            torch.manual_seed(0)
            arch = REGISTRY[name]
            onnx.save(export.export(arch().eval(), arch.preprocessing.input_size, None, arch.preprocessing.recorded()), paths[name])
    fixed = paths[f"resnet50-batch{batch}"]
    if not fixed.exists():
        onnx.save(fixed_batch(onnx.load(paths["resnet50"]), batch), fixed)
    for path in (paths["resnet50"], fixed):
        if not path.with_name(path.stem + "-bare.onnx").exists():
            onnx.save(bare(onnx.load(path)), path.with_name(path.stem + "-bare.onnx"))
    return paths


# --- the measurements, each run in a child process -------------------------------------------------


def child_floor(model: str, data: str, batch: int) -> dict:
    """Decode + frame every image, and a bare onnxruntime forward pass of the whole model (the logits only)."""
    import onnxruntime as ort

    from zfnet import imagefolder
    from zfnet.preprocessing import Framing

    files = imagefolder.scan(Path(data)).files
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (inp,), logits = session.get_inputs(), session.get_outputs()[0].name
    framing = Framing(224, 224, 256)
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else 0
    began = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        for b in range(0, len(files), batch):
            x = np.stack(list(pool.map(lambda p: imagefolder.read_rgb(p, framing), files[b : b + batch]))).astype(np.float32).transpose(0, 3, 1, 2)
            if fixed and len(x) < fixed:
                x = np.concatenate([x, np.zeros((fixed - len(x), *x.shape[1:]), np.float32)])
            session.run([logits], {inp.name: x})
    return {"seconds": time.perf_counter() - began, "images": len(files), "peak_mib": peak_mib()}


def _server(data: str):
    from zfnet.server.app import create_server

    server, port, _ = create_server("127.0.0.1:0", data_dir=Path(data).parent)
    return server, f"127.0.0.1:{port}"


def child_top(model: str, data: str, batch: int, layer: str, channels: int) -> dict:
    """``top --scan-only`` of every channel of ``layer``, then the reconstructions of ``channels`` of them (0: none)."""
    from zfnet.client.api import Client

    server, address = _server(data)
    try:
        with Client(address) as client:
            client.ensure_model(Path(model))
            dataset = client.dataset(Path(data).name, batch_size=batch)
            began = time.perf_counter()
            state = client.top_scan(Path(model), dataset, [layer], k=K)
            out = {"scan_seconds": time.perf_counter() - began, "images": state.images_read}
            (name, top), = state.layers.items()
            out["channels"] = len(top.channels)
            if channels:
                def first(count: int):
                    return replace(state, layers={name: replace(top, **{f: getattr(top, f)[:count] for f in ("channels", "indices", "values", "activations", "locations")})})

                began = time.perf_counter()
                client.top_reconstruct(Path(model), dataset, first(1))  # builds the projection graph and session (once per job)
                out["projection_build_seconds"] = time.perf_counter() - began
                began = time.perf_counter()
                result = client.top_reconstruct(Path(model), dataset, first(channels))
                out["reconstruct_seconds"] = time.perf_counter() - began
                out["reconstructions"] = sum(len(e) for per in result.entries.values() for e in per.values())
    finally:
        server.stop(grace=None)
    return {**out, "peak_mib": peak_mib()}


def child_features(model: str, data: str, batch: int, out: str) -> dict:
    """``features`` of the four stages, pooled by their average, written as .npy."""
    from zfnet.client import features
    from zfnet.client.api import Client

    server, address = _server(data)
    try:
        with Client(address) as client:
            client.ensure_model(Path(model))
            began = time.perf_counter()
            features.save(client, Path(model), Path(data).name, STAGES, Path(out), "avg", batch_size=batch, force=True)
            seconds = time.perf_counter() - began
    finally:
        server.stop(grace=None)
    return {"seconds": seconds, "peak_mib": peak_mib()}


def child_cli(*args: str) -> dict:
    """One ``zfclient`` command in this process (its in-process server included)."""
    from zfnet.client.cli.main import app

    began = time.perf_counter()
    try:
        app(list(args), standalone_mode=False)
    except SystemExit as done:
        if done.code:
            raise
    return {"seconds": time.perf_counter() - began, "peak_mib": peak_mib()}


def child_captum(layer: str, rounds: int) -> dict:
    """A 9-channel deconv of one image: zfnet (in-process engine, gRPC) and Captum's NeuronDeconvolution, interleaved."""
    sys.path.insert(0, str(Path(__file__).parent))
    from deconv_bench import resnet50, rows_for

    from zfnet.client.api import Client
    from zfnet.server.engine import Engine
    from zfnet.server.models import ModelStore

    subject = replace(resnet50([1], ROOT / "out"), tensor=layer, module=layer)
    with Client() as client:
        client.ensure_model(subject.path)
        row = rows_for(subject, client, Engine(ModelStore()), 1, rounds)
    return {**row, "peak_mib": peak_mib()}


CHILDREN = {"floor": child_floor, "top": child_top, "features": child_features, "cli": child_cli, "captum": child_captum}


def run(kind: str, *args: object) -> dict:
    """One measurement in a fresh process, with the load average before it."""
    before = load()
    result = subprocess.run([sys.executable, __file__, "--child", kind, *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{kind} {args} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"  {kind} {' '.join(map(str, args))[-120:]}: {json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items() if not isinstance(v, dict)})}", flush=True)
    return {**out, "load": round(before, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", nargs="*", default=STAGES, help="layers whose top-9 is measured (none: only the floor)")
    parser.add_argument("--channels", type=int, default=16, help="channels per layer whose reconstructions are timed (0: the layer's all)")
    parser.add_argument("--deconv-layer", default="layer3")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the deconv against Captum")
    parser.add_argument("--skip", nargs="*", default=[], choices=["fixed", "features", "layers", "captum", "vgg16"])
    parser.add_argument("--scratch", type=Path, default=ROOT / "out" / "bench-imagenet")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench-imagenet.json")
    if sys.argv[1:2] == ["--child"]:  # one measurement: --child KIND ARGS...
        kind, *rest = sys.argv[2:]
        print(json.dumps(CHILDREN[kind](*[int(a) if a.isdigit() else a for a in rest])))
        return
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from sidebyside import cpu

    scratch = args.scratch
    data = str(photos(scratch / "data" / f"imagenet224-{args.images}", args.images))
    paths = models(scratch, args.batch)
    report: dict = {"machine": cpu(), "images": args.images, "batch": args.batch, "k": K, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "resnet50": {}}
    exports = ["resnet50"] + ([] if "fixed" in args.skip else [f"resnet50-batch{args.batch}"])
    for name in exports:
        model = str(paths[name])
        print(f"{name}: {args.images} images at batch {args.batch}", flush=True)
        floor_model = str(paths[name].with_name(paths[name].stem + "-bare.onnx"))
        figures: dict = {"floor": [run("floor", floor_model, data, args.batch)], "layers": {}}
        for layer in args.layers:
            figures["layers"][layer] = run("top", model, data, args.batch, layer, args.channels)
        if name == "resnet50" and "features" not in args.skip:
            shutil.rmtree(scratch / "features", ignore_errors=True)  # (a finished output would be resumed: nothing read)
            figures["features"] = run("features", model, data, args.batch, str(scratch / "features"))
        figures["floor"].append(run("floor", floor_model, data, args.batch))
        floor = float(np.mean([f["seconds"] for f in figures["floor"]]))
        for layer, top in figures["layers"].items():
            top["scan_vs_floor"] = top["scan_seconds"] / floor
            if top.get("reconstructions"):
                per = top["reconstruct_seconds"] / top["reconstructions"]
                top["all_channels_seconds"] = top["scan_seconds"] + top["projection_build_seconds"] + per * K * top["channels"]
                top["all_channels_vs_floor"] = top["all_channels_seconds"] / floor
        if "features" in figures:
            figures["features"]["floor_share"] = floor / figures["features"]["seconds"]
        report["resnet50"][name] = figures
    if "layers" not in args.skip:
        with tempfile.TemporaryDirectory() as cache:  # an empty model cache for the cold run, the same one warm
            os.environ["XDG_CACHE_HOME"] = cache
            report["layers"] = {model: [run("cli", "layers", "--model", str(paths[model])) for _ in ("cold", "warm")] for model in ("resnet50", "vgg16") if model != "vgg16" or "vgg16" not in args.skip}
    if "vgg16" not in args.skip:
        image = sorted(Path(data).glob("*/*.jpg"))[0]
        report["vgg16_deconv"] = run("cli", "deconv", "--model", str(paths["vgg16"]), "--layer", "features.28", "--image", str(image), "--top", str(K), "--out", str(scratch / "deconv"))
    if "captum" not in args.skip:
        report["deconv_vs_captum"] = run("captum", args.deconv_layer, args.rounds)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
