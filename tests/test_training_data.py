"""Training data apart from validation data (`--train-data`), and recovery that scales: report images
in the training data are refused, the spec reaches the search from the CLI and the REST API, a killed
recovery resumes from its epoch checkpoint with the weights an uninterrupted one gives, and the
teacher's cached answers give the losses recomputing them gives."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.config import SearchConfig
from compressor.data import DataBundle, load_dataset, load_training_split, with_training
from compressor.errors import ConfigError, DataError
from compressor.finetune import LARGE_TRAINING_SET, RecoveryConfig, recover
from compressor.pruning import ChannelPruner
from compressor.training import train_demo_cnn
from compressor.zoo import load_model

REPO = Path(__file__).resolve().parents[1]


def _cifar_npz(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, n))
    return path


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    entry = load_model("demo-cnn").entry
    return load_dataset("digits", input_shape=entry.input_shape, mean=entry.mean, std=entry.std)


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory) -> Path:
    return train_demo_cnn(tmp_path_factory.mktemp("cache"))


def _pruned_demo(weights: Path):
    teacher = load_model("demo-cnn", weights=weights).model.eval()
    pruner = ChannelPruner(teacher, torch.zeros(1, 1, 8, 8))
    kept = [u.candidates[len(u.candidates) // 3] for u in pruner.units]
    return teacher, pruner.apply(kept).model


# ------------------------------------------------------------------------------------------- data
def test_an_npz_gives_all_its_images_and_digits_its_training_split(tmp_path):
    train = load_training_split(f"cifar10:{_cifar_npz(tmp_path / 't.npz', 30, 1)}")
    assert len(train) == 30 and train.x.shape == (30, 3, 32, 32)
    assert train.indices.tolist() == list(range(30))  # every image once, in file order
    assert "all 30 images" in train.description
    entry = load_model("demo-cnn").entry
    own = load_training_split("digits", input_shape=entry.input_shape, mean=entry.mean, std=entry.std)
    bundle = load_dataset("digits", input_shape=entry.input_shape, mean=entry.mean, std=entry.std)
    assert torch.equal(own.x, bundle.train.x)  # digits has a training split of its own: that one


def test_training_images_that_are_report_images_are_refused(tmp_path):
    test = _cifar_npz(tmp_path / "test.npz", 40, 2)
    bundle = load_dataset(f"cifar10:{test}")  # search = images 0-19, report = 20-39
    with np.load(test) as d:
        x, y = d["x"], d["y"]
    leaky = tmp_path / "leaky.npz"
    fresh = np.random.default_rng(3).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    np.savez(leaky, x=np.concatenate([fresh, x[25:27]]), y=np.concatenate([np.zeros(10, np.int64), y[25:27]]))
    with pytest.raises(DataError, match=r"holds 2 of the report split's images \(training images 10, 11"):
        with_training(bundle, load_training_split(f"cifar10:{leaky}"), spec=f"cifar10:{leaky}")
    # images shared with the search split are fine (the default recovery trains on it)
    shared = tmp_path / "shared.npz"
    np.savez(shared, x=np.concatenate([fresh, x[:5]]), y=np.concatenate([np.zeros(10, np.int64), y[:5]]))
    ok = with_training(bundle, load_training_split(f"cifar10:{shared}"), spec="s")
    assert len(ok.train) == 15 and ok.report is bundle.report


def test_search_images_join_the_training_data_once_and_never_the_report_images(tmp_path):
    test = _cifar_npz(tmp_path / "test.npz", 40, 5)
    bundle = load_dataset(f"cifar10:{test}")  # search = images 0-19, report = 20-39
    with np.load(test) as d:
        x, y = d["x"], d["y"]
    fresh = np.random.default_rng(6).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    train = tmp_path / "train.npz"  # 10 new images and 3 of the search split's
    np.savez(train, x=np.concatenate([fresh, x[:3]]), y=np.concatenate([np.zeros(10, np.int64), y[:3]]))
    joined = with_training(bundle, load_training_split(f"cifar10:{train}"), spec="t", add_search=True)
    assert len(joined.train) == 13 + 17  # the 3 shared search images are not trained on twice
    assert joined.search is bundle.search and joined.report is bundle.report
    assert "17 search images" in joined.train.description
    key = {bytes(row.numpy().tobytes()) for row in joined.train.x}
    assert all(bytes(row.numpy().tobytes()) in key for row in bundle.search.x)
    assert not any(bytes(row.numpy().tobytes()) in key for row in bundle.report.x)
    labels = {bytes(a.numpy().tobytes()): int(b) for a, b in zip(joined.train.x, joined.train.y)}
    assert all(labels[bytes(a.numpy().tobytes())] == int(b) for a, b in zip(bundle.search.x, bundle.search.y))
    with pytest.raises(ConfigError, match="train_with_search: .*--train-data"):
        SearchConfig(model="demo-cnn", data="digits", train_with_search=True)


def test_a_search_refuses_leaky_training_data_before_searching(tmp_path):
    from compressor.search import prepare

    test = _cifar_npz(tmp_path / "test.npz", 40, 4)
    config = SearchConfig(model="tiny_models:TinyResNet", data=f"cifar10:{test}", train_data=f"cifar10:{test}",
                          episodes=1)
    with pytest.raises(DataError, match="report split must never be trained on"):
        prepare(config)


def test_train_data_and_train_device_are_checked():
    from compressor.search import validate

    with pytest.raises(ConfigError, match="train_device"):
        SearchConfig(model="demo-cnn", data="digits", train_device="tpu")
    with pytest.raises(ConfigError, match="train_data: .*does not exist"):
        validate(SearchConfig(model="demo-cnn", data="digits", train_data="cifar10:/nonexistent/train.npz"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            validate(SearchConfig(model="demo-cnn", data="digits", train_device="cuda"))


# --------------------------------------------------------------------------------------- recovery
def test_large_training_sets_get_larger_batches():
    config = RecoveryConfig(epochs=1)
    assert config.batch_for(LARGE_TRAINING_SET) == 64 and config.batch_for(50_000) == 128
    assert RecoveryConfig(epochs=1, batch_size=32).batch_for(50_000) == 32


def test_cached_teacher_answers_give_the_losses_recomputing_gives(demo_weights, digits):
    teacher, student = _pruned_demo(demo_weights)
    twin, third = copy.deepcopy(student), copy.deepcopy(student)
    small = dataclasses.replace(digits, train=digits.train.subset(range(300)))
    config = RecoveryConfig(epochs=2, method="distill", holdout=0.1)
    _, plain = recover(student, small, config, teacher=teacher)  # no cache: the teacher runs every batch
    cache: dict = {}
    recover(twin, small, config, teacher=teacher, teacher_cache=cache)  # fills the cache
    assert cache
    _, cached = recover(third, small, config, teacher=teacher, teacher_cache=cache)  # answers from the cache
    assert [h["loss"] for h in cached.history] == [h["loss"] for h in plain.history]
    for a, b in zip(student.state_dict().values(), third.state_dict().values(), strict=True):
        assert torch.equal(a, b)


RECOVER_SCRIPT = textwrap.dedent("""
    import sys, time, dataclasses, torch
    sys.path.insert(0, {tests!r})
    from test_training_data import _pruned_demo
    from compressor.data import load_dataset
    from compressor.finetune import RecoveryConfig, recover
    from compressor.zoo import load_model
    entry = load_model("demo-cnn").entry
    digits = load_dataset("digits", input_shape=entry.input_shape, mean=entry.mean, std=entry.std)
    teacher, student = _pruned_demo({weights!r})
    hang_after = int(sys.argv[1])
    def progress(stats):
        print("epoch", stats.epoch, flush=True)
        if stats.epoch == hang_after:
            time.sleep(600)  # killed here, its checkpoint written
    model, result = recover(student, digits, RecoveryConfig(epochs=4, method="distill"), teacher=teacher,
                            progress=progress, checkpoint={ckpt!r})
    torch.save(model.state_dict(), {out!r})
    print("resumed_after", result.resumed_after, "epochs", [h["epoch"] for h in result.history], flush=True)
