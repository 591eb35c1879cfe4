"""What a midpoint fit returns: :class:`MidpointFit`, its :class:`FitStatus`, and the one
value every table, plot and summary shows for it, :meth:`MidpointFit.quote`.

The thresholds used by :func:`~.fit.fit_midpoint` live here too.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .models import MidpointModel, evaluate

__all__ = [
    "AT_CHANCE_TOL", "A_MIN_TOL", "CONST_P_VALUE", "ERR_FLOOR", "MIN_PLATEAU_POINTS", "MIN_POINTS",
    "MIN_UNWEIGHTED_DOF", "POOR_FIT_CHI2_RED", "SIGNIFICANCE",
    "FitStatus", "MidpointFit", "Quote", "QuoteKind", "format_quote", "midpoint_model",
]

#: Smallest accuracy uncertainty used in the weights (0.1 percentage point). Uncertainties
#: below ``max(ERR_FLOOR, smallest positive acc_err)`` (zeros included) are raised to it.
ERR_FLOOR = 1e-3
#: Number of standard errors that makes a difference significant (drops, labels, DISAGREES).
SIGNIFICANCE = 3.0
#: A curve consistent with a constant (χ² p-value above this) has no significant drop.
CONST_P_VALUE = 1e-3
#: A curve whose peak lies within ``max(3 err, AT_CHANCE_TOL * (1 - chance))`` of chance: AT_CHANCE.
AT_CHANCE_TOL = 0.05
#: With chance known, a_min ≤ ``chance + A_MIN_TOL * (1 - chance)`` ("near chance").
A_MIN_TOL = 0.1
#: Weighted fits with a reduced χ² above this are POOR_FIT.
POOR_FIT_CHI2_RED = 5.0
#: A plateau the fit relies on must be seen at this many measured sigmas (the lower one: 1 with chance known).
MIN_PLATEAU_POINTS = 2
#: Fewest degrees of freedom (points - parameters) of an unweighted fit (acc_err=None).
MIN_UNWEIGHTED_DOF = 3
#: Fewest distinct sigmas for a fit (fewer: FIT_FAILED with only the crossing estimate).
MIN_POINTS = 4


class FitStatus(str, enum.Enum):
    """Outcome of ``fit_midpoint``; only ``OK`` means μ can be quoted."""

    OK = "ok"  #: fit and crossing agree, χ² acceptable
    BEYOND_GRID = "beyond_grid"  #: the curve never falls half way: μ > largest sigma
    AT_CHANCE = "at_chance"  #: accuracy is at chance from the start: no drop to fit
    FLAT = "flat"  #: points scatter beyond their errors but do not fall (no trend)
    FIT_FAILED = "fit_failed"  #: too few points, optimizer/covariance failed, or a plateau not measured
    DISAGREES = "disagrees"  #: fit μ and crossing differ by > 3 combined errors
    POOR_FIT = "poor_fit"  #: reduced χ² > POOR_FIT_CHI2_RED (weighted fits only)


class QuoteKind(str, enum.Enum):
    """What :class:`Quote` holds."""

    MU = "mu"  #: a trustworthy fitted μ (status OK)
    CROSSING = "crossing"  #: the model-free crossing, marked "~", because the fit is not trustworthy
    LOWER_BOUND = "lower_bound"  #: μ exceeds the largest σ measured
    NONE = "none"  #: nothing to quote (at chance, flat, no crossing)


@dataclass(frozen=True)
class Quote:
    """The single value shown for a fit wherever μ appears, with its reason."""

    kind: QuoteKind
    value: float  #: μ, the crossing, or the lower bound; NaN for NONE
    err: float  #: its 1-σ error (NaN if unknown)
    status: FitStatus
    reason: str  #: the fit's message
    label: str = ""  #: shown in parentheses instead of the status (e.g. which crossing this is)

    @property
    def is_mu(self) -> bool:
        """True only for a trustworthy fitted μ."""
        return self.kind is QuoteKind.MU

    @property
    def sort_key(self) -> float:
        """Ranking value: μ or the crossing; beyond-grid and nothing sort last."""
        return self.value if self.kind in (QuoteKind.MU, QuoteKind.CROSSING) else math.inf

    def text(self, digits: int = 4) -> str:
        """``0.3212 ± 0.0061``, ``~0.61 ± 0.02 (poor_fit)``, ``> 10 (beyond_grid)`` or ``- (at_chance)``."""
        note = (self.label or self.status.value) if self.kind is QuoteKind.CROSSING else self.status.value
        return format_quote(self.kind, self.value, self.err, note, digits)


def format_quote(kind: QuoteKind, value: float, err: float = math.nan, note: str = "", digits: int = 4) -> str:
    """The one text of a quoted μ, wherever μ is printed: ``0.3212 ± 0.0061`` (a fitted μ),
    ``~0.61 ± 0.02 (note)`` (a crossing), ``> 10 (note)`` (a lower bound: μ lies beyond the
    largest σ measured, never printed as a value) or ``- (note)`` (no estimate); ``(note)``
    only when ``note`` is given, never after a fitted μ."""
    tail = f" ({note})" if note else ""
    err_text = f" ± {err:.2g}" if math.isfinite(err) else ""
    if kind is QuoteKind.MU:
        return f"{value:.{digits}g}{err_text}"
    if kind is QuoteKind.CROSSING:
        return f"~{value:.{digits}g}{err_text}{tail}"
    if kind is QuoteKind.LOWER_BOUND:
        return f"> {value:.{digits}g}{tail}"
    return f"-{tail}"


def midpoint_model(sigmas: Union[Sequence[float], np.ndarray], mu: float, slope: float, delta_a: float,
                   a_min: float) -> np.ndarray:
    """Eq. 1 of the paper, ``2 δa / (1 + exp((σ - μ) / s)) + a_min``, overflow-free."""
    return evaluate(MidpointModel.PAPER, sigmas, mu, slope, delta_a, a_min)


@dataclass(frozen=True)
class MidpointFit:
    """Result of ``fit_midpoint``. Fit fields are NaN where no fit applies (see status)."""

    mu: float  #: fitted midpoint μ; NaN unless a fit was kept (see fit_midpoint's status rules)
    mu_err: float  #: quoted 1-σ error of μ: max(covariance, bootstrap half-interval) ⊕ systematic
    slope: float  #: fitted width: w (in ln σ) for the LOG model, s (in σ) for PAPER
    slope_err: float  #: 1-σ error of the width
    delta_a: float  #: fitted δa (half the total drop)
    delta_a_err: float  #: 1-σ error of δa
    a_min: float  #: fitted (or, with fix_a_min, fixed = chance) lower plateau
    a_min_err: float  #: 1-σ error of a_min (0 when fixed)
    cov: tuple  #: covariance of the free parameters ``param_names`` (tuple of tuples)
    param_names: tuple  #: names of the free parameters, in ``cov`` order
    chi2: float  #: Σ residual²/err² (plus the a_max plateau penalty when tied)
    dof: int  #: number of points (+1 when a_max is tied) minus number of free parameters
    chi2_red: float  #: chi2 / dof (NaN if dof = 0); unweighted: relative to the scatter
    mu_crossing: float  #: model-free μ: first downward crossing of the half level (NaN: none)
    mu_crossing_err: float  #: error of mu_crossing: bootstrap half-interval ⊕ interpolation ambiguity
    mu_lower: float  #: for BEYOND_GRID the largest sigma (μ exceeds it), else NaN
    status: FitStatus  #: quality verdict
    message: str  #: what was seen: the verdict's reason, then notes about weights and bounds
    weighted: bool  #: True if acc_err was used (absolute errors), False for an unweighted fit
    chance: float  #: chance accuracy passed in (NaN if none)
    fixed_a_min: bool  #: True if a_min was fixed at chance
    n_points: int  #: number of (sigma, accuracy) points
    model: MidpointModel = MidpointModel.PAPER  #: the fitted curve (files without it: Eq. 1)
    mu_err_cov: float = math.nan  #: 1-σ error of μ from the covariance (step-limited)
    mu_boot_lo: float = math.nan  #: lower end of the bootstrap 68 % percentile interval of μ
    mu_boot_hi: float = math.nan  #: upper end of that interval
    n_boot: int = 0  #: replica curves that gave a fit
    systematic: float = 0.0  #: relative systematic error of μ added in quadrature
    a_max_tied: bool = False  #: a_max was tied to the measured plateau
    plateau: float = math.nan  #: the measured plateau a_max was tied to (NaN: free)
    plateau_err: float = math.nan  #: its 1-σ error

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

    def curve(self, sigmas: Union[Sequence[float], np.ndarray]) -> np.ndarray:
        """Evaluate the fitted model at ``sigmas``; all NaN if there is no fitted curve."""
        x = np.asarray(sigmas, dtype=float)
        if not math.isfinite(self.mu):
            return np.full(x.shape, np.nan)
        return evaluate(self.model, x, self.mu, self.slope, self.delta_a, self.a_min)

    @property
    def has_crossing(self) -> bool:
        """Whether ``mu_crossing`` is an estimate of μ: the accuracy crossed its half level and
        the curve is neither at chance (a crossing of noise) nor beyond the grid."""
        return self.status not in (FitStatus.AT_CHANCE, FitStatus.BEYOND_GRID) and math.isfinite(self.mu_crossing)

    def crossing_text(self, digits: int = 4) -> str:
        """``mu_crossing ± err`` where it is an estimate of μ (``has_crossing``), else ``-``."""
        if not self.has_crossing:
            return "-"
        return format_quote(QuoteKind.MU, self.mu_crossing, self.mu_crossing_err, digits=digits)

    def quote(self) -> Quote:
        """The one value to show for this fit: μ if OK, else the marked crossing (when the
        accuracy falls through half way), a lower bound (beyond the grid) or nothing."""
        if self.ok:
            return Quote(QuoteKind.MU, self.mu, self.mu_err, self.status, self.message)
        if self.status is FitStatus.BEYOND_GRID:
            return Quote(QuoteKind.LOWER_BOUND, self.mu_lower, math.nan, self.status, self.message)
        if self.has_crossing:
            return Quote(QuoteKind.CROSSING, self.mu_crossing, self.mu_crossing_err, self.status, self.message)
        return Quote(QuoteKind.NONE, math.nan, math.nan, self.status, self.message)

    def to_dict(self) -> dict:
        """JSON-ready dict of all fields: NaN → None, enums → values, plus derived ``ok``."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update({k: _enc(d[k]) for k in _FLOAT_FIELDS})
        d.update(cov=[[_enc(x) for x in row] for row in self.cov], param_names=list(self.param_names),
                 status=self.status.value, model=self.model.value, dof=int(self.dof), n_points=int(self.n_points),
                 n_boot=int(self.n_boot), weighted=bool(self.weighted), fixed_a_min=bool(self.fixed_a_min),
                 a_max_tied=bool(self.a_max_tied), ok=self.ok)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MidpointFit":
        """Inverse of :meth:`to_dict` (None → NaN; ``ok`` ignored). Fields added since a file
        was written take their defaults (older files hold Eq. 1 fits).

        Raises:
            KeyError: a required field is missing. ValueError: an unknown status or model.
        """
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d or f.default is _MISSING}
        kw.update({k: _dec(kw[k]) for k in _FLOAT_FIELDS if k in kw})
        kw.update(cov=tuple(tuple(_dec(x) for x in row) for row in kw["cov"]), param_names=tuple(kw["param_names"]),
                  status=FitStatus(kw["status"]), dof=int(kw["dof"]), n_points=int(kw["n_points"]),
                  weighted=bool(kw["weighted"]), fixed_a_min=bool(kw["fixed_a_min"]))
        if "model" in kw:
            kw["model"] = MidpointModel.parse(kw["model"])
        return cls(**kw)


_MISSING = fields(MidpointFit)[0].default  # dataclasses.MISSING
_FLOAT_FIELDS = tuple(f.name for f in fields(MidpointFit) if f.type == "float")


def _enc(x: Any) -> Optional[float]:
    x = float(x)
    return None if math.isnan(x) else x


def _dec(x: Any) -> float:
    return math.nan if x is None else float(x)
