"""Training, evaluation and fine-tuning on the embedded digits set: demo-cnn learns digits, training
is deterministic, and fine-tuning brings a damaged model back."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from compressor.data import DataBundle, Split, load_dataset
from compressor.finetune import (
    RecoveryConfig,
    augment,
    distillation_loss,
    finetune,
    mix_images,
    recover,
    split_holdout,
)
from compressor.pruning import ChannelPruner
from compressor.training import DEMO_WEIGHTS_NAME, evaluate, train, train_demo_cnn
from compressor.zoo import load_model


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    entry = load_model("demo-cnn").entry
    return load_dataset("digits", input_shape=entry.input_shape, mean=entry.mean, std=entry.std)


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    return train_demo_cnn(tmp_path_factory.mktemp("cache"))


def test_demo_cnn_learns_digits(demo_weights, digits):
    assert demo_weights.name == DEMO_WEIGHTS_NAME and demo_weights.is_file()
    model = load_model("demo-cnn", weights=demo_weights).model
    assert evaluate(model, digits.report) >= 0.95
    assert evaluate(model, digits.search) >= 0.95


def test_demo_weights_are_cached(demo_weights):
    before = demo_weights.stat().st_mtime_ns
    assert train_demo_cnn(demo_weights.parent) == demo_weights
    assert demo_weights.stat().st_mtime_ns == before  # not retrained


def test_untrained_model_is_near_chance(digits):
    torch.manual_seed(0)
    acc = evaluate(load_model("demo-cnn").model, digits.report)
    assert 0.0 <= acc < 0.4


def test_training_is_deterministic(digits):
    small = digits.train.subset(range(200))
    threads = torch.get_num_threads()
    states = []
    for _ in range(2):
        torch.manual_seed(123)  # same initial weights
        model = load_model("demo-cnn").model
        epochs_seen = []
        train(
            model,
            small,
            epochs=2,
            lr=0.05,
            batch_size=32,
            seed=7,
            progress=lambda e, _loss, _acc, seen=epochs_seen: seen.append(e),
        )
        assert epochs_seen == [0, 1]
        assert torch.get_num_threads() == threads  # the one-thread setting for tiny models is undone
        assert not model.training
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def _magnitude_prune(model: nn.Module, fraction: float) -> None:
    """Zero the smallest `fraction` of every conv layer's weights (fine-grained pruning damage)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight
                threshold = w.abs().flatten().kthvalue(int(fraction * w.numel())).values
                w[w.abs() <= threshold] = 0.0


def test_finetune_recovers_a_damaged_model(demo_weights, digits):
    model = load_model("demo-cnn", weights=demo_weights).model
    _magnitude_prune(model, 0.8)
    damaged = evaluate(model, digits.report)
    assert damaged < 0.5
    out = finetune(model, digits, epochs=2, lr=0.01, seed=0)
    assert out is model and not model.training
    assert evaluate(model, digits.report) >= 0.9


def test_finetune_without_train_split_uses_search_split(demo_weights, digits):
    model = load_model("demo-cnn", weights=demo_weights).model
    report_before = digits.report.x.clone()
    bundle = dataclasses.replace(digits, train=None)
    model_before = copy.deepcopy(model)
    calls = []
    _, result = recover(model, bundle, RecoveryConfig(epochs=1, method="plain", lr=0.01, holdout=0.0),
                        progress=lambda stats: calls.append(stats))
    assert len(calls) == 1 and calls[0].loss < 1.0  # (chance: 2.3) it trained on the (learnable) search images
    assert result.train == bundle.search.description and result.holdout is None and result.best_epoch == 1
    assert any(
        not torch.equal(a, b) for a, b in zip(model.parameters(), model_before.parameters(), strict=True)
    )
    assert torch.equal(digits.report.x, report_before)


