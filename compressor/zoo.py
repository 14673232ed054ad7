"""Model zoo: a registry of CNNs the search knows by name, and `load_model` for zoo names or a
user's own `package.module:factory`, with weights loaded safely (`weights_only=True` or safetensors).

The architectures themselves are in `compressor.models`; zoo re-exports them, so `zoo.BasicBlock` and
`from compressor.zoo import DemoCNN` keep working.
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
from torch import nn

from compressor.errors import ModelLoadError
from compressor.models import (
    VGG,
    BasicBlock,
    CifarResNet,
    DemoCNN,
    InvertedResidual,
    MobileNetV1,
    MobileNetV2,
    PadShortcut,
    cifar_resnet,
    mobilenet_v1,
    mobilenet_v2,
    vgg11,
)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "USER_MODEL_INPUT_SHAPE", "USER_MODEL_MEAN_STD", "LoadedModel",
    "ModelEntry", "load_model", "load_weights", "pretrained_path", "read_state_dict", "register",
    # the architectures, from compressor.models
    "VGG", "BasicBlock", "CifarResNet", "DemoCNN", "InvertedResidual", "MobileNetV1", "MobileNetV2",
    "PadShortcut", "cifar_resnet", "mobilenet_v1", "mobilenet_v2", "vgg11",
]

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
