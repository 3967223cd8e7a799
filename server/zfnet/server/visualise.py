"""Feature visualisation by optimisation (Olah, Mordvintsev & Schubert 2017), as Lucid and Lucent
do it, on onnxruntime: gradient ascent on an image's parameters to excite one unit.

The image is a decorrelated Fourier spectrum (each frequency scaled by 1 / frequency, so that
white noise in the parameters is natural-looking 1/f noise in the image), mapped through Lucid's
colour decorrelation matrix and a sigmoid into 0..1 (x 255: the model's input space). At each step
every image is jittered, scaled and rotated at random (one bilinear resampling, mid-grey brought in
at the borders) before the forward pass, so that the optimum is robust to them rather than an
adversarial pattern. The objective's gradient at the layer goes down the projection graph's
backprop to the input, then back through the transforms' adjoint (the resampling's weights,
scattered), the sigmoid, the colour matrix and the inverse FFT's adjoint, to an Adam step.
Every random draw comes from a generator seeded by (seed, unit), so a seed gives the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server import gradients, perturbation
from zfnet.server.admission import next_batch
from zfnet.server.layers import Layer
from zfnet.server.models import LoadedModel
from zfnet.server.perturbation import Steps
from zfnet.wire.visualise import VisualiseRequest, VisualisedUnit, VisualiseResult, default_jitter

# Lucid's colour decorrelation: the square root of ImageNet's colour correlation (by SVD), its
# columns scaled so the largest has norm 1
COLOUR_CORRELATION = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
COLOUR = COLOUR_CORRELATION / np.max(np.linalg.norm(COLOUR_CORRELATION, axis=0))
INIT_SD = 0.01  # Lucid's initial parameter deviation
FOURIER_MAGIC = 4.0  # Lucid divides the inverse FFT by this ("reduces saturation")
GREY = 0.5  # what the transforms bring in at the borders (Lucid pads with 0.5)
ADAM = (0.9, 0.999, 1e-8)  # beta1, beta2, epsilon: torch.optim.Adam's defaults, which Lucent uses
PROGRESS_EVERY = 8  # steps between progress messages
# Lucid redirects ReLU gradients for its first 16 steps, so that a unit silent on the starting image
# still gets a push; here an image whose gradient is zero takes the deconvnet's projection instead
WARM_UP = 16


# ---- the parameterisation: parameters -> image in 0..1, and its adjoint ---------------------


def frequencies(height: int, width: int) -> np.ndarray:
    """(H, W//2 + 1) the spatial frequency of each coefficient of a real 2-D FFT (cycles per pixel)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[: width // 2 + 1]
    return np.sqrt(fx * fx + fy * fy)


class Fourier:
    """Lucid's ``fft_image``: parameters (n, C, H, W//2+1, 2), the real and imaginary parts of a
    spectrum scaled by 1 / max(frequency, 1 / max(H, W)); the image is its orthonormal inverse
    real FFT divided by 4."""

    def __init__(self, height: int, width: int) -> None:
        self.size = (height, width)
        self.scale = (1.0 / np.maximum(frequencies(height, width), 1.0 / max(height, width))).astype(np.float32)
        # d image / d coefficient: columns whose conjugates the inverse real FFT also sums count twice
        columns = np.arange(width // 2 + 1)
        self.twice = np.where((columns > 0) & (2 * columns < width), 2.0, 1.0).astype(np.float32)

    def shape(self, n: int, channels: int) -> tuple[int, ...]:
        return (n, channels, self.size[0], self.size[1] // 2 + 1, 2)

    def image(self, params: np.ndarray) -> np.ndarray:
        spectrum = (params[..., 0] + 1j * params[..., 1]) * self.scale
        return (np.fft.irfft2(spectrum, s=self.size, norm="ortho") / FOURIER_MAGIC).astype(np.float32)

    def adjoint(self, grad: np.ndarray) -> np.ndarray:
        spectrum = np.fft.rfft2(grad / FOURIER_MAGIC, norm="ortho") * (self.twice * self.scale)
        return np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)


class Pixels:
    """Lucid's ``pixel_image``: the parameters are the image (before the sigmoid)."""

    def __init__(self, height: int, width: int) -> None:
        self.size = (height, width)

    def shape(self, n: int, channels: int) -> tuple[int, ...]:
        return (n, channels, *self.size)

    def image(self, params: np.ndarray) -> np.ndarray:
        return params

    def adjoint(self, grad: np.ndarray) -> np.ndarray:
        return grad


def decorrelate(image: np.ndarray) -> np.ndarray:
    """Lucid's ``_linear_decorrelate_color``: each pixel's colour times COLOUR^T (3-channel images only)."""
    return np.einsum("nchw,dc->ndhw", image, COLOUR) if image.shape[1] == 3 else image


def decorrelate_adjoint(grad: np.ndarray) -> np.ndarray:
    return np.einsum("ndhw,dc->nchw", grad, COLOUR) if grad.shape[1] == 3 else grad


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1 + np.tanh(0.5 * x))).astype(np.float32)  # overflow-free


