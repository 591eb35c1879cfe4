"""A model and the data it is evaluated (or fine-tuned) on, resolved together: the data are
decoded with the model's preprocessing, and a model with random weights gets a head with the
data's number of classes, while loaded weights must match the data (or ``num_classes`` says
how to resize their head). Used by the CLI's ``sweep`` and ``train`` and by the Python API.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from torch import nn

from .data import TensorImageDataset
from .folders import first_image_size, is_cifar_root, load_image_folder, resolve_data, stratified, uses_cifar
from .models import LoadedModel, load_model
from .options import DataOptions, ModelOptions
from .preprocess import Preprocess

__all__ = ["load_with_data", "resolve_dataset", "check_first_forward", "upscale_note", "InputSizeError", "cifar_overrides", "resolve_splits", "class_mismatch",
           "effective_preprocess", "inputs_record", "heldout_data", "HOLDOUT"]

HOLDOUT = 0.2
"""Share of a plain image folder held out for testing when training on it."""


def class_mismatch(model_classes: Optional[int], data: TensorImageDataset, label: str) -> Optional[str]:
    """The error message when the model's head and the data disagree, else ``None``."""
    if model_classes is None or model_classes == data.num_classes:
        return None
    return (f"{label} outputs {model_classes} classes but the data have {data.num_classes}"
            + (f" ({', '.join(data.classes[:5])}{', ...' if len(data.classes) > 5 else ''})" if data.classes else "")
            + f". Pass --num-classes {data.num_classes} (num_classes={data.num_classes}) for a new head of that "
            "size (then fine-tune it with fxharden train), or use data with the model's classes.")


def load_with_data(source: str, model: ModelOptions, data: DataOptions,
                   loader=None) -> Tuple[LoadedModel, Any]:
    """``(loaded model, data)``: the data decoded with the model's preprocessing (plus the
    overrides in ``data``); a random-weights model without ``num_classes`` is rebuilt with the
    data's class count. ``loader(preprocess)`` replaces ``resolve_data`` (e.g. train/test splits).

    Raises:
        ValueError: loaded weights whose head does not match the data's classes (the fix named).
    """
    lm = load_model(source, pretrained=model.pretrained, weights=model.weights, num_classes=model.num_classes,
                    model_args=model.model_args)
    preprocess = data.preprocess(lm.preprocess)
    note = None if lm.names_preprocess else upscale_note(source, preprocess, data)
    if note:
        warnings.warn(note, stacklevel=2)
    if loader is None:
        dataset = resolve_dataset(data, preprocess)
        first = dataset
    else:
        dataset = loader(preprocess)
        first = dataset[0]
    classes = first.num_classes
    if lm.num_classes != classes and model.random and model.num_classes is None:
        lm = load_model(source, num_classes=classes, model_args=model.model_args)
    problem = class_mismatch(lm.num_classes, first, source)
    if problem:
        raise ValueError(problem)
    return lm, dataset


class InputSizeError(ValueError):
    """The model cannot take the images at the size they were prepared at."""


_SHAPE_ERROR = re.compile(r"shape|size|dimension|channels", re.IGNORECASE)


def upscale_note(source: str, preprocess: Preprocess, data: DataOptions) -> Optional[str]:
    """What to tell when an image folder's images are smaller than the input size taken from
    timm's default (a model that names no preprocessing) and no ``input_size`` was given: they
    are enlarged, which costs time and is rarely what a model for small images expects."""
    if data.input_size is not None or uses_cifar(data.path, data.download):
        return None
    size = first_image_size(data.path)
    side = preprocess.input_size[-1]
    if size is None or min(size) >= side:
        return None
    return (f"{source} names no preprocessing, so the images of {data.path} ({size[0]}x{size[1]} px) are enlarged "
            f"to {side}x{side} px (timm's ImageNet default); if the model takes {min(size)} px images, pass "
            f"--input-size {min(size)} (input_size={min(size)}): smaller inputs also run faster")


