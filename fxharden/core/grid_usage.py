"""How an activation quantizer uses its grid on calibration data (``GridUsage``), and the
warning calibration gives when a step erases or clips the signal. Re-exported by
``fxharden.core.quant``."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["GridUsage", "GridWarning", "FEW_LEVELS", "CLIP_FRACTION"]

FEW_LEVELS = 2
"""An activation quantizer whose data use at most this many levels of its grid, while the
data hold values between the levels, has erased the signal (a sigmoid output on the step 1.0
becomes 0 or 1): calibration warns (``GridUsage.problem``). ``GridUsage`` tells 1, 2 and
more levels apart, so this is 1 or 2."""

CLIP_FRACTION = 0.05
"""An activation quantizer that clips more than this fraction of its data (values beyond the
grid's ends, ``round(x/s)`` outside ``[qmin, qmax]``) has a step too small for the signal:
calibration warns (``GridUsage.problem``)."""

_OFF_GRID = 1e-3
"""``|x/s - round(x/s)|`` above this (in steps): a value the grid moves, not one it holds."""


class GridWarning(UserWarning):
    """Calibration data show an activation quantizer whose step erases or clips the signal
    (``GridUsage.problem``); filter this category to silence it."""


class GridUsage:
    """How an activation quantizer used its grid on the data it saw while recording (set by
    ``fxharden.calibrate_quantizers``): whether the values landed on 1, 2 or more levels, how
    many were clipped, the data's range, and whether any value lay between levels. NaNs are
    not counted. A batch costs two passes over the data (scaled, then its min and max) once
    more than two levels are seen and nothing is clipped."""

    def __init__(self, quant: Any) -> None:
        self.qmin, self.qmax = quant.qmin, quant.qmax
        self.values = self.clipped = 0
        self.levels: Optional[set] = set()  # the levels used, None once there are more than 2
        self.off_grid = False  # some value lay between levels
        self.lo, self.hi = math.inf, -math.inf
        self.step = float(quant.scale.detach())

    @torch.no_grad()
    def record(self, x: Tensor, scale: Tensor) -> None:
        """Count one batch ``x`` on the grid of step ``scale`` (the arithmetic of ``_quantize``)."""
        r = x.detach().float() * (1.0 / scale.detach().float())
        rmin, rmax = (float(v) for v in torch.aminmax(r)) if r.numel() else (math.nan, math.nan)
        if math.isnan(rmin) or math.isnan(rmax):
            r = r[~r.isnan()]
            if not r.numel():
                return
            rmin, rmax = (float(v) for v in torch.aminmax(r))
        self.step = float(scale)
        self.values += r.numel()
        self.lo, self.hi = min(self.lo, rmin * self.step), max(self.hi, rmax * self.step)
        q = None
        if round(rmin) < self.qmin or round(rmax) > self.qmax:  # round half to even, as torch.round
            q = r.round()
            self.clipped += int(((q < self.qmin) | (q > self.qmax)).sum())
        if self.levels is None:
            return
        q = r.round() if q is None else q
        lo, hi = (min(max(round(v), self.qmin), self.qmax) for v in (rmin, rmax))
        if hi - lo >= 2 and bool(((q > lo) & (q < hi)).any()):
            self.levels = None  # a third level between the extremes
            return
        self.levels |= {lo, hi}
        if len(self.levels) > 2:
            self.levels = None
        elif not self.off_grid:
            self.off_grid = bool(((r - q).abs() > _OFF_GRID).any())

    @property
    def seen(self) -> bool:
        """Whether any value was recorded."""
        return self.values > 0

    def problem(self) -> str:
        """What is wrong with the grid for these data, in words, or ``""``: at most
        ``FEW_LEVELS`` levels used while values lay between levels (the signal is erased), or
        more than ``CLIP_FRACTION`` of the values clipped (the step is too small)."""
        if not self.values:
            return ""
        s, found = self.step, []
        if self.levels is not None and len(self.levels) <= FEW_LEVELS and self.off_grid:
            found.append(f"uses {len(self.levels)} of its {self.qmax - self.qmin + 1} levels (step {s:.3g}; values "
                         f"in [{self.lo:.3g}, {self.hi:.3g}])")
        clipped = self.clipped / self.values
        if clipped > CLIP_FRACTION:
            found.append(f"clips {clipped:.1%} of its values (grid [{self.qmin * s:.3g}, {self.qmax * s:.3g}]; values "
                         f"in [{self.lo:.3g}, {self.hi:.3g}])")
        return " and ".join(found)
