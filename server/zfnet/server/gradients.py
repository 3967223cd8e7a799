"""What the gradient analyses (Grad-CAM, integrated gradients, SmoothGrad, input x gradient, feature
visualisation) share: the target, one unit of a layer per image, and its gradient with respect to
the input, or to an inner tensor, through the projection graph.

The projection graph carries a signal down by each op's vector-Jacobian product, so sending down
the target's indicator (ones on the unit's map) with method ``backprop`` gives the gradient of the
unit's summed activation; ``guided`` gives guided backprop's.
"""

from __future__ import annotations

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server import deconv, perturbation
from zfnet.server.layers import Layer, resolve
from zfnet.server.models import LoadedModel
from zfnet.wire.attribution import TargetUnit
from zfnet.wire.common import LayerKey, within


def target_layer(model: LoadedModel, layer: LayerKey | None) -> Layer:
    """The target's layer: ``layer`` (errors name ``target.layer``), or the model's output."""
    with within("layer", "target.layer"):
        return resolve(model.layers, model.output_name if layer is None else layer)


def totals(activation: np.ndarray) -> np.ndarray:
    """(N, units) each unit's activation summed over its map (axes 2..)."""
    return activation.reshape(activation.shape[0], activation.shape[1], -1).astype(np.float64).sum(axis=2)


def unit_index(model: LoadedModel, layer: Layer, count: int, unit: str, field: str) -> int:
    """The index of ``unit`` on a layer of ``count`` units: at the model's output a class name or
    index, elsewhere a channel index (an error naming the request field ``field`` otherwise)."""
    names = model.classes if layer.name == model.output_name else []
    unit = unit.strip()
    if unit in names:
        return names.index(unit)
    if unit.isascii() and unit.isdigit() and int(unit) < count:
        return int(unit)
    known = f"the classes are {', '.join(names)}, or an index 0..{count - 1}" if names else f"give an index 0..{count - 1}"
    where = "class" if names or layer.name == model.output_name else f"channel of {layer.name}"
    raise InvalidArgument(f"unit {unit!r} is no {where}; {known}", field=field, reason="VALUE_OUT_OF_RANGE", metadata={"units": count})


def label(model: LoadedModel, layer: Layer, index: int) -> str:
    """A unit's class name at the model's output, else ""."""
    return model.classes[index] if layer.name == model.output_name and index < len(model.classes) else ""


def choose_units(model: LoadedModel, layer: Layer, units: list[str], activation: np.ndarray) -> list[TargetUnit]:
    """Per image: the unit given (one for all images, or one each; see :func:`unit_index`), else the
    top-1 class at the output, the strongest channel (largest total activation) elsewhere."""
    count, sums, images = activation.shape[1], totals(activation), len(activation)
    if len(units) not in (0, 1, images):
        raise InvalidArgument(
            f"{len(units)} target units for {images} images; give one for all images or one per image", field="target.units", reason="VALUE_OUT_OF_RANGE",
        )
    chosen = []
    for i in range(images):
        given = units[0] if len(units) == 1 else units[i] if units else ""
        index = unit_index(model, layer, count, given, f"target.units[{0 if len(units) == 1 else i}]") if given.strip() else int(np.argmax(sums[i]))
        chosen.append(TargetUnit(index, label(model, layer, index), not given.strip(), float(sums[i, index])))
    return chosen


def indicator(shape: tuple[int, ...], units: np.ndarray) -> np.ndarray:
    """(n, *shape[1:]) float32 signals: ones on row r's unit ``units[r]`` (its whole map), zeros elsewhere."""
    signal = np.zeros((len(units), *shape[1:]), np.float32)
    signal[np.arange(len(units)), units] = 1.0
    return signal


class Gradient:
    """The gradient of a target unit of tensor ``layer`` with respect to the input (or to the inner
    tensor ``stop``), for a batch of images whose forward values are at hand."""

    def __init__(self, model: LoadedModel, layer: str, method: str = "backprop", stop: str = "") -> None:
        self.model, self.layer, self.stop = model, layer, stop
        self.projection, self.session = model.projection(layer, method, stop)
        if self.projection.per_image:
            raise InvalidArgument(
                f"layer {layer!r}: the model's graph merges the images of a batch on the way to it, so gradients of copies "
                "cannot be taken a batch at a time; export the model with a dynamic batch dimension"
            )
        self.names = model.fetched(self.projection, layer, stop)

    def forward(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The forward values the gradient needs (the input, the target's layer, ``stop``)."""
        return {self.model.input_name: images, **perturbation.forward(self.model, images, self.names, exact=True)}

    def __call__(self, forward: dict[str, np.ndarray], signal: np.ndarray) -> np.ndarray:
        """(n, *shape) for each image of ``forward``, the gradient of its dot product with its row of
        ``signal`` (n, *layer shape): with :func:`indicator`, of its unit's summed activation."""
        images = forward[self.model.input_name]
        return deconv.project(self.projection, self.session, forward, signal, np.arange(len(signal), dtype=np.int64), images.shape[1:])