def check_first_forward(model: nn.Module, data: TensorImageDataset, preprocess: Preprocess, label: str,
                        cifar: bool = False, folder: Any = None) -> None:
    """Run ``model`` (in eval mode, restored after) on the first image of ``data``, before any
    sweep or training, so that a model built for another input size fails here with a message
    naming the size used and the option that changes it, not deep inside a sweep.

    Raises:
        InputSizeError: the forward failed with a shape error (``RuntimeError`` naming shapes,
            sizes or dimensions); other errors propagate unchanged.
    """
    import torch

    x = data[0][0].unsqueeze(0)
    param = next(iter(model.parameters()), None)
    if param is not None:
        x = x.to(param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not _SHAPE_ERROR.search(first):
            raise
        c, h, w = x.shape[1:]
        if cifar:
            fix = ("CIFAR-10 images are used as they are, 32x32 (not resized): give a model that takes them, or an "
                   "image folder (--data DIR, one subfolder per class) with --input-size N (input_size=N)")
        else:
            native = first_image_size(folder) if folder is not None else None
            fix = ("if the model takes another input size, pass --input-size N (input_size=N)"
                   + (f", e.g. --input-size {min(native)} for the {native[0]}x{native[1]} px images of {folder}"
                      if native is not None and min(native) != h else ""))
        raise InputSizeError(f"{label} cannot take the images as prepared: its first forward, on one {c}x{h}x{w} "
                             f"image, failed ({first}). The images were prepared at {h}x{w} px ("
                             f"{'as they are' if cifar else _describe_size(preprocess)}); {fix}.") from None
    finally:
        model.train(was_training)


def _describe_size(preprocess: Preprocess) -> str:
    """``resized to 256 then centre-cropped to 224, bicubic`` of a ``Preprocess``."""
    side = preprocess.input_size[-1]
    if preprocess.crop_pct >= 1.0:
        return f"resized to {side}, {preprocess.interpolation}"
    return (f"resized to {int(side / preprocess.crop_pct)} then centre-cropped to {side} (crop {preprocess.crop_pct:g}), "
            f"{preprocess.interpolation}")


def resolve_dataset(data: DataOptions, preprocess: Preprocess) -> TensorImageDataset:
    """``resolve_data`` with ``data``'s options: an image folder decoded with ``preprocess``,
    or CIFAR-10 with ``data``'s explicit overrides applied (``cifar_overrides``)."""
    dataset = resolve_data(data.path, preprocess=preprocess, split=data.split, max_images=data.max_images,
                           on_corrupt=data.on_corrupt, workers=data.workers, download=data.download)
    return cifar_overrides(dataset, data) if uses_cifar(data.path, data.download) else dataset


def cifar_overrides(dataset: TensorImageDataset, data: DataOptions) -> TensorImageDataset:
    """CIFAR-10 images are used as they are (32x32, no crop): an explicit ``mean``/``std`` in
    ``data`` replaces the normalisation; an ``input_size`` other than 32 or a ``crop_pct``
    other than 1 cannot apply and is refused (it used to be ignored without a word).

    Raises:
        ValueError: ``input_size``/``crop_pct`` that would need resizing or cropping.
    """
    size = dataset.shape[-1]
    if data.input_size is not None and data.input_size != size:
        raise ValueError(f"--input-size {data.input_size} (input_size) does not apply to CIFAR-10: its images are "
                         f"{size}x{size} and are used as they are (not resized); leave it out, or use an image folder "
                         "(--data DIR with one subfolder per class), which is resized to the input size")
    if data.crop_pct is not None and data.crop_pct != 1.0:
        raise ValueError(f"--crop-pct {data.crop_pct:g} (crop_pct) does not apply to CIFAR-10: its images are used "
                         "whole (not cropped); leave it out, or use an image folder (--data DIR)")
    if data.mean is None and data.std is None:
        return dataset
    return TensorImageDataset(dataset.images, dataset.labels, mean=data.mean or dataset.mean,
                              std=data.std or dataset.std, num_classes=dataset.num_classes, classes=dataset.classes,
                              exact=dataset.exact)


def resolve_splits(data: DataOptions, preprocess: Preprocess, *, train_images: Optional[int] = None,
                   test_images: Optional[int] = None, holdout: float = HOLDOUT,
                   record: Optional[Dict[str, Any]] = None) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """``(train, test)`` for fine-tuning: CIFAR-10's splits; for an image folder with ``train``
    and ``val`` (or ``test``) subfolders, those; for a plain image folder, a deterministic
    stratified ``holdout`` share of it as the test split and the rest for training. Images are
    prepared as for evaluation (resize + centre crop; no augmentation). ``record``: a dict
    filled with how the data were split (``inputs_record``'s ``data``)."""
    from .data import DatasetKind, load_splits

    record = {} if record is None else record
    if data.path is None or is_cifar_root(data.path):
        record.update(kind="cifar10", layout="splits")
        train, test = load_splits(DatasetKind.CIFAR10, data.path, train_images=train_images, test_images=test_images)
        return cifar_overrides(train, data), cifar_overrides(test, data)
    root = Path(data.path).expanduser()
    record.update(kind="folder", path=str(root.resolve()))
    load = lambda p, n: load_image_folder(p, preprocess, max_images=n, on_corrupt=data.on_corrupt,  # noqa: E731
                                          workers=data.workers)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        record.update(layout="subfolders", test_folder=test_dir.name)
        return load(root / "train", train_images), load(test_dir, test_images)
    full = load(root, None)
    record.update(layout="holdout", holdout=holdout, images=len(full), labels_sha256=_labels_sha256(full))
    test_idx = stratified(full.labels.tolist(), max(1, int(round(holdout * len(full)))))
    rest = sorted(set(range(len(full))) - set(test_idx))
    train, test = full.subset(rest), full.subset(sorted(test_idx))
    if train_images is not None and train_images < len(train):
        train = train.subset(stratified(train.labels.tolist(), train_images))
    if test_images is not None and test_images < len(test):
        test = test.subset(stratified(test.labels.tolist(), test_images))
    return train, test



def _labels_sha256(data: TensorImageDataset) -> str:
    return hashlib.sha256(data.labels.cpu().numpy().tobytes()).hexdigest()


def effective_preprocess(preprocess: Optional[Preprocess], dataset: TensorImageDataset, cifar: bool) -> Preprocess:
    """The preprocessing ``dataset`` really has: CIFAR-10 is used as it is (its own size, no
    crop, the normalisation it carries), an image folder as ``preprocess`` decoded it."""
    if cifar or preprocess is None:
        return Preprocess(dataset.shape, dataset.mean, dataset.std, 1.0, "bilinear")
    return preprocess


def inputs_record(preprocess: Preprocess, split: Mapping[str, Any]) -> Dict[str, Any]:
    """What a checkpoint stores about its data (``Checkpoint.inputs``): the preprocessing and
    how the data were split (``resolve_splits``' ``record``)."""
    return {"preprocess": preprocess.to_dict(), "data": dict(split)}


def heldout_data(data: DataOptions, preprocess: Preprocess,
                 split: Mapping[str, Any]) -> Optional[TensorImageDataset]:
    """The images a checkpoint did not train on, when ``data`` is the image folder it was
    trained on (``split``: its ``inputs["data"]``): its held-out share or its ``val``/``test``
    subfolder, cut to ``data.max_images`` (stratified). ``None`` when ``data`` is other data.

    Raises:
        ValueError: the folder changed since training, so the held-out split cannot be rebuilt.
    """
    if split.get("kind") != "folder" or data.path is None or uses_cifar(data.path, data.download) \
            or str(Path(data.path).expanduser().resolve()) != split.get("path"):
        return None
    now: Dict[str, Any] = {}
    _, test = resolve_splits(data, preprocess, holdout=float(split.get("holdout", HOLDOUT)), record=now)
    if now.get("layout") != split.get("layout") or (
            now["layout"] == "holdout" and (now["images"], now["labels_sha256"]) != (split.get("images"),
                                                                                     split.get("labels_sha256"))):
        raise ValueError(f"{data.path} changed since the checkpoint was trained on it ({split.get('images')} images "
                         f"then, {now.get('images')} now, or other labels): the images it held out cannot be told "
                         "apart any more; evaluate on data it never saw (another folder), or train again")
    if data.max_images is not None and data.max_images < len(test):
        test = test.subset(stratified(test.labels.tolist(), data.max_images))
    return test
