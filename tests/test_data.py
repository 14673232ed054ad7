"""Datasets: digits splits are disjoint, stratified and seeded; CIFAR-10 (.npz and python batches)
and image folders load from small files written here; bad inputs give DataError with a remedy."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from compressor.data import IMAGENET_MEAN, IMAGENET_STD, LOADERS, Split, load_dataset
from compressor.errors import DataError


def _rows(split: Split) -> set[int]:
    assert split.indices is not None
    return set(split.indices.tolist())


def test_every_loader_has_a_test():
    assert set(LOADERS) == {"digits", "cifar10", "imagefolder"}, "add tests for the new dataset loader"


def test_digits_splits_are_disjoint_stratified_and_seeded():
    b = load_dataset("digits", input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,))
    assert b.train is not None
    assert (len(b.train), len(b.search), len(b.report)) == (1078, 360, 359)
    tr, se, re = _rows(b.train), _rows(b.search), _rows(b.report)
    assert not (tr & se) and not (tr & re) and not (se & re)
    assert tr | se | re == set(range(1797))
    assert b.num_classes == 10 and b.input_shape == (1, 8, 8) and b.spec == "digits"
    all_y = torch.cat([b.train.y, b.search.y, b.report.y])
    for split, frac in ((b.train, 0.6), (b.search, 0.2), (b.report, 0.2)):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
        for cls in range(10):
            expected = frac * int((all_y == cls).sum())
            assert abs(int((split.y == cls).sum()) - expected) <= 1
    # pixels 0..16 -> [0, 1] -> (p - 0.5) / 0.5 in [-1, 1], both ends reached
    assert b.train.x.min() == -1.0 and b.train.x.max() == 1.0

    again = load_dataset("digits", mean=(0.5,), std=(0.5,))
    assert torch.equal(again.report.indices, b.report.indices)
    assert torch.equal(again.report.x, b.report.x)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.report.indices, b.report.indices)


def test_split_batches_and_subset():
    b = load_dataset("digits")
    sizes = [len(y) for _, y in b.report.batches(100)]
    assert sizes == [100, 100, 100, 59]
    x, y = next(b.report.batches(7))
    assert torch.equal(x, b.report.x[:7]) and torch.equal(y, b.report.y[:7])
    sub = b.report.subset([0, 5, 9])
    assert len(sub) == 3 and torch.equal(sub.indices, b.report.indices[[0, 5, 9]])


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("mnist", "unknown dataset spec .*'digits', 'cifar10:PATH'.*'imagefolder:PATH'"),
        ("cifar10", "needs a path"),
        ("cifar10:/no/such/file.npz", "does not exist"),
        ("imagefolder:/no/such/folder", "does not exist"),
        ("digits:extra", "takes no argument"),
    ],
)
def test_bad_specs(spec, words):
    with pytest.raises(DataError, match=words):
        load_dataset(spec)


def test_shape_mismatch_with_model():
    with pytest.raises(DataError, match=r"shape 1x8x8 but the model expects 3x32x32"):
        load_dataset("digits", input_shape=(3, 32, 32))
    with pytest.raises(DataError, match="3 values but the images have 1 channels"):
        load_dataset("digits", mean=IMAGENET_MEAN, std=IMAGENET_STD)


# ---- CIFAR-10 -----------------------------------------------------------------------------------


def _fake_cifar(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % 10
    return x, y


def test_cifar_npz(tmp_path):
    x, y = _fake_cifar(40)
    np.savez(tmp_path / "c.npz", x=x, y=y)
    b = load_dataset(f"cifar10:{tmp_path / 'c.npz'}", input_shape=(3, 32, 32))
    assert len(b.search) == 20 and len(b.report) == 20
    assert b.train is b.search  # no training set in the file
    assert "no training set" in b.description and "images 0-19" in b.search.description
    assert _rows(b.report) == set(range(20, 40))
    assert torch.equal(b.report.y, torch.from_numpy(y[20:]))
    # NHWC uint8 -> NCHW, ImageNet statistics by default
    want = (x[21, 5, 7, 2] / 255.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert b.report.x[1, 2, 5, 7].item() == pytest.approx(want, abs=1e-5)
    np.savez(tmp_path / "keras.npz", x=x, y=y[:, None].astype(np.uint8))  # (N, 1) uint8 labels
    assert torch.equal(load_dataset(f"cifar10:{tmp_path / 'keras.npz'}").report.y, torch.from_numpy(y[20:]))
    custom = load_dataset(f"cifar10:{tmp_path / 'c.npz'}", mean=(0.0,), std=(1.0,))
    assert custom.search.x[0, 0, 0, 0].item() == pytest.approx(x[0, 0, 0, 0] / 255.0, abs=1e-6)


def test_cifar_npz_errors(tmp_path):
    x, y = _fake_cifar(8)
    np.savez(tmp_path / "nhwc_wrong.npz", x=x.transpose(0, 3, 1, 2), y=y)
    with pytest.raises(DataError, match="N x 32 x 32 x 3"):
        load_dataset(f"cifar10:{tmp_path / 'nhwc_wrong.npz'}")
    np.savez(tmp_path / "float.npz", x=x.astype(np.float32), y=y)
    with pytest.raises(DataError, match="uint8"):
        load_dataset(f"cifar10:{tmp_path / 'float.npz'}")
    np.savez(tmp_path / "labels.npz", x=x, y=y[:5])
    with pytest.raises(DataError, match="labels"):
        load_dataset(f"cifar10:{tmp_path / 'labels.npz'}")
    np.savez(tmp_path / "keys.npz", images=x, labels=y)
    with pytest.raises(DataError, match="expected 'x'"):
        load_dataset(f"cifar10:{tmp_path / 'keys.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"junk" * 100)
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(f"cifar10:{tmp_path / 'junk.npz'}")
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    with pytest.raises(DataError, match="model expects 3x224x224"):
        load_dataset(f"cifar10:{tmp_path / 'ok.npz'}", input_shape=(3, 224, 224))


def _write_batch(path, x: np.ndarray, y: np.ndarray) -> None:
    # The official format: a pickled dict with bytes keys, data N x 3072 (channel-major rows).
    d = {b"batch_label": b"fake", b"labels": y.tolist(), b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1)}
    with path.open("wb") as f:
        pickle.dump(d, f)


def test_cifar_batches_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x1, y1 = _fake_cifar(6, seed=1)
    x2, y2 = _fake_cifar(6, seed=2)
    xt, yt = _fake_cifar(10, seed=3)
    _write_batch(folder / "data_batch_1", x1, y1)
    _write_batch(folder / "data_batch_2", x2, y2)
    _write_batch(folder / "test_batch", xt, yt)
    b = load_dataset(f"cifar10:{folder}", mean=(0.0,), std=(1.0,))
    assert b.train is not None and len(b.train) == 12
    assert len(b.search) == 5 and len(b.report) == 5
    want = np.concatenate([x1, x2]).transpose(0, 3, 1, 2) / 255.0
    assert np.allclose(b.train.x.numpy(), want, atol=1e-6)
    assert np.allclose(b.report.x.numpy(), xt[5:].transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    assert "data_batch_1" in b.description


class Evil:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_cifar_batch_with_foreign_objects_is_refused(tmp_path):
    folder = tmp_path / "batches"
    folder.mkdir()
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_dataset(f"cifar10:{folder}")
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="no test_batch"):
        load_dataset(f"cifar10:{folder}")


# ---- image folders ------------------------------------------------------------------------------


def _make_images(root, per_class: int = 10, size: tuple[int, int] = (20, 24)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, base in (("cat", 40), ("dog", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(base + rng.integers(-20, 20, size=(*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i:03d}.png")


def test_imagefolder(tmp_path):
    _make_images(tmp_path / "pets")
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image")
    b = load_dataset(f"imagefolder:{tmp_path / 'pets'}", input_shape=(3, 16, 16))
    assert b.num_classes == 2 and b.input_shape == (3, 16, 16)
    assert b.train is not None
    assert len(b.train) == 14 and len(b.search) >= 2 and len(b.report) >= 2
    tr, se, re = _rows(b.train), _rows(b.search), _rows(b.report)
    assert not (tr & se) and not (tr & re) and not (se & re) and len(tr | se | re) == 20
    assert b.train.x.shape == (14, 3, 16, 16)
    # class 0 (cat) is dark, class 1 (dog) is bright; normalised with 0.5/0.5 by default
    cats = b.train.x[b.train.y == 0].mean().item()
    dogs = b.train.x[b.train.y == 1].mean().item()
    assert cats < -0.4 < 0.3 < dogs
    assert "cat" in b.description and "dog" in b.description

    grey = load_dataset(f"imagefolder:{tmp_path / 'pets'}", input_shape=(1, 8, 8))
    assert grey.search.x.shape[1:] == (1, 8, 8)


def test_imagefolder_errors(tmp_path):
    _make_images(tmp_path / "pets", per_class=3)
    (tmp_path / "pets" / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_dataset(f"imagefolder:{tmp_path / 'pets'}")
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_dataset(f"imagefolder:{tmp_path / 'one'}")
    with pytest.raises(DataError, match="1 \\(grey\\) or 3 \\(RGB\\)"):
        load_dataset(f"imagefolder:{tmp_path / 'pets'}", input_shape=(4, 8, 8))
