"""Datasets for the search: fixed, seeded, disjoint splits held in memory as normalised tensors.

Specs:
- `digits` — scikit-learn's 1,797 8x8 handwritten digits (shipped with scikit-learn, no download);
  pixels 0-16 scaled to [0, 1]; stratified split train 60% / search 20% / report 20%.
- `cifar10:PATH` — PATH an `.npz` with `x` (uint8 N x 32 x 32 x 3) and `y`, taken to be the test set:
  search = first half (images 0-4999), report = second half (5000-9999), and, since there is no
  training set, train = the search split. Or PATH the standard `cifar-10-batches-py` folder:
  train = data_batch_*, search = test 0-4999, report = test 5000-9999.
- `imagefolder:PATH` — one sub-folder per class holding images (Pillow), resized to the model's
  input size; stratified split train 70% / search 15% / report 15%.

The search split (reward, reconstruction, BN re-estimation, short fine-tuning) never overlaps the
report split (final accuracy).

Training data apart from validation data (`load_training_split`, `amc compress --train-data SPEC`): the
same specs name the images recovery trains on. A source with a training set of its own gives that
(`cifar-10-batches-py`'s data_batch_*, digits' train split); any other gives all its images (an `.npz`
such as `cifar10_train_jpeg.npz`, an image folder). Training images that are also report images (same
pixels: a content hash of each image) are refused. Normalisation: `(pixel/255 - mean) / std` per channel with the model
entry's statistics; when mean/std are not given, each dataset's default below is used.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.errors import DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass
class Split:
    """Images (float32 N x C x H x W, normalised) and labels (int64) of one split."""

    x: torch.Tensor
    y: torch.Tensor
    description: str
    indices: torch.Tensor | None = None  # row numbers in the source dataset, when known

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"{self.description}: {self.x.shape[0]} images but {self.y.shape[0]} labels")
        if self.indices is not None and self.indices.shape[0] != self.y.shape[0]:
            raise DataError(
                f"{self.description}: {self.indices.shape[0]} indices for {self.y.shape[0]} images"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) batches in order."""
        for i in range(0, len(self), batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]

    def subset(self, indices: Sequence[int] | torch.Tensor, description: str | None = None) -> Split:
        """A split holding the given rows of this one."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Split(
            self.x[idx],
            self.y[idx],
            description or f"{self.description}, {len(idx)} of them",
            None if self.indices is None else self.indices[idx],
        )


@dataclass
class DataBundle:
    """The three splits of a dataset and what the model must accept to use them."""

    train: Split | None
    search: Split
    report: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    description: str
    spec: str


Loader = Callable[[str, tuple[int, int, int] | None, int], "RawData"]


@dataclass
class RawData:
    """What a loader returns: [0, 1] float images per split and the dataset's default statistics."""

    # name -> (x NCHW uint8 or [0, 1] float, y, description, row indices in the source)
    splits: dict[str, tuple[np.ndarray, np.ndarray, str, np.ndarray] | None]
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    # True when `splits["train"]` is a training set of the source's own (not a share of its test images)
    has_train: bool = False


LOADERS: dict[str, Loader] = {}


