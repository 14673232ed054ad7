"""Model zoo: a registry of CNNs the search knows by name, and `load_model` for zoo names or a
user's own `package.module:factory`, with weights loaded safely (`weights_only=True` or safetensors).

CIFAR ResNets follow akamaster/pytorch_resnet_cifar10 exactly (names and shapes), so its published
checkpoints load with `strict=True`. MobileNets and VGG come in a CIFAR-sized variant (32x32 input,
early strides reduced as in the usual CIFAR ports) and the standard ImageNet layout (224x224).
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import ModelLoadError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A user's own model (`package.module:factory`) gets this per-channel normalisation unless the
# caller passes the dataset's: it maps [0, 1] pixels to [-1, 1], a neutral choice for unknown models.
USER_MODEL_MEAN_STD = 0.5
USER_MODEL_INPUT_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class ModelEntry:
    """One zoo model: how to build it and what input it expects."""

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    pretrained: str | None = None  # file name in ../shared/data/weights, when one exists


class LoadedModel(NamedTuple):
    """A built model (eval mode, weights loaded if asked) and the entry describing its input."""

    model: nn.Module
    entry: ModelEntry


MODELS: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add a model to the zoo; a name can be registered once."""
    if entry.name in MODELS:
        raise ValueError(f"model {entry.name!r} is already registered")
    MODELS[entry.name] = entry
    return entry


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


# --------------------------------------------------------------------------------------------------
# Registry.

_CIFAR = (3, 32, 32)
_IMAGENET = (3, 224, 224)

register(ModelEntry(
    "demo-cnn", DemoCNN, (1, 8, 8), 10, (0.5,), (0.5,),
    "4-layer CNN for scikit-learn's 8x8 digits (~61k params); the embedded default", None,
))  # fmt: skip
for _depth, _weights in ((20, "resnet20-12fca82f.th"), (32, "resnet32-d509ac18.th"),
                         (44, "resnet44-014dd654.th"), (56, "resnet56-4bfd9763.th")):  # fmt: skip
    register(ModelEntry(
        f"resnet{_depth}", partial(cifar_resnet, _depth), _CIFAR, 10, IMAGENET_MEAN, IMAGENET_STD,
        f"CIFAR-10 ResNet-{_depth}, option-A shortcuts (akamaster/pytorch_resnet_cifar10 layout)", _weights,
    ))  # fmt: skip
register(ModelEntry(
    "plain20", partial(cifar_resnet, 20, residual=False), _CIFAR, 10, IMAGENET_MEAN, IMAGENET_STD,
    "CIFAR-10 Plain-20: ResNet-20 without shortcuts (as pruned in the AMC paper)", None,
))  # fmt: skip
register(ModelEntry(
    "mobilenet-v1", partial(mobilenet_v1, cifar=True), _CIFAR, 10, IMAGENET_MEAN, IMAGENET_STD,
    "MobileNet-V1 for 32x32 CIFAR input (stem stride 1); width_mult argument", None,
))  # fmt: skip
register(ModelEntry(
    "mobilenet-v2", partial(mobilenet_v2, cifar=True), _CIFAR, 10, IMAGENET_MEAN, IMAGENET_STD,
    "MobileNet-V2 for 32x32 CIFAR input (stem and stage-2 stride 1); width_mult argument", None,
))  # fmt: skip
register(ModelEntry(
    "vgg11", partial(vgg11, cifar=True), _CIFAR, 10, IMAGENET_MEAN, IMAGENET_STD,
    "VGG-11 with BN for 32x32 CIFAR input, one linear classifier", None,
))  # fmt: skip
register(ModelEntry(
    "mobilenet-v1-224", mobilenet_v1, _IMAGENET, 1000, IMAGENET_MEAN, IMAGENET_STD,
    "MobileNet-V1 1.0-224, ImageNet layout (569M MACs); width_mult argument", None,
))  # fmt: skip
register(ModelEntry(
    "mobilenet-v2-224", mobilenet_v2, _IMAGENET, 1000, IMAGENET_MEAN, IMAGENET_STD,
    "MobileNet-V2 1.0-224, ImageNet layout (torchvision's); width_mult argument", None,
))  # fmt: skip
register(ModelEntry(
    "vgg11-224", vgg11, _IMAGENET, 1000, IMAGENET_MEAN, IMAGENET_STD,
    "VGG-11 with BN, ImageNet layout (224x224, 1000 classes)", None,
))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Loading.

_FACTORY_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def pretrained_path(entry: ModelEntry, data_dir: str | Path) -> Path | None:
    """Where the entry's pretrained weights lie under `data_dir` (../shared/data), if they exist."""
    if entry.pretrained is None:
        return None
    path = Path(data_dir) / "weights" / entry.pretrained
    return path if path.is_file() else None


