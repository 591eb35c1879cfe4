"""Image folders (one subfolder per class, torchvision ``ImageFolder`` semantics) decoded once
into a uint8 ``TensorImageDataset``, and ``resolve_data``: the one data resolver behind
``--data PATH`` and the Python API (CIFAR-10 or an image folder).

Decoding runs in DataLoader workers with the model's preprocessing (``Preprocess``). Images
are converted to RGB (grayscale, palette, RGBA; 16-bit images scaled to 8 bits). A file that
cannot be decoded is named and either skipped with a warning or stops the load
(``OnCorrupt``). Decoded images larger than ``memory_bytes`` go to a memory-mapped file, so
the process holds only the pages in use.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .data import NPZ_FILES, TV_FOLDER, CorruptDataError, DataNotFoundError, TensorImageDataset, load_cifar10
from .options import OnCorrupt
from .preprocess import Preprocess

__all__ = ["OnCorrupt", "IMAGE_EXTENSIONS", "first_image_size", "scan_folder", "stratified", "load_image_folder", "resolve_data",
           "MEMORY_BYTES", "is_cifar_root"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS`` (case ignored)."""
MEMORY_BYTES = 4 << 30
"""Decoded images above this size are kept in a memory-mapped temporary file instead of RAM."""

PathLike = Union[str, os.PathLike]


def scan_folder(root: PathLike) -> Tuple[List[str], List[Tuple[Path, int]]]:
    """``(classes, [(file, label)])`` of an image folder: classes are the sorted subfolder names,
    files the images below each (recursively, sorted), as ``torchvision.datasets.ImageFolder``.

    Raises:
        DataNotFoundError: no such folder.
        ValueError: no class subfolders, fewer than two classes, or class folders without images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"no data folder at {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:3]
        raise ValueError(f"{root}: no class subfolders" + (f" (images such as {', '.join(loose)} lie in it directly)"
                                                          if loose else " and no images") +
                         "; an image folder has one subfolder per class: ROOT/<class>/<image>.jpg")
    if len(classes) < 2:
        raise ValueError(f"{root}: only one class folder ({classes[0]!r}); accuracy needs at least two classes, one "
                         "subfolder each")
    files: List[Tuple[Path, int]] = []
    empty = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            empty.append(name)
        files += [(p, label) for p in found]
    if empty:
        raise ValueError(f"{root}: class folder(s) without images ({', '.join(empty[:8])}); remove them or add images "
                         f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return classes, files


def first_image_size(root: PathLike) -> Optional[Tuple[int, int]]:
    """``(width, height)`` of the first image below ``root`` in sorted order (read from its
    header only), or ``None`` when there is none or it cannot be read."""
    from PIL import Image

    def first(folder: Path) -> Optional[Path]:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return None
        for p in entries:
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                return p
        return next((f for f in (first(p) for p in entries if p.is_dir()) if f is not None), None)

    path = first(Path(root).expanduser())
    if path is None:
        return None
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError):
        return None


def stratified(labels: Sequence[int], n: int) -> List[int]:
    """Indices of ``n`` of the items, the same share of every class as in the whole (largest
    remainder), evenly spread within each class, in an order that cycles through the classes.
    Deterministic: the same labels and ``n`` give the same selection."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if n >= len(labels):
        take = counts
    else:
        exact = counts * n / len(labels)
        take = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - take), kind="stable")[: n - int(take.sum())]:
            take[i] += 1
    picked = []
    for c, k in zip(classes, take):
        members = np.flatnonzero(labels == c)
        picked.append(members[np.linspace(0, len(members), int(k), endpoint=False).astype(int)] if k else members[:0])
    order = [idx for round_ in range(max(take, default=0)) for sel in picked if round_ < len(sel)
             for idx in [int(sel[round_])]]
    return order