def _loader(prefix: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        LOADERS[prefix] = fn
        return fn

    return deco


def load_dataset(
    spec: str,
    *,
    input_shape: tuple[int, int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
) -> DataBundle:
    """Load a dataset spec (`digits`, `cifar10:PATH`, `imagefolder:PATH`) into normalised splits.

    `input_shape` is the model's (C, H, W): the data must match it (image folders are resized to it).
    """
    raw = _load_raw(spec, input_shape, seed)
    c = raw.input_shape[0]
    mean_t = _stats("mean", mean if mean is not None else raw.mean, c)
    std_t = _stats("std", std if std is not None else raw.std, c)
    if any(s <= 0 for s in std_t):
        raise DataError(f"std must be positive, got {std_t}")

    made: dict[int, Split] = {}  # share tensors when two splits are the same data

    def to_split(name: str) -> Split | None:
        item = raw.splits.get(name)
        if item is None:
            return None
        if id(item) in made:
            return made[id(item)]
        x, y, text, rows = item
        split = Split(
            _normalise(x, mean_t, std_t),
            torch.as_tensor(y, dtype=torch.int64),
            text,
            torch.as_tensor(rows, dtype=torch.int64),
        )
        made[id(item)] = split
        return split

    train, search, report = to_split("train"), to_split("search"), to_split("report")
    assert search is not None and report is not None
    bundle = DataBundle(
        train=train,
        search=search,
        report=report,
        num_classes=raw.num_classes,
        input_shape=raw.input_shape,
        description=raw.description,
        spec=spec,
    )
    log.info(
        "dataset %s: train %s, search %d, report %d images of %s",
        spec, len(train) if train is not None else "none", len(search), len(report), _fmt(raw.input_shape),
    )  # fmt: skip
    return bundle


def load_training_split(
    spec: str,
    *,
    input_shape: tuple[int, int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
) -> Split:
    """The images a training-data spec names, normalised like `load_dataset`'s (pass the same model
    statistics): the source's own training set where it has one, else all its images."""
    raw = _load_raw(spec, input_shape, seed)
    c = raw.input_shape[0]
    mean_t = _stats("mean", mean if mean is not None else raw.mean, c)
    std_t = _stats("std", std if std is not None else raw.std, c)
    own = raw.splits.get("train")
    if raw.has_train and own is not None:
        x, y, text, rows = own
        text = f"training data {spec}: {text}"
    else:  # every image of the source once (two split names may hold the same tensors)
        unique = list({id(v): v for v in raw.splits.values() if v is not None}.values())
        rows = np.concatenate([u[3] for u in unique])
        order = np.argsort(rows, kind="stable")
        x = np.concatenate([u[0] for u in unique])[order]
        y = np.concatenate([u[1] for u in unique])[order]
        rows = rows[order]
        text = f"training data {spec}: all {len(y)} images"
    split = Split(_normalise(x, mean_t, std_t), torch.as_tensor(y, dtype=torch.int64), text,
                  torch.as_tensor(rows, dtype=torch.int64))
    log.info("training data %s: %d images", spec, len(split))
    return split


def image_hashes(split: Split) -> list[bytes]:
    """A content hash of each image of `split` (its normalised pixels: equal images under equal
    statistics hash equal)."""
    import hashlib

    x = split.x.contiguous()
    return [hashlib.blake2b(x[i].numpy().tobytes(), digest_size=16).digest() for i in range(len(split))]


def with_training(bundle: DataBundle, train: Split, *, spec: str, add_search: bool = False) -> DataBundle:
    """`bundle` with `train` as its training split, after checking that it fits the bundle (shape,
    classes) and that none of its images is a report image (content hash): recovery must never see
    the images its accuracy is reported on. Images shared with the search split are allowed (the
    default recovery trains on the search split) and logged. `add_search`: the search split's images not
    already in `train` are trained on too (validation images the reward and the calibration read before
    recovery; training images of another kind than them, such as JPEG copies of photographs scored on
    lossless ones, gain images of the kind the model is scored on)."""
    if tuple(train.x.shape[1:]) != tuple(bundle.report.x.shape[1:]):
        raise DataError(
            f"training data {spec} has images of shape {_fmt(tuple(train.x.shape[1:]))} but {bundle.spec} has "
            f"{_fmt(tuple(bundle.report.x.shape[1:]))}; train on images of the validation data's kind"
        )
    if len(train) < 2:
        raise DataError(f"training data {spec} holds {len(train)} image(s); recovery needs at least 2")
    if len(train.y) and (int(train.y.min()) < 0 or int(train.y.max()) >= bundle.num_classes):
        raise DataError(
            f"training data {spec} has labels {int(train.y.min())}-{int(train.y.max())}; {bundle.spec} has "
            f"{bundle.num_classes} classes (0-{bundle.num_classes - 1})"
        )
    report = set(image_hashes(bundle.report))
    train_hashes = image_hashes(train)
    shared = [i for i, h in enumerate(train_hashes) if h in report]
    if shared:
        rows = ", ".join(str(i) for i in shared[:5]) + (", ..." if len(shared) > 5 else "")
        raise DataError(
            f"training data {spec} holds {len(shared)} of the report split's images (training images {rows}; "
            f"report: {bundle.report.description}); the report split must never be trained on: remove them "
            "from the training data, or name other validation data"
        )
    have = set(train_hashes)
    fresh = [i for i, h in enumerate(image_hashes(bundle.search)) if h not in have]
    overlap = len(bundle.search) - len(fresh)
    if overlap:
        log.info("training data %s shares %d images with the search split (%s)", spec, overlap,
                 bundle.search.description)
    if add_search:
        added = bundle.search.subset(fresh)
        train = Split(torch.cat([train.x, added.x]), torch.cat([train.y, added.y]),
                      f"{train.description} + {len(fresh)} search images ({bundle.search.description})")
        log.info("training split: the training data and %d search images (%d images)", len(fresh), len(train))
    return DataBundle(train=train, search=bundle.search, report=bundle.report, num_classes=bundle.num_classes,
                      input_shape=bundle.input_shape, description=bundle.description, spec=bundle.spec)


def _load_raw(spec: str, input_shape: tuple[int, int, int] | None, seed: int) -> RawData:
    prefix, _, arg = spec.partition(":")
    loader = LOADERS.get(prefix)
    if loader is None:
        raise DataError(
            f"unknown dataset spec {spec!r}: use one of 'digits', 'cifar10:PATH' "
            "(.npz or cifar-10-batches-py folder), 'imagefolder:PATH' (one sub-folder per class)"
        )
    if prefix != "digits" and not arg:
        raise DataError(f"dataset spec {spec!r} needs a path: '{prefix}:PATH'")
    if prefix == "digits" and arg:
        raise DataError(f"dataset spec {spec!r}: 'digits' takes no argument")
    raw = loader(arg, input_shape, seed)
    if input_shape is not None and tuple(input_shape) != raw.input_shape:
        raise DataError(
            f"{raw.description} has images of shape {_fmt(raw.input_shape)} but the model expects "
            f"{_fmt(tuple(input_shape))}; pick a model made for this data or another dataset"
        )
    return raw


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _stats(name: str, values: Sequence[float], channels: int) -> tuple[float, ...]:
    vals = tuple(float(v) for v in values)
    if len(vals) == 1 and channels > 1:
        vals = vals * channels
    if len(vals) != channels:
        raise DataError(f"{name} has {len(vals)} values but the images have {channels} channels")
    return vals


def _normalise(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (0-255) or float ([0, 1]) NCHW array -> normalised float32 tensor, in chunks to keep the
    peak memory near the size of the result."""
    out = torch.empty(x.shape, dtype=torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    for i in range(0, x.shape[0], 4096):
        chunk = torch.from_numpy(np.ascontiguousarray(x[i : i + 4096])).to(torch.float32) / scale
        out[i : i + 4096] = (chunk - m) / s
    return out


def stratified_split(y: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices class by class in the given fractions (seeded shuffle); each part sorted."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        cuts = np.floor(bounds * len(idx) + 0.5).astype(int)  # round half up, not to even
        for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


# --------------------------------------------------------------------------------------------------
# digits


@_loader("digits")
def _load_digits(arg: str, input_shape: tuple[int, int, int] | None, seed: int) -> RawData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    tr, se, re = stratified_split(y, (0.6, 0.2, 0.2), seed)
    desc = f"scikit-learn digits, 1797 8x8 images, stratified 60/20/20 split (seed {seed})"
    return RawData(
        splits={
            name: (
                x[rows],
                y[rows],
                f"digits {name} split: {len(rows)} of 1797 images, stratified, seed {seed}",
                rows,
            )
            for name, rows in (("train", tr), ("search", se), ("report", re))
        },
        num_classes=10,
        input_shape=(1, 8, 8),
        mean=(0.5,),
        std=(0.5,),
        description=desc,
        has_train=True,
    )


# --------------------------------------------------------------------------------------------------
# cifar10


@_loader("cifar10")
def _load_cifar10(arg: str, input_shape: tuple[int, int, int] | None, seed: int) -> RawData:
    path = Path(arg).expanduser()
    if not path.exists():
        raise DataError(
            f"CIFAR-10 path {path} does not exist; pass an .npz with x (N x 32 x 32 x 3 uint8) and y, "
            "or the extracted cifar-10-batches-py folder"
        )
    if path.is_dir():
        return _cifar_batches(path)
    return _cifar_npz(path)


def _check_cifar_arrays(x: np.ndarray, y: np.ndarray, where: str) -> None:
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DataError(f"{where}: x has shape {x.shape}, expected N x 32 x 32 x 3 (HWC uint8 RGB)")
    if x.dtype != np.uint8:
        raise DataError(f"{where}: x has dtype {x.dtype}, expected uint8 pixels 0-255")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{where}: y has shape {y.shape}, expected ({x.shape[0]},) labels")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{where}: labels must lie in 0-9, found {int(y.min())}-{int(y.max())}")
    if x.shape[0] < 2:
        raise DataError(f"{where}: needs at least 2 images (search and report halves), has {x.shape[0]}")


def _test_halves(x: np.ndarray, y: np.ndarray, source: str) -> tuple[tuple, tuple]:
    half = x.shape[0] // 2
    n = x.shape[0]
    search = (x[:half], y[:half], f"{source} images 0-{half - 1}", np.arange(half))
    report = (x[half:], y[half:], f"{source} images {half}-{n - 1}", np.arange(half, n))
    return search, report


def _cifar_npz(path: Path) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d or "y" not in d:
                raise DataError(
                    f"{path} holds arrays {sorted(d.files)}; expected 'x' (images) and 'y' (labels)"
                )
            x, y = d["x"], d["y"].astype(np.int64)
        if y.ndim == 2 and y.shape[1] == 1:  # Keras-style (N, 1) labels
            y = y[:, 0]
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(
            f"{path} is not a readable .npz file ({e}); expected np.savez(path, x=..., y=...)"
        ) from e
    _check_cifar_arrays(x, y, str(path))
    search, report = _test_halves(x.transpose(0, 3, 1, 2), y, f"cifar10 test ({path.name})")
    return RawData(
        # No training set in the file: train is the search split (the same tensors).
        splits={"train": search, "search": search, "report": report},
        num_classes=10,
        input_shape=(3, 32, 32),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description=(
            f"CIFAR-10 test set from {path}: search = {search[2]}, report = {report[2]}; "
            "no training set in the file, so training/fine-tuning uses the search split"
        ),
    )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # The official CIFAR-10 python batches are pickles of plain dicts of bytes/ndarray/list. Only
    # numpy arrays, lists and bytes are allowed to be reconstructed.
    try:
        with path.open("rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch file: {type(e).__name__}: {e}") from e
    _check_cifar_arrays(x, y, str(path))
    return x, y


class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data batch")


def _cifar_batches(folder: Path) -> RawData:
    train_files = sorted(folder.glob("data_batch_*"))
    test_file = folder / "test_batch"
    if not test_file.is_file():
        raise DataError(
            f"{folder} has no test_batch; pass the extracted 'cifar-10-batches-py' folder or an .npz file"
        )
    xt, yt = _read_batch(test_file)
    search, report = _test_halves(xt.transpose(0, 3, 1, 2), yt, "cifar10 test_batch")
    train = None
    if train_files:
        parts = [_read_batch(f) for f in train_files]
        x = np.concatenate([p[0] for p in parts]).transpose(0, 3, 1, 2)
        y = np.concatenate([p[1] for p in parts])
        names = ", ".join(f.name for f in train_files)
        train = (x, y, f"cifar10 training images from {names} ({len(y)})", np.arange(len(y)))
    return RawData(
        splits={"train": train if train is not None else search, "search": search, "report": report},
        num_classes=10,
        input_shape=(3, 32, 32),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description=(
            f"CIFAR-10 from {folder}: train = {train[2] if train else 'none (search split used)'}, "
            f"search = {search[2]}, report = {report[2]}"
        ),
        has_train=train is not None,
    )


# --------------------------------------------------------------------------------------------------
# imagefolder


@_loader("imagefolder")
def _load_imagefolder(arg: str, input_shape: tuple[int, int, int] | None, seed: int) -> RawData:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - pillow is a dependency
        raise DataError("imagefolder datasets need Pillow: pip install pillow") from e
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist or is not a folder; expected ROOT/CLASS/IMAGE files"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{root} has {len(classes)} class sub-folders; expected one sub-folder per class (>= 2)"
        )
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        imgs = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += [(p, label) for p in imgs]
    if len(files) < 3:
        raise DataError(f"{root} holds {len(files)} images; need at least 3 (train, search, report)")

    c, h, w = input_shape or (3, 32, 32)
    if c not in (1, 3):
        raise DataError(f"image folders give 1 (grey) or 3 (RGB) channels; the model wants {c}")
    mode = "RGB" if c == 3 else "L"
    x = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, (p, _) in enumerate(files):
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert(mode).resize((w, h), Image.Resampling.BILINEAR))
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read image {p}: {e}; remove or replace it") from e
        x[i] = arr.reshape(h, w, c).transpose(2, 0, 1)
    y = np.array([label for _, label in files], dtype=np.int64)
    tr, se, re = stratified_split(y, (0.7, 0.15, 0.15), seed)
    if len(se) == 0 or len(re) == 0:
        raise DataError(
            f"{root}: {len(files)} images are too few for 70/15/15 train/search/report splits; add images"
        )
    where = f"{root.name}"
    return RawData(
        splits={
            name: (
                x[rows],
                y[rows],
                f"{where} {name} split: {len(rows)} of {len(y)} images (seed {seed})",
                rows,
            )
            if len(rows)
            else None
            for name, rows in (("train", tr), ("search", se), ("report", re))
        },
        num_classes=len(classes),
        input_shape=(c, h, w),
        mean=(0.5,) * c,
        std=(0.5,) * c,
        description=f"image folder {root} ({len(classes)} classes: {', '.join(classes[:10])}"
        + (", ..." if len(classes) > 10 else "")
        + f"), resized to {h}x{w}",
    )