""")


def test_a_killed_recovery_resumes_from_its_epoch_checkpoint(demo_weights, tmp_path):
    ckpt, out, uninterrupted = tmp_path / "recovery.ckpt", tmp_path / "resumed.pt", tmp_path / "straight.pt"
    script = tmp_path / "recover.py"

    def write(out_path: Path, ckpt_path: Path) -> None:
        script.write_text(RECOVER_SCRIPT.format(tests=str(REPO / "tests"), weights=str(demo_weights),
                                                ckpt=str(ckpt_path), out=str(out_path)))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    write(out, ckpt)
    proc = subprocess.Popen([sys.executable, str(script), "2"], stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        seen = [proc.stdout.readline().strip() for _ in range(2)]  # type: ignore[union-attr]
        assert seen == ["epoch 1", "epoch 2"]
        assert ckpt.is_file()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a kill, not a clean exit
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run([sys.executable, str(script), "0"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines() == ["epoch 3", "epoch 4", "resumed_after 2 epochs [1, 2, 3, 4]"]

    write(uninterrupted, tmp_path / "other.ckpt")  # the same recovery, never interrupted
    straight = subprocess.run([sys.executable, str(script), "0"], capture_output=True, text=True, env=env,
                              timeout=300)
    assert straight.returncode == 0, straight.stderr
    a, b = torch.load(out, weights_only=True), torch.load(uninterrupted, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # exactly where it would have been


def test_a_checkpoint_of_another_recovery_is_not_resumed(demo_weights, digits, tmp_path, caplog):
    teacher, student = _pruned_demo(demo_weights)
    twin = copy.deepcopy(student)
    small = dataclasses.replace(digits, train=digits.train.subset(range(200)))
    ckpt = tmp_path / "recovery.ckpt"
    recover(student, small, RecoveryConfig(epochs=1, method="distill"), teacher=teacher, checkpoint=ckpt)
    _, result = recover(twin, small, RecoveryConfig(epochs=2, method="distill"), teacher=teacher, checkpoint=ckpt)
    assert result.resumed_after == 0 and len(result.history) == 2
    assert "belongs to another recovery" in caplog.text


# ------------------------------------------------------------------------------------ CLI and REST
def _digit_folder(root: Path, digits: DataBundle, per_class: int = 6) -> int:
    """An image folder of 8x8 grey PNGs drawn from digits' training split (never its report split)."""
    from PIL import Image

    x = ((digits.train.x * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    y = digits.train.y.numpy()
    n = 0
    for cls in range(10):
        (root / f"c{cls}").mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(y == cls)[:per_class]):
            Image.fromarray(x[i], mode="L").save(root / f"c{cls}" / f"{k}.png")
            n += 1
    return n


def test_train_data_through_the_cli(digits, tmp_path):
    import argparse

    from server import compress_cli

    n = _digit_folder(tmp_path / "train", digits)
    parser = argparse.ArgumentParser(prog="amc")
    compress_cli.register(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["compress", "--model", "demo-cnn", "--data", "digits", "--train-data",
                              f"imagefolder:{tmp_path / 'train'}", "--episodes", "2", "--finetune-epochs", "2",
                              "--out", str(out)])
    assert compress_cli.run(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["train_data"] == f"imagefolder:{tmp_path / 'train'}" and report["train_images"] == n
    assert report["recovery"]["train"].startswith(f"training data imagefolder:{tmp_path / 'train'}")
    assert [h["epoch"] for h in report["recovery"]["history"]] == [1, 2]
    assert not (out / "recovery.ckpt").exists()  # removed once recovery has finished

    out = tmp_path / "with-search"
    args = parser.parse_args(["compress", "--model", "demo-cnn", "--data", "digits", "--train-data",
                              f"imagefolder:{tmp_path / 'train'}", "--train-with-search", "--episodes", "2",
                              "--finetune-epochs", "1", "--out", str(out)])
    assert compress_cli.run(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["train_images"] == n + len(digits.search)  # the digit folder's images are training images
    assert "search images" in report["splits"]["train"] and "search images" in report["recovery"]["train"]
    assert "search images" in (out / "report.md").read_text()


def test_train_data_through_rest_confined_and_run(digits, tmp_path):
    from test_server_harness import SMALL_JOB, ServerProcess, wait_for

    srv = ServerProcess(tmp_path / "data", env={"AMC_MAX_WORKERS": "1"}).start()
    try:
        datasets = srv.data_dir / "datasets"  # the default AMC_DATA_ROOTS
        n = _digit_folder(datasets / "digit-train", digits)
        with srv.client() as c:
            r = c.post("/jobs", json={**SMALL_JOB, "train_data": f"imagefolder:{tmp_path}"})
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"][-1] == "train_data"
            assert "not inside a folder this server reads data from" in r.text
            r = c.post("/jobs", json={**SMALL_JOB, "train_with_search": True})  # nothing to add the images to
            assert r.status_code == 422 and "--train-data" in r.text, r.text
            r = c.post("/jobs", json={**SMALL_JOB, "train_data": "imagefolder:digit-train", "finetune_epochs": 1})
            assert r.status_code == 201, r.text
            job = wait_for(c, r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=180)
            assert job["state"] == "succeeded", job
            report = c.get(f"/jobs/{job['id']}/artifacts/report.json").json()
            assert report["train_data"] == f"imagefolder:{(datasets / 'digit-train').resolve()}"
            assert report["train_images"] == n
    finally:
        srv.stop()


def test_recovery_epochs_report_an_eta(demo_weights, digits):
    teacher, student = _pruned_demo(demo_weights)
    small = dataclasses.replace(digits, train=digits.train.subset(range(200)))
    seen = []
    t = time.monotonic()
    recover(student, small, RecoveryConfig(epochs=3, method="distill"), teacher=teacher, progress=seen.append)
    assert [s.epoch for s in seen] == [1, 2, 3]
    assert seen[0].eta_seconds is not None and seen[0].eta_seconds >= 0 and seen[-1].eta_seconds == 0
    assert seen[0].eta_seconds <= 3 * (time.monotonic() - t) + 1
