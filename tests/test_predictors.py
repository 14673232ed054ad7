"""Predictors of the recovered accuracy (compressor.predictors) on demo-cnn and digits: rank
correlation is right at its extremes and with ties, mimicking steps bring a pruned student towards its
teacher, and a mimicking run is reproducible with the teacher's answers cached."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compressor.data import DataBundle, load_dataset
from compressor.predictors import answers, compare, mimic, mimic_scores, ranks, spearman
from compressor.pruning import ChannelPruner
from compressor.training import evaluate, train_demo_cnn
from compressor.zoo import load_model


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    entry = load_model("demo-cnn").entry
    return load_dataset("digits", input_shape=entry.input_shape, mean=entry.mean, std=entry.std)


@pytest.fixture(scope="module")
def demo_weights():
    return train_demo_cnn()  # cached in ~/.cache/amc: these tests need a trained teacher, not its training


def _teacher_and_student(demo_weights):
    teacher = load_model("demo-cnn", weights=demo_weights).model.eval()
    pruner = ChannelPruner(teacher, torch.zeros(1, 1, 8, 8))
    kept = [u.candidates[0] for u in pruner.units]  # the narrowest network: far from its teacher
    return teacher, pruner.apply(kept).model.eval()


def test_spearman_of_identical_and_reversed_rankings():
    x = [0.3, 0.9, 0.1, 0.5, 0.7]
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    assert spearman(x, [v ** 3 + 2 for v in x]) == pytest.approx(1.0)  # only the order counts
    assert abs(spearman([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])) < 1
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_ranks_share_ties():
    assert ranks([10, 30, 20, 20]).tolist() == [1.0, 4.0, 2.5, 2.5]
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    rho = spearman([1, 2, 2, 3], [1, 3, 2, 4])
    assert 0.9 < rho < 1.0
    # ties averaged, as scipy.stats.spearmanr does: Pearson of [1, 2.5, 2.5, 4] and [1, 3, 2, 4]
    assert rho == pytest.approx(float(np.corrcoef([1, 2.5, 2.5, 4], [1, 3, 2, 4])[0, 1]))


def test_mimicking_steps_bring_the_student_towards_its_teacher(demo_weights, digits):
    teacher, student = _teacher_and_student(demo_weights)
    probe = digits.search.subset(range(300))
    reference = answers(teacher, probe)
    before = compare(student, probe, reference)
    losses = mimic(student, teacher, digits.search.x[300:], steps=60, batch_size=32)
    after = compare(student, probe, reference)
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert after.kl < before.kl
    assert after.agreement > before.agreement
    assert after.feature_mse is None  # the narrowest student's pooled features are narrower than the teacher's


def test_mimic_scores_read_the_student_at_each_checkpoint(demo_weights, digits):
    teacher, student = _teacher_and_student(demo_weights)
    probe = digits.search.subset(range(200))
    accuracy = evaluate(student, probe)
    scores = mimic_scores(student, teacher, digits.search.x[200:], probe, checkpoints=[0, 5, 20], batch_size=32)
    assert [s.steps for s in scores] == [0, 5, 20]
    assert scores[0].agreement.accuracy == pytest.approx(accuracy)  # 0 steps: the reward as it is today
    assert scores[-1].agreement.kl < scores[0].agreement.kl
    assert all(0 <= s.eval_seconds <= s.seconds for s in scores)
    assert [s.seconds for s in scores] == sorted(s.seconds for s in scores)
    with pytest.raises(ValueError):
        mimic_scores(student, teacher, digits.search.x[200:], probe, checkpoints=[5, 0])


def test_mimicking_is_reproducible_with_cached_teacher_answers(demo_weights, digits):
    images = digits.search.x[:256]
    cache: dict = {}
    runs = []
    for use_cache in (None, cache, cache):
        teacher, student = _teacher_and_student(demo_weights)
        calls: list[int] = []
        handle = teacher.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        losses = mimic(student, teacher, images, steps=12, batch_size=32, seed=3, cache=use_cache)
        handle.remove()
        runs.append((losses, len(calls)))
    assert runs[1][0] == pytest.approx(runs[0][0]) and runs[2][0] == pytest.approx(runs[0][0])
    assert runs[0][1] == 12 and runs[1][1] == 12  # the first cached run fills the cache
    assert runs[2][1] == 0 and len(cache) == 12  # the second asks the teacher nothing