def _kl(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    student.eval()
    with torch.inference_mode():
        return float(distillation_loss(student(x), teacher(x), temperature=4.0))


def _pruned_demo(demo_weights):
    teacher = load_model("demo-cnn", weights=demo_weights).model.eval()
    x = torch.zeros(1, 1, 8, 8)
    pruner = ChannelPruner(teacher, x)
    kept = [u.candidates[len(u.candidates) // 3] for u in pruner.units]
    return teacher, pruner.apply(kept).model


def test_distillation_lowers_the_teacher_student_divergence(demo_weights, digits):
    teacher, student = _pruned_demo(demo_weights)
    probe = digits.search.x[:256]
    before = _kl(student, teacher, probe)
    small = dataclasses.replace(digits, train=digits.train.subset(range(256)))
    # a few steps at the default rate (8 epochs of 4 batches)
    recover(student, small, RecoveryConfig(epochs=8, method="distill", holdout=0.0), teacher=teacher)
    after = _kl(student, teacher, probe)
    assert after < 0.5 * before, (before, after)


def test_recovery_keeps_the_best_held_out_epoch(demo_weights, digits):
    teacher, student = _pruned_demo(demo_weights)
    seen = []
    model, result = recover(student, digits, RecoveryConfig(epochs=3, method="distill", holdout=0.2, seed=1),
                            teacher=teacher, progress=seen.append)
    assert [s.epoch for s in seen] == [1, 2, 3] and all(s.epochs == 3 and s.loss > 0 for s in seen)
    scores = [result.holdout_accuracy_before] + [h["holdout_accuracy"] for h in result.history]
    assert result.holdout_accuracy == max(scores)
    assert scores[result.best_epoch] == max(scores) and result.best_epoch == max(
        i for i, s in enumerate(scores) if s == max(scores))  # ties go to the more trained epoch
    train_part, held = split_holdout(digits.train, 0.2, 1)
    assert len(held) == round(0.2 * len(digits.train)) and len(train_part) + len(held) == len(digits.train)
    assert set(held.indices.tolist()).isdisjoint(train_part.indices.tolist())
    assert evaluate(model, held) == result.holdout_accuracy  # the returned weights are the chosen epoch's
    assert not model.training


def test_distill_needs_a_teacher_and_config_is_checked(digits):
    with pytest.raises(ValueError, match="teacher"):
        recover(load_model("demo-cnn").model, digits, RecoveryConfig(epochs=1, method="distill"))
    for bad in ({"epochs": -1}, {"epochs": 1, "method": "magic"}, {"epochs": 1, "lr": 0.0},
                {"epochs": 1, "holdout": 1.0}):
        with pytest.raises(ValueError):
            RecoveryConfig(**bad)


def test_augmentation_crops_and_flips_only_rgb():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    out = augment(x, gen, flip=True)
    assert out.shape == x.shape and not torch.equal(out, x)
    # Each output row is a (shifted, maybe mirrored) piece of the input or zero padding.
    values = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= values
    gray = torch.ones(4, 1, 8, 8)
    shifted = augment(gray, torch.Generator().manual_seed(1), flip=False)
    assert shifted.shape == gray.shape and shifted.sum() <= gray.sum()


def test_a_second_recovery_reuses_the_teachers_answers(demo_weights, digits):
    teacher, student = _pruned_demo(demo_weights)
    twin = copy.deepcopy(student)
    calls = []
    handle = teacher.register_forward_hook(lambda *_: calls.append(1))
    cache: dict = {}
    small = dataclasses.replace(digits, train=digits.train.subset(range(200)))
    config = RecoveryConfig(epochs=2, method="distill", holdout=0.0)
    first, _ = recover(student, small, config, teacher=teacher, teacher_cache=cache)
    used = len(calls)
    second, _ = recover(twin, small, config, teacher=teacher, teacher_cache=cache)
    handle.remove()
    assert used > 0 and len(calls) == used  # the second run never asked the teacher
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # and trained exactly as the first did


def test_mixing_blends_pairs_of_images():
    x = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(6)])
    cuts = [mix_images(x, torch.Generator().manual_seed(s), "cutmix") for s in range(8)]
    assert all(cut.shape == x.shape for cut in cuts) and not all(torch.equal(cut, x) for cut in cuts)
    # cutmix: every pixel comes from one of the batch's images (a pasted box), none is averaged
    assert all(set(cut.flatten().tolist()) <= set(range(6)) for cut in cuts)
    assert any(len(set(img.flatten().tolist())) == 2 for cut in cuts for img in cut)
    blend = mix_images(x, torch.Generator().manual_seed(3), "mixup")
    assert torch.allclose(blend.mean(dim=(1, 2, 3)).sum(), x.mean(dim=(1, 2, 3)).sum())  # a convex blend of a permutation
    again = mix_images(x, torch.Generator().manual_seed(3), "mixup")
    assert torch.equal(blend, again)  # seeded
    assert mix_images(x, torch.Generator(), "none") is x


def test_mixed_distillation_trains_and_plain_cannot_mix(demo_weights, digits):
    teacher, student = _pruned_demo(demo_weights)
    probe = digits.search.x[:256]
    before = _kl(student, teacher, probe)
    small = dataclasses.replace(digits, train=digits.train.subset(range(256)))
    recover(student, small, RecoveryConfig(epochs=3, method="distill", mix="cutmix", holdout=0.0), teacher=teacher)
    assert _kl(student, teacher, probe) < 0.7 * before
    with pytest.raises(ValueError, match="distill"):
        RecoveryConfig(epochs=1, method="plain", mix="mixup")
    with pytest.raises(ValueError, match="mix"):
        RecoveryConfig(epochs=1, mix="shuffle")  # type: ignore[arg-type]


def test_the_learning_rate_warms_up_linearly_then_follows_a_cosine():
    from compressor.finetune import lr_factor

    assert [round(lr_factor(s, 100, 4), 3) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert lr_factor(52, 100, 4) == pytest.approx(0.5)
    assert lr_factor(100, 100, 4) == pytest.approx(0.0)
    assert lr_factor(0, 100, 0) == 1.0  # no warm-up: the plain cosine
    with pytest.raises(ValueError, match="warmup_epochs"):
        RecoveryConfig(epochs=2, warmup_epochs=3)


def test_stage_hints_match_the_teachers_stage_outputs_where_shapes_agree():
    from compressor.finetune import _StageOutputs, stage_loss
    from compressor.reconstruct import recalibrate_batchnorm

    torch.manual_seed(0)
    teacher = load_model("resnet20").model
    x = torch.randn(48, 3, 32, 32)
    recalibrate_batchnorm(teacher, x)  # an untrained network, but with the statistics of its inputs
    teacher.eval()
    pruner = ChannelPruner(teacher, x[:1], prune_blocks=True)
    kept = [u.kept_for(0.5) if u.removable and u.block else u.channels for u in pruner.units]
    student = pruner.apply(kept).model
    recalibrate_batchnorm(student, x)
    probe = x[:16]

    def hint_mse() -> float:
        s_out, t_out = _StageOutputs(student), _StageOutputs(teacher)
        student.eval()
        with torch.inference_mode():
            student(probe), teacher(probe)
        s_out.close(), t_out.close()
        assert {"layer1", "layer2", "layer3"} <= set(s_out.values)  # the stages, not the classifier
        assert "linear" not in s_out.values and "fc" not in s_out.values
        return float(stage_loss(s_out.values, t_out.values))

    before = hint_mse()
    split = Split(x=x, y=torch.zeros(len(x), dtype=torch.int64), description="48 random images")
    bundle = DataBundle(train=split, search=split, report=split, num_classes=10, input_shape=(3, 32, 32),
                        description="random", spec="random")
    config = RecoveryConfig(epochs=8, method="distill", holdout=0.0, stage_weight=1.0, feature_weight=0.0,
                            augment=False, lr=0.05, batch_size=16)
    without = copy.deepcopy(student)
    recover(student, bundle, config, teacher=teacher)
    recover(without, bundle, dataclasses.replace(config, stage_weight=0.0), teacher=teacher)
    after = hint_mse()
    assert after < 0.85 * before, (before, after)
    student = without
    assert after < hint_mse(), after  # the hints, not the output term alone, pulled the stages together
    # stages whose outputs differ in shape are left out; none in common: no term
    assert stage_loss({"a": torch.zeros(2, 3)}, {"a": torch.zeros(2, 4)}) is None
    assert float(stage_loss({"a": torch.ones(2), "b": torch.zeros(2)}, {"a": torch.zeros(2), "b": torch.zeros(2)})) == 0.5
