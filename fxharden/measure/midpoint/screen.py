"""Input checks and data-level verdicts of ``fit_midpoint``, before any model is fitted.

:func:`prepare` validates and sorts the points and averages repeated sigmas;
:func:`screen` applies status rules 1-5 (too few sigmas, at chance, no drop, no falling
trend, a partial drop), each message stating the measured values behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional, Tuple

import numpy as np
from scipy.stats import chi2 as chi2_dist
from scipy.stats import f as f_dist

from .result import AT_CHANCE_TOL, CONST_P_VALUE, ERR_FLOOR, SIGNIFICANCE, FitStatus

__all__ = ["Points", "prepare", "screen", "f_test_drop"]


@dataclass(frozen=True)
class Points:
    """Sorted points and their per-distinct-σ summary."""

    s: np.ndarray  #: σ per point, ascending
    a: np.ndarray  #: accuracy per point
    e: np.ndarray  #: 1-σ error per point (the scatter, for an unweighted fit)
    order: np.ndarray  #: the sort order applied to the input
    inv: np.ndarray  #: index of each point's distinct σ
    s_u: np.ndarray  #: distinct σ
    a_u: np.ndarray  #: weighted mean accuracy per distinct σ
    e_u: np.ndarray  #: its error
    weighted: bool  #: errors were given (absolute)
    notes: Tuple[str, ...]  #: remarks about the errors, for the message

    @property
    def n_raw(self) -> int:
        """Number of points."""
        return int(self.s.size)

    @property
    def w(self) -> np.ndarray:
        """Weights 1/e² per point."""
        return 1.0 / self.e**2

    def with_error(self, scale: float) -> "Points":
        """The same points with every error set to ``scale`` (unweighted fits)."""
        e = np.full_like(self.a, scale)
        counts = np.bincount(self.inv)
        return replace(self, e=e, e_u=scale / np.sqrt(counts))


def _vector(name: str, x: Any) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers, got {x!r}") from exc
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf at index {np.flatnonzero(~np.isfinite(a)).tolist()}")
    return a


def prepare(sigmas: Any, acc: Any, acc_err: Any) -> Points:
    """Validate, sort and summarise the points (see ``fit_midpoint`` for the rules).

    Raises:
        ValueError: empty or non-1-D input, different lengths, NaN/inf, negative sigmas or
            errors, accuracies outside [0, 1].
    """
    s = _vector("sigmas", sigmas)
    a = _vector("acc", acc)
    if s.size == 0:
        raise ValueError("sigmas and acc are empty")
    if a.size != s.size:
        raise ValueError(f"sigmas has {s.size} values but acc has {a.size}")
    if np.any(s < 0):
        raise ValueError(f"sigmas must be >= 0, got {s[s < 0].tolist()}")
    if np.any((a < 0) | (a > 1)):
        raise ValueError(f"acc must be fractions in [0, 1] (not percent); got min {a.min()}, max {a.max()}")
    notes = []
    weighted = acc_err is not None
    if weighted:
        e = _vector("acc_err", acc_err)
        if e.size != s.size:
            raise ValueError(f"acc_err has {e.size} values but acc has {a.size}")
        if np.any(e < 0):
            raise ValueError("acc_err must be >= 0")
        if not np.any(e > 0):
            weighted = False
            notes.append("all acc_err are zero: treated as unknown.")
        else:
            floor = max(ERR_FLOOR, float(e[e > 0].min()))
            if np.any(e < floor):
                notes.append(f"{int(np.sum(e < floor))} acc_err below {floor:.3g} raised to it.")
            e = np.maximum(e, floor)
    if not weighted:
        notes.append("unweighted fit (no acc_err): errors estimated from the scatter.")
        e = np.full_like(a, ERR_FLOOR)
    order = np.argsort(s, kind="stable")
    s, a, e = s[order], a[order], e[order]
    s_u, inv = np.unique(s, return_inverse=True)
    w = 1.0 / e**2
    a_u = np.bincount(inv, w * a) / np.bincount(inv, w)
    e_u = 1.0 / np.sqrt(np.bincount(inv, w))
    return Points(s, a, e, order, inv, s_u, a_u, e_u, weighted, tuple(notes))


def screen(p: Points, chance: Optional[float]) -> Optional[Tuple[FitStatus, str]]:
    """Status rules 1-5 of ``fit_midpoint``: a verdict, or None when a fit should be tried."""
    sig_max = float(p.s_u[-1])
    if p.s_u.size < 2:
        return FitStatus.FIT_FAILED, "fewer than 2 distinct sigmas: nothing to fit."
    a_u, e_u = p.a_u, p.e_u
    i_hi, i_lo = int(np.argmax(a_u)), int(np.argmin(a_u))
    a_hi, a_lo = float(a_u[i_hi]), float(a_u[i_lo])
    if chance is not None and a_hi - chance <= max(SIGNIFICANCE * e_u[i_hi], AT_CHANCE_TOL * (1 - chance)):
        return FitStatus.AT_CHANCE, f"peak accuracy {a_hi:.4g} is at chance ({chance:.4g}): nothing to fit."
    a_mean = float(np.sum(a_u / e_u**2) / np.sum(1.0 / e_u**2))
    p_const = float(chi2_dist.sf(np.sum(((a_u - a_mean) / e_u) ** 2), a_u.size - 1))
    if a_hi - a_lo <= SIGNIFICANCE * math.hypot(e_u[i_hi], e_u[i_lo]) or p_const > CONST_P_VALUE:
        hint = "" if chance is not None else " (if this level is chance, pass chance=)"
        return FitStatus.BEYOND_GRID, (f"accuracy stays within {a_lo:.4g}..{a_hi:.4g}, no drop beyond noise{hint}: "
                                       f"mu > largest sigma {sig_max:.4g}.")
    half = 0.5 * (a_hi + a_lo)
    labels = [1 if d > 0 else -1 for d, e in zip(a_u - half, e_u) if abs(d) > SIGNIFICANCE * e]
    changes = sum(x != y for x, y in zip(labels, labels[1:]))
    if len(labels) >= 2 and (labels[0] < 0 or changes > 1):
        how = "it rises" if labels[0] < 0 else f"{changes} significant crossings of the half level {half:.4g}"
        return FitStatus.FLAT, f"accuracy varies beyond its errors without a falling trend ({how})."
    if chance is not None and a_lo - 0.5 * (a_hi + chance) > SIGNIFICANCE * e_u[i_lo]:
        return FitStatus.BEYOND_GRID, (f"lowest accuracy {a_lo:.4g} stays above half way to chance "
                                       f"({0.5 * (a_hi + chance):.4g}): mu > largest sigma {sig_max:.4g}.")
    return None


def f_test_drop(p: Points, rss1: float, dof: int, k: int) -> float:
    """p-value of an unweighted fit with ``k`` parameters (residual sum ``rss1``) against a constant."""
    rss0 = float(np.sum((p.a - p.a.mean()) ** 2))
    if dof <= 0:
        return 1.0
    f_stat = (rss0 - rss1) / (k - 1) / (rss1 / dof) if rss1 > 0 else math.inf
    return float(f_dist.sf(f_stat, k - 1, dof))
