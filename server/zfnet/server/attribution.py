"""Gradient attributions on the perturbation runner: integrated gradients (Sundararajan et al. 2017),
SmoothGrad and SmoothGrad-squared (Smilkov et al. 2017), input x gradient.

Each is a sum over copies of an image: the path's points from a baseline (integrated gradients),
noisy copies (SmoothGrad), the image itself (input x gradient). The runner makes the copies a batch
at a time and forwards them; each batch's gradients come from the projection graph and are folded
into the image's sum at once, so no more than a batch of copies is ever held. The arithmetic follows
Captum's (``IntegratedGradients``, ``NoiseTunnel``, ``InputXGradient``) step for step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from zfnet.server import gradients, perturbation
from zfnet.server.layers import Layer
from zfnet.server.models import LoadedModel
from zfnet.server.perturbation import Steps
from zfnet.wire.attribution import Attribution, AttributionResult, IntegratedGradientsRequest, SmoothGradRequest, TargetUnit


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` blurred by a Gaussian of ``sigma`` pixels on each channel."""
    from scipy import ndimage  # noqa: PLC0415  (a quarter of a second to import: not at server start)

    return ndimage.gaussian_filter(image, sigma=(0, sigma, sigma), mode="reflect").astype(np.float32)


# (C, H, W) image -> (C, H, W) baseline; ``sigma`` in pixels for the blur
BASELINES: dict[str, Callable[[LoadedModel, np.ndarray, float], np.ndarray]] = {
    "black": lambda model, image, sigma: np.zeros_like(image),
    "mean": lambda model, image, sigma: np.broadcast_to(
        np.asarray(perturbation.fill_value(model, "mean").values, np.float32)[:, None, None], image.shape).copy(),
    "blurred": lambda model, image, sigma: _blurred(image, sigma),
}


def _riemann(alphas: Callable[[int], np.ndarray], trapezoid: bool = False) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    def rule(n: int) -> tuple[np.ndarray, np.ndarray]:
        sizes = np.full(n, 1 / n)
        if trapezoid:  # Captum halves the two end steps and keeps 1/n between (the sizes sum to 1 - 1/n)
            sizes[[0, -1]] /= 2
        return sizes, alphas(n)

    return rule


def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    points, weights = np.polynomial.legendre.leggauss(n)
    return 0.5 * weights, 0.5 * (1 + points)


# n -> (step sizes, alphas) along the path, as Captum's ``approximation_parameters`` (its Riemann
# alphas come from float32 ``torch.linspace``)
INTEGRATION: dict[str, Callable[[int], tuple[np.ndarray, np.ndarray]]] = {
    "riemann_left": _riemann(lambda n: np.linspace(0, 1 - 1 / n, n, dtype=np.float32)),
    "riemann_right": _riemann(lambda n: np.linspace(1 / n, 1, n, dtype=np.float32)),
    "riemann_middle": _riemann(lambda n: np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n, dtype=np.float32)),
    "riemann_trapezoid": _riemann(lambda n: np.linspace(0, 1, n, dtype=np.float32), trapezoid=True),
    "gauss_legendre": _gauss_legendre,
}


