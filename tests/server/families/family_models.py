"""Small classifiers of today's families, written in plain torch (no zfnet code), randomly
initialised with randomised BatchNorm statistics. Each keeps the ops its family is known for, at
tiny widths on 32x32 (or smaller) inputs, so that their export and deconv stay fast."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class AlexVGG(nn.Module):
    """AlexNet/VGG: conv-ReLU stacks, overlapping and plain max pooling, dropout, fc layers."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),  # 32 -> 16 -> 7
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),  # 7 -> 3
        )
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(12 * 9, 16), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """ResNet: stem with max pooling, basic blocks with projection shortcuts, x.mean-free GAP via adaptive pooling."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True)
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True)
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1: fire modules (Concat), ceil-mode max pooling, a conv classifier, GAP, flatten."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(8, 4, 8), Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 6, 12),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(24, classes, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


class Inception(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int) -> None:
        super().__init__()
        relu = nn.ReLU(inplace=True)
        self.branch1 = conv_bn(cin, c1, 1, act=relu)
        self.branch2 = nn.Sequential(conv_bn(cin, c3r, 1, act=nn.ReLU()), conv_bn(c3r, c3, 3, act=nn.ReLU()))
        self.branch3 = nn.Sequential(conv_bn(cin, c5r, 1, act=nn.ReLU()), conv_bn(c5r, c5, 3, act=nn.ReLU()))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(cin, pool, 1, act=nn.ReLU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    """GoogLeNet/Inception: four-branch modules concatenated, 'transform_input' channel arithmetic, GAP."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8, 3, 2, act=nn.ReLU())
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(8, 4, 4, 6, 2, 4, 2)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(16, 6, 4, 8, 2, 4, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(20, classes)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x_ch0, x_ch1, x_ch2), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.conv1(self._transform_input(x)))
        x = self.inception4a(self.maxpool3(self.inception3a(x)))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.relu1, self.conv1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2, self.relu2, self.conv2 = nn.BatchNorm2d(2 * growth), nn.ReLU(inplace=True), nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.Module):
    def __init__(self, layers: int, cin: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """DenseNet: pre-activation dense layers concatenating all earlier features, average-pool transitions,
    ``adaptive_avg_pool2d`` at the head. (torchvision applies the last ReLU as ``F.relu``; here it is a
    module, because Captum's deconvnet and guided backprop only hook ``nn.ReLU`` modules, while zfnet
    sees a Relu op either way.)"""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
            DenseBlock(2, 8, 4),
            nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2, 2)),
            DenseBlock(2, 8, 4), nn.BatchNorm2d(16),
        )
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.features(x))
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            conv_bn(cin, hidden, 1, act=nn.ReLU6(inplace=True)), conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6(inplace=True)),
            conv_bn(hidden, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNet V2: ReLU6 (Clip), depthwise convs, linear bottlenecks with residual sums, ``x.mean((2, 3))``."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2, act=nn.ReLU6(inplace=True)), InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 12, 2, 3),
            InvertedResidual(12, 12, 1, 3), conv_bn(12, 24, 1, act=nn.ReLU6(inplace=True)),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(24, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int, scale_activation: type[nn.Module] = nn.Hardsigmoid, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.activation = nn.Conv2d(channels, squeeze, 1), activation()
        self.fc2, self.scale_activation = nn.Conv2d(squeeze, channels, 1), scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class MobileNetV3Block(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int, se: bool, act: type[nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(cin, hidden, 1, act=act()), conv_bn(hidden, hidden, k, stride, groups=hidden, act=act())]
        if se:
            layers.append(SqueezeExcitation(hidden, max(hidden // 4, 2)))
        layers.append(conv_bn(hidden, cout, 1))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV3(nn.Module):
    """MobileNet V3: HardSwish, squeeze-excitation with HardSigmoid gates (Mul of two activations), GAP, Hardswish head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2, act=nn.Hardswish()), MobileNetV3Block(8, 16, 8, 3, 1, True, nn.ReLU),
            MobileNetV3Block(8, 24, 12, 5, 2, True, nn.Hardswish), conv_bn(12, 24, 1, act=nn.Hardswish()),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(24, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, half, 1, act=nn.ReLU(inplace=True)))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            conv_bn(cin if stride > 1 else half, half, 1, act=nn.ReLU(inplace=True)), conv_bn(half, half, 3, stride, groups=half),
            conv_bn(half, half, 1, act=nn.ReLU(inplace=True)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2: chunk (Split), channel shuffle (Reshape-Transpose-Reshape), Concat, ``x.mean([2, 3])``."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8, 3, 2, act=nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage2 = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1))
        self.conv5 = conv_bn(16, 32, 1, act=nn.ReLU(inplace=True))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage2(self.maxpool(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.SiLU(inplace=True)))
        layers += [conv_bn(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU(inplace=True)),
                   SqueezeExcitation(hidden, max(1, cin // 4), nn.Sigmoid, nn.SiLU), conv_bn(hidden, cout, 1)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class EfficientNet(nn.Module):
    """EfficientNet: SiLU (x * sigmoid(x)), MBConv with sigmoid-gated squeeze-excitation, GAP."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2, act=nn.SiLU(inplace=True)), MBConv(8, 8, 3, 1, 1), MBConv(8, 12, 5, 2, 4), MBConv(12, 12, 3, 1, 4),
            conv_bn(12, 32, 1, act=nn.SiLU(inplace=True)),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ResBottleneckBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
        super().__init__()
        groups = cout // group_width
        self.proj = None if cin == cout and stride == 1 else conv_bn(cin, cout, 1, stride)
        self.f = nn.Sequential(
            conv_bn(cin, cout, 1, act=nn.ReLU(inplace=True)), conv_bn(cout, cout, 3, stride, groups=groups, act=nn.ReLU(inplace=True)),
            SqueezeExcitation(cout, max(cin // 4, 1), nn.Sigmoid, nn.ReLU), conv_bn(cout, cout, 1),
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class RegNet(nn.Module):
    """RegNetY: grouped bottleneck blocks with squeeze-excitation, projection shortcuts, GAP."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2, act=nn.ReLU(inplace=True))
        self.trunk_output = nn.Sequential(ResBottleneckBlock(8, 16, 2, 4), ResBottleneckBlock(16, 16, 1, 4))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.trunk_output(self.stem(x))).flatten(start_dim=1))


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]), nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.rand(dim, 1, 1) * 0.5 + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale * self.block(x)


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class ConvNeXt(nn.Module):
    """ConvNeXt: patchify stem, 7x7 depthwise convs, channels-last LayerNorm (Transpose), GELU (Erf), layer scale, GAP + LayerNorm head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8, eps=1e-6)), CNBlock(8),
            nn.Sequential(LayerNorm2d(8, eps=1e-6), nn.Conv2d(8, 16, 2, 2)), CNBlock(16),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Flatten(1), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.self_attention = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """A small vision transformer: patch embedding conv, flatten + transpose to tokens, class token,
    position embedding, attention (MatMul of two activations, Softmax), GELU MLPs, LayerNorm."""

    def __init__(self, classes: int = 10, image: int = 16, patch: int = 4, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        tokens = (image // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, dim) * 0.5)
        self.layers = nn.Sequential(EncoderBlock(dim, heads), EncoderBlock(dim, heads))
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x / 255.0).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.layers(x))
        return self.head(x[:, 0])


FAMILIES: dict[str, type[nn.Module]] = {
    "alexnet_vgg": AlexVGG, "resnet": ResNet, "squeezenet": SqueezeNet, "googlenet": GoogLeNet, "densenet": DenseNet,
    "mobilenet_v2": MobileNetV2, "mobilenet_v3": MobileNetV3, "shufflenet": ShuffleNetV2, "efficientnet": EfficientNet,
    "regnet": RegNet, "convnext": ConvNeXt, "vit": ViT,
}
INPUT_SIZE = {"vit": 16}


def build(family: str, seed: int = 0) -> nn.Module:
    """The family's model, seeded, BatchNorm statistics and affine parameters randomised, in eval mode."""
    torch.manual_seed(seed)
    net = FAMILIES[family]()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None, "BatchNorm tracks running statistics"
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net.eval()
