"""The preprocessing a model expects: input size, resize/crop, mean and std.

Taken from the model: timm's ``resolve_data_config`` (its ``pretrained_cfg``) for timm
models, the weights' ``transforms()`` for torchvision weights, CIFAR-10 values for the paper's
networks, timm's defaults (224, ImageNet mean/std, crop 0.875) for anything else; each field
can be overridden (``--input-size``, ``--mean``, ``--std``, ``--crop-pct``).

Images are decoded to uint8 (resize + centre crop with timm's ``create_transform``, without its
float conversion); the mean/std normalisation happens per batch on the device
(``TensorImageDataset``), so decoded images stay a quarter of the size of floats.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence, Tuple

from torch import nn

__all__ = ["Preprocess", "IMAGENET_MEAN", "IMAGENET_STD", "NAMED_NONE"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NAMED_NONE = "default: timm's 224 px ImageNet preprocessing (the model names none)"
"""The origin of ``Preprocess()`` for a model that names no preprocessing of its own."""


@dataclass(frozen=True)
class Preprocess:
    """How images are prepared for a model."""

    input_size: Tuple[int, int, int] = (3, 224, 224)
    """(channels, height, width) the model takes."""
    mean: Tuple[float, ...] = IMAGENET_MEAN
    """Per-channel mean in [0, 1] units, subtracted after scaling to [0, 1]."""
    std: Tuple[float, ...] = IMAGENET_STD
    """Per-channel standard deviation in [0, 1] units."""
    crop_pct: float = 0.875
    """Centre crop fraction: the shorter side is resized to ``size / crop_pct``, then cropped to ``size``."""
    interpolation: str = "bicubic"
    """Resize interpolation (``bilinear``, ``bicubic``, ``nearest``)."""

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"input_size must be (channels, height, width) of positive ints, got {self.input_size}")
        object.__setattr__(self, "input_size", size)
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != size[0]:
                raise ValueError(f"{name} needs one value per channel ({size[0]}), got {len(values)}: {values}")
            object.__setattr__(self, name, values)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if not 0 < float(self.crop_pct) <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @classmethod
    def for_model(cls, model: nn.Module, weights: Any = None) -> "Preprocess":
        """The preprocessing of ``model``: its torchvision ``weights`` (an enum member) when
        given, its timm ``pretrained_cfg`` when it has one, else timm's defaults (224x224,
        ImageNet mean/std, crop 0.875, bicubic)."""
        if weights is not None:
            t = weights.transforms()
            crop = t.crop_size[0]
            return cls((3, crop, crop), tuple(t.mean), tuple(t.std), crop / t.resize_size[0],
                       str(getattr(t.interpolation, "value", t.interpolation)))
        if not getattr(model, "pretrained_cfg", None):
            return cls()
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        return cls(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]), float(cfg["crop_pct"]),
                   str(cfg["interpolation"]))

    def override(self, input_size: Optional[int | Sequence[int]] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, crop_pct: Optional[float] = None) -> "Preprocess":
        """A copy with the given fields replaced (``input_size`` an int means a square image)."""
        changes: dict = {}
        if input_size is not None:
            hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)[-2:]
            changes["input_size"] = (self.input_size[0], *hw)
        if mean is not None:
            changes["mean"] = tuple(mean)
        if std is not None:
            changes["std"] = tuple(std)
        if crop_pct is not None:
            changes["crop_pct"] = crop_pct
        return replace(self, **changes)

    def transform(self) -> Callable:
        """PIL image -> uint8 tensor (C, H, W): timm's ``create_transform`` resize and centre
        crop (evaluation mode), ending in ``PILToTensor`` instead of float conversion and
        normalisation."""
        from timm.data import create_transform
        from torchvision import transforms as T

        timm_t = create_transform(input_size=self.input_size, is_training=False, interpolation=self.interpolation,
                                  mean=self.mean, std=self.std, crop_pct=self.crop_pct, crop_mode="center")
        geometric = [t for t in timm_t.transforms if isinstance(t, (T.Resize, T.CenterCrop))]
        return T.Compose(geometric + [T.PILToTensor()])

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "crop_pct": self.crop_pct, "interpolation": self.interpolation}
