"""Midpoint noise level μ: fit of the paper's Eq. 1 to accuracy-versus-sigma points.

Wang, Borras, Klein, Fröning, *On Hardening DNNs against Noisy Computations*, Sec. III-A:

    F(σ) = 2 δa / (1 + exp((σ - μ) / s)) + a_min        (Eq. 1)

``F(μ) = δa + a_min`` is half way between ``a_min`` and ``a_max = 2 δa + a_min`` (the plateau
for ``μ >> s``), so μ is the noise level at which accuracy has fallen half way (Eq. 2).

Accuracies are **fractions in [0, 1]** (not percent). numpy/scipy only: no torch import.

Beside the fit, :func:`fit_midpoint` computes a model-free estimate (``mu_crossing``) and
sorts the data into a :class:`FitStatus`; anything but ``OK`` means "do not quote ``mu``".
Data problems never raise: only malformed input (shapes, NaN, negative sigma) does.
"""

from __future__ import annotations

import enum
import math
import warnings
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit
from scipy.stats import chi2 as chi2_dist
from scipy.stats import f as f_dist

__all__ = [
    "AT_CHANCE_TOL", "CONST_P_VALUE", "ERR_FLOOR", "MIN_PLATEAU_POINTS", "MIN_PLATEAU_SLOPES", "MIN_POINTS",
    "MIN_UNWEIGHTED_DOF", "POOR_FIT_CHI2_RED", "SIGNIFICANCE",
    "FitStatus", "MidpointFit", "fit_midpoint", "midpoint_model",
]

ArrayLike = Union[Sequence[float], np.ndarray]

#: Smallest accuracy uncertainty used in the weights (0.1 percentage point). Uncertainties
#: below ``max(ERR_FLOOR, smallest positive acc_err)`` (zeros included) are raised to it.
ERR_FLOOR = 1e-3
#: Number of standard errors that makes a difference significant (drops, labels, DISAGREES).
SIGNIFICANCE = 3.0
#: A curve consistent with a constant (χ² p-value above this) has no significant drop.
CONST_P_VALUE = 1e-3
#: A curve whose peak lies within ``max(3 err, AT_CHANCE_TOL * (1 - chance))`` of chance: AT_CHANCE.
AT_CHANCE_TOL = 0.05
#: Weighted fits with a reduced χ² above this are POOR_FIT.
POOR_FIT_CHI2_RED = 5.0
#: A plateau of the fitted curve is on the grid if at least MIN_PLATEAU_POINTS distinct
#: sigmas lie MIN_PLATEAU_SLOPES slopes or more below (upper) / above (lower) μ.
MIN_PLATEAU_SLOPES = 1.5
MIN_PLATEAU_POINTS = 2
#: Fewest degrees of freedom (points - parameters) of an unweighted fit (acc_err=None).
MIN_UNWEIGHTED_DOF = 3
#: Fewest distinct sigmas for a fit (fewer: FIT_FAILED with only the crossing estimate).
MIN_POINTS = 4


class FitStatus(str, enum.Enum):
    """Outcome of :func:`fit_midpoint`; only ``OK`` means μ can be quoted."""

    OK = "ok"  #: fit and crossing agree, χ² acceptable
    BEYOND_GRID = "beyond_grid"  #: the curve never falls half way: μ > largest sigma
    AT_CHANCE = "at_chance"  #: accuracy is at chance from the start: no drop to fit
    FLAT = "flat"  #: points scatter beyond their errors but do not fall (no trend)
    FIT_FAILED = "fit_failed"  #: too few points, optimizer/covariance failed, or a plateau missing
    DISAGREES = "disagrees"  #: fit μ and crossing differ by > 3 combined errors
    POOR_FIT = "poor_fit"  #: reduced χ² > POOR_FIT_CHI2_RED (weighted fits only)


_NAMES = ("mu", "slope", "delta_a", "a_min")


