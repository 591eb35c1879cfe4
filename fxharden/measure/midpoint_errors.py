"""Model-free crossing estimate of μ and bootstrap uncertainties of μ and of the crossing.

* :func:`crossing`: where the accuracy curve (per distinct σ, interpolated in ln σ when all
  σ > 0, else linearly) first falls through half way between its highest and lowest point.
* :func:`interpolation_error`: how far the crossing moves with a monotone cubic interpolant
  instead of the linear one (added in quadrature to its bootstrap error).
* :func:`parametric_replicas`: accuracy curves redrawn from ``N(acc, acc_err)``, for when
  the raw measurements behind the points are not at hand.
* :func:`percentile_interval`: the central 68 % interval of replica values (μ refitted on
  each replica by ``fxharden.measure.metrics``, or the crossing).

Replica curves from resampling networks and repeats (the measured spread itself) are built
by ``fxharden.measure.results``; they enter here as an array ``(replicas, points)``.
numpy/scipy only.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["BOOTSTRAP_SIZE", "INTERVAL", "crossing", "crossing_many", "interpolation_error", "distinct_means", "parametric_replicas",
           "percentile_interval"]

#: Replica curves drawn when the caller gives none (parametric bootstrap).
BOOTSTRAP_SIZE = 200
#: Central probability of the percentile intervals (one standard deviation of a Gaussian).
INTERVAL = 0.6827


def distinct_means(inv: np.ndarray, w: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Weighted mean accuracy per distinct σ (``inv`` from ``np.unique``); ``acc`` may be
    ``(points,)`` or ``(replicas, points)``."""
    acc = np.atleast_2d(acc)
    n_u = int(inv.max()) + 1
    out = np.zeros((acc.shape[0], n_u))
    for k in range(n_u):
        m = inv == k
        out[:, k] = (acc[:, m] * w[m]).sum(axis=1) / w[m].sum()
    return out


def crossing(s_u: np.ndarray, a_u: np.ndarray, level: Optional[float] = None) -> float:
    """First downward crossing of ``level`` (default ``(max + min) / 2``) by the interpolated
    curve (NaN: none).

    Args:
        s_u: distinct σ, ascending. a_u: accuracy per σ. level: the accuracy to cross.
    """
    hi, lo = float(np.max(a_u)), float(np.min(a_u))
    if not hi > lo:
        return math.nan
    half = 0.5 * (hi + lo) if level is None else float(level)
    use_log = bool(s_u[0] > 0)
    x = np.log(s_u) if use_log else s_u
    for i in range(len(a_u) - 1):
        if a_u[i] >= half > a_u[i + 1]:
            xc = x[i] + (a_u[i] - half) / (a_u[i] - a_u[i + 1]) * (x[i + 1] - x[i])
            return math.exp(xc) if use_log else float(xc)
    return math.nan


def interpolation_error(s_u: np.ndarray, a_u: np.ndarray, level: Optional[float] = None) -> float:
    """How much the crossing of ``level`` depends on the interpolant: ``|linear - monotone
    cubic (PCHIP)|`` inside the bracketing grid interval (0 if there is no second estimate)."""
    c = crossing(s_u, a_u, level)
    if not math.isfinite(c) or s_u.size < 3:
        return 0.0
    use_log = bool(s_u[0] > 0)
    x = np.log(s_u) if use_log else s_u
    xc = math.log(c) if use_log else c
    half = 0.5 * (float(np.max(a_u)) + float(np.min(a_u))) if level is None else float(level)
    i = int(np.clip(np.searchsorted(x, xc), 1, len(x) - 1))
    grid = np.linspace(x[i - 1], x[i], 257)
    try:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            below = np.flatnonzero(PchipInterpolator(x, a_u)(grid) < half)
    except ValueError:  # σ too close together for a cubic: no second estimate
        return 0.0
    if below.size == 0:
        return 0.0
    xp = float(grid[below[0]])
    diff = abs(math.exp(xp) - c) if use_log else abs(xp - c)
    return diff if math.isfinite(diff) else 0.0


def crossing_many(s_u: np.ndarray, curves: np.ndarray, level: Optional[float] = None) -> np.ndarray:
    """:func:`crossing` of each row of ``curves`` ``(replicas, distinct σ)``."""
    return np.array([crossing(s_u, row, level) for row in np.atleast_2d(curves)])


def parametric_replicas(acc: np.ndarray, err: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` curves ``acc + N(0, err)`` (clipped to [0, 1]), shape ``(n, points)``."""
    rng = np.random.default_rng(seed)
    return np.clip(acc[None, :] + err[None, :] * rng.standard_normal((n, acc.size)), 0.0, 1.0)


def percentile_interval(values: np.ndarray) -> Tuple[float, float]:
    """Central :data:`INTERVAL` percentile interval of the finite ``values`` (NaN if < 10)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size < 10:
        return math.nan, math.nan
    q = 50.0 * (1.0 - INTERVAL)
    lo, hi = np.percentile(v, [q, 100.0 - q])
    return float(lo), float(hi)

