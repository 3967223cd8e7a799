"""Integrated gradients (50 steps) and SmoothGrad (50 samples): zfnet's engine (onnxruntime, the
projection graph's backprop, copies a batch at a time) against Captum on the PyTorch twin of the
bundled model (same weights), side by side in one run, on the same batch of images; images per
second (best of ``--repeats`` after a warm-up) and each image's relative L2 error against Captum.

SmoothGrad's noise is zfnet's seeded draw on both sides (Captum's noise draw replaced), so the two
average the same copies. Captum runs its copies in one batch per image (``internal_batch_size``
and ``nt_samples_batch_size`` at the step/sample count), its fastest setting here.

    python bench/attribution_bench.py [--images 8] [--repeats 3] [--json out/attribution_bench.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from captum.attr._core import noise_tunnel
from occlusion_bench import best_of  # bench/ is the script's folder, first on sys.path
from rich.console import Console
from rich.table import Table

from zfnet import imagefolder
from zfnet.converters.pytorch import export, zoo
from zfnet.server import attribution, perturbation
from zfnet.server.layers import resolve
from zfnet.server.models import load
from zfnet.wire.attribution import IntegratedGradientsRequest, SmoothGradRequest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
CHECKPOINT = ROOT / "models" / "zfnet-cifar10.pt"
SAMPLES = ROOT / "samples" / "cifar10"
STEPS = SAMPLES_PER_IMAGE = 50
NOISE, SEED = 0.15, 0


def relative_l2(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / max(float(np.linalg.norm(reference)), 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    paths = sorted(SAMPLES.glob("*/*.jpg"), key=lambda p: (p.name, p.parent.name))[: args.images]
    batch = np.stack([imagefolder.read_rgb(p, (32, 32)) for p in paths]).astype(np.float32).transpose(0, 3, 1, 2)
    model = load(MODEL.read_bytes(), MODEL.stem)
    target = resolve(model.layers, model.output_name)
    net = export.load_weights(zoo.build("zfnet-cifar10"), CHECKPOINT).eval()
    x = torch.from_numpy(batch)
    labels = [p.name for p in paths]

    ig_request = IntegratedGradientsRequest([], steps=STEPS, baseline="black", method="gauss_legendre")
    sg_request = SmoothGradRequest([], samples=SAMPLES_PER_IMAGE, noise_level=NOISE, seed=SEED)
    zf_ig_s, zf_ig = best_of(lambda: perturbation.complete(attribution.integrated_gradients(model, batch, target, ig_request, labels)), args.repeats)
    zf_sg_s, zf_sg = best_of(lambda: perturbation.complete(attribution.smoothgrad(model, batch, target, sg_request, labels)), args.repeats)
    classes = [item.target.index for item in zf_ig.images]  # type: ignore[attr-defined]
    sigmas = [item.sigma for item in zf_sg.images]  # type: ignore[attr-defined]

    def captum_ig() -> np.ndarray:
        return IntegratedGradients(net).attribute(x, x * 0, target=classes, n_steps=STEPS, method="gausslegendre", internal_batch_size=STEPS).detach().numpy()

    def captum_sg() -> np.ndarray:
        out = []
        for i in range(len(x)):
            noise = torch.from_numpy(np.stack([attribution.noise(SEED, i, s, batch.shape[1:]) * np.float32(sigmas[i]) for s in range(SAMPLES_PER_IMAGE)]))
            noise_tunnel.NoiseTunnel._add_noise_to_input = staticmethod(lambda inputs, stdev, n, noise=noise: inputs.repeat_interleave(n, dim=0) + noise)  # type: ignore[method-assign]
            smooth = NoiseTunnel(Saliency(net)).attribute(
                x[i : i + 1], nt_type="smoothgrad", nt_samples=SAMPLES_PER_IMAGE, nt_samples_batch_size=SAMPLES_PER_IMAGE, stdevs=sigmas[i],
                target=classes[i], abs=False,
            )
            assert isinstance(smooth, torch.Tensor)
            out.append(smooth.detach().numpy()[0])
        return np.stack(out)

    cap_ig_s, cap_ig = best_of(captum_ig, args.repeats)
    cap_sg_s, cap_sg = best_of(captum_sg, args.repeats)
    errors = {
        "integrated_gradients": [relative_l2(item.pixels, cap_ig[i]) for i, item in enumerate(zf_ig.images)],  # type: ignore[attr-defined]
        "smoothgrad": [relative_l2(item.pixels, cap_sg[i]) for i, item in enumerate(zf_sg.images)],  # type: ignore[attr-defined]
    }
    n = len(batch)
    rows = [
        ("integrated gradients, 50 steps", n / zf_ig_s, n / cap_ig_s, errors["integrated_gradients"], zf_ig.batch),  # type: ignore[attr-defined]
        ("SmoothGrad, 50 samples", n / zf_sg_s, n / cap_sg_s, errors["smoothgrad"], zf_sg.batch),  # type: ignore[attr-defined]
    ]
    table = Table("method", "zfnet images/s", "Captum images/s", "zfnet / Captum", "copies per batch", "relative L2 (median, max)",
                  title=f"{n} CIFAR-10 images, 32 x 32, bundled model; {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    for name, ours, theirs, error, per_batch in rows:
        table.add_row(name, f"{ours:.2f}", f"{theirs:.2f}", f"{ours / theirs:.2f}x", str(per_batch), f"{np.median(error):.1e}, {max(error):.1e}")
    Console(width=160).print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        figures = {name: {"zfnet_images_per_s": ours, "captum_images_per_s": theirs, "relative_l2": error} for name, ours, theirs, error, _ in rows}
        args.json.write_text(json.dumps({"images": n, "python": sys.version.split()[0], **figures}, indent=2))


if __name__ == "__main__":
    main()
