"""PyTorch -> ONNX with every layer exposed (dynamo-based ``torch.onnx.export``)."""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import onnx
import onnxscript.optimizer
import torch
from torch import nn

from zfnet.converters import expose
from zfnet.converters.graph import OPSET, PREPROCESSING_KEY, SOURCE_KEY, Preprocessing, prepend_preprocessing, set_classes, set_metadata, set_versions
from zfnet.converters.pytorch import imagenet, zoo
from zfnet.errors import InvalidArgument, NotFound

INPUT_NAME = "image"


def architecture(arch: str) -> imagenet.Architecture | None:
    """The built-in ImageNet architecture of that name (``resnet50``, ``torchvision.resnet50``,
    ``timm.vit_small_patch16_224``), or None."""
    return imagenet.REGISTRY.get(arch)


def load_module(arch: str, arguments: Mapping[str, object] | None = None) -> nn.Module:
    """A network with random weights: a built-in architecture (``zfnet-cifar10``, an ImageNet one of
    :data:`zfnet.converters.pytorch.imagenet.REGISTRY`), ``torchvision.X`` or ``timm.X`` from the
    installed library (never pretrained: nothing is downloaded), or ``package.module:factory``;
    called with ``arguments`` (``num_classes=10``, ``img_size=64``)."""
    kwargs = dict(arguments or {})
    if ":" in arch:
        module_name, _, name = arch.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), name)
        except ImportError as err:
            raise NotFound(f"cannot import {module_name!r}: {err}") from None
        except AttributeError:
            raise NotFound(f"module {module_name!r} has no {name!r}") from None
        return _built(arch, factory, kwargs)
    found = architecture(arch)
    if found is not None:
        return _built(arch, found, kwargs)
    library, _, name = arch.partition(".")
    if library in UPSTREAM and name:
        return _built(arch, _upstream(library, name), kwargs)
    if arch in zoo.ARCHITECTURES:
        return _built(arch, zoo.ARCHITECTURES[arch], kwargs)
    known = ", ".join([*zoo.ARCHITECTURES, *(a.upstream for a in imagenet.ARCHITECTURES)])
    raise NotFound(f"unknown architecture {arch!r}; built in: {known}; or torchvision.NAME / timm.NAME with that library installed, or package.module:factory")


def _built(arch: str, factory: Callable[..., object], kwargs: dict[str, object]) -> nn.Module:
    """``factory(**kwargs)``, which must be a torch module."""
    try:
        module = factory(**kwargs)
    except TypeError as err:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
        raise InvalidArgument(f"{arch} cannot be built with {given}: {err}") from None
    if not isinstance(module, nn.Module):
        raise InvalidArgument(f"{arch} built a {type(module).__name__}, not a torch.nn.Module")
    return module


def _upstream(library: str, name: str) -> Callable[..., object]:
    """The factory of an architecture of the installed torchvision or timm, built without pretrained weights."""
    try:
        lib = importlib.import_module(UPSTREAM[library])
    except ImportError:
        raise NotFound(f"{library}.{name} is not built in and {library} is not installed; built in: {', '.join(imagenet.REGISTRY)}") from None
    if library == "timm":
        return lambda **kwargs: lib.create_model(name, pretrained=False, **kwargs)
    factory = getattr(lib, name, None)
    if factory is None:
        raise NotFound(f"torchvision has no architecture {name!r}")
    return factory


UPSTREAM = {"torchvision": "torchvision.models", "timm": "timm"}


def load_weights(module: nn.Module, checkpoint: str | Path) -> nn.Module:
    """Load a ``state_dict`` file safely (``weights_only=True``) into ``module``."""
    path = Path(checkpoint)
    if not path.is_file():
        raise NotFound(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise InvalidArgument(f"cannot load {path} as a state_dict (weights_only=True): {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise InvalidArgument(f"{path} does not fit the architecture: {' '.join(str(err).split())[:400]}") from None
    return module


def export(
    module: nn.Module,
    input_size: tuple[int, int] = (32, 32),
    classes: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
) -> onnx.ModelProto:
    """Export ``module`` (eval mode, dynamic batch) to an exposed ONNX model.

    ``preprocessing`` is prepended as graph nodes unless the module already carries it (a
    ``preprocess`` attribute, as the built-in architectures do), in which case it is only recorded.
    """
    module = module.eval()
    example = torch.rand(1, 3, *input_size) * 255
    with warnings.catch_warnings(), _quiet_torch_onnx():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, (example,), input_names=[INPUT_NAME], dynamo=True, optimize=False, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("N")},), opset_version=OPSET,
            )
        except Exception as err:  # torch.export failures come in many types
            raise InvalidArgument(f"torch.onnx.export failed: {str(err).splitlines()[0]}") from None
    assert program is not None, "torch.onnx.export returns the program with dynamo=True"
    model = program.model_proto
    onnxscript.optimizer.fold_constants(model)  # folds the exporter's shape arithmetic; keeps BatchNorm
    onnxscript.optimizer.remove_unused_nodes(model)
    set_versions(model)
    built_in = getattr(module, "preprocess", None)
    if built_in is not None and isinstance(built_in, zoo.Preprocess):
        recorded = Preprocessing(
            channel_order="rgb", mean=built_in.mean.flatten().tolist(),
            scale=(1.0 / built_in.std.flatten()).tolist(), input_size=input_size,
        )
        set_metadata(model, PREPROCESSING_KEY, recorded.to_json())
    elif preprocessing is not None:
        preprocessing.input_size = input_size
        prepend_preprocessing(model, preprocessing)
    else:
        set_metadata(model, PREPROCESSING_KEY, Preprocessing(input_size=input_size).to_json())
    classes = classes or getattr(module, "classes", None)
    if classes:
        set_classes(model, classes)
    set_metadata(model, SOURCE_KEY, f"pytorch {type(module).__module__}.{type(module).__name__}")
    model = expose.expose(model)
    onnx.checker.check_model(model, full_check=True)
    return model


class _quiet_torch_onnx:
    """Silence torch.onnx's progress prints and warnings for the duration of an export."""

    def __enter__(self) -> None:
        self._loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch._subclasses")]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for lg, level in zip(self._loggers, self._levels):
            lg.setLevel(level)
