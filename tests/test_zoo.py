"""Model zoo: every registered model builds and runs, has the published size, and weights load
safely (only weights, never arbitrary pickles) with clear errors."""

from __future__ import annotations

import copy
import pickle
import sys
import textwrap

import pytest
import torch
from torch import nn

from compressor.errors import ModelLoadError
from compressor.models import PadShortcut, mobilenet_v1, mobilenet_v2
from compressor.zoo import MODELS, load_model, pretrained_path

# Exact parameter counts. The CIFAR ResNets are the published ones (He et al. 2016: 0.27M, 0.85M);
# MobileNet-V1-224 4.23M, MobileNet-V2-224 3.50M, VGG-11-BN 132.87M as in torchvision.
EXPECTED_PARAMS = {
    "demo-cnn": 61_050,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "plain20": 269_722,
    "mobilenet-v1": 3_217_226,
    "mobilenet-v2": 2_236_682,
    "vgg11": 9_231_114,
    "mobilenet-v1-224": 4_231_976,
    "mobilenet-v2-224": 3_504_872,
    "vgg11-224": 132_868_840,
}


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of conv and linear layers for one image (forward hooks)."""
    total = 0

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += out.numel() * (m.in_channels // m.groups) * k
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.inference_mode():
        model(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return total


def test_every_registered_model_has_a_test_entry():
    assert set(MODELS) == set(EXPECTED_PARAMS), "add the new zoo model to EXPECTED_PARAMS"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_builds_runs_and_has_expected_size(name):
    loaded = load_model(name)
    entry = loaded.entry
    assert entry.name == name
    assert not loaded.model.training
    assert len(entry.mean) == len(entry.std) == entry.input_shape[0]
    params = sum(p.numel() for p in loaded.model.parameters())
    assert params == EXPECTED_PARAMS[name]
    with torch.inference_mode():
        out = loaded.model(torch.randn(2, *entry.input_shape))
    assert out.shape == (2, entry.num_classes)
    assert torch.isfinite(out).all()


def test_mobilenet_v1_224_has_569m_macs():
    entry = MODELS["mobilenet-v1-224"]
    macs = count_macs(load_model("mobilenet-v1-224").model, entry.input_shape)
    assert abs(macs - 569e6) / 569e6 < 0.005, macs


def test_width_multiplier_shrinks_mobilenets():
    for factory in (mobilenet_v1, mobilenet_v2):
        full = factory(10, cifar=True)
        half = factory(10, cifar=True, width_mult=0.5)
        p_full = sum(p.numel() for p in full.parameters())
        p_half = sum(p.numel() for p in half.parameters())
        assert p_half < 0.5 * p_full
        assert half.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # MobileNet-V1 0.75-224: 325M MACs in the AMC paper's comparison (Howard et al.: 325M).
    macs = count_macs(mobilenet_v1(1000, width_mult=0.75).eval(), (3, 224, 224))
    assert abs(macs - 325e6) / 325e6 < 0.02, macs


def test_resnet_uses_option_a_shortcut_and_plain20_has_none():
    resnet = load_model("resnet20").model
    shortcuts = [m for m in resnet.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2  # at the start of layer2 and layer3
    assert {(s.pad_front, s.pad_back) for s in shortcuts} == {(8, 8), (16, 16)}
    x = torch.randn(1, 16, 8, 8)
    assert shortcuts[0](x).shape == (1, 32, 4, 4)
    assert torch.equal(shortcuts[0](x)[:, 8:24], x[:, :, ::2, ::2])
    plain = load_model("plain20").model
    assert not any(isinstance(m, PadShortcut) for m in plain.modules())
    # Same parameters, different function: the shortcuts matter.
    plain.load_state_dict(resnet.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert not torch.allclose(plain(x), resnet(x))


def test_resnet_pickles_and_deep_copies():
    model = load_model("resnet20").model
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = model(x)
        assert torch.equal(copy.deepcopy(model)(x), want)
        assert torch.equal(pickle.loads(pickle.dumps(model))(x), want)


def test_num_classes_override():
    loaded = load_model("resnet20", num_classes=100)
    assert loaded.entry.num_classes == 100
    assert loaded.model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ModelLoadError) as e:
        load_model("resnet21")
    assert "resnet20" in str(e.value) and "mobilenet-v2-224" in str(e.value)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("not a spec:x", "malformed"),
        ("os.path:", "malformed"),
        ("no_such_pkg_zz.models:net", "cannot import"),
        ("math:no_such_factory", "no callable"),
        ("math:pi", "no callable"),
        ("collections:OrderedDict", "not a torch.nn.Module"),
    ],
)
def test_bad_factory_specs(spec, words):
    with pytest.raises(ModelLoadError, match=words):
        load_model(spec)


USER_MODULE = """
import torch
from torch import nn

def tiny_net(num_classes=3):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))

def rgb_only():
    return nn.Sequential(nn.Conv2d(3, 4, 3))  # a feature map, not class scores