# ---- transformation robustness: one bilinear resampling per image and its adjoint -------------


@dataclass(frozen=True)
class Sampling:
    """Where each output pixel of n images reads its source: four neighbours' flat indices into
    the (n, H*W) source and their weights, 0 for neighbours outside (mid-grey stands in for them)."""

    index: np.ndarray  # (4, n, H*W) int64
    weight: np.ndarray  # (4, n, H*W) float32
    outside: np.ndarray  # (n, H*W) float32: the weight of mid-grey


def sampling(height: int, width: int, shifts: np.ndarray, scales: np.ndarray, angles: np.ndarray) -> Sampling:
    """Each image jittered by ``shifts`` (n, 2) pixels (dy, dx), scaled by ``scales`` (n,) and
    rotated by ``angles`` (n,) degrees counter-clockwise about its centre (kornia's sense): output
    pixel p reads source c + R(-a)(p - c - t) / s."""
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    centre = ((height - 1) / 2, (width - 1) / 2)
    py = rows.ravel()[None] - centre[0] - shifts[:, :1]
    px = cols.ravel()[None] - centre[1] - shifts[:, 1:]
    theta = -np.deg2rad(angles)[:, None]  # rows point down: a counter-clockwise turn on screen is clockwise in (row, column)
    cos, sin = np.cos(theta), np.sin(theta)
    sy = (cos * py - sin * px) / scales[:, None] + centre[0]
    sx = (sin * py + cos * px) / scales[:, None] + centre[1]
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    indices, weights = [], []
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        y, x = y0 + dy, x0 + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        indices.append(np.where(inside, y * width + x, 0).astype(np.int64))
        weights.append(np.where(inside, w, 0.0))
    weight = np.stack(weights).astype(np.float32)
    return Sampling(np.stack(indices), weight, (1.0 - weight.sum(axis=0)).astype(np.float32))


def resample(images: np.ndarray, where: Sampling) -> np.ndarray:
    """(n, C, H, W) -> (n, C, H, W) read through ``where``."""
    n, channels, height, width = images.shape
    flat = images.reshape(n, channels, height * width)
    out = np.full(flat.shape, 0, np.float32) + GREY * where.outside[:, None]
    for index, weight in zip(where.index, where.weight):
        out += np.take_along_axis(flat, index[:, None, :].repeat(channels, axis=1), axis=2) * weight[:, None]
    return out.reshape(images.shape)


def resample_adjoint(grad: np.ndarray, where: Sampling) -> np.ndarray:
    """The adjoint of :func:`resample` on its image: each output's gradient scattered back to the
    source pixels it read, by the same weights."""
    n, channels, height, width = grad.shape
    size = height * width
    flat = grad.reshape(n * channels, size)
    offsets = (np.arange(n * channels) * size)[:, None]
    out = np.zeros(n * channels * size, np.float64)
    for index, weight in zip(where.index, where.weight):
        rows = np.repeat(index, channels, axis=0) + offsets
        out += np.bincount(rows.ravel(), (flat * np.repeat(weight, channels, axis=0)).ravel(), minlength=out.size)
    return out.reshape(grad.shape).astype(np.float32)


@dataclass(frozen=True)
class Transforms:
    """Lucid's standard transforms, scaled to the input: a jitter of up to ``jitter`` pixels, a scale
    among 11 values in 1 +- ``scale``, a rotation among 21 angles in +- ``rotate`` degrees (no rotation
    counted 5 more times, as Lucid's list)."""

    jitter: int
    scale: float
    rotate: float

    @property
    def active(self) -> bool:
        return bool(self.jitter or self.scale or self.rotate)

    def draw(self, rng: np.random.Generator, n: int, height: int, width: int) -> Sampling:
        shifts = rng.integers(-self.jitter, self.jitter + 1, size=(n, 2)).astype(np.float64)
        scales = rng.choice(1 + self.scale * np.linspace(-1, 1, 11), size=n)
        angles = rng.choice(np.concatenate([np.linspace(-self.rotate, self.rotate, 21), np.zeros(5)]), size=n)
        return sampling(height, width, shifts, scales, angles)

    def describe(self) -> str:
        if not self.active:
            return "no transforms"
        return f"jitter {self.jitter} px, scale 1 +- {self.scale:g}, rotate +- {self.rotate:g} deg"


