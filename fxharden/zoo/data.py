"""Datasets held in memory as uint8 tensors and batched on the fly.

``load_cifar10`` reads CIFAR-10 from an explicit ``root`` (or ``$FXHARDEN_DATA``): either the
npz pair ``cifar10_train.npz`` / ``cifar10_test.npz`` or a torchvision ``cifar-10-batches-py``
folder. Nothing is downloaded unless ``download=True`` is passed. ``TensorImageDataset`` keeps
all images as ONE uint8 NCHW tensor and normalises whole batches on the target device, so an
epoch costs a handful of tensor ops rather than per-image Python work. ``as_batches`` turns any
dataset, DataLoader or ``(x, y)`` pair into ``(x, y)`` batches on a device.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

from enum import Enum

import numpy as np
import torch
from torch import Tensor

from .options import DATA_ENV, data_env

__all__ = [
    "DATA_ENV", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES", "SPLITS", "NPZ_FILES", "TV_FOLDER",
    "DataNotFoundError", "CorruptDataError", "TensorImageDataset", "load_cifar10", "synthetic_dataset",
    "as_batches", "default_cache_dir", "DatasetKind", "load_splits",
]

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
"""Per-channel mean of the CIFAR-10 training images, scaled to [0, 1]."""
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
"""Per-channel standard deviation of the CIFAR-10 training images, scaled to [0, 1]."""
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
NPZ_FILES = {"train": "cifar10_train.npz", "test": "cifar10_test.npz"}
TV_FOLDER = "cifar-10-batches-py"

PathLike = Union[str, os.PathLike]


class DataNotFoundError(FileNotFoundError):
    """The dataset is in none of the places looked at (the message lists them)."""


class CorruptDataError(ValueError):
    """A dataset file exists but cannot be used (unreadable, missing arrays, wrong shapes/dtypes)."""


def default_cache_dir() -> Path:
    """Where ``download=True`` puts the data when no root is given: ``~/.cache/fxharden``."""
    return Path.home() / ".cache" / "fxharden"


class TensorImageDataset(torch.utils.data.Dataset):
    """Images as one uint8 NCHW tensor plus int64 labels; normalisation happens per batch.

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: integer tensor (N,), converted to int64.
        mean, std: per-channel normalisation in [0, 1] units: ``x = (img / 255 - mean) / std``.
        num_classes: defaults to ``labels.max() + 1``.
        classes: optional class names.
        exact: optional bool tensor (N,) (for CIFAR-10 test: which images are bit-exact).
    """

    def __init__(self, images: Tensor, labels: Tensor, *, mean: Sequence[float], std: Sequence[float],
                 num_classes: Optional[int] = None, classes: Optional[Sequence[str]] = None,
                 exact: Optional[Tensor] = None) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, Tensor) \
                else type(images).__name__
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {got}; "
                             "convert HWC arrays with torch.from_numpy(x).permute(0, 3, 1, 2)")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or len(labels) != len(images) or labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor of shape ({len(images)},), "
                             f"got {labels.dtype} of shape {tuple(labels.shape)}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need one value per channel ({channels}), got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {tuple(std)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.num_classes = int(num_classes) if num_classes is not None else \
            (int(self.labels.max()) + 1 if len(self.labels) else 0)
        self.classes = tuple(classes) if classes is not None else None
        if exact is not None:
            exact = torch.as_tensor(exact, dtype=torch.bool)
            if exact.shape != (len(images),):
                raise ValueError(f"exact must have shape ({len(images)},), got {tuple(exact.shape)}")
        self.exact = exact

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        """One normalised float image (C, H, W) and its label as an int."""
        x, y = self.normalize(self.images[index].unsqueeze(0))[0], int(self.labels[index])
        return x, y

    def __repr__(self) -> str:
        return (f"TensorImageDataset(n={len(self)}, shape={tuple(self.images.shape[1:])}, "
                f"num_classes={self.num_classes}, device={self.images.device})")

    @property
    def shape(self) -> Tuple[int, ...]:
        """Shape of one image (C, H, W)."""
        return tuple(self.images.shape[1:])

    def normalize(self, images: Tensor, device: Optional[Union[str, torch.device]] = None) -> Tensor:
        """Float32 ``(images / 255 - mean) / std`` of a uint8 batch (N, C, H, W), moved to ``device``
        as uint8 first (a quarter of the bytes of float32)."""
        images = images.to(device) if device is not None else images
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        return images.to(torch.float32).div_(255.0).sub_(mean).div_(std)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """How many batches ``batches(batch_size, drop_last=drop_last)`` yields."""
        n = len(self)
        return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: Optional[torch.Generator] = None,
                device: Optional[Union[str, torch.device]] = None, drop_last: bool = False,
                transform: Optional[Callable[[Tensor], Tensor]] = None) -> Iterator[Tuple[Tensor, Tensor]]:
        """Yield ``(x, y)``: float32 normalised images (B, C, H, W) and int64 labels on ``device``.
        ``transform`` (e.g. augmentation) maps each uint8 batch, on ``device``, before it is
        normalised.

        With ``shuffle`` the order is ``torch.randperm(len(self), generator=generator)``, so a
        seeded generator gives a reproducible order. ``drop_last`` drops the trailing partial
        batch unless it is the only one (a dataset smaller than ``batch_size``), so an epoch
        never has zero steps.
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch_size = int(batch_size)
        n = len(self)
        src = self.images.device
        if shuffle:
            gen_dev = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(n, generator=generator, device=gen_dev).to(src)
        else:
            order = None
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = self.images[start:start + batch_size], self.labels[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                xb, yb = self.images[idx], self.labels[idx]
            if transform is not None:
                xb = transform(xb.to(device) if device is not None else xb)
            yield self.normalize(xb, device), (yb.to(device) if device is not None else yb)

    def subset(self, indices: Union[int, Sequence[int], Tensor]) -> "TensorImageDataset":
        """A new dataset with the first ``indices`` images (an int) or the given indices (copied)."""
        if isinstance(indices, (int, np.integer)):
            n = int(indices)
            if not 0 <= n <= len(self):
                raise ValueError(f"subset size must be between 0 and {len(self)}, got {n}")
            idx: Union[slice, Tensor] = slice(0, n)
        else:
            idx = torch.as_tensor(indices, dtype=torch.int64, device=self.images.device)
            if idx.dim() != 1:
                raise ValueError(f"subset indices must be one-dimensional, got shape {tuple(idx.shape)}")
            if len(idx) and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
                raise IndexError(f"subset indices must be in [0, {len(self)}), got {int(idx.min())}..{int(idx.max())}")
        return TensorImageDataset(
            self.images[idx].clone(), self.labels[idx].clone(), mean=self.mean, std=self.std,
            num_classes=self.num_classes, classes=self.classes,
            exact=self.exact[idx].clone() if self.exact is not None else None)

    def to(self, device: Union[str, torch.device]) -> "TensorImageDataset":
        """The same data with its uint8 tensors on ``device`` (e.g. the whole set on a GPU, so
        ``batches`` only indexes there)."""
        return TensorImageDataset(
            self.images.to(device), self.labels.to(device), mean=self.mean, std=self.std,
            num_classes=self.num_classes, classes=self.classes,
            exact=self.exact.to(device) if self.exact is not None else None)


# --------------------------------------------------------------------------- CIFAR-10 loading

def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    return split


def _candidate_roots(root: Optional[PathLike]) -> List[Tuple[str, Path]]:
    """(how it was chosen, path) in lookup order: explicit root, $FXHARDEN_DATA, the cache."""
    out = []
    if root is not None:
        out.append(("root argument", Path(root).expanduser()))
    env = data_env()  # a relative value: from the working directory (the CLI makes it absolute at start)
    if env is not None:
        out.append((f"${DATA_ENV}", env))
    out.append(("download cache", default_cache_dir()))
    seen, unique = set(), []
    for how, path in out:
        # accept a path to the npz file itself or to the torchvision folder: use its directory
        if path.is_file() or path.name == TV_FOLDER:
            path = path.parent
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((how, path))
    return unique


def _load_npz(path: Path) -> TensorImageDataset:
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CorruptDataError(f"{path}: holds a single array, not an npz archive with arrays 'x' and 'y' "
                                   "(write it with np.savez(path, x=..., y=...))")
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except CorruptDataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise CorruptDataError(f"{path}: not a readable npz file ({type(err).__name__}: {err}); "
                               "replace it with a fresh copy or delete it") from None
    except Exception as err:  # zlib.error and friends from truncated members
        raise CorruptDataError(f"{path}: could not read its arrays ({type(err).__name__}: {err}); "
                               "replace it with a fresh copy or delete it") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise CorruptDataError(f"{path}: missing array(s) {missing} (has {sorted(arrays)}); expected 'x' uint8 "
                               "(N, 32, 32, 3) and 'y' uint8 (N,)")
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise CorruptDataError(f"{path}: 'x' must be uint8 of shape (N, 32, 32, 3) (HWC), "
                               f"got {x.dtype} of shape {x.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
        raise CorruptDataError(f"{path}: 'y' must be integer labels of shape ({len(x)},), "
                               f"got {y.dtype} of shape {y.shape}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise CorruptDataError(f"{path}: labels must be in 0..9, got {int(y.min())}..{int(y.max())}")
    exact = arrays.get("exact")
    if exact is not None and (exact.dtype != np.bool_ or exact.shape != (len(x),)):
        raise CorruptDataError(f"{path}: 'exact' must be bool of shape ({len(x)},), "
                               f"got {exact.dtype} of shape {exact.shape}")
    return _from_hwc(x, y, torch.from_numpy(exact) if exact is not None else None)


def _from_hwc(x: np.ndarray, y: Sequence[int], exact: Optional[Tensor] = None) -> TensorImageDataset:
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    return TensorImageDataset(images, labels, mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=10,
                              classes=CIFAR10_CLASSES, exact=exact)


def _load_torchvision(root: Path, split: str, download: bool) -> TensorImageDataset:
    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=download)
    except RuntimeError as err:
        raise CorruptDataError(f"{root / TV_FOLDER}: torchvision could not load it ({err}); its files are "
                               "missing or fail the md5 check. Delete the folder and load again with "
                               "--download (or download=True)") from None
    data = np.asarray(ds.data)
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[1:] != (32, 32, 3):
        raise CorruptDataError(f"{root / TV_FOLDER}: expected uint8 images (N, 32, 32, 3), "
                               f"got {data.dtype} of shape {data.shape}")
    return _from_hwc(data, ds.targets)


def load_cifar10(split: str = "train", root: Optional[PathLike] = None, *,
                 download: bool = False) -> TensorImageDataset:
    """Load a CIFAR-10 split as a ``TensorImageDataset`` (uint8 (N, 3, 32, 32), CIFAR-10 train
    mean/std normalisation, ``classes`` names; the npz test split also has ``exact``).

    Places are tried in order: ``root``, then ``$FXHARDEN_DATA``, then ``~/.cache/fxharden``
    (where downloads go). In each, the npz file ``cifar10_<split>.npz`` wins over a torchvision
    ``cifar-10-batches-py`` folder. With ``download=True`` and nothing found, torchvision
    downloads the archive into ``root`` (or ``~/.cache/fxharden``).

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
        DataNotFoundError: nothing found (and no download requested); lists every place looked.
        CorruptDataError: a file was found but is unusable.
    """
    _check_split(split)
    looked: List[str] = []
    candidates = _candidate_roots(root)
    for i, (how, path) in enumerate(candidates):
        npz = path / NPZ_FILES[split]
        tv = path / TV_FOLDER
        if npz.is_file():
            found = _load_npz(npz)
        elif tv.is_dir():
            found = _load_torchvision(path, split, download=False)
        else:
            looked += [f"{npz} ({how})", f"{tv}/ ({how})"]
            continue
        if i > 0 and root is not None:
            log.warning("no CIFAR-10 under root %s; using %s from %s", root, path, how)
        log.info("loaded CIFAR-10 %s split (%d images) from %s", split, len(found),
                 npz if npz.is_file() else tv)
        return found
    if download:
        target = Path(root).expanduser() if root is not None else default_cache_dir()
        target.mkdir(parents=True, exist_ok=True)
        log.warning("CIFAR-10 not found; downloading it with torchvision into %s", target)
        try:
            return _load_torchvision(target, split, download=True)
        except CorruptDataError:
            raise
        except Exception as err:
            raise DataNotFoundError(f"downloading CIFAR-10 into {target} failed ({type(err).__name__}: {err}). "
                                    "Without internet access, copy cifar10_train.npz/cifar10_test.npz or a "
                                    f"{TV_FOLDER} folder there and pass --data PATH") from None
    places = "\n  ".join(looked)
    env_hint = "" if os.environ.get(DATA_ENV) else f" (${DATA_ENV} is not set)"
    raise DataNotFoundError(
        f"CIFAR-10 {split} split not found{env_hint}. Looked in:\n  {places}\n"
        f"Get it by pointing at a folder holding {NPZ_FILES[split]} or {TV_FOLDER}/: pass --data PATH "
        f"(root=PATH in Python) or set {DATA_ENV}=PATH, or download it with --download (download=True).")


# --------------------------------------------------------------------------- synthetic data

def synthetic_dataset(n: int = 256, num_classes: int = 10, image_size: int = 32, channels: int = 3,
                      seed: int = 0) -> TensorImageDataset:
    """Small learnable image data for tests, deterministic given ``seed``.

    Each class has a fixed random smooth prototype (a 4x4 pattern upsampled to ``image_size``);
    an image is its class prototype plus Gaussian pixel noise, quantised to uint8. Labels are
    balanced (``i % num_classes``, shuffled). Mean/std are measured on the generated images.
    """
    if n < 1 or num_classes < 1 or image_size < 1 or channels < 1:
        raise ValueError(f"n, num_classes, image_size and channels must be positive, got "
                         f"{n}, {num_classes}, {image_size}, {channels}")
    g = torch.Generator().manual_seed(int(seed))
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g)
    protos = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear",
                                             align_corners=False) * 160 + 48
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    noise = torch.randn(n, channels, image_size, image_size, generator=g) * 24
    images = (protos[labels] + noise).round_().clamp_(0, 255).to(torch.uint8)
    scaled = images.to(torch.float64) / 255
    mean = scaled.mean(dim=(0, 2, 3)).tolist()
    std = scaled.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return TensorImageDataset(images, labels, mean=mean, std=std, num_classes=num_classes)


