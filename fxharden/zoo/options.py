"""The typed options of a model source, of the data and of training (what ``--pretrained``,
``--weights``, ``--data``, ``--input-size``, ``--optimizer`` ... become). Plain dataclasses and
enums: importing them is cheap (no torch), so the command line can parse with them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

if TYPE_CHECKING:
    from .preprocess import Preprocess

__all__ = ["OnCorrupt", "Optimizer", "ModelOptions", "DataOptions", "DATA_ENV", "data_env", "make_data_env_absolute"]

DATA_ENV = "FXHARDEN_DATA"
"""Environment variable naming the data root when no ``root`` argument is given."""


def data_env() -> Optional[Path]:
    """The folder ``$FXHARDEN_DATA`` names, as an absolute path (``~`` expanded, a relative
    value taken from the working directory of the moment), or ``None`` when it is unset or empty."""
    value = os.environ.get(DATA_ENV)
    return Path(os.path.abspath(Path(value).expanduser())) if value else None


def make_data_env_absolute() -> Optional[Path]:
    """Rewrite a relative ``$FXHARDEN_DATA`` (``../data``, as a user types it) as the absolute
    path it means from the current working directory, once, so that every process started
    later from another folder (workers, examples, subprocesses) finds the same data. Returns
    the folder, or ``None`` when the variable is unset or empty (left as it is)."""
    path = data_env()
    if path is not None:
        os.environ[DATA_ENV] = str(path)
    return path


class OnCorrupt(str, Enum):
    """What to do with an image file that cannot be decoded."""

    STOP = "stop"
    """Stop with an error naming the file."""
    SKIP = "skip"
    """Leave it out, with a warning naming it."""


class Optimizer(str, Enum):
    """Optimizer of a training run (``TrainConfig.optimizer`` and a recipe's default)."""

    ADAM = "adam"
    SGD = "sgd"


@dataclass(frozen=True)
class ModelOptions:
    """How a model source is loaded (``load_model``'s keywords)."""

    pretrained: bool = False
    """The library's pretrained weights (timm: hub/cache; torchvision: ``DEFAULT``)."""
    weights: Optional[str] = None
    """A local weights file, or a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``)."""
    num_classes: Optional[int] = None
    """Head size; ``None``: the weights' head, or the data's classes for random weights."""
    model_args: Dict[str, Any] = field(default_factory=dict)
    """Builder keyword arguments (``--model-arg key=value``)."""

    @property
    def random(self) -> bool:
        """No weights are loaded."""
        return not self.pretrained and self.weights is None


@dataclass(frozen=True)
class DataOptions:
    """Where the data come from and how they are prepared (overrides of the model's preprocessing)."""

    path: Optional[Union[str, os.PathLike]] = None
    """CIFAR-10 folder or image folder; ``None``: CIFAR-10 from ``$FXHARDEN_DATA``."""
    split: str = "test"
    max_images: Optional[int] = None
    on_corrupt: OnCorrupt = OnCorrupt.STOP
    workers: Optional[int] = None
    download: bool = False
    input_size: Optional[int] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    crop_pct: Optional[float] = None

    def preprocess(self, base: "Preprocess") -> "Preprocess":
        """``base`` (the model's) with this object's overrides applied."""
        return base.override(input_size=self.input_size, mean=self.mean, std=self.std, crop_pct=self.crop_pct)
