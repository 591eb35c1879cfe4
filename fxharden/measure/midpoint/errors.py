"""Model-free crossing estimate of μ and bootstrap uncertainties of μ and of the crossing.

* :func:`crossing`: where the accuracy curve (per distinct σ) first falls through half way
  between its plateaus. It is taken on the curve's :func:`monotone_envelope` (running
  median of three, then isotonic regression), with the half level from the envelope's end values (:func:`half_level`), so
  one bump or dip neither moves the level to its own height nor makes an early crossing;
  interpolation is in ln σ, a σ = 0 point (the clean accuracy) only adds a linear first segment.
* :func:`interpolation_error`: how far the crossing moves with a monotone cubic interpolant
  instead of the linear one (added in quadrature to its bootstrap error).
* :func:`parametric_replicas`: accuracy curves redrawn from ``N(acc, acc_err)``, for when
  the raw measurements behind the points are not at hand.
* :func:`image_sampling_shifts`: how a curve moves when its images are redrawn (the images
  are a sample of the data too), under a threshold model of per-image difficulty.
* :func:`percentile_interval`: the central 68 % interval of replica values (μ refitted on
  each replica by :func:`~.fit.fit_midpoint`, or the crossing).

Replica curves from resampling networks, repeats and images are built by
``fxharden.measure.results``; they enter here as an array ``(replicas, points)``.
numpy/scipy only.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["BOOTSTRAP_SIZE", "INTERVAL", "crossing", "crossing_many", "half_level", "interpolation_error",
           "distinct_means", "image_sampling_shifts", "monotone_envelope", "parametric_replicas", "percentile_interval"]

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


def monotone_envelope(a_u: np.ndarray) -> np.ndarray:
    """A falling curve through the points that no single point can bend: a running median of
    three (interior points; it removes any isolated bump or dip), then the non-increasing curve
    closest to that in least squares (isotonic regression by pool-adjacent-violators), which
    pools what is left of a rise with its neighbours. A curve that already falls is returned
    unchanged (the median of three falling values is the middle one)."""
    a_u = np.asarray(a_u, float)
    med = a_u.copy()
    if a_u.size >= 3:
        med[1:-1] = np.median(np.stack([a_u[:-2], a_u[1:-1], a_u[2:]]), axis=0)
    vals, sizes = [], []
    for a in med:
        vals.append(float(a))
        sizes.append(1)
        while len(vals) > 1 and vals[-2] < vals[-1]:  # a rise: pool the two blocks
            n = sizes[-2] + sizes[-1]
            vals[-2] = (vals[-2] * sizes[-2] + vals[-1] * sizes[-1]) / n
            sizes[-2] = n
            del vals[-1], sizes[-1]
    return np.repeat(vals, sizes)


def half_level(a_u: np.ndarray) -> float:
    """Half way between the plateaus of :func:`monotone_envelope`: its first (upper) and last
    (lower) value, which average a bump into its neighbours instead of taking it as the peak."""
    env = monotone_envelope(a_u)
    return 0.5 * (float(env[0]) + float(env[-1]))


def _interp(s0: float, s1: float, f: float) -> float:
    """The σ a fraction ``f`` of the way from ``s0`` to ``s1``: in ln σ when both are > 0,
    else (the segment from σ = 0) linear."""
    if s0 > 0:
        return math.exp(math.log(s0) + f * (math.log(s1) - math.log(s0)))
    return s0 + f * (s1 - s0)


def crossing(s_u: np.ndarray, a_u: np.ndarray, level: Optional[float] = None) -> float:
    """First downward crossing of ``level`` (default :func:`half_level`) by the monotone
    envelope of the curve, interpolated in ln σ between σ > 0 points (linearly only on a
    segment that starts at σ = 0); NaN: none.

    Args:
        s_u: distinct σ, ascending. a_u: accuracy per σ. level: the accuracy to cross.
    """
    env = monotone_envelope(a_u)
    if not env[0] > env[-1]:
        return math.nan
    half = half_level(a_u) if level is None else float(level)
    for i in range(len(env) - 1):
        if env[i] >= half > env[i + 1]:
            return _interp(float(s_u[i]), float(s_u[i + 1]), (env[i] - half) / (env[i] - env[i + 1]))
    return math.nan


def interpolation_error(s_u: np.ndarray, a_u: np.ndarray, level: Optional[float] = None) -> float:
    """How much the crossing of ``level`` depends on the interpolant: ``|linear - monotone
    cubic (PCHIP)|`` of the envelope inside the bracketing grid interval (0 if there is no
    second estimate, e.g. the crossing lies next to σ = 0)."""
    c = crossing(s_u, a_u, level)
    pos = s_u > 0
    if not math.isfinite(c) or int(pos.sum()) < 3 or c <= s_u[pos][0]:
        return 0.0
    x, env = np.log(s_u[pos]), monotone_envelope(a_u)[pos]
    xc = math.log(c)
    half = half_level(a_u) if level is None else float(level)
    i = int(np.clip(np.searchsorted(x, xc), 1, len(x) - 1))
    grid = np.linspace(x[i - 1], x[i], 257)
    try:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            below = np.flatnonzero(PchipInterpolator(x, env)(grid) < half)
    except ValueError:  # σ too close together for a cubic: no second estimate
        return 0.0
    if below.size == 0:
        return 0.0
    diff = abs(math.exp(float(grid[below[0]])) - c)
    return diff if math.isfinite(diff) else 0.0


def crossing_many(s_u: np.ndarray, curves: np.ndarray, level: Optional[float] = None) -> np.ndarray:
    """:func:`crossing` of each row of ``curves`` ``(replicas, distinct σ)``."""
    return np.array([crossing(s_u, row, level) for row in np.atleast_2d(curves)])


def parametric_replicas(acc: np.ndarray, err: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` curves ``acc + N(0, err)`` (clipped to [0, 1]), shape ``(n, points)``."""
    rng = np.random.default_rng(seed)
    return np.clip(acc[None, :] + err[None, :] * rng.standard_normal((n, acc.size)), 0.0, 1.0)