def broken(num_classes=10):
    raise RuntimeError("boom")
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"amc_user_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_user_factory_spec(user_module):
    loaded = load_model(f"{user_module}:tiny_net", input_shape=(1, 8, 8))
    assert loaded.entry.num_classes == 3
    assert loaded.entry.input_shape == (1, 8, 8)
    assert loaded.entry.mean == (0.5,) and loaded.entry.std == (0.5,)
    assert loaded.model(torch.randn(2, 1, 8, 8)).shape == (2, 3)

    loaded = load_model(f"{user_module}:tiny_net", num_classes=7, input_shape=(1, 8, 8))
    assert loaded.entry.num_classes == 7


def test_user_factory_errors(user_module):
    with pytest.raises(ModelLoadError, match="fails on input of shape 1x1x8x8"):
        load_model(f"{user_module}:rgb_only", input_shape=(1, 8, 8))
    with pytest.raises(ModelLoadError, match=r"\(batch, classes\)"):
        load_model(f"{user_module}:rgb_only")
    with pytest.raises(ModelLoadError, match="boom"):
        load_model(f"{user_module}:broken")


# ---- weights ---------------------------------------------------------------------------------------


def _outputs(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.inference_mode():
        return model(torch.randn(2, 1, 8, 8))


@pytest.fixture
def trained_state() -> dict[str, torch.Tensor]:
    model = load_model("demo-cnn").model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # differ from any fresh initialisation
    return model.state_dict()


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "dataparallel"])
def test_weights_round_trip(tmp_path, trained_state, wrap):
    want = load_model("demo-cnn").model
    want.load_state_dict(trained_state)
    sd = dict(trained_state)
    obj = {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 3, "best_prec1": 91.2},
        "model": {"model": sd},
        "dataparallel": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    loaded = load_model("demo-cnn", weights=path)
    assert torch.equal(_outputs(loaded.model), _outputs(want.eval()))


def test_safetensors_weights(tmp_path, trained_state):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in trained_state.items()}, str(path))
    want = load_model("demo-cnn").model
    want.load_state_dict(trained_state)
    loaded = load_model("demo-cnn", weights=path)
    assert torch.equal(_outputs(loaded.model), _outputs(want.eval()))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model("demo-cnn", weights=tmp_path / "bad.safetensors")


def test_mismatching_weights_list_keys(tmp_path):
    torch.save(load_model("resnet20").model.state_dict(), tmp_path / "r20.pt")
    with pytest.raises(ModelLoadError) as e:
        load_model("resnet32", weights=tmp_path / "r20.pt")
    assert "missing" in str(e.value) and "layer1.3.conv1.weight" in str(e.value)
    with pytest.raises(ModelLoadError) as e:
        load_model("demo-cnn", weights=tmp_path / "r20.pt")
    assert "unexpected" in str(e.value) and "missing" in str(e.value)
    with pytest.raises(ModelLoadError, match="wrong shape"):
        load_model("resnet20", num_classes=100, weights=tmp_path / "r20.pt")


class NotWeights:
    def __init__(self) -> None:
        self.payload = [1, 2, 3]


class Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


def test_pickle_that_is_not_weights_is_refused(tmp_path):
    torch.save({"model": NotWeights()}, tmp_path / "obj.pt")
    with pytest.raises(ModelLoadError, match="only weights are accepted"):
        load_model("demo-cnn", weights=tmp_path / "obj.pt")

    marker = tmp_path / "pwned"
    with (tmp_path / "exploit.pkl").open("wb") as f:
        pickle.dump(Exploit(str(marker)), f)
    with pytest.raises(ModelLoadError, match="only weights are accepted"):
        load_model("demo-cnn", weights=tmp_path / "exploit.pkl")
    torch.save(Exploit(str(marker)), tmp_path / "exploit.pt")
    with pytest.raises(ModelLoadError, match="only weights are accepted"):
        load_model("demo-cnn", weights=tmp_path / "exploit.pt")
    assert not marker.exists()


def test_malformed_and_missing_weight_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ModelLoadError, match="not a readable PyTorch weights file|only weights"):
        load_model("demo-cnn", weights=tmp_path / "junk.pt")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("demo-cnn", weights=tmp_path / "absent.pt")
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match="not a state dict"):
        load_model("demo-cnn", weights=tmp_path / "list.pt")
    torch.save({"conv": [1, 2]}, tmp_path / "nested.pt")
    with pytest.raises(ModelLoadError, match="not a state dict"):
        load_model("demo-cnn", weights=tmp_path / "nested.pt")


def test_pretrained_path(tmp_path):
    entry = MODELS["resnet20"]
    assert pretrained_path(entry, tmp_path) is None
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / entry.pretrained).write_bytes(b"")
    assert pretrained_path(entry, tmp_path) == tmp_path / "weights" / "resnet20-12fca82f.th"
    assert pretrained_path(MODELS["demo-cnn"], tmp_path) is None
