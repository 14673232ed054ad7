"""Quantization-aware recovery (compressor/qat.py): the simulation computes what the int8 ONNX file
computes, removing it gives back the float network, training under it keeps BatchNorm's statistics and
resumes from its checkpoint exactly, and `--qat-epochs` reaches the search and its report."""

# ruff: noqa: F811 - `demo` is test_quantize's fixture, imported below and taken as an argument
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from test_quantize import demo  # noqa: F401 - the fixture: demo-cnn trained on digits, its example, the splits
from torch import nn

from compressor.errors import ConfigError
from compressor.export import quantize
from compressor.export.int8_check import CALIBRATION_IMAGES, CHECK_IMAGES, pick_rows
from compressor.finetune import RecoveryConfig
from compressor.qat import Int8Simulation, _Int8Weight, calibration_images, recover_int8, simulated_int8


def _outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(x).numpy()


def test_the_simulation_computes_what_the_int8_file_computes(demo, tmp_path):
    model, example, bundle = demo
    path = quantize.export(model, example, tmp_path / "m.int8.onnx", calibration=bundle.search).path
    _cal, check = pick_rows(len(bundle.search), calibration=CALIBRATION_IMAGES, check=CHECK_IMAGES)
    x = bundle.search.x[check]
    sess = quantize._session(path)
    name = sess.get_inputs()[0].name
    int8 = np.concatenate([sess.run(None, {name: xi[None].numpy()})[0] for xi in x])
    float_out = _outputs(model, x)
    with simulated_int8(model, calibration_images(bundle.search)) as sim:
        assert sim.traced and len(sim.layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
        # input; each conv's output after its BatchNorm and ReLU; the pool; the classifier's output
        assert len(sim.ranges) == 1 + 4 + 1 + 1
        simulated = _outputs(sim.net, x)
        weights_only = _outputs(model, x)  # the original module: its weights rounded, nothing else
    float_err, sim_err = np.abs(float_out - int8).mean(), np.abs(simulated - int8).mean()
    # The float network is off by the whole quantization error; the simulation by what it does not model
    # (the exporter's int32 biases, BatchNorm folded in float, one-step rounding flips those cause).
    assert sim_err < 0.5 * float_err, (sim_err, float_err)
    assert sim_err < 0.5 * np.abs(weights_only - int8).mean()
    assert (simulated.argmax(1) == int8.argmax(1)).mean() >= (float_out.argmax(1) == int8.argmax(1)).mean()


def test_removing_the_simulation_gives_back_the_float_network(demo):
    model, _example, bundle = demo
    twin = copy.deepcopy(model)
    x = bundle.search.x[:32]
    before = _outputs(twin, x)
    sim = Int8Simulation(twin, bundle.search.x[:64])
    assert not np.array_equal(_outputs(sim.net, x), before)  # rounding changes the outputs
    sim.remove()
    assert np.array_equal(_outputs(twin, x), before)
    assert set(twin.state_dict()) == set(model.state_dict())  # no parametrization keys left behind


def test_a_residual_network_is_rounded_where_the_exporter_rounds_it(tmp_path):
    """ResNet-8 (random weights, BatchNorm statistics set from data): the inputs of each residual addition
    are rounded too, as in the QDQ file, which the layer-input fallback does not do."""
    from compressor.data import Split
    from compressor.models import cifar_resnet

    torch.manual_seed(3)
    model = cifar_resnet(8).train()
    x = torch.randn(320, 3, 32, 32)
    with torch.no_grad():
        for i in range(0, 320, 64):
            model(x[i:i + 64])  # running statistics, so eval outputs are of a sane scale
    model.eval()
    split = Split(x, torch.zeros(320, dtype=torch.long), "random images")
    path = quantize.export(model, x[:1], tmp_path / "r8.int8.onnx", calibration=split, min_agreement=0.0,
                           max_relative_p99=1.0).path
    _cal, check = pick_rows(len(split), calibration=CALIBRATION_IMAGES, check=CHECK_IMAGES)
    sess = quantize._session(path)
    int8 = np.concatenate([sess.run(None, {"input": x[r:r + 1].numpy()})[0] for r in check])
    float_out = _outputs(model, x[check])
    with simulated_int8(model, calibration_images(split)) as sim:
        # input, stem, per block: conv1 (+ReLU), conv2 (its BatchNorm, before the addition), the addition
        # (+ReLU); the pool; the classifier
        assert sim.traced and len(sim.ranges) == 1 + 1 + 3 * 3 + 1 + 1
        simulated = _outputs(sim.net, x[check])
    assert np.abs(simulated - int8).mean() < 0.5 * np.abs(float_out - int8).mean()


def test_per_channel_weight_rounding_commutes_with_folding_batchnorm():
    """What makes simulating the unfolded network exact for the folded file's weights."""
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    factor = torch.randn(8).abs() + 0.1  # gamma / sqrt(var + eps), per output channel
    factor[2] *= -1  # a negative gamma flips the channel: symmetric rounding does not mind
    rounded = _Int8Weight()
    folded_then_rounded = rounded(w * factor[:, None, None, None])
    rounded_then_folded = rounded(w) * factor[:, None, None, None]
    assert torch.allclose(folded_then_rounded, rounded_then_folded, rtol=1e-5, atol=1e-6)


def test_a_network_without_quantizable_layers_is_refused():
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        Int8Simulation(nn.Sequential(nn.ReLU()), torch.zeros(2, 3))


def _damaged(model: nn.Module) -> nn.Module:
    student = copy.deepcopy(model)
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.add_(0.05 * torch.randn_like(m.weight) * m.weight.abs().mean())
    return student


def test_quantization_aware_recovery_keeps_batchnorm_statistics_and_returns_a_float_network(demo):
    model, _example, bundle = demo
    torch.manual_seed(1)
    student = _damaged(model)
    small = dataclasses.replace(bundle, train=bundle.train.subset(range(300)))
    stats = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    out, result = recover_int8(student, small, RecoveryConfig(epochs=2, method="distill", lr=0.003), teacher=model)
    assert out is student and set(student.state_dict()) == set(model.state_dict())
    assert all(torch.equal(student.state_dict()[k], v) for k, v in stats.items())  # frozen, as the file has them
    assert result.epochs == 2 and len(result.history) == 2
    assert result.holdout_accuracy is not None and result.holdout_accuracy >= result.holdout_accuracy_before


def test_a_stopped_quantization_aware_recovery_resumes_to_the_same_weights(demo, tmp_path):
    model, _example, bundle = demo
    torch.manual_seed(2)
    damaged = _damaged(model)
    small = dataclasses.replace(bundle, train=bundle.train.subset(range(300)))
    config = RecoveryConfig(epochs=3, method="distill", lr=0.003)
    ckpt = tmp_path / "qat.ckpt"

    class Stop(Exception):
        pass

    def stop_after_first(stats):
        if stats.epoch == 1:
            raise Stop  # after the epoch's checkpoint was written

    first = copy.deepcopy(damaged)
    with pytest.raises(Stop):
        recover_int8(first, small, config, teacher=model, checkpoint=ckpt, progress=stop_after_first)
    assert ckpt.is_file()
    resumed, result = recover_int8(copy.deepcopy(damaged), small, config, teacher=model, checkpoint=ckpt)
    assert result.resumed_after == 1 and [h["epoch"] for h in result.history] == [1, 2, 3]
    straight, _ = recover_int8(copy.deepcopy(damaged), small, config, teacher=model)
    a, b = resumed.state_dict(), straight.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_qat_epochs_needs_an_int8_model_and_is_a_search_option():
    from compressor.config import SearchConfig
    from server.options import search_fields

    with pytest.raises(ConfigError, match="--quantize int8"):
        SearchConfig(model="demo-cnn", data="digits", qat_epochs=1)
    fields = {f.name: f for f in search_fields()}
    assert fields["qat_epochs"].flag == "--qat-epochs" and fields["qat_epochs"].default == 0
    assert fields["qat_lr"].flag == "--qat-lr"


def test_a_search_with_qat_epochs_reports_the_quantization_aware_recovery(tmp_path):
    from compressor.config import SearchConfig
    from compressor.search import run_search

    events = []
    config = SearchConfig(model="demo-cnn", data="digits", target="flops=0.5", strategy="random", episodes=3,
                          quantize="int8", finetune_epochs=1, qat_epochs=2)
    report = run_search(config, tmp_path, on_event=events.append)
    qat = report["qat"]
    assert qat["epochs"] == 2 and len(qat["history"]) == 2 and qat["holdout_accuracy"] is not None
    assert "accuracy_before_qat" in report["result"]
    assert [e.episode for e in events if e.kind == "epoch" and e.phase == "qat"] == [1, 2]
    assert report["quantized"]["file"] == "model.int8.onnx"
    assert not (tmp_path / "qat.ckpt").exists()  # removed once finished
    assert "Quantization-aware recovery: 2 epochs" in (tmp_path / "report.md").read_text()
