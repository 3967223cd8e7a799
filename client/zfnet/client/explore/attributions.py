"""The Live page's attributions: each method the client offers, its parameters (with the client's
defaults) and how it is asked for one image, as a registry of small rules. An :class:`Ask` names
everything an answer depends on, so it keys the explorer's cache and the picture's URL."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex

from zfnet.client.api import Client
from zfnet.client.heatmaps import Heat, attribution_heat, gradcam_heat
from zfnet.errors import InvalidArgument
from zfnet.wire.attribution import BASELINES, GRADIENTS, INTEGRATION, NOISE_LEVEL, SAMPLES, STEPS, AttributionResult
from zfnet.wire.gradcam import GradCamResult

Result = GradCamResult | AttributionResult
BAR_STOPS = 11  # colours of a colour bar's gradient on the page


@dataclass(frozen=True)
class Ask:
    """One attribution of one uploaded image: the method, its target (a unit of ``target_layer``, ""
    the output; ``unit`` "" the top-1 class or the strongest channel) and the method's parameters."""

    method: str
    target_layer: str
    unit: str
    parameters: tuple[tuple[str, str | int | float], ...]  # (name, value) in the method's order

    def get(self, name: str) -> Any:
        """A parameter's value (its type is its default's)."""
        return dict(self.parameters)[name]


@dataclass(frozen=True)
class Method:
    """An attribution method: its name on the page, its parameters' defaults (the type of each default
    parses the query's text) and its call for one image."""

    title: str
    defaults: Mapping[str, str | int | float]
    call: Callable[[Client, str, np.ndarray, Ask], Result]
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # a parameter's allowed values, where they are few


def _target(ask: Ask) -> tuple[str | None, list[str]]:
    return ask.target_layer or None, [ask.unit] if ask.unit else []


def _grad_cam(variant: str) -> Callable[[Client, str, np.ndarray, Ask], Result]:
    return lambda client, model, rgb, ask: client.grad_cam(model, [rgb], ask.get("layer") or None, *_target(ask), variant)


def _smoothgrad(kind: str) -> Callable[[Client, str, np.ndarray, Ask], Result]:
    return lambda client, model, rgb, ask: client.smoothgrad(
        model, [rgb], *_target(ask), kind, ask.get("over"), ask.get("samples"), ask.get("noise"),
    )


SMOOTHING = {"samples": SAMPLES, "noise": NOISE_LEVEL, "over": "backprop"}
METHODS: dict[str, Method] = {
    "grad-cam": Method("Grad-CAM", {"layer": ""}, _grad_cam("grad_cam")),
    "grad-cam++": Method("Grad-CAM++", {"layer": ""}, _grad_cam("grad_cam_plus_plus")),
    "integrated-gradients": Method(
        "integrated gradients", {"baseline": "black", "steps": STEPS, "integration": "gauss_legendre"},
        lambda client, model, rgb, ask: client.integrated_gradients(model, [rgb], *_target(ask), ask.get("baseline"), ask.get("steps"), ask.get("integration")),
        {"baseline": tuple(BASELINES.names), "integration": tuple(INTEGRATION.names)},
    ),
    "smoothgrad": Method("SmoothGrad", SMOOTHING, _smoothgrad("smoothgrad"), {"over": tuple(GRADIENTS.names)}),
    "smoothgrad-squared": Method("SmoothGrad-squared", SMOOTHING, _smoothgrad("smoothgrad_squared"), {"over": tuple(GRADIENTS.names)}),
    "input-x-gradient": Method("input x gradient", {}, lambda client, model, rgb, ask: client.input_x_gradient(model, [rgb], *_target(ask))),
}


def ask_of(query: Mapping[str, str]) -> Ask:
    """The :class:`Ask` of a request's query: ``method``, ``target_layer``, ``unit`` and the method's
    parameters (missing ones take the client's defaults; others are ignored)."""
    name = query.get("method", "")
    if name not in METHODS:
        raise InvalidArgument(f"unknown attribution method {name!r}; choose one of {', '.join(METHODS)}")
    method = METHODS[name]
    parameters = []
    for parameter, default in method.defaults.items():
        text = query.get(parameter, "")
        try:
            value = type(default)(text) if text else default
        except ValueError:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise InvalidArgument(f"the query parameter {parameter!r} of {name} must be {kind}, got {text!r}") from None
        parameters.append((parameter, value))
    return Ask(name, query.get("target_layer", ""), query.get("unit", ""), tuple(parameters))


def heat_of(result: Result) -> Heat:
    """What the Live page overlays on the image: the Grad-CAM map, or the attribution summed over colours."""
    return gradcam_heat(result.images[0]) if isinstance(result, GradCamResult) else attribution_heat(result, result.images[0])


def described(ask: Ask, result: Result) -> dict:
    """The caption's data: what was explained, by which method and parameters, and the colour scale."""
    item = result.images[0]
    shown = heat_of(result)
    extra = (
        {"layer": result.layer, "description": f"{result.layer}'s maps ({result.layout}) weighted by the target's gradient"}
        if isinstance(result, GradCamResult) else {"description": result.description}
    )
    return {
        "method": ask.method, "title": METHODS[ask.method].title, "target": item.target.describe(), "target_layer": result.target_layer,
        "value": item.target.value, "delta": getattr(item, "delta", 0.0), "sigma": getattr(item, "sigma", 0.0),
        "scale": {
            "cmap": shown.cmap, "low": shown.low, "high": shown.high, "label": shown.label,
            "colours": [to_hex(c) for c in colormaps[shown.cmap](np.linspace(0, 1, BAR_STOPS))],
        },
        **extra,
    }


def catalogue() -> dict:
    """The methods, their parameters' defaults and choices, for the page's form."""
    return {name: {"title": m.title, "defaults": dict(m.defaults), "choices": {k: list(v) for k, v in m.choices.items()}} for name, m in METHODS.items()}