def noise(seed: int, image: int, sample: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise of SmoothGrad's sample ``sample`` of image ``image``: independent of the batch size."""
    return np.random.default_rng([seed, image, sample]).standard_normal(shape, dtype=np.float32)


@dataclass
class _Batch:
    """The copies the runner asked for last, so that their gradients can be taken when their outputs come back."""

    start: int = 0
    copies: np.ndarray | None = None


def _sums(
    model: LoadedModel, batch: np.ndarray, gradient: gradients.Gradient, base: dict[str, np.ndarray], units: list[TargetUnit], count: int,
    make: Callable[[int, int, int], np.ndarray], fold: Callable[[int, int, np.ndarray], np.ndarray], stage: str, per_batch: int,
) -> Steps[list[np.ndarray]]:
    """For each image i: ``count`` copies ``make(i, start, stop)`` made a batch at a time, the target's
    gradient at each, folded by ``fold(i, start, gradients)`` into (C, H, W) and summed over the batches."""
    tracker = perturbation.Tracker(len(batch) * count)
    sums = []
    for i, image in enumerate(batch):
        made = _Batch()

        def make_copies(start: int, stop: int, i: int = i, made: _Batch = made) -> np.ndarray:
            made.start, made.copies = start, make(i, start, stop)
            return made.copies

        def reduce(outputs: dict[str, np.ndarray], i: int = i, made: _Batch = made) -> dict[str, np.ndarray]:
            assert made.copies is not None
            signal = gradients.indicator(outputs[gradient.layer].shape, np.full(len(made.copies), units[i].index))
            grads = gradient({model.input_name: made.copies, **outputs}, signal)
            return {"sum": fold(i, made.start, grads)[None]}

        kept = yield from perturbation.run(
            model, image, {name: value[i : i + 1] for name, value in base.items()}, count, make_copies, reduce, tracker,
            f"{stage}: image {i + 1} of {len(batch)}", per_batch, exact=True,
        )
        sums.append(kept["sum"].sum(axis=0))
    return sums


def _start(model: LoadedModel, batch: np.ndarray, target: Layer, units: list[str], method: str, max_batch: int) -> tuple[gradients.Gradient, dict[str, np.ndarray], list[TargetUnit], int]:
    """The gradient, the images' own forward values, their target units, and copies per batch (a
    batch's forward pass and its projection fitted to the server's budget, :func:`perturbation.gradient_cost`)."""
    gradient = gradients.Gradient(model, target.name, method)
    base = perturbation.forward(model, batch, gradient.names, exact=True)
    chosen = gradients.choose_units(model, target, units, base[target.name])
    return gradient, base, chosen, perturbation.copies_per_batch(model, max_batch, cost=perturbation.gradient_cost(model))


def integrated_gradients(model: LoadedModel, batch: np.ndarray, target: Layer, request: IntegratedGradientsRequest, labels: list[str]) -> Steps[AttributionResult]:
    """Integrated gradients of each image of ``batch`` (N, C, H, W) along the straight path from its
    baseline, with Captum's convergence delta; yields progress."""
    gradient, base, chosen, per_batch = _start(model, batch, target, request.target.units, "backprop", request.max_batch)
    sigma = request.blur_sigma if request.blur_sigma is not None else min(batch.shape[2:]) / 10
    baselines = np.stack([BASELINES[request.baseline](model, image, sigma) for image in batch])
    sizes, alphas = INTEGRATION[request.method](request.steps)
    sizes, alphas = sizes.astype(np.float32), alphas.astype(np.float32)

    def make(i: int, start: int, stop: int) -> np.ndarray:
        return baselines[i] + alphas[start:stop, None, None, None] * (batch[i] - baselines[i])

    def fold(i: int, start: int, grads: np.ndarray) -> np.ndarray:
        return np.tensordot(sizes[start : start + len(grads)], grads, axes=1)

    sums = yield from _sums(model, batch, gradient, base, chosen, request.steps, make, fold, "integrated gradients", per_batch)
    at_baseline = gradients.totals(perturbation.forward(model, baselines, [target.name], per_batch, exact=True)[target.name])
    images = []
    for i, (label, unit) in enumerate(zip(labels, chosen)):
        pixels = (sums[i] * (batch[i] - baselines[i])).astype(np.float32)
        delta = float(pixels.astype(np.float64).sum() - (unit.value - at_baseline[i, unit.index]))
        images.append(Attribution(label, unit, pixels, delta, baselines[i].astype(np.float32)))
    blur = f" (sigma {sigma:g} px)" if request.baseline == "blurred" else ""
    description = f"{request.steps} steps, {request.method.replace('_', ' ')}, baseline {request.baseline}{blur}"
    return AttributionResult("integrated-gradients", description, target.name, list(model.classes), images, per_batch)


def smoothgrad(model: LoadedModel, batch: np.ndarray, target: Layer, request: SmoothGradRequest, labels: list[str]) -> Steps[AttributionResult]:
    """SmoothGrad (the mean of noisy copies' gradients) or SmoothGrad-squared (of their squares) of
    each image of ``batch``; the noise's deviation is ``noise_level`` times the image's range."""
    gradient, base, chosen, per_batch = _start(model, batch, target, request.target.units, request.method, request.max_batch)
    sigmas = [request.noise_level * float(image.max() - image.min()) for image in batch]
    shape = batch.shape[1:]
    power = 2 if request.type == "smoothgrad_squared" else 1

    def make(i: int, start: int, stop: int) -> np.ndarray:
        return np.stack([batch[i] + np.float32(sigmas[i]) * noise(request.seed, i, s, shape) for s in range(start, stop)])

    def fold(i: int, start: int, grads: np.ndarray) -> np.ndarray:
        return (grads**power).sum(axis=0)

    sums = yield from _sums(model, batch, gradient, base, chosen, request.samples, make, fold, request.type.replace("_", "-"), per_batch)
    images = [Attribution(label, unit, (sums[i] / request.samples).astype(np.float32), sigma=sigmas[i]) for i, (label, unit) in enumerate(zip(labels, chosen))]
    description = f"{request.samples} samples, noise {request.noise_level:g} of each image's range, over {request.method}, seed {request.seed}"
    return AttributionResult(request.type.replace("_", "-"), description, target.name, list(model.classes), images, per_batch)


def input_x_gradient(model: LoadedModel, batch: np.ndarray, target: Layer, units: list[str], labels: list[str]) -> Steps[AttributionResult]:
    """The target's gradient times each image, per pixel (its one copy is the image: no extra forward pass)."""
    gradient, base, chosen, per_batch = _start(model, batch, target, units, "backprop", 0)
    sums = yield from _sums(model, batch, gradient, base, chosen, 1, lambda i, start, stop: batch[i][None], lambda i, start, grads: grads[0], "input x gradient", per_batch)
    images = [Attribution(label, unit, (sums[i] * batch[i]).astype(np.float32)) for i, (label, unit) in enumerate(zip(labels, chosen))]
    return AttributionResult("input-x-gradient", "gradient times input", target.name, list(model.classes), images, 1)