# --------------------------------------------------------------------------- train/test pairs

class DatasetKind(str, Enum):
    """Which data a run trains and evaluates on."""

    CIFAR10 = "cifar10"
    SYNTHETIC = "synthetic"
    """Generated images (``synthetic_dataset``): tests and smoke runs."""


def load_splits(kind: DatasetKind = DatasetKind.CIFAR10, root: Optional[PathLike] = None, *,
                train_images: Optional[int] = None, test_images: Optional[int] = None,
                synthetic_images: int = 512) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """``(train, test)`` datasets, each cut to its first ``train_images`` / ``test_images``.

    CIFAR-10 comes from ``root`` (or ``$FXHARDEN_DATA``); synthetic data generates
    ``synthetic_images`` images in total, a quarter of them the test split.
    """
    if DatasetKind(kind) is DatasetKind.SYNTHETIC:
        full = synthetic_dataset(synthetic_images, seed=0)
        n_test = max(1, synthetic_images // 4)
        train, test = full.subset(range(n_test, len(full))), full.subset(n_test)
    else:
        train, test = load_cifar10("train", root), load_cifar10("test", root)
    if train_images is not None and train_images < len(train):
        train = train.subset(train_images)
    if test_images is not None and test_images < len(test):
        test = test.subset(test_images)
    return train, test


# --------------------------------------------------------------------------- generic batching

def is_batch_list(data: Any) -> bool:
    """A list of ``(inputs, targets)`` batches whose inputs may be a tensor, a dict or a tuple
    of tensors (``[({"input_ids": ids, "attention_mask": mask}, ids), ...]``)."""
    return (isinstance(data, (list, tuple)) and len(data) > 0
            and not (len(data) == 2 and all(isinstance(t, Tensor) for t in data))
            and all(isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[1], Tensor) for b in data))