# ---- objectives ---------------------------------------------------------------------------------


def unit_signal(shape: tuple[int, ...], units: np.ndarray, objective: str) -> np.ndarray:
    """(n, *shape[1:]) d objective / d layer: ``channel``, the unit's mean over its map (1 / map size
    on the map); ``neuron``, the unit at its map's centre, (h // 2, w // 2) as Lucid's."""
    signal = np.zeros((len(units), *shape[1:]), np.float32)
    rows = np.arange(len(units))
    if objective == "neuron" and len(shape) > 2:
        signal[(rows, units, *[np.full(len(units), d // 2) for d in shape[2:]])] = 1.0
    else:
        signal[rows, units] = 1.0 / max(1, int(np.prod(shape[2:])))
    return signal


def objective_values(activation: np.ndarray, units: np.ndarray, objective: str) -> np.ndarray:
    """(n,) each image's objective: the dot product of its activation with :func:`unit_signal`."""
    signal = unit_signal(activation.shape, units, objective)
    return (activation * signal).reshape(len(units), -1).sum(axis=1)


def diversity(activation: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Lucid's diversity within each run of ``group`` images: the mean over images of the summed
    cosine similarity of its Gram matrix to the others'; (per group, its gradient by the activation)."""
    n, channels = activation.shape[:2]
    features = activation.reshape(n, channels, -1).astype(np.float64)
    grams = features @ features.transpose(0, 2, 1)
    norms = np.maximum(np.sqrt((grams**2).sum(axis=(1, 2), keepdims=True)), 1e-12)
    unit = (grams / norms).reshape(n // group, group, channels, channels)
    total = unit.sum(axis=1, keepdims=True)
    value = ((total**2).sum(axis=(1, 2, 3)) - group) / group  # sum over i != j of <N_i, N_j>, over the group
    d_unit = (2.0 / group) * (total - unit)
    d_unit = d_unit.reshape(n, channels, channels)
    d_grams = (d_unit - (grams / norms) * (d_unit * grams / norms).sum(axis=(1, 2), keepdims=True)) / norms
    d_features = (d_grams + d_grams.transpose(0, 2, 1)) @ features
    return value, d_features.reshape(activation.shape).astype(np.float32)


# ---- the optimisation ---------------------------------------------------------------------------


class Adam:
    """torch.optim.Adam's update (no weight decay), ascending."""

    def __init__(self, shape: tuple[int, ...], rate: float) -> None:
        self.rate, self.step = rate, 0
        self.m, self.v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def ascend(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        beta1, beta2, eps = ADAM
        self.step += 1
        loss_grad = -grad
        self.m = beta1 * self.m + (1 - beta1) * loss_grad
        self.v = beta2 * self.v + (1 - beta2) * loss_grad**2
        m_hat = self.m / (1 - beta1**self.step)
        v_hat = self.v / (1 - beta2**self.step)
        return (params - self.rate * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)


def run(model: LoadedModel, layer: Layer, request: VisualiseRequest) -> Steps[VisualiseResult]:
    """Optimise ``images_per_unit`` images for each unit of ``request``; yields progress (steps done,
    counted over all units) and returns the images, their objective and every unit's response."""
    channels, height, width = model.input_shape[1:]
    gradient = gradients.Gradient(model, layer.name, "backprop")
    shape = layer.shape
    count = shape[1] if len(shape) > 1 and isinstance(shape[1], int) else 0
    if count <= 0:
        raise InvalidArgument(f"layer {layer.name!r} has no fixed unit axis (shape {shape})", field="layer")
    units = [gradients.unit_index(model, layer, count, unit, f"units[{i}]") for i, unit in enumerate(request.units)]
    group = request.images_per_unit
    if request.diversity and group < 2:
        raise InvalidArgument("diversity compares the images of one unit: set images_per_unit to 2 or more", field="images_per_unit")
    parameterisation = (Pixels if request.pixels else Fourier)(height, width)
    transforms = Transforms(default_jitter(height) if request.jitter is None else request.jitter, request.scale, request.rotate)
    per_batch = max(1, perturbation.copies_per_batch(model, cost=perturbation.gradient_cost(model)) // group)
    tracker = perturbation.Tracker(len(units) * request.steps)
    found: list[VisualisedUnit] = []
    for start in range(0, len(units), per_batch):
        chunk = list(range(start, min(len(units), start + per_batch)))
        found += yield from _optimise(model, layer, gradient, request, [units[j] for j in chunk], chunk, parameterisation, transforms, channels, tracker)
    colour = "pixels" if request.pixels else "decorrelated Fourier spectrum" + (", decorrelated colour" if channels == 3 else "")
    description = f"{colour}, Adam lr {request.learning_rate:g}, {transforms.describe()}" + (
        f", diversity {request.diversity:g} over {group} images" if request.diversity else "")
    return VisualiseResult(layer.name, request.objective, request.steps, request.seed, description, found)


def _optimise(
    model: LoadedModel, layer: Layer, gradient: gradients.Gradient, request: VisualiseRequest, units: list[int], positions: list[int],
    parameterisation: Fourier | Pixels, transforms: Transforms, channels: int, tracker: perturbation.Tracker,
) -> Steps[list[VisualisedUnit]]:
    """The optimisation of one batch of units (``positions`` in the request), ``images_per_unit`` images each."""
    group = request.images_per_unit
    height, width = parameterisation.size
    rngs = [np.random.default_rng([request.seed, p]) for p in positions]
    params = np.concatenate([INIT_SD * rng.standard_normal(parameterisation.shape(group, channels), dtype=np.float32) for rng in rngs])
    target = np.repeat(np.asarray(units, np.int64), group)
    adam = Adam(params.shape, request.learning_rate)
    curve = np.zeros((len(units), request.steps), np.float32)
    reported = 0
    warm = gradients.Gradient(model, layer.name, "deconvnet")
    names = list(dict.fromkeys(gradient.names + warm.names))
    for step in range(request.steps):
        next_batch()  # a cancelled call stops here
        x = to_rgb(parameterisation, params, request.pixels)
        where = joined([transforms.draw(rng, group, height, width) for rng in rngs]) if transforms.active else None
        seen = 255.0 * (resample(x, where) if where else x)
        forward = {model.input_name: seen, **perturbation.forward(model, seen, names, exact=True)}
        activation = forward[layer.name]
        signal = unit_signal(activation.shape, target, request.objective) / group
        values = objective_values(activation, target, request.objective).reshape(len(units), group).mean(axis=1)
        if request.diversity:
            similarity, d_similarity = diversity(activation, group)
            values = values - request.diversity * similarity
            signal = signal - request.diversity * d_similarity
        curve[:, step] = values
        grad = gradient(forward, signal)
        if step < WARM_UP:  # a unit silent on an image passes no gradient back: the deconvnet's signal wakes it
            silent = ~grad.reshape(len(grad), -1).any(axis=1)
            if silent.any():
                grad[silent] = warm(forward, signal)[silent]
        grad = 255.0 * grad
        if where:
            grad = resample_adjoint(grad, where)
        grad = grad * x * (1 - x)
        if not request.pixels:
            grad = decorrelate_adjoint(grad)
        params = adam.ascend(params, parameterisation.adjoint(grad))
        if (step + 1) % PROGRESS_EVERY == 0 or step + 1 == request.steps:
            yield tracker.advance(len(units) * (step + 1 - reported), f"visualise {layer.name}: units {positions[0] + 1}-{positions[-1] + 1}")
            reported = step + 1
    x = to_rgb(parameterisation, params, request.pixels)
    final = gradient.forward(255.0 * x)[layer.name]
    means = final.reshape(len(final), final.shape[1], -1).mean(axis=2)
    objective = objective_values(final, target, request.objective)
    return [
        VisualisedUnit(
            unit, gradients.label(model, layer, unit), (255.0 * x[k * group : (k + 1) * group]).astype(np.float32),
            objective[k * group : (k + 1) * group].astype(np.float32), means[k * group : (k + 1) * group].astype(np.float32), curve[k],
        )
        for k, unit in enumerate(units)
    ]


def to_rgb(parameterisation: Fourier | Pixels, params: np.ndarray, pixels: bool) -> np.ndarray:
    """The images the parameters stand for, in 0..1 (Lucid's ``to_valid_rgb``)."""
    image = parameterisation.image(params)
    return sigmoid(image if pixels else decorrelate(image))


def joined(parts: list[Sampling]) -> Sampling:
    """The samplings of several runs of images, as one."""
    return Sampling(np.concatenate([p.index for p in parts], axis=1), np.concatenate([p.weight for p in parts], axis=1), np.concatenate([p.outside for p in parts]))
