"""What ``train`` needs besides the model and the data: ``TrainConfig`` (typed, validated on
construction) and its learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Dict, Mapping, Optional, Union

import torch

from ..zoo.options import Optimizer
from .options import Augment, NoiseSchedule, Precision

__all__ = ["LRSchedule", "TrainConfig"]


class LRSchedule(str, Enum):
    """How the learning rate changes over the run."""

    COSINE = "cosine"
    """Cosine decay from ``lr`` to 0 over all steps (the paper's schedule)."""
    CONSTANT = "constant"


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``train`` needs besides the model and the data."""

    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    """Initial learning rate (paper: 1e-3 LeNet-5 and fp32 VGG-11, 1e-4 quantized VGG-11, 1e-2 ResNet-18)."""
    optimizer: Optimizer = Optimizer.ADAM
    """Adam (the paper) or SGD with ``momentum``."""
    schedule: LRSchedule = LRSchedule.COSINE
    weight_decay: float = 0.0
    """L2 weight decay; never applied to learned quantization steps."""
    momentum: float = 0.9
    seed: int = 0
    """Seeds shuffling, dropout and training noise (the caller seeds the initial weights)."""
    device: Optional[str] = None
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None`` picks CUDA when available."""
    precision: Precision = Precision.AUTO
    train_sigma: Union[float, NoiseSchedule, Mapping[str, float]] = 0.0
    """Noise during training: a float, a ``NoiseSchedule`` or a ``{site: sigma}`` map; 0 = off.
    Stored as a ``NoiseSchedule`` (read it as ``config.noise``)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps in total (smoke tests, benchmarks)."""
    eval_batch_size: int = 512
    eval_each_epoch: bool = True
    """Measure clean test accuracy after every epoch (when test data is given)."""
    deterministic: Optional[bool] = None
    """``torch.use_deterministic_algorithms`` while training; ``None``: on CPU only."""
    augment: Augment = Augment.NONE
    """Data augmentation (``fxharden.training.feed``): none (the paper), or random crop + flip,
    done on the device for images held in memory."""
    check_exact: Optional[bool] = None
    """When ``train`` hardens a plain model itself: check on the first batch, before any step,
    that the hardened model without noise and quantization reproduces it
    (``fxharden.core.exactness``, one plain forward). ``None``: on unless
    ``FXHARDEN_CHECK_EXACT=0``. Not stored with the run."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"TrainConfig.max_steps must be >= 1 or None, got {self.max_steps}")
        for name, enum in (("optimizer", Optimizer), ("schedule", LRSchedule), ("precision", Precision),
                           ("augment", Augment)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise ValueError(f"TrainConfig.{name} must be one of {[e.value for e in enum]}, "
                                 f"got {getattr(self, name)!r}") from None
        sigma = self.train_sigma
        if isinstance(sigma, Mapping):
            sigma = NoiseSchedule(per_site=sigma)
        elif not isinstance(sigma, NoiseSchedule):
            sigma = NoiseSchedule(sigma=sigma)
        object.__setattr__(self, "train_sigma", sigma)
        if self.device is not None:
            torch.device(self.device)  # raises on a malformed device string

    @property
    def noise(self) -> NoiseSchedule:
        """``train_sigma`` as a ``NoiseSchedule``."""
        return self.train_sigma  # type: ignore[return-value]

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict (enums as their values)."""
        out = {**asdict(self), "optimizer": self.optimizer.value, "schedule": self.schedule.value,
               "precision": self.precision.value, "augment": self.augment.value}
        del out["check_exact"]  # how the run is checked, not what it trains
        out["train_sigma"] = {"sigma": self.noise.sigma, "ramp_epochs": self.noise.ramp_epochs,
                              "per_site": dict(self.noise.per_site)}
        return out