def map_tensors(x: Any, fn: Callable[[Tensor], Any]) -> Any:
    """``fn`` on every tensor of a tensor, dict or tuple of inputs."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: map_tensors(v, fn) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(map_tensors(v, fn) for v in x)
    return x


def as_batches(data, batch_size: int, device: Optional[Union[str, torch.device]] = None, *,
               shuffle: bool = False, generator: Optional[torch.Generator] = None,
               drop_last: bool = False) -> Iterator[Tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` batches on ``device`` from any of:

    * a ``TensorImageDataset`` (its fast ``batches``),
    * a ``torch.utils.data.DataLoader`` (used as is: its own batch size and order),
    * any other ``torch.utils.data.Dataset`` of ``(x, y)`` items (wrapped in a DataLoader),
    * a pair ``(x, y)`` of tensors (sliced into batches; x is used as is, not normalised),
    * a list of ``(inputs, targets)`` batches (``is_batch_list``; inputs a tensor, dict or
      tuple of tensors, e.g. ``fxharden.zoo.text.text_batches``), used as they are; ``shuffle``
      permutes their order.

    ``shuffle``/``generator``/``drop_last`` apply to all but a DataLoader.
    """
    if is_batch_list(data):
        order = torch.randperm(len(data), generator=generator).tolist() if shuffle else range(len(data))
        for i in order:
            x, y = data[i]
            yield map_tensors(x, lambda t: _move(t, device)), _move(y, device)
        return
    if isinstance(data, TensorImageDataset):
        yield from data.batches(batch_size, shuffle=shuffle, generator=generator, device=device,
                                drop_last=drop_last)
        return
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"(x, y) must have the same length, got {len(x)} and {len(y)}")
        n = len(x)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size].to(x.device)
                xb, yb = x[idx], y[idx.to(y.device)]
            yield _move(xb, device), _move(yb, device)
        return
    if isinstance(data, torch.utils.data.DataLoader):
        loader = data
    elif isinstance(data, torch.utils.data.Dataset):
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                             drop_last=drop_last and len(data) >= batch_size)
    else:
        raise TypeError("data must be a TensorImageDataset, a torch Dataset or DataLoader yielding (x, y), "
                        f"or an (x, y) pair of tensors; got {type(data).__name__}")
    for batch in loader:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError(f"each batch must be (inputs, labels), got {type(batch).__name__}; "
                            "wrap the dataset so that items are (image_tensor, label)")
        yield _move(batch[0], device), _move(torch.as_tensor(batch[1]), device)


def _move(t: Tensor, device) -> Tensor:
    return t.to(device, non_blocking=True) if device is not None else t