def midpoint_model(sigmas: ArrayLike, mu: float, slope: float, delta_a: float, a_min: float) -> np.ndarray:
    """Eq. 1, ``2 δa / (1 + exp((σ - μ) / s)) + a_min``, overflow-free.

    Args:
        sigmas: noise levels σ.
        mu: midpoint μ. slope: width s > 0. delta_a: half the drop δa. a_min: lower plateau.

    Returns:
        ``F(σ)`` as a float array of the shape of ``sigmas``.
    """
    x = np.asarray(sigmas, dtype=float)
    return 2.0 * delta_a * expit(-(x - mu) / slope) + a_min


@dataclass(frozen=True)
class MidpointFit:
    """Result of :func:`fit_midpoint`. Fit fields are NaN where no fit applies (see status)."""

    mu: float  #: fitted midpoint μ; NaN unless a fit was kept (see fit_midpoint's status rules)
    mu_err: float  #: 1-σ error of μ (covariance; ≥ grid step/√12 if s < grid step/8)
    slope: float  #: fitted width s of the logistic
    slope_err: float  #: 1-σ error of s
    delta_a: float  #: fitted δa (half the total drop)
    delta_a_err: float  #: 1-σ error of δa
    a_min: float  #: fitted (or, with fix_a_min, fixed = chance) lower plateau
    a_min_err: float  #: 1-σ error of a_min (0 when fixed)
    cov: tuple  #: covariance of the free parameters ``param_names`` (tuple of tuples)
    param_names: tuple  #: names of the free parameters, in ``cov`` order
    chi2: float  #: Σ residual²/err² (with acc_err=None: Σ residual², err = 1)
    dof: int  #: number of points minus number of free parameters
    chi2_red: float  #: chi2 / dof (NaN if dof = 0); unweighted: mean squared residual
    mu_crossing: float  #: model-free μ: first downward crossing of the half level (NaN: none)
    mu_crossing_err: float  #: error of mu_crossing: width of the grid interval that holds it
    mu_lower: float  #: for BEYOND_GRID the largest sigma (μ exceeds it), else NaN
    status: FitStatus  #: quality verdict
    message: str  #: human-readable explanation (notes about weights, bounds, verdict)
    weighted: bool  #: True if acc_err was used (absolute_sigma), False for an unweighted fit
    chance: float  #: chance accuracy passed in (NaN if none)
    fixed_a_min: bool  #: True if a_min was fixed at chance
    n_points: int  #: number of (sigma, accuracy) points

    @property
    def ok(self) -> bool:
        """True only for status OK: μ is trustworthy."""
        return self.status is FitStatus.OK

    @property
    def a_max(self) -> float:
        """Upper plateau ``a_min + 2 δa`` of the fitted curve."""
        return self.a_min + 2.0 * self.delta_a

    @property
    def cov_matrix(self) -> np.ndarray:
        """``cov`` as a float numpy array."""
        return np.array(self.cov, dtype=float)

    def curve(self, sigmas: ArrayLike) -> np.ndarray:
        """Evaluate the fitted Eq. 1 at ``sigmas``; all NaN if there is no fitted curve."""
        return midpoint_model(sigmas, self.mu, self.slope, self.delta_a, self.a_min)

    def to_dict(self) -> dict:
        """JSON-ready dict of all fields: NaN → None, status → its value, plus derived ``ok``."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update({k: _enc(d[k]) for k in _FLOAT_FIELDS})
        d.update(cov=[[_enc(x) for x in row] for row in self.cov], param_names=list(self.param_names),
                 status=self.status.value, dof=int(self.dof), n_points=int(self.n_points),
                 weighted=bool(self.weighted), fixed_a_min=bool(self.fixed_a_min), ok=self.ok)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MidpointFit":
        """Inverse of :meth:`to_dict` (None → NaN; the derived ``ok`` is ignored).

        Raises:
            KeyError: a field is missing. ValueError: an unknown status.
        """
        kw = {f.name: d[f.name] for f in fields(cls)}
        kw.update({k: _dec(kw[k]) for k in _FLOAT_FIELDS})
        kw.update(cov=tuple(tuple(_dec(x) for x in row) for row in kw["cov"]), param_names=tuple(kw["param_names"]),
                  status=FitStatus(kw["status"]), dof=int(kw["dof"]), n_points=int(kw["n_points"]),
                  weighted=bool(kw["weighted"]), fixed_a_min=bool(kw["fixed_a_min"]))
        return cls(**kw)


_FLOAT_FIELDS = tuple(f.name for f in fields(MidpointFit) if f.type == "float")


def _enc(x: Any) -> Optional[float]:
    x = float(x)
    return None if math.isnan(x) else x


def _dec(x: Any) -> float:
    return math.nan if x is None else float(x)


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


def _crossing(s: np.ndarray, a: np.ndarray) -> tuple:
    """First downward crossing of (max+min)/2 by the interpolated curve, and its grid step."""
    hi, lo = float(a.max()), float(a.min())
    if not hi > lo:
        return math.nan, math.nan
    half = 0.5 * (hi + lo)
    use_log = bool(s[0] > 0)
    x = np.log(s) if use_log else s
    for i in range(len(a) - 1):
        if a[i] >= half > a[i + 1]:
            xc = x[i] + (a[i] - half) / (a[i] - a[i + 1]) * (x[i + 1] - x[i])
            return (math.exp(xc) if use_log else float(xc)), float(s[i + 1] - s[i])
    return math.nan, math.nan


def fit_midpoint(
    sigmas: ArrayLike,
    acc: ArrayLike,
    acc_err: Optional[ArrayLike] = None,
    *,
    chance: Optional[float] = None,
    fix_a_min: bool = False,
) -> MidpointFit:
    """Fit Eq. 1 to accuracy-versus-sigma points and estimate the midpoint noise level μ.

    Weighted least squares (``curve_fit``, ``sigma=acc_err``, ``absolute_sigma=True``) with
    bounds ``0 < μ ≤ 10 σ_max``, ``0.01·(smallest sigma step) ≤ s ≤ 10 σ_max``,
    ``0 < δa ≤ min(max(acc) - min(acc), 0.5)``, ``0 ≤ a_min ≤ max(acc)``, started from
    the crossing estimate (μ) with three slopes (μ/4, μ/10, grid step at the crossing);
    the start with the lowest χ² wins. The bounds keep the fit finite on curves that are
    not logistic in σ (noisy-training curves that fall from the smallest σ on).

    Model-free estimate: per distinct sigma the (weighted) mean accuracy is interpolated,
    in log σ if all σ > 0, else linearly; ``mu_crossing`` is where it first falls through
    half way between its max and min; its error is one grid step (the bracketing interval).

    Uncertainties: ``acc_err=None`` (or all zeros) → unweighted fit whose errors come from
    the residual scatter (``absolute_sigma=False``); the per-point error used by the checks
    below is then the rms residual of that fit (at least ERR_FLOOR), and POOR_FIT is not
    assessed. Given errors below ``max(ERR_FLOOR, smallest positive acc_err)`` (zeros
    included) are raised to that floor, so nothing is divided by zero.

    Status, decided by the first rule that applies ("significant" = > SIGNIFICANCE errors):
      1. FIT_FAILED: fewer than 2 distinct sigmas.
      2. AT_CHANCE (needs ``chance``): peak within ``max(3 err, AT_CHANCE_TOL·(1-chance))`` of it.
      3. BEYOND_GRID: no significant drop (max - min ≤ 3 combined errors, or the points are
         consistent with a constant: χ² p-value > CONST_P_VALUE).
      4. FLAT: the points significantly above / below the half level are not one run of
         "above" followed by one run of "below" (a rising or zig-zag curve).
      5. BEYOND_GRID (needs ``chance``): the lowest accuracy stays significantly above
         ``(peak + chance) / 2``.
      6. FIT_FAILED: fewer than MIN_POINTS distinct sigmas, or unweighted with fewer than
         MIN_UNWEIGHTED_DOF degrees of freedom; optimizer error or non-finite covariance.
      7. BEYOND_GRID: unweighted and the fit is no better than a constant (F-test p >
         CONST_P_VALUE); or the fitted μ lies beyond the largest σ (value in ``message``).
      8. DISAGREES: ``|mu - mu_crossing| > 3·sqrt(mu_err² + mu_crossing_err²)`` (both finite).
      9. FIT_FAILED: a plateau is missing: fewer than MIN_PLATEAU_POINTS distinct σ lie
         MIN_PLATEAU_SLOPES slopes below μ (upper) or, with a free a_min, above μ (lower).
         No upper plateau: a_max and μ are extrapolations below the smallest σ (typical of
         noisy-training curves, falling from the smallest σ on: the fit uses the logistic's
         tail; use ``mu_crossing``). No lower plateau: a_min is an extrapolation (a partial
         drop; μ may lie beyond the grid).
      10. POOR_FIT: weighted and ``chi2_red > POOR_FIT_CHI2_RED`` (errors are not rescaled).
      11. OK.
    BEYOND_GRID gives ``mu = nan`` and ``mu_lower = largest σ``. DISAGREES, POOR_FIT and
    rule-9 FIT_FAILED keep the fitted values for inspection; the others leave them NaN.
    ``mu_crossing`` is filled in whenever it exists.

    Args:
        sigmas: noise levels, ≥ 0, any order, repeats allowed.
        acc: accuracies as fractions in [0, 1], one per sigma.
        acc_err: 1-σ uncertainties of ``acc`` (≥ 0) or None (unknown).
        chance: chance accuracy in [0, 1) (e.g. 0.1 for CIFAR-10); enables AT_CHANCE and
            the "falls half way to chance" check.
        fix_a_min: fix a_min at ``chance`` (3 free parameters: μ, s, δa).

    Returns:
        A :class:`MidpointFit`; check ``.ok`` / ``.status`` before using ``.mu``.

    Raises:
        ValueError: empty or non-1-D input, different lengths, NaN/inf, negative sigmas or
            errors, accuracies outside [0, 1], chance outside [0, 1), or fix_a_min without chance.
    """
    s_raw = _vector("sigmas", sigmas)
    a_raw = _vector("acc", acc)
    if s_raw.size == 0:
        raise ValueError("sigmas and acc are empty")
    if a_raw.size != s_raw.size:
        raise ValueError(f"sigmas has {s_raw.size} values but acc has {a_raw.size}")
    if np.any(s_raw < 0):
        raise ValueError(f"sigmas must be >= 0, got {s_raw[s_raw < 0].tolist()}")
    if np.any((a_raw < 0) | (a_raw > 1)):
        raise ValueError(f"acc must be fractions in [0, 1] (not percent); got min {a_raw.min()}, max {a_raw.max()}")
    if chance is not None and not 0.0 <= float(chance) < 1.0:
        raise ValueError(f"chance must be in [0, 1), got {chance}")
    if fix_a_min and chance is None:
        raise ValueError("fix_a_min=True needs chance= (the value a_min is fixed at)")
    notes = []
    weighted = acc_err is not None
    if weighted:
        e_raw = _vector("acc_err", acc_err)
        if e_raw.size != s_raw.size:
            raise ValueError(f"acc_err has {e_raw.size} values but acc has {a_raw.size}")
        if np.any(e_raw < 0):
            raise ValueError("acc_err must be >= 0")
        if not np.any(e_raw > 0):
            weighted = False
            notes.append("all acc_err are zero: treated as unknown.")
        else:
            floor = max(ERR_FLOOR, float(e_raw[e_raw > 0].min()))
            if np.any(e_raw < floor):
                notes.append(f"{int(np.sum(e_raw < floor))} acc_err below {floor:.3g} raised to it.")
            e_raw = np.maximum(e_raw, floor)
    if not weighted:
        notes.append("unweighted fit (no acc_err): errors estimated from the scatter.")
        e_raw = np.ones_like(a_raw)

    order = np.argsort(s_raw, kind="stable")
    s_raw, a_raw, e_raw = s_raw[order], a_raw[order], e_raw[order]
    # per distinct sigma: weighted mean accuracy and its error
    s_u, inv = np.unique(s_raw, return_inverse=True)
    w = 1.0 / e_raw**2
    a_u = np.bincount(inv, w * a_raw) / np.bincount(inv, w)
    e_u = 1.0 / np.sqrt(np.bincount(inv, w))
    mu_c, mu_c_err = _crossing(s_u, a_u) if s_u.size >= 2 else (math.nan, math.nan)
    sig_max = float(s_u[-1])
    chance_f = math.nan if chance is None else float(chance)
    free = _NAMES[:3] if fix_a_min else _NAMES
    fit: Union[dict, str, None] = None
    if not weighted:  # per-point noise for the checks: rms residual of the unweighted fit
        scale = ERR_FLOOR
        fittable = a_u.max() - a_u.min() > SIGNIFICANCE * ERR_FLOOR  # else flat: rule 3 applies
        if fittable and s_u.size >= MIN_POINTS and a_raw.size >= len(free) + MIN_UNWEIGHTED_DOF:
            fit = _fit(s_raw, a_raw, e_raw, s_u, a_u, mu_c, mu_c_err, weighted, fix_a_min, chance_f)
            if isinstance(fit, dict):
                scale = max(scale, math.sqrt(fit["chi2"] / fit["dof"]))
        e_u = scale / np.sqrt(np.bincount(inv))
    nan4 = tuple(tuple(math.nan for _ in free) for _ in free)
    base = dict(
        cov=nan4, param_names=free, chi2=math.nan, dof=int(a_raw.size - len(free)), chi2_red=math.nan,
        mu_crossing=mu_c, mu_crossing_err=mu_c_err, weighted=weighted, chance=chance_f,
        fixed_a_min=bool(fix_a_min), n_points=int(a_raw.size),
    )

    def verdict(status: FitStatus, text: str, fit: Optional[dict] = None) -> MidpointFit:
        vals = dict.fromkeys(("mu", "mu_err", "slope", "slope_err", "delta_a", "delta_a_err",
                              "a_min", "a_min_err"), math.nan)
        vals.update(base)
        if fit is not None and status is not FitStatus.BEYOND_GRID:
            vals.update(fit)
        vals["mu_lower"] = sig_max if status is FitStatus.BEYOND_GRID else math.nan
        return MidpointFit(status=status, message=" ".join([text] + notes), **vals)

    if s_u.size < 2:
        return verdict(FitStatus.FIT_FAILED, "fewer than 2 distinct sigmas: nothing to fit.")
    i_hi, i_lo = int(np.argmax(a_u)), int(np.argmin(a_u))
    a_hi, a_lo = float(a_u[i_hi]), float(a_u[i_lo])
    if chance is not None and a_hi - chance_f <= max(SIGNIFICANCE * e_u[i_hi], AT_CHANCE_TOL * (1 - chance_f)):
        return verdict(FitStatus.AT_CHANCE, f"peak accuracy {a_hi:.4g} is at chance ({chance_f:.4g}): nothing to fit.")
    a_mean = float(np.sum(a_u / e_u**2) / np.sum(1.0 / e_u**2))
    p_const = float(chi2_dist.sf(np.sum(((a_u - a_mean) / e_u) ** 2), a_u.size - 1))
    if a_hi - a_lo <= SIGNIFICANCE * math.hypot(e_u[i_hi], e_u[i_lo]) or p_const > CONST_P_VALUE:
        hint = "" if chance is not None else " (if this level is chance, pass chance=)"
        return verdict(FitStatus.BEYOND_GRID,
                       f"accuracy never falls beyond noise{hint}: mu > largest sigma {sig_max:.4g}.")
    half = 0.5 * (a_hi + a_lo)
    labels = [1 if d > 0 else -1 for d, e in zip(a_u - half, e_u) if abs(d) > SIGNIFICANCE * e]
    changes = sum(x != y for x, y in zip(labels, labels[1:]))
    if len(labels) >= 2 and (labels[0] < 0 or changes > 1):
        how = "it rises" if labels[0] < 0 else f"{changes} significant crossings of the half level {half:.4g}"
        return verdict(FitStatus.FLAT, f"accuracy varies beyond its errors without a falling trend ({how}).")
    if chance is not None and a_lo - 0.5 * (a_hi + chance_f) > SIGNIFICANCE * e_u[i_lo]:
        return verdict(FitStatus.BEYOND_GRID, f"lowest accuracy {a_lo:.4g} stays above half way to chance "
                       f"({0.5 * (a_hi + chance_f):.4g}): mu > largest sigma {sig_max:.4g}.")
    if s_u.size < MIN_POINTS:
        return verdict(FitStatus.FIT_FAILED, f"only {s_u.size} distinct sigmas (< {MIN_POINTS}): "
                       f"no fit; see mu_crossing = {mu_c:.4g}.")
    if not weighted and base["dof"] < MIN_UNWEIGHTED_DOF:
        return verdict(FitStatus.FIT_FAILED, f"an unweighted fit needs >= {MIN_UNWEIGHTED_DOF} more points than "
                       f"parameters to estimate its errors; pass acc_err or see mu_crossing = {mu_c:.4g}.")

    if weighted:
        fit = _fit(s_raw, a_raw, e_raw, s_u, a_u, mu_c, mu_c_err, weighted, fix_a_min, chance_f)
    assert fit is not None
    if isinstance(fit, str):
        return verdict(FitStatus.FIT_FAILED, fit)
    notes.extend(fit.pop("notes"))
    if not weighted:  # F-test of Eq. 1 against a constant (the scatter is the only error scale)
        k, rss1 = len(free), fit["chi2"]
        rss0 = float(np.sum((a_raw - a_raw.mean()) ** 2))
        f_stat = (rss0 - rss1) / (k - 1) / (rss1 / fit["dof"]) if rss1 > 0 else math.inf
        p_drop = float(f_dist.sf(f_stat, k - 1, fit["dof"]))
        if p_drop > CONST_P_VALUE:
            return verdict(FitStatus.BEYOND_GRID, f"the drop is not significant against the scatter (F-test p = "
                           f"{p_drop:.2g}): no drop, mu > largest sigma {sig_max:.4g}.")
    if fit["mu"] > sig_max:
        return verdict(FitStatus.BEYOND_GRID, f"fitted mu {fit['mu']:.4g} lies beyond the largest sigma "
                       f"{sig_max:.4g} (extrapolation, not quoted).")
    if math.isfinite(mu_c) and math.isfinite(mu_c_err):
        tol = SIGNIFICANCE * math.hypot(fit["mu_err"], mu_c_err)
        if abs(fit["mu"] - mu_c) > tol:
            return verdict(FitStatus.DISAGREES, f"fit mu {fit['mu']:.4g} ± {fit['mu_err']:.2g} and crossing "
                           f"{mu_c:.4g} ± {mu_c_err:.2g} differ by more than {SIGNIFICANCE:g} errors: "
                           "the curve is probably not a logistic in sigma.", fit)
    z = (s_u - fit["mu"]) / fit["slope"]  # plateau points: >= MIN_PLATEAU_SLOPES slopes from mu
    n_top, n_bottom = int(np.sum(z <= -MIN_PLATEAU_SLOPES)), int(np.sum(z >= MIN_PLATEAU_SLOPES))
    if n_top < MIN_PLATEAU_POINTS:
        return verdict(FitStatus.FIT_FAILED, f"fitted curve has no upper plateau on the grid ({n_top} sigmas "
                       f"<= mu - {MIN_PLATEAU_SLOPES:g} s): a_max and mu are extrapolations below the smallest "
                       f"sigma, not the half-way point; use mu_crossing = {mu_c:.4g}.", fit)
    if not fix_a_min and n_bottom < MIN_PLATEAU_POINTS:
        return verdict(FitStatus.FIT_FAILED, f"fitted curve has no lower plateau on the grid ({n_bottom} sigmas "
                       f">= mu + {MIN_PLATEAU_SLOPES:g} s): a_min is an extrapolation and mu may lie beyond "
                       "the grid; extend the grid or pass chance= with fix_a_min=True.", fit)
    if weighted and fit["chi2_red"] > POOR_FIT_CHI2_RED:
        return verdict(FitStatus.POOR_FIT, f"reduced chi2 {fit['chi2_red']:.3g} > {POOR_FIT_CHI2_RED:g}: "
                       "Eq. 1 does not describe the points within their errors.", fit)
    return verdict(FitStatus.OK, f"mu = {fit['mu']:.4g} ± {fit['mu_err']:.2g} (crossing {mu_c:.4g}).", fit)


def _fit(s, a, e, s_u, a_u, mu_c, mu_c_err, weighted, fix_a_min, chance) -> Union[dict, str]:
    """Bounded multi-start curve_fit; a dict of fit fields, or a failure message."""
    sig_max = float(s_u[-1])
    rng = float(a_u.max() - a_u.min())
    s_lo = 0.01 * float(np.diff(s_u).min())
    lb = [1e-6 * sig_max, s_lo, 1e-9, 0.0]
    ub = [10.0 * sig_max, 10.0 * sig_max, max(min(rng, 0.5), 2e-9), float(a.max())]
    mu0 = mu_c if math.isfinite(mu_c) else float(np.median(s_u[s_u > 0]))
    step = mu_c_err if math.isfinite(mu_c_err) else float(np.median(np.diff(s_u)))
    a_min0 = chance if fix_a_min else float(a_u.min())
    n_free = 3 if fix_a_min else 4
    lb, ub = lb[:n_free], ub[:n_free]

    def f(x, mu, sl, da, am=chance):
        return midpoint_model(x, mu, sl, da, am)

    def jac(x, mu, sl, da, am=chance):  # analytic ∂F/∂(μ, s, δa[, a_min])
        g = expit(-(x - mu) / sl)
        dz = 2.0 * da * g * (1.0 - g) / sl
        return np.stack([dz, dz * (x - mu) / sl, 2.0 * g, np.ones_like(x)][:n_free], axis=1)

    best, err_msg = None, "optimizer failed for every start"
    for sl0 in (mu0 / 4.0, mu0 / 10.0, step):
        p0 = np.clip([mu0, sl0, rng / 2.0, a_min0][: len(lb)], lb, ub)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, pcov = curve_fit(f, s, a, p0=p0, sigma=e, absolute_sigma=weighted, jac=jac,
                                       bounds=(lb, ub), method="trf", max_nfev=5000)
        except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
            err_msg = f"optimizer failed: {exc}"
            continue
        chi2 = float(np.sum(((f(s, *popt) - a) / e) ** 2))
        if best is None or chi2 < best[0]:
            best = (chi2, popt, pcov)
    if best is None:
        return err_msg
    chi2, popt, pcov = best
    if not np.all(np.isfinite(pcov)):
        return f"fit converged (mu = {popt[0]:.4g}) but its covariance is not finite: parameters not determined."
    perr = np.sqrt(np.clip(np.diag(pcov), 0.0, None))
    mu_err = float(perr[0])
    notes = []
    j = int(np.clip(np.searchsorted(s_u, popt[0]), 1, len(s_u) - 1))
    step_mu = float(s_u[j] - s_u[j - 1])
    if popt[1] < step_mu / 8.0:  # step-like drop: μ known only to within its grid interval
        mu_err = max(mu_err, step_mu / math.sqrt(12.0))
        notes.append("step-like drop (slope < grid step/8): mu_err >= grid step/sqrt(12).")
    if popt[2] >= 0.999 * ub[2]:
        notes.append("delta_a at its upper bound (observed range).")
    dof = len(a) - len(popt)
    return dict(mu=float(popt[0]), mu_err=mu_err, slope=float(popt[1]), slope_err=float(perr[1]),
               delta_a=float(popt[2]), delta_a_err=float(perr[2]),
               a_min=chance if fix_a_min else float(popt[3]), a_min_err=0.0 if fix_a_min else float(perr[3]),
               cov=tuple(tuple(float(x) for x in row) for row in pcov), chi2=chi2, dof=dof,
               chi2_red=chi2 / dof if dof > 0 else math.nan, notes=notes)