def load_model(
    spec: str,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> LoadedModel:
    """Build a zoo model or a user's `package.module:factory` model, optionally load weights, eval mode.

    Zoo entries with pretrained weights are not loaded automatically: pass `weights=` (see
    `pretrained_path`). A user factory is called with `num_classes=` when given; its entry gets
    `input_shape` (default 3x32x32), the class count read off a forward pass, and mean/std 0.5 per
    channel (the caller normalises data with the dataset's statistics where it knows better).
    """
    if spec in MODELS:
        entry = MODELS[spec]
        n = num_classes or entry.num_classes
        model = entry.factory(num_classes=n)
        shape = input_shape or entry.input_shape
        entry = replace(entry, num_classes=n, input_shape=(int(shape[0]), int(shape[1]), int(shape[2])))
        if input_shape is not None:
            _check_forward(model, entry, spec)
    elif ":" in spec:
        model, entry = _from_factory(spec, num_classes=num_classes, input_shape=input_shape)
    else:
        raise ModelLoadError(
            f"unknown model {spec!r}: use one of {', '.join(sorted(MODELS))}, "
            "or 'package.module:factory' for your own model"
        )
    if weights is not None:
        load_weights(model, weights)
    model.eval()
    return LoadedModel(model, entry)


def _from_factory(
    spec: str, *, num_classes: int | None, input_shape: tuple[int, int, int] | None
) -> tuple[nn.Module, ModelEntry]:
    if not _FACTORY_SPEC.match(spec):
        raise ModelLoadError(
            f"malformed model spec {spec!r}: expected a zoo name or 'package.module:factory' "
            "(dotted module path, a colon, a function name), e.g. 'mypkg.models:build_net'"
        )
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelLoadError(
            f"cannot import module {module_name!r} of model spec {spec!r}: {e}. "
            "Make sure the package is installed or on PYTHONPATH"
        ) from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelLoadError(f"module {module_name!r} has no callable {attr!r} (from model spec {spec!r})")
    try:
        model = factory(num_classes=num_classes) if num_classes is not None else factory()
    except Exception as e:
        raise ModelLoadError(f"model factory {spec!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    shape = tuple(input_shape or USER_MODEL_INPUT_SHAPE)
    c = shape[0]
    entry = ModelEntry(
        name=spec,
        factory=factory,
        input_shape=shape,  # type: ignore[arg-type]
        num_classes=num_classes or 0,
        mean=(USER_MODEL_MEAN_STD,) * c,
        std=(USER_MODEL_MEAN_STD,) * c,
        description=f"user model from {spec}",
        pretrained=None,
    )
    out = _check_forward(model, entry, spec)
    return model, replace(entry, num_classes=out)


def _check_forward(model: nn.Module, entry: ModelEntry, spec: str) -> int:
    """Run one eval-mode forward pass at the entry's input shape; return the output width."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            y = model(torch.zeros(1, *entry.input_shape))
    except Exception as e:
        raise ModelLoadError(
            f"model {spec!r} fails on input of shape 1x{'x'.join(map(str, entry.input_shape))}: "
            f"{type(e).__name__}: {e}. Pass the input shape the model expects"
        ) from e
    finally:
        model.train(was_training)
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != 1:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ModelLoadError(
            f"model {spec!r} must return class scores of shape (batch, classes), got {shape}"
        )
    if entry.num_classes and y.shape[1] != entry.num_classes:
        raise ModelLoadError(
            f"model {spec!r} returns {y.shape[1]} scores, expected {entry.num_classes} classes"
        )
    return int(y.shape[1])


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (torch `weights_only` pickle or `.safetensors`) into a plain state dict.

    Accepts a bare state dict, `{"state_dict": ...}` or `{"model": ...}`; strips `module.` prefixes
    (DataParallel checkpoints). Never unpickles arbitrary objects.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist; check the path")
    if path.suffix == ".safetensors":
        raw: Any = _read_safetensors(path)
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ModelLoadError(
                f"{path} holds Python objects other than weights, and only weights are accepted "
                "(untrusted files are never unpickled). Save `model.state_dict()` with torch.save, "
                f"or use .safetensors. ({str(e).splitlines()[0][:200]})"
            ) from e
        except Exception as e:  # junk bytes raise anything from the unpickler: IndexError, KeyError...
            raise ModelLoadError(
                f"{path} is not a readable PyTorch weights file ({type(e).__name__}: {str(e)[:200]}); "
                "save one with torch.save(model.state_dict(), path)"
            ) from e
    state = raw
    if isinstance(raw, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(raw.get(key), Mapping):
                state = raw[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise ModelLoadError(
            f"{path} holds {type(state).__name__}, not a state dict; expected a mapping of parameter names "
            "to tensors, optionally under 'state_dict' or 'model'"
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(
            f"{path} is not a state dict: entries {bad[:3]} are not name -> tensor; "
            "save model.state_dict() rather than a training checkpoint with other contents"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as e:
        raise ModelLoadError(
            f"{path} is a .safetensors file but the safetensors package is not installed: "
            "pip install safetensors"
        ) from e
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not a readable safetensors file: {e}") from e


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a weights file into `model` strictly; errors list the mismatching keys."""
    state = read_state_dict(weights)
    own = model.state_dict()
    # Checkpoints from old PyTorch versions lack BN's num_batches_tracked; BN tolerates that.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        if wrong:
            parts.append(f"{len(wrong)} with the wrong shape (file vs model: {'; '.join(wrong[:3])})")
        raise ModelLoadError(
            f"weights {weights} do not fit the model: "
            + "; ".join(parts)
            + ". Check that the weights belong to this architecture and class count"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # pragma: no cover - shapes and names were checked above
        raise ModelLoadError(f"weights {weights} do not fit the model: {e}") from e
    log.info("loaded %d tensors from %s", len(state), weights)