def _to_rgb(img):
    """A PIL image as 8-bit RGB: 16-/32-bit integer images are scaled from 16 bits, float ones from [0, 1]."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img).astype(np.float64)
        arr = arr * 255 if img.mode == "F" else arr / 257.0
        img = Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


class _Decode(torch.utils.data.Dataset):
    def __init__(self, files: Sequence[Path], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as img:
                img.load()
                return i, self.transform(_to_rgb(img)), None
        except Exception as err:  # a corrupt file must not kill the worker: report it to the main process
            return i, None, f"{type(err).__name__}: {err}"


def _workers(requested: Optional[int]) -> int:
    if requested is not None:
        return max(0, int(requested))
    return min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def load_image_folder(root: PathLike, preprocess: Preprocess, *, max_images: Optional[int] = None,
                      on_corrupt: OnCorrupt = OnCorrupt.STOP, workers: Optional[int] = None,
                      memory_bytes: int = MEMORY_BYTES) -> TensorImageDataset:
    """Decode an image folder once into a uint8 ``TensorImageDataset`` normalised with
    ``preprocess.mean``/``std`` per batch.

    Args:
        root: ROOT/<class>/<image> (see ``scan_folder``).
        preprocess: resize, crop and normalisation (``Preprocess.for_model``).
        max_images: a stratified, deterministic selection of this many images (``stratified``);
            more than the folder holds uses all of them, with a warning saying so.
        on_corrupt: stop at an undecodable image, or skip it with a warning.
        workers: DataLoader processes decoding images (default: up to 4, one per core).
        memory_bytes: above this size the decoded images live in a memory-mapped temp file.

    Raises:
        CorruptDataError: an image cannot be decoded and ``on_corrupt`` is ``stop`` (the file is named).
        ValueError: see ``scan_folder``; every image skipped.
    """
    on_corrupt = OnCorrupt(on_corrupt)
    classes, files = scan_folder(root)
    labels = [label for _, label in files]
    if max_images is not None:
        if max_images > len(files):
            warnings.warn(f"{root}: max_images={max_images} is more than the {len(files)} images in the folder; "
                          f"using all {len(files)}", stacklevel=2)
        files = [files[i] for i in stratified(labels, int(max_images))]
    c, h, w = preprocess.input_size
    size = len(files) * c * h * w
    if size > memory_bytes:
        handle, name = tempfile.mkstemp(prefix="fxharden-images-", suffix=".u8")
        os.close(handle)
        images = torch.from_numpy(np.memmap(name, dtype=np.uint8, mode="w+", shape=(len(files), c, h, w)))
        os.unlink(name)  # the mapping keeps the pages; nothing is left behind on exit
    else:
        images = torch.empty((len(files), c, h, w), dtype=torch.uint8)
    ok = torch.ones(len(files), dtype=torch.bool)
    loader = torch.utils.data.DataLoader(_Decode([p for p, _ in files], preprocess.transform()), batch_size=32,
                                         num_workers=_workers(workers), collate_fn=list)
    for batch in loader:
        for i, img, err in batch:
            if err is None and tuple(img.shape) != (c, h, w):
                err = f"decoded to shape {tuple(img.shape)}, expected {(c, h, w)}"
            if err is not None:
                if on_corrupt is OnCorrupt.STOP:
                    raise CorruptDataError(f"{files[i][0]}: cannot be decoded ({err}); remove or replace it, or "
                                           "pass --on-corrupt skip (on_corrupt='skip') to leave such files out")
                warnings.warn(f"skipping {files[i][0]}: cannot be decoded ({err})", stacklevel=2)
                ok[i] = False
                continue
            images[i] = img
    keep = torch.nonzero(ok).flatten()
    if len(keep) == 0:
        raise ValueError(f"{root}: none of the {len(files)} images could be decoded")
    targets = torch.tensor([label for _, label in files], dtype=torch.int64)
    if len(keep) < len(files):
        images, targets = images[keep], targets[keep]
    return TensorImageDataset(images, targets, mean=preprocess.mean, std=preprocess.std, num_classes=len(classes),
                              classes=classes)


def is_cifar_root(path: PathLike) -> bool:
    """Whether ``path`` holds CIFAR-10 (the npz pair or a ``cifar-10-batches-py`` folder) or is one of those."""
    p = Path(path).expanduser()
    return p.name == TV_FOLDER or p.name in NPZ_FILES.values() or \
        any((p / f).is_file() for f in NPZ_FILES.values()) or (p / TV_FOLDER).is_dir()


def uses_cifar(path: Optional[PathLike], download: bool = False) -> bool:
    """Whether ``resolve_data(path, download=...)`` loads CIFAR-10 (not an image folder)."""
    return path is None or is_cifar_root(path) or download or not Path(path).expanduser().is_dir()


def resolve_data(path: Optional[PathLike] = None, *, preprocess: Optional[Preprocess] = None, split: str = "test",
                 max_images: Optional[int] = None, on_corrupt: OnCorrupt = OnCorrupt.STOP,
                 workers: Optional[int] = None, download: bool = False) -> TensorImageDataset:
    """The data behind ``--data PATH``: CIFAR-10 when ``path`` holds it (or is ``None``: then
    ``$FXHARDEN_DATA`` / the cache, as ``load_cifar10``), otherwise an image folder decoded with
    ``preprocess`` (default: timm's 224x224 ImageNet preprocessing). ``max_images`` cuts CIFAR-10
    to its first images and selects a stratified subset of a folder. ``split`` applies to CIFAR-10.

    Raises:
        DataNotFoundError, CorruptDataError, ValueError: with what was looked at and what to do.
    """
    if uses_cifar(path, download):
        try:
            data = load_cifar10(split, root=path, download=download)
        except DataNotFoundError as err:
            raise DataNotFoundError(f"{err}\nOr pass --data with an image folder (one subfolder per class).") from None
        if max_images is not None and max_images < len(data):
            return data.subset(max_images)
        if max_images is not None and max_images > len(data):
            warnings.warn(f"max_images={max_images} is more than the {len(data)} CIFAR-10 {split} images; using all",
                          stacklevel=2)
        return data
    return load_image_folder(path, preprocess or Preprocess(), max_images=max_images, on_corrupt=on_corrupt,
                             workers=workers)
