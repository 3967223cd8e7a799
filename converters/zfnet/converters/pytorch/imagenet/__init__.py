"""ImageNet classifiers in plain torch whose module paths and ``state_dict`` keys are torchvision's (or timm's).

A torchvision or timm weight file loads unchanged (``model.load_state_dict(torch.load(path))``) without
torchvision or timm installed, and a module path such as ``layer3.5``, ``Mixed_6e``, ``features.28`` or
``blocks.7`` names the same module as upstream. Nothing is downloaded: the factories build random weights.

``REGISTRY`` maps ``resnet50``, ``torchvision.resnet50``, ``timm.vit_small_patch16_224`` (and the bare
timm name) to an :class:`Architecture`: the factory, called like upstream's (``num_classes=1000``, ...),
with the evaluation preprocessing its published ImageNet-1k weights expect.

``tests/converters/imagenet_upstream.json`` was recorded once by running torchvision 0.29.1 and timm 1.0.31 on
torch 2.13.0 (CPU): per architecture the ``state_dict`` keys and shapes, the module paths, parameter
counts, evaluation transforms, some module output shapes and the logits for a seeded filling of the
weights. The tests compare the replicas with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from zfnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, normalised
from zfnet.preprocessing import Preprocessing as Recorded

from zfnet.converters.pytorch.imagenet.convnext import convnext_tiny
from zfnet.converters.pytorch.imagenet.densenet import densenet121
from zfnet.converters.pytorch.imagenet.efficientnet import efficientnet_b0
from zfnet.converters.pytorch.imagenet.inception import inception_v3
from zfnet.converters.pytorch.imagenet.mobilenet import mobilenet_v3_large
from zfnet.converters.pytorch.imagenet.regnet import regnet_y_400mf
from zfnet.converters.pytorch.imagenet.resnet import resnet18, resnet50
from zfnet.converters.pytorch.imagenet.swin import swin_t
from zfnet.converters.pytorch.imagenet.vgg import vgg16
from zfnet.converters.pytorch.imagenet.vit import vit_small_patch16_224

INCEPTION_MEAN = (0.5, 0.5, 0.5)  # timm's IMAGENET_INCEPTION_MEAN/STD, used by its ViT weights
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation transform of the published weights: resize the shorter side, centre-crop, ``(x - mean) / std`` on RGB in 0..1."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) the network takes."""
        return (self.crop, self.crop)

    def recorded(self) -> Recorded:
        """As a zfnet model records it: mean and scale on 0..255 (in the graph), resize and crop (before it)."""
        return normalised(self.mean, self.std, self.input_size, self.resize, self.interpolation)


@dataclass(frozen=True)
class Architecture:
    """An upstream architecture: ``library.name``, the factory, and the preprocessing its weights expect."""

    upstream: str
    factory: Callable[..., nn.Module]
    preprocessing: Preprocessing

    def __call__(self, **kwargs: object) -> nn.Module:
        """Build the network with random weights; keywords as upstream's factory (``num_classes=1000``, ...)."""
        return self.factory(**kwargs)


_IMAGENET_224 = Preprocessing(resize=256, crop=224)

ARCHITECTURES = [
    Architecture("torchvision.resnet18", resnet18, _IMAGENET_224),
    Architecture("torchvision.resnet50", resnet50, _IMAGENET_224),
    Architecture("torchvision.vgg16", vgg16, _IMAGENET_224),
    Architecture("torchvision.inception_v3", inception_v3, Preprocessing(resize=342, crop=299)),
    Architecture("torchvision.densenet121", densenet121, _IMAGENET_224),
    Architecture("torchvision.mobilenet_v3_large", mobilenet_v3_large, _IMAGENET_224),
    Architecture("torchvision.efficientnet_b0", efficientnet_b0, Preprocessing(resize=256, crop=224, interpolation="bicubic")),
    Architecture("torchvision.convnext_tiny", convnext_tiny, Preprocessing(resize=236, crop=224)),
    Architecture("torchvision.swin_t", swin_t, Preprocessing(resize=232, crop=224, interpolation="bicubic")),
    Architecture("torchvision.regnet_y_400mf", regnet_y_400mf, _IMAGENET_224),
    Architecture("timm.vit_small_patch16_224", vit_small_patch16_224, Preprocessing(resize=248, crop=224, interpolation="bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD)),
]

REGISTRY: dict[str, Architecture] = {
    name: arch for arch in ARCHITECTURES for name in (arch.upstream, arch.upstream.partition(".")[2])
}
