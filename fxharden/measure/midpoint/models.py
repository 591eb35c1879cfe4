"""The two midpoint models and their bounded, constrained least-squares fit.

Both describe accuracy falling from an upper plateau ``a_max = a_min + 2 δa`` to a lower one
``a_min``; μ is, in both, the σ where accuracy is half way between them (``F(μ) = a_min + δa``):

* ``MidpointModel.LOG`` (default): a logistic in ln σ,
  ``F(σ) = a_min + 2 δa / (1 + (σ/μ)^(1/w))``, width ``w`` in units of ln σ. Real
  accuracy-versus-σ curves are close to symmetric in log σ; this model fits them within their
  errors where Eq. 1 does not.
* ``MidpointModel.PAPER``: Eq. 1 of Wang et al., a logistic in linear σ,
  ``F(σ) = a_min + 2 δa / (1 + exp((σ - μ) / s))``.

The fit (:func:`fit_curve`) works in internal parameters ``(x0, width, a_max, a_min)`` with
``x0 = ln μ`` (LOG) or ``μ`` (PAPER), so ``a_max ≤ 1`` and ``a_min ≥ 0`` are plain box bounds;
``a_max`` may be tied to a measured plateau by a Gaussian penalty (an extra residual
``(a_max - value) / error``). Errors are reported in the public basis ``(μ, width, δa, a_min)``.
numpy/scipy only (scipy imported on first use, so the enum is cheap to import).
"""

from __future__ import annotations

import enum
import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["MidpointModel", "Constraints", "CurveFit", "evaluate", "fit_curve"]


class MidpointModel(str, enum.Enum):
    """Shape of the accuracy-versus-σ curve fitted for μ."""

    LOG = "log"  #: logistic in ln σ: ``a_min + 2 δa / (1 + (σ/μ)^(1/w))`` (default)
    PAPER = "paper"  #: Eq. 1 of the paper, logistic in linear σ: ``a_min + 2 δa / (1 + exp((σ-μ)/s))``

    @classmethod
    def parse(cls, value: Union["MidpointModel", str]) -> "MidpointModel":
        """The model named by ``value`` (an enum member or its string).

        Raises:
            ValueError: an unknown name (the message lists the valid ones).
        """
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown midpoint model {value!r}; use one of "
                             f"{', '.join(repr(m.value) for m in cls)}") from None


def evaluate(model: MidpointModel, sigmas: Sequence[float], mu: float, slope: float, delta_a: float,
             a_min: float) -> np.ndarray:
    """``F(σ)`` of ``model`` (overflow-free; the LOG model gives ``a_max`` at σ = 0).

    Args:
        model: which curve. sigmas: noise levels σ ≥ 0. mu: midpoint μ > 0.
        slope: width (``w`` in ln σ for LOG, ``s`` in σ for PAPER), > 0.
        delta_a: half the drop δa. a_min: lower plateau.
    """
    from scipy.special import expit

    x = np.asarray(sigmas, dtype=float)
    if model is MidpointModel.LOG:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.log(x) - math.log(mu)) / slope if mu > 0 else np.full_like(x, np.nan)
        return 2.0 * delta_a * expit(-z) + a_min
    return 2.0 * delta_a * expit(-(x - mu) / slope) + a_min


@dataclass(frozen=True)
class Constraints:
    """What the fit may vary. a_max = a_min + 2 δa always lies in [0, 1]."""

    plateau: Optional[Tuple[float, float]]
    """``(value, 1-σ error)`` a_max is tied to (the measured low-σ plateau); None: free."""
    a_min_range: Tuple[float, float]
    """Bounds of a_min (``[0, chance + tolerance]`` when chance is known, else ``[0, 1]``)."""
    fixed_a_min: Optional[float] = None
    """a_min held at this value (not fitted), or None."""


@dataclass(frozen=True)
class CurveFit:
    """A converged fit in the public basis; ``theta`` is the internal optimum (warm starts)."""

    mu: float
    slope: float
    delta_a: float
    a_min: float
    errors: Tuple[float, ...]  #: 1-σ errors of ``param_names``
    cov: Tuple[Tuple[float, ...], ...]  #: covariance of ``param_names``
    param_names: Tuple[str, ...]
    chi2: float  #: Σ residual² over the points plus the plateau penalty, if any
    dof: int  #: points (+1 with a tied plateau) minus free parameters
    theta: Tuple[float, ...]
    at_bound: Tuple[str, ...]  #: internal parameters that ended on a bound


_NAMES = ("mu", "slope", "delta_a", "a_min")


def _shape(model: MidpointModel, s: np.ndarray, x0: float, w: float) -> np.ndarray:
    """The falling logistic g ∈ (0, 1) and its argument z, per point."""
    from scipy.special import expit

    with np.errstate(divide="ignore"):
        z = ((np.log(s) if model is MidpointModel.LOG else s) - x0) / w
    return expit(-z), z


