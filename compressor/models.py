"""The CNN architectures the zoo builds: the demo CNN, CIFAR ResNets, MobileNet V1/V2 and VGG-11.

CIFAR ResNets follow akamaster/pytorch_resnet_cifar10 exactly (names and shapes), so its published
checkpoints load with `strict=True`. MobileNets and VGG come in a CIFAR-sized variant (32x32 input,
early strides reduced as in the usual CIFAR ports) and the standard ImageNet layout (224x224).
Registering them by name and loading weights is `compressor.zoo`'s job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------------
# demo-cnn: the embedded default, for scikit-learn's 8x8 digits.


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DemoCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU layers, global average pooling and a linear classifier (~61k params)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 16),
            *_conv_bn_relu(16, 32),
            *_conv_bn_relu(32, 64, stride=2),
            *_conv_bn_relu(64, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------------------------------
# CIFAR ResNets (akamaster/pytorch_resnet_cifar10 layout, option-A shortcuts).


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels (`pad_front` before, `pad_back` after).

    A module rather than a lambda so that models pickle and deep-copy; the pad widths are attributes
    so that channel pruning can adjust them.
    """

    def __init__(self, pad_front: int, pad_back: int | None = None, stride: int = 2):
        super().__init__()
        self.pad_front = pad_front
        self.pad_back = pad_front if pad_back is None else pad_back
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad_front, self.pad_back), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad_front={self.pad_front}, pad_back={self.pad_back}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; identity or option-A shortcut (or none, for the plain networks)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, residual: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual = residual
        self.shortcut: nn.Module = nn.Sequential()
        if residual and (stride != 1 or in_planes != planes):
            self.shortcut = PadShortcut(planes // 4, planes // 4, stride=stride)

        self.dropped = False

    def can_drop(self) -> bool:
        return self.residual and not self.dropped

    def drop_branch(self) -> None:
        """Remove the two convolutions: the block becomes its shortcut. The final ReLU goes too: the
        block's input is a ReLU output, and the shortcut (identity, or subsample + zero-pad) keeps it
        non-negative."""
        for name in ("conv1", "bn1", "conv2", "bn2"):
            delattr(self, name)
        self.dropped = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropped:
            return self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 input: 16/32/64 channels in three stages, as in He et al. 2016."""

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10, *, residual: bool = True):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1, residual)
        self.layer2 = self._make_layer(32, num_blocks[1], 2, residual)
        self.layer3 = self._make_layer(64, num_blocks[2], 2, residual)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int, residual: bool) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, residual=residual))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int, num_classes: int = 10, *, residual: bool = True) -> CifarResNet:
    """ResNet-`depth` (depth = 6n+2) for CIFAR; `residual=False` gives the plain network."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
    n = (depth - 2) // 6
    return CifarResNet((n, n, n), num_classes, residual=residual)


# --------------------------------------------------------------------------------------------------
# MobileNet-V1 / V2 and VGG-11 (BN), CIFAR and ImageNet layouts.


def _scaled(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Channels times the width multiplier, rounded to a multiple of `divisor` (never down by >10%)."""
    v = max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)
    if v < 0.9 * channels * width_mult:
        v += divisor
    return v


class MobileNetV1(nn.Module):
    """MobileNet-V1 (Howard et al. 2017): a 3x3 conv, then 13 depthwise-separable blocks."""

    # (output channels, stride) of each depthwise-separable block, ImageNet layout.
    CFG: tuple[tuple[int, int], ...] = (
        (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
        (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
    )  # fmt: skip

    def __init__(self, num_classes: int = 1000, *, width_mult: float = 1.0, cifar: bool = False):
        super().__init__()
        # CIFAR port: stem stride 1 (32x32 input); the four stride-2 blocks leave a 2x2 map.
        cin = _scaled(32, width_mult)
        layers: list[nn.Module] = _conv_bn_relu(3, cin, stride=1 if cifar else 2)
        for cout, stride in self.CFG:
            cout = _scaled(cout, width_mult)
            layers += [
                nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU(inplace=True),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: 1x1 expansion, 3x3 depthwise, linear 1x1 projection; residual add when
    stride is 1 and input and output channels match."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.dropped = False

    def can_drop(self) -> bool:
        return self.use_residual and not self.dropped

    def drop_branch(self) -> None:
        """Remove the expansion, depthwise and projection layers: the block becomes the identity."""
        del self.conv
        self.dropped = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropped:
            return x
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNet-V2 (Sandler et al. 2018), torchvision's layout."""

    # (expansion t, output channels c, repeats n, first stride s), ImageNet layout.
    CFG: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    )  # fmt: skip

    def __init__(self, num_classes: int = 1000, *, width_mult: float = 1.0, cifar: bool = False):
        super().__init__()
        cin = _scaled(32, width_mult)
        last = _scaled(1280, max(1.0, width_mult))
        # CIFAR port (as in kuangliu/pytorch-cifar): stem stride 1 and the second stage stride 1,
        # leaving a 4x4 map at the end for 32x32 input.
        layers: list[nn.Module] = [
            nn.Conv2d(3, cin, 3, stride=1 if cifar else 2, padding=1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU6(inplace=True),
        ]
        for i, (t, c, n, s) in enumerate(self.CFG):
            if cifar and i == 1:
                s = 1
            cout = _scaled(c, width_mult)
            for j in range(n):
                layers.append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
                cin = cout
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class VGG(nn.Module):
    """VGG with batch normalisation (Simonyan & Zisserman 2015); `cifar` uses one 512->classes FC."""

    CFG11: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, num_classes: int = 1000, *, cfg: tuple[int | str, ...] = CFG11, cifar: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [
                    nn.Conv2d(cin, int(v), 3, padding=1),
                    nn.BatchNorm2d(int(v)),
                    nn.ReLU(inplace=True),
                ]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        if cifar:
            self.pool: nn.Module = nn.Flatten(1)  # 32x32 input leaves 512x1x1
            self.classifier = nn.Sequential(nn.Linear(cin, num_classes))
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(7), nn.Flatten(1))
            self.classifier = nn.Sequential(
                nn.Linear(cin * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
                nn.Linear(4096, num_classes),
            )  # fmt: skip
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def mobilenet_v1(num_classes: int = 1000, *, width_mult: float = 1.0, cifar: bool = False) -> MobileNetV1:
    return MobileNetV1(num_classes, width_mult=width_mult, cifar=cifar)


def mobilenet_v2(num_classes: int = 1000, *, width_mult: float = 1.0, cifar: bool = False) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult=width_mult, cifar=cifar)


def vgg11(num_classes: int = 1000, *, cifar: bool = False) -> VGG:
    return VGG(num_classes, cifar=cifar)
