"""The light option types of a sweep: where the noise goes (:class:`SweepMode`), the unit of
its σ (:class:`Units`) and how its midpoint fits are made (:class:`FitOptions`).

No torch and no results file here: ``SweepConfig``, the σ-map file and the results all use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, Mapping, Optional

from .midpoint import BOOTSTRAP_SIZE, MidpointModel

__all__ = ["SweepMode", "Units", "FitOptions"]


class SweepMode(str, Enum):
    """Where the noise goes."""

    GLOBAL = "global"
    """The same sigma at every (selected) noise site at once; one μ for the network."""
    PER_LAYER = "per_layer"
    """Sigma at one site, 0 elsewhere ("walking noise"); one μ per site."""


class Units(str, Enum):
    """The unit of a sweep's σ (and so of its μ)."""

    ABSOLUTE = "absolute"
    """σ in the units of the signal at each site (the paper): noise std = σ."""
    RELATIVE = "relative"
    """σ relative to each site's clean RMS (``calibrate_noise``): noise std = σ · rms_site."""


@dataclass(frozen=True)
class FitOptions:
    """How the midpoint fits of a result are made (stored with it; ``refit`` uses them)."""

    model: MidpointModel = MidpointModel.LOG
    """The quoted model; the other one is fitted too, for comparison."""
    tie_a_max: bool = True
    """Tie a_max to the clean accuracy ± its error (False: a_max free, ≤ 1)."""
    systematic: float = 0.0
    """Relative systematic error of μ added in quadrature (0.02 = 2 %)."""
    n_boot: int = BOOTSTRAP_SIZE
    """Bootstrap replicas (networks, repeats and images resampled) for μ's percentile interval."""
    seed: int = 0
    """Seeds the bootstrap."""
    images: bool = True
    """Redraw the images in the bootstrap too (they are a sample of the data); False: only
    networks and repeats, as results written before this option were fitted."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", MidpointModel.parse(self.model))
        if not self.systematic >= 0:
            raise ValueError(f"systematic must be >= 0 (a fraction of mu), got {self.systematic}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict."""
        return {"model": self.model.value, "tie_a_max": self.tie_a_max, "systematic": self.systematic,
                "n_boot": self.n_boot, "seed": self.seed, "images": self.images}

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "FitOptions":
        """Inverse of ``to_dict``; missing keys take the defaults, except ``images``: files
        without it were fitted without the image term, and keep saying so (their stored
        fits are shown as they were; ``refit(FitOptions())`` adds it)."""
        data = dict(data or {})
        kw = {k: data[k] for k in ("model", "tie_a_max", "systematic", "n_boot", "seed", "images") if k in data}
        if data and "images" not in data:
            kw["images"] = False
        return cls(**kw)