def _residual_fn(model, s, a, e, cons):
    fixed = cons.fixed_a_min

    def unpack(t):
        return (t[0], t[1], t[2], fixed) if fixed is not None else tuple(t)

    def res(t):
        x0, w, amax, amin = unpack(t)
        g, _ = _shape(model, s, x0, w)
        r = (amin + (amax - amin) * g - a) / e
        if cons.plateau is not None:
            r = np.append(r, (amax - cons.plateau[0]) / cons.plateau[1])
        return r

    def jac(t):
        x0, w, amax, amin = unpack(t)
        g, z = _shape(model, s, x0, w)
        dg = (amax - amin) * g * (1.0 - g) / w  # ∂F/∂x0; ∂F/∂w = dg · z
        z = np.where(np.isfinite(z), z, 0.0)
        cols = [dg, dg * z, g] + ([] if fixed is not None else [1.0 - g])
        j = np.stack(cols, axis=1) / e[:, None]
        if cons.plateau is not None:
            row = np.zeros(j.shape[1])
            row[2] = 1.0 / cons.plateau[1]
            j = np.vstack([j, row])
        return j

    return res, jac


def fit_curve(model: MidpointModel, s: np.ndarray, a: np.ndarray, e: np.ndarray, *, weighted: bool,
              cons: Constraints, mid: float, starts: Sequence[Tuple[float, ...]],
              x0_bounds: Tuple[float, float], w_bounds: Tuple[float, float],
              max_nfev: int = 2000) -> Union[CurveFit, str]:
    """Least squares from each start (internal parameters); the lowest χ² wins.

    Args:
        model: the curve. s, a, e: points (σ, accuracy, 1-σ error; ones when unweighted).
        weighted: errors are absolute (else the covariance is scaled by χ²/dof).
        cons: plateau tie and a_min bounds. mid: a level inside the drop: a_max ≥ mid ≥ a_min.
        starts: internal start vectors ``(x0, w, a_max[, a_min])``.
        x0_bounds, w_bounds: bounds of ``x0`` (ln μ or μ) and of the width.

    Returns:
        A :class:`CurveFit`, or a message saying why there is none.
    """
    from scipy.optimize import least_squares

    free_amin = cons.fixed_a_min is None
    lo = [x0_bounds[0], w_bounds[0], mid] + ([cons.a_min_range[0]] if free_amin else [])
    hi = [x0_bounds[1], w_bounds[1], 1.0] + ([max(min(cons.a_min_range[1], mid), cons.a_min_range[0] + 1e-9)]
                                             if free_amin else [])
    lo, hi = np.array(lo, float), np.array(hi, float)
    hi = np.maximum(hi, lo + 1e-12)
    res, jac = _residual_fn(model, s, a, e, cons)
    best, msg = None, "the optimizer failed from every start"
    for t0 in starts:
        t0 = np.clip(np.asarray(t0, float)[: len(lo)], lo, hi)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sol = least_squares(res, t0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac",
                                    max_nfev=max_nfev)
        except (ValueError, np.linalg.LinAlgError) as exc:
            msg = f"the optimizer failed: {exc}"
            continue
        if np.all(np.isfinite(sol.fun)) and (best is None or sol.cost < best.cost):
            best = sol
    if best is None:
        return msg
    t = best.x
    chi2 = float(2.0 * best.cost)
    n_extra = 1 if cons.plateau is not None else 0
    dof = len(a) + n_extra - len(t)
    jm = jac(t)
    try:
        cov_t = np.linalg.inv(jm.T @ jm)
    except np.linalg.LinAlgError:
        cov_t = np.full((len(t), len(t)), np.nan)
    if not weighted:
        cov_t = cov_t * (chi2 / dof if dof > 0 else np.nan)
    # public basis (μ, width, δa[, a_min]) = T(x0, w, a_max[, a_min])
    mu = math.exp(t[0]) if model is MidpointModel.LOG else float(t[0])
    amin = float(t[3]) if free_amin else float(cons.fixed_a_min)
    tm = np.zeros((len(t), len(t)))
    tm[0, 0] = mu if model is MidpointModel.LOG else 1.0
    tm[1, 1] = 1.0
    tm[2, 2] = 0.5
    if free_amin:
        tm[2, 3], tm[3, 3] = -0.5, 1.0
    cov = tm @ cov_t @ tm.T
    if not np.all(np.isfinite(cov)):
        return f"the fit converged (mu = {mu:.4g}) but its covariance is not finite: parameters not determined."
    names = ("x0", "width", "a_max", "a_min")
    at_bound = tuple(names[i] for i in range(len(t)) if t[i] <= lo[i] + 1e-9 * max(1.0, abs(lo[i]))
                     or t[i] >= hi[i] - 1e-9 * max(1.0, abs(hi[i])))
    return CurveFit(mu=mu, slope=float(t[1]), delta_a=0.5 * (float(t[2]) - amin), a_min=amin,
                    errors=tuple(float(x) for x in np.sqrt(np.clip(np.diag(cov), 0.0, None))),
                    cov=tuple(tuple(float(x) for x in row) for row in cov), param_names=_NAMES[: len(t)],
                    chi2=chi2, dof=dof, theta=tuple(float(x) for x in t), at_bound=at_bound)
