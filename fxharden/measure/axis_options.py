"""The axes a sweep can vary (no torch import: the CLI builds ``--axis`` from it)."""

from __future__ import annotations

from enum import Enum

__all__ = ["Axis"]


class Axis(str, Enum):
    """What a sweep varies."""

    SIGMA = "sigma"
    """The activation noise σ at every noise site (``fxharden.sweep``)."""
    TIME = "time"
    """The time after programming, seconds: every weight-noise link whose model has a field
    ``t`` reads the device at that time. μ: the time at which accuracy has fallen half way
    from its value at the first time to chance."""
    WEIGHT_SIGMA = "weight-sigma"
    """The σ of one weight-noise link (``set_weight_noise(..., link=)``); μ as for σ sweeps."""
    OUTPUT_SIGMA = "output-sigma"
    """The activation σ at conv/linear outputs only (the output noise of an analog tile); the
    other sites keep their setting."""

    @property
    def label(self) -> str:
        """The axis label of plots and tables."""
        return {"time": "time after programming", "weight-sigma": "weight noise σ",
                "output-sigma": "output noise σ (conv/linear outputs)", "sigma": "noise strength σ"}[self.value]