def image_sampling_shifts(acc: np.ndarray, total: int, share: np.ndarray, n: int,
                          rng: np.random.Generator) -> np.ndarray:
    """Shifts ``(n, points)`` of an accuracy curve when its ``total`` images are redrawn from
    the population they sample (the image term of the bootstrap).

    Threshold model: every image has a robustness rank ``U ~ Uniform(0, 1)`` and is classified
    correctly at a point of accuracy ``a`` when ``U < a`` — an image that is hard at one σ stays
    hard at every larger σ. Redrawing the images then gives the curve ``F_N(a)``, the empirical
    distribution function of ``N = total`` uniform ranks at each point's accuracy, the same
    ranks at every σ (so the shifts are correlated along the curve as the nesting implies);
    ``F_N`` at all points is drawn at once as a multinomial over the gaps between the sorted
    accuracies. Each shift ``F_N(a) - a`` (variance ``a (1 - a) / N``) is scaled by
    ``sqrt(share)``: the fraction of that Bernoulli variance which lies between images rather
    than between noise draws of the same image (``SweepPoint``-level estimate by
    ``fxharden.measure.results``; 1 for a deterministic evaluation such as the clean one).

    Args:
        acc: accuracy per point (fractions). total: images per point. share: per point, in [0, 1].
        n: replicas. rng: the generator to draw from.
    """
    a = np.clip(np.asarray(acc, float), 0.0, 1.0)
    order = np.argsort(a)
    gaps = np.diff(np.concatenate([[0.0], a[order], [1.0]]))
    counts = rng.multinomial(int(total), np.clip(gaps, 0.0, None) / max(gaps.sum(), 1e-300), size=n)
    below = np.cumsum(counts, axis=1)[:, :-1]  # images with U < a, per sorted point
    f_n = np.empty((n, a.size))
    f_n[:, order] = below / max(int(total), 1)
    return (f_n - a[None, :]) * np.sqrt(np.clip(np.asarray(share, float), 0.0, 1.0))[None, :]


def percentile_interval(values: np.ndarray) -> Tuple[float, float]:
    """Central :data:`INTERVAL` percentile interval of the finite ``values`` (NaN if < 10)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size < 10:
        return math.nan, math.nan
    q = 50.0 * (1.0 - INTERVAL)
    lo, hi = np.percentile(v, [q, 100.0 - q])
    return float(lo), float(hi)

