"""Training choices as light enums (no torch import), so the command line can offer them."""

from __future__ import annotations

from enum import Enum

__all__ = ["Precision", "Augment"]


class Precision(str, Enum):
    """Arithmetic of forward and backward passes. Quantizers always compute in float32."""

    AUTO = "auto"
    """bf16 autocast on CUDA, float32 elsewhere."""
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    """fp16 autocast with a gradient scaler (CUDA only)."""


class Augment(str, Enum):
    """Data augmentation while training (``fxharden.training.feed``)."""

    NONE = "none"
    """The images as they are (the paper: no regularization)."""
    CROP_FLIP = "crop_flip"
    """Random crop after padding by 4 pixels of black, random horizontal flip, on the device."""
