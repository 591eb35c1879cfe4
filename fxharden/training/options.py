"""Training choices as light enums and configs (no torch import), so the command line can
offer them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Mapping, Tuple

from ..core.config import check_sigma

__all__ = ["Precision", "Augment", "NoiseSchedule"]


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


@dataclass(frozen=True)
class NoiseSchedule:
    """Noise injected during training (noisy training, paper Sec. IV-B).

    Either one ``sigma`` for every noise site, or ``per_site`` sigmas (other sites get 0).
    With ``ramp_epochs = k > 0`` the strength grows linearly from 0 in epoch 0 to its full
    value in epoch k and later.
    """

    sigma: float = 0.0
    """Noise strength at every site."""
    ramp_epochs: int = 0
    """Epochs of the linear ramp from 0; 0 means full strength from the start."""
    per_site: Tuple[Tuple[str, float], ...] = ()
    """``(site name, sigma)`` pairs (or a dict); when given, ``sigma`` must be 0."""

    def __post_init__(self) -> None:
        check_sigma(self.sigma)
        items = self.per_site.items() if isinstance(self.per_site, Mapping) else self.per_site
        object.__setattr__(self, "per_site", tuple((str(s), check_sigma(v)) for s, v in items))
        if self.per_site and self.sigma:
            raise ValueError("NoiseSchedule: give either sigma (all sites) or per_site sigmas, not both")
        if self.ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be >= 0, got {self.ramp_epochs}")

    def factor(self, epoch: int) -> float:
        """Fraction of the full strength used in ``epoch`` (0-based)."""
        return 1.0 if self.ramp_epochs == 0 else min(1.0, epoch / self.ramp_epochs)
