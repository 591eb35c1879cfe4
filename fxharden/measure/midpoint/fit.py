"""Midpoint noise level μ: the σ at which accuracy has fallen half way from a_max to a_min.

Wang, Borras, Klein, Fröning, *On Hardening DNNs against Noisy Computations*, Sec. III-A fit
Eq. 1, a logistic in linear σ. :func:`fit_midpoint` fits, by default, a logistic in ln σ
(``MidpointModel.LOG``, see :mod:`.models`), which real accuracy curves follow within their
errors; Eq. 1 is ``model="paper"``. μ means the same in both.

Beside the fit it computes a model-free estimate (``mu_crossing``), bootstrap errors of μ and
of the crossing (:mod:`.errors`), and sorts the outcome into a
:class:`FitStatus`; anything but ``OK`` means "do not quote ``mu``": :meth:`MidpointFit.quote`
says what to show instead. Accuracies are **fractions in [0, 1]**. numpy/scipy only.
Data problems never raise: only malformed input (shapes, NaN, negative sigma) does.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Tuple, Union

import numpy as np

from .errors import BOOTSTRAP_SIZE, crossing, crossing_many, distinct_means, interpolation_error, \
    parametric_replicas, percentile_interval
from .models import Constraints, CurveFit, MidpointModel, evaluate, fit_curve
from .result import A_MIN_TOL, CONST_P_VALUE, ERR_FLOOR, MIN_PLATEAU_POINTS, MIN_POINTS, MIN_UNWEIGHTED_DOF, \
    POOR_FIT_CHI2_RED, SIGNIFICANCE, FitStatus, MidpointFit
from .screen import Points, f_test_drop, prepare, screen

__all__ = ["fit_midpoint"]

ArrayLike = Union[list, tuple, np.ndarray]


def fit_midpoint(
    sigmas: ArrayLike,
    acc: ArrayLike,
    acc_err: Optional[ArrayLike] = None,
    *,
    chance: Optional[float] = None,
    fix_a_min: bool = False,
    model: Union[MidpointModel, str] = MidpointModel.LOG,
    plateau: Optional[Tuple[float, float]] = None,
    replicas: Optional[ArrayLike] = None,
    plateau_replicas: Optional[ArrayLike] = None,
    n_boot: int = BOOTSTRAP_SIZE,
    systematic: float = 0.0,
    seed: int = 0,
) -> MidpointFit:
    """Fit a midpoint model to accuracy-versus-σ points and estimate μ with honest errors.

    Fit: weighted least squares (``absolute`` errors; unweighted: errors from the scatter)
    of ``model`` with ``a_min ∈ [0, chance + A_MIN_TOL·(1 - chance)]`` (near chance; ``[0, 1]``
    without chance), ``a_max = a_min + 2 δa ≤ 1`` and, with ``plateau``, ``a_max`` tied to the
    measured low-σ plateau by a Gaussian penalty; multi-start from the crossing estimate.

    Errors of μ: ``mu_err_cov`` from the covariance; with ``replicas`` (resampled curves, e.g.
    over networks, repeats and images, as ``fxharden.measure.results`` draws them)
    ``[mu_boot_lo, mu_boot_hi]``, the central 68 % percentile interval of μ refitted on each;
    the quoted ``mu_err`` is ``max(mu_err_cov, half that interval)`` with ``systematic·μ`` added
    in quadrature. ``mu_crossing_err`` is half the 68 % interval of the crossing over the same
    replicas (without them: over ``n_boot`` curves drawn from ``N(acc, acc_err)``), with the
    interpolation ambiguity (linear vs monotone cubic) added in quadrature. Without ``acc_err``
    every point's error is the rms scatter about the best falling *or rising* curve with a free
    lower plateau, so neither a rising curve nor a drop that levels off above chance inflates
    it.

    Status, by the first rule that applies ("significant" = > SIGNIFICANCE errors):
      1. FIT_FAILED: fewer than 2 distinct sigmas.
      2. AT_CHANCE (needs ``chance``): peak within ``max(3 err, AT_CHANCE_TOL·(1-chance))`` of it.
      3. BEYOND_GRID: no significant drop (or the points are consistent with a constant).
      4. FLAT: the points significantly off the half level do not fall in one step.
      5. BEYOND_GRID (needs ``chance``): the lowest point stays significantly above half way
         from the peak to chance.
      6. FIT_FAILED: fewer than MIN_POINTS distinct sigmas, too few points for an unweighted
         fit, or the optimizer / covariance failed.
      7. BEYOND_GRID: unweighted and no better than a constant (F-test), or the fitted μ lies
         beyond the largest σ.
      8. FIT_FAILED: a plateau the fit relies on was not measured: with a free a_max, fewer
         than MIN_PLATEAU_POINTS points below μ within errors of the top 10 % of the fitted
         drop; with a free a_min, fewer than that many points above μ within errors of its
         bottom 10 % (one suffices with ``chance``, which holds a_min near chance). A tied
         a_max is a measurement: no upper-plateau check.
      9. POOR_FIT: weighted and ``chi2_red > POOR_FIT_CHI2_RED``.
      10. FIT_FAILED: μ not resolved: its quoted error is not smaller than μ itself and than
          the measured σ range (a coarse grid or a drop the points do not sample).
      11. DISAGREES: the points' crossing of the fitted half level ``a_min + δa`` and the
          fitted curve's crossing of it, sampled at the same σ and interpolated the same way
          (so a coarse grid's interpolation bias cancels), differ by more than 3 combined
          errors (the crossing's bootstrap error ⊕ μ's covariance error).
      12. OK.
    BEYOND_GRID gives ``mu = nan`` and ``mu_lower = largest σ``; rules 8-11 keep the fitted
    values for inspection. Every message states the measured facts behind its verdict.

    Args:
        sigmas: noise levels, ≥ 0 (> 0 for the LOG model's fit; σ = 0 points are its a_max).
        acc: accuracies as fractions in [0, 1], one per sigma.
        acc_err: 1-σ uncertainties Δy of ``acc`` (≥ 0) or None (unknown).
        chance: chance accuracy in [0, 1) (0.1 for CIFAR-10): enables AT_CHANCE, the "falls
            half way to chance" check and the a_min bound near chance.
        fix_a_min: fix a_min at ``chance``.
        model: ``"log"`` (default) or ``"paper"`` (Eq. 1), or a :class:`MidpointModel`.
        plateau: ``(value, 1-σ error)`` of the measured low-σ plateau (the clean accuracy)
            that a_max is tied to; None leaves a_max free (≤ 1).
        replicas: ``(n, len(sigmas))`` resampled accuracy curves for the bootstrap of μ and
            of the crossing.
        plateau_replicas: ``(n,)`` the plateau value of each replica (with ``plateau`` and
            ``replicas``): a resampling that redraws the images moves the clean accuracy
            together with the curve, and each replica's a_max is tied to its own value.
        n_boot: without ``replicas``, curves drawn from ``N(acc, acc_err)`` for the crossing's
            error (0: none; then DISAGREES is not assessed).
        systematic: relative systematic error of μ, added in quadrature (0.02 = 2 %).
        seed: seeds the parametric bootstrap.

    Returns:
        A :class:`MidpointFit`; quote it with ``.quote()`` (or check ``.ok``).

    Raises:
        ValueError: malformed input (see the message), an unknown model, a plateau outside
            [0, 1] or with a non-positive error, negative systematic, replicas of the wrong shape.
    """
    mdl = MidpointModel.parse(model)
    p = prepare(sigmas, acc, acc_err)
    if chance is not None and not 0.0 <= float(chance) < 1.0:
        raise ValueError(f"chance must be in [0, 1), got {chance}")
    if fix_a_min and chance is None:
        raise ValueError("fix_a_min=True needs chance= (the value a_min is fixed at)")
    if plateau is not None and not (0.0 <= float(plateau[0]) <= 1.0 and float(plateau[1]) > 0):
        raise ValueError(f"plateau must be (value in [0, 1], error > 0), got {plateau}")
    if not systematic >= 0:
        raise ValueError(f"systematic must be >= 0 (a fraction of mu), got {systematic}")
    reps, resampled = None, replicas is not None
    if replicas is not None:
        reps = np.asarray(replicas, dtype=float)
        if reps.ndim != 2 or reps.shape[1] != p.n_raw:
            raise ValueError(f"replicas must have shape (n, {p.n_raw}), got {reps.shape}")
        reps = reps[:, p.order]
    plat_reps = None
    if plateau_replicas is not None and plateau is not None and reps is not None:
        plat_reps = np.asarray(plateau_replicas, dtype=float)
        if plat_reps.shape != (reps.shape[0],):
            raise ValueError(f"plateau_replicas must have shape ({reps.shape[0]},), got {plat_reps.shape}")
    chance_f = math.nan if chance is None else float(chance)
    top = chance_f + A_MIN_TOL * (1.0 - chance_f) if chance is not None else 1.0
    cons = Constraints(plateau=None if plateau is None else (float(plateau[0]), float(plateau[1])),
                       a_min_range=(0.0, top), fixed_a_min=chance_f if fix_a_min else None)
    n_free = 3 if fix_a_min else 4
    dof0 = p.n_raw + (plateau is not None) - n_free
    mu_c = crossing(p.s_u, p.a_u) if p.s_u.size >= 2 else math.nan
    if not p.weighted:  # per-point noise: rms residual of a preliminary (untied) fit
        p = _with_scatter(p, mdl, mu_c, dof0)
    if reps is None and n_boot > 0:
        reps = parametric_replicas(p.a, p.e, n_boot, seed)
    rep_u = distinct_means(p.inv, p.w, reps) if reps is not None else None
    out = _Assembler(p, mdl, cons, chance_f, mu_c, _crossing_err(p, rep_u, None), dof0, n_free, systematic, rep_u)

    early = screen(p, chance)
    if early is not None:
        return out.verdict(*early)
    if p.s_u.size < MIN_POINTS:
        return out.verdict(FitStatus.FIT_FAILED, f"only {p.s_u.size} distinct sigmas (< {MIN_POINTS}): "
                           f"no fit; see mu_crossing = {mu_c:.4g}.")
    if not p.weighted and dof0 < MIN_UNWEIGHTED_DOF:
        return out.verdict(FitStatus.FIT_FAILED, f"an unweighted fit needs >= {MIN_UNWEIGHTED_DOF} more points "
                           f"than parameters to estimate its errors; pass acc_err or see mu_crossing = {mu_c:.4g}.")
    fit = _fit(p, mdl, cons, mu_c)
    if isinstance(fit, str):
        return out.verdict(FitStatus.FIT_FAILED, fit)
    if not p.weighted:
        # against the free (falling or mirrored) curve the scatter came from, not the constrained
        # fit: a drop that levels off above chance is a drop even where a_min cannot follow it
        rss_free = min(fit.chi2, float(p.n_raw - 4)) * p.e[0] ** 2
        p_drop = f_test_drop(p, rss_free, p.n_raw - 4, 4)
        if p_drop > CONST_P_VALUE:
            return out.verdict(FitStatus.BEYOND_GRID, f"the drop is not significant against the scatter (F-test "
                               f"p = {p_drop:.2g}): no drop, mu > largest sigma {p.s_u[-1]:.4g}.")
    if fit.mu > p.s_u[-1]:
        return out.verdict(FitStatus.BEYOND_GRID, f"fitted mu {fit.mu:.4g} lies beyond the largest sigma "
                           f"{p.s_u[-1]:.4g} (extrapolation, not quoted).")
    boot = _bootstrap(p, mdl, cons, fit, reps, plat_reps) if resampled else (math.nan, math.nan, 0)
    out.set_fit(fit, boot)
    return out.verdict(*_judge(p, mdl, cons, out))


def _crossing_boot_err(p: Points, rep_u: Optional[np.ndarray], level: Optional[float]) -> float:
    """Bootstrap half-interval of the crossing of ``level`` (NaN: no replicas or no crossing)."""
    if rep_u is None or not math.isfinite(crossing(p.s_u, p.a_u, level)):
        return math.nan
    lo, hi = percentile_interval(crossing_many(p.s_u, rep_u, level))
    return 0.5 * (hi - lo)


def _crossing_err(p: Points, rep_u: Optional[np.ndarray], level: Optional[float]) -> float:
    """Error of the crossing of ``level``: bootstrap half-interval ⊕ interpolation ambiguity."""
    return math.hypot(_crossing_boot_err(p, rep_u, level), interpolation_error(p.s_u, p.a_u, level))


def _with_scatter(p: Points, mdl: MidpointModel, mu_c: float, dof0: int) -> Points:
    """Every error set to the scatter about the best step-shaped curve through the points.

    The scatter must not depend on the verdict it feeds: the preliminary fits leave a_min free
    in [0, 1] (a drop that levels off above chance is measured, not misfit) and also fit the
    mirrored curve ``1 - acc`` (a rising curve is fitted as well as a falling one), and the
    smaller rms residual wins; its check against chance and the fall is left to the rules.
    """
    scale = ERR_FLOOR
    if p.a_u.max() - p.a_u.min() > SIGNIFICANCE * ERR_FLOOR and p.s_u.size >= MIN_POINTS \
            and dof0 >= MIN_UNWEIGHTED_DOF:
        free = Constraints(None, (0.0, 1.0))
        mirror = replace(p, a=1.0 - p.a, a_u=1.0 - p.a_u)
        rms = [math.sqrt(f.chi2 / f.dof) for f in (_fit(p, mdl, free, mu_c), _fit(mirror, mdl, free, math.nan))
               if isinstance(f, CurveFit) and f.dof > 0]  # chi2 in units of ERR_FLOOR
        if rms:
            scale = max(scale, ERR_FLOOR * min(rms))
    return p.with_error(scale)


def _bounds(p: Points, mdl: MidpointModel) -> Tuple[Tuple[float, float], Tuple[float, float], float]:
    """Bounds of x0 (ln μ or μ) and of the width; the smallest grid step (in x)."""
    s = p.s_u[p.s_u > 0] if mdl is MidpointModel.LOG else p.s_u
    x = np.log(s) if mdl is MidpointModel.LOG else s
    step = float(np.diff(x).min()) if x.size > 1 else 1.0
    if mdl is MidpointModel.LOG:
        span = float(x[-1] - x[0]) if x.size > 1 else 1.0
        return (float(x[0]) - span - 7.0, float(x[-1]) + math.log(10.0)), (0.01 * step, 10.0 * span + 1.0), step
    sig_max = float(p.s_u[-1])
    return (1e-6 * sig_max, 10.0 * sig_max), (0.01 * step, 10.0 * sig_max), step


def _fit(p: Points, mdl: MidpointModel, cons: Constraints, mu_c: float) -> Union[CurveFit, str]:
    """Multi-start fit of all points."""
    if mdl is MidpointModel.LOG and not np.any(p.s_u > 0):
        return "the log-sigma model needs sigmas > 0."
    xb, wb, step = _bounds(p, mdl)
    pos = p.s_u[p.s_u > 0]
    mu0 = mu_c if math.isfinite(mu_c) and mu_c > 0 else float(np.median(pos))
    mid = 0.5 * (float(p.a_u.max()) + float(p.a_u.min()))
    amax0 = cons.plateau[0] if cons.plateau is not None else float(p.a_u.max())
    amin0 = float(np.clip(p.a_u.min(), *cons.a_min_range))
    if mdl is MidpointModel.LOG:
        starts = [(math.log(mu0), w, amax0, amin0) for w in (0.2, 0.6, 1.5)]
    else:
        starts = [(mu0, w, amax0, amin0) for w in (mu0 / 4.0, mu0 / 10.0, step)]
    return fit_curve(mdl, p.s, p.a, p.e, weighted=p.weighted, cons=cons, mid=mid, starts=starts,
                     x0_bounds=xb, w_bounds=wb)


def _bootstrap(p: Points, mdl: MidpointModel, cons: Constraints, fit: CurveFit, reps: np.ndarray,
               plateaus: Optional[np.ndarray] = None):
    """Percentile interval of μ refitted on each replica (warm start; a_max tied to the
    replica's own plateau when given); (lo, hi, n fitted)."""
    xb, wb, _ = _bounds(p, mdl)
    mid = 0.5 * (float(p.a_u.max()) + float(p.a_u.min()))
    mus = []
    for b, row in enumerate(reps):
        cons_b = cons if plateaus is None else replace(cons, plateau=(float(plateaus[b]), cons.plateau[1]))
        r = fit_curve(mdl, p.s, row, p.e, weighted=p.weighted, cons=cons_b, mid=mid, starts=[fit.theta],
                      x0_bounds=xb, w_bounds=wb, max_nfev=200)
        if isinstance(r, CurveFit):
            mus.append(r.mu)
    lo, hi = percentile_interval(np.array(mus))
    return lo, hi, len(mus)


class _Assembler:
    """Collects what is known about one fit and builds :class:`MidpointFit` results."""

    def __init__(self, p: Points, mdl: MidpointModel, cons: Constraints, chance: float, mu_c: float,
                 mu_c_err: float, dof0: int, n_free: int, systematic: float, rep_u: Optional[np.ndarray]) -> None:
        self.p, self.mdl, self.cons, self.systematic = p, mdl, cons, systematic
        self.rep_u = rep_u  # replica curves per distinct σ (bootstrap), or None
        names = ("mu", "slope", "delta_a", "a_min")[:n_free]
        nan_cov = tuple(tuple(math.nan for _ in names) for _ in names)
        self.base = dict(
            cov=nan_cov, param_names=names, chi2=math.nan, dof=int(dof0), chi2_red=math.nan,
            mu_crossing=mu_c, mu_crossing_err=mu_c_err, weighted=p.weighted, chance=chance,
            fixed_a_min=cons.fixed_a_min is not None, n_points=p.n_raw, model=mdl, systematic=float(systematic),
            a_max_tied=cons.plateau is not None,
            plateau=cons.plateau[0] if cons.plateau else math.nan,
            plateau_err=cons.plateau[1] if cons.plateau else math.nan,
        )
        self.fit_vals: dict = {}
        self.notes = list(p.notes)

    def set_fit(self, fit: CurveFit, boot: Tuple[float, float, int]) -> None:
        p, mdl = self.p, self.mdl
        err = dict(zip(fit.param_names, fit.errors))
        mu_err_cov = err["mu"]
        x = np.log(p.s_u[p.s_u > 0]) if mdl is MidpointModel.LOG else p.s_u
        xm = math.log(fit.mu) if mdl is MidpointModel.LOG else fit.mu
        j = int(np.clip(np.searchsorted(x, xm), 1, len(x) - 1))
        step = float(x[j] - x[j - 1])
        if fit.slope < step / 8.0:  # step-like drop: μ known only to within its grid interval
            floor = step / math.sqrt(12.0) * (fit.mu if mdl is MidpointModel.LOG else 1.0)
            # A clean step (the two points around μ on the two plateaus) places μ uniformly in
            # its interval, whatever the (degenerate) covariance says; a point inside the drop
            # means the shape is not resolved, and the covariance error stands.
            a_g = p.a_u[p.s_u > 0] if mdl is MidpointModel.LOG else p.a_u
            e_g = SIGNIFICANCE * (p.e_u[p.s_u > 0] if mdl is MidpointModel.LOG else p.e_u)
            a_max, drop = fit.a_min + 2.0 * fit.delta_a, 2.0 * fit.delta_a
            clean = a_g[j - 1] + e_g[j - 1] >= a_max - 0.1 * drop and a_g[j] - e_g[j] <= fit.a_min + 0.1 * drop
            mu_err_cov = floor if clean else max(mu_err_cov, floor)
            self.notes.append("step-like drop (width < grid step/8): mu_err >= grid step/sqrt(12).")
        if "a_max" in fit.at_bound and fit.a_min + 2 * fit.delta_a >= 1.0 - 1e-9:
            self.notes.append("a_max at its bound 1.")
        lo, hi, n_boot = boot
        half = 0.5 * (hi - lo) if math.isfinite(lo) else 0.0
        self.fit_vals = dict(
            mu=fit.mu, mu_err=math.hypot(max(mu_err_cov, half), self.systematic * fit.mu), mu_err_cov=mu_err_cov,
            mu_boot_lo=lo, mu_boot_hi=hi, n_boot=int(n_boot), slope=fit.slope, slope_err=err["slope"],
            delta_a=fit.delta_a, delta_a_err=err["delta_a"], a_min=fit.a_min, a_min_err=err.get("a_min", 0.0),
            cov=fit.cov, chi2=fit.chi2, dof=fit.dof, chi2_red=fit.chi2 / fit.dof if fit.dof > 0 else math.nan,
        )

    def verdict(self, status: FitStatus, text: str) -> MidpointFit:
        vals = dict.fromkeys(("mu", "mu_err", "mu_err_cov", "mu_boot_lo", "mu_boot_hi", "slope", "slope_err",
                              "delta_a", "delta_a_err", "a_min", "a_min_err"), math.nan)
        vals["n_boot"] = 0
        vals.update(self.base)
        if status is not FitStatus.BEYOND_GRID:
            vals.update(self.fit_vals)
        vals["mu_lower"] = float(self.p.s_u[-1]) if status is FitStatus.BEYOND_GRID else math.nan
        return MidpointFit(status=status, message=" ".join([text] + self.notes), **vals)


def _judge(p: Points, mdl: MidpointModel, cons: Constraints, out: _Assembler) -> Tuple[FitStatus, str]:
    """Rules 8-12 of :func:`fit_midpoint` on a kept fit."""
    v = out.fit_vals
    mu, drop, a_min = v["mu"], 2.0 * v["delta_a"], v["a_min"]
    a_max = a_min + drop
    tol = SIGNIFICANCE * p.e_u
    below, above = p.s_u < mu, p.s_u > mu
    n_top = int(np.sum(below & (p.a_u + tol >= a_max - 0.1 * drop)))
    n_bottom = int(np.sum(above & (p.a_u - tol <= a_min + 0.1 * drop)))
    name = "Eq. 1" if mdl is MidpointModel.PAPER else "log-sigma logistic"
    chance_known = math.isfinite(out.base["chance"])
    if cons.plateau is None and n_top < MIN_PLATEAU_POINTS:
        i_hi = int(np.argmax(p.a_u))
        seen = (f"the measured points level off at {p.a_u[i_hi]:.4g} (highest, at sigma {p.s_u[i_hi]:.4g}) but "
                if p.a_u[i_hi] + tol[i_hi] < a_max - 0.1 * drop else "")
        return FitStatus.FIT_FAILED, (
            f"{seen}the fitted a_max = {a_max:.4g} is reached by only {n_top} of the {int(below.sum())} points "
            f"below mu = {mu:.4g} (within errors of the top 10 % of the fitted drop): a_max and mu are "
            f"extrapolations; tie a_max to the clean accuracy (plateau=) or use mu_crossing = "
            f"{out.base['mu_crossing']:.4g}.")
    need = 1 if chance_known else MIN_PLATEAU_POINTS  # with chance, a_min is already held near it
    if cons.fixed_a_min is None and n_bottom < need:
        return FitStatus.FIT_FAILED, (
            f"only {n_bottom} of the {int(above.sum())} measured points above mu = {mu:.4g} reach the lower plateau "
            f"(within errors of the bottom 10 % of the fitted drop): a_min = {a_min:.4g} is an extrapolation and mu "
            "may lie beyond the grid; extend the grid or pass chance= with fix_a_min=True.")
    if p.weighted and v["chi2_red"] > POOR_FIT_CHI2_RED:
        return FitStatus.POOR_FIT, (
            f"reduced chi2 {v['chi2_red']:.3g} > {POOR_FIT_CHI2_RED:g}: the {name} does not describe the "
            f"{p.n_raw} points within their errors (fit mu {mu:.4g}, crossing {out.base['mu_crossing']:.4g}).")
    mu_c = out.base["mu_crossing"]
    s_pos = p.s_u[p.s_u > 0]
    span = float(s_pos[-1] - s_pos[0]) if s_pos.size > 1 else math.inf
    if not v["mu_err"] < min(mu, span):
        return FitStatus.FIT_FAILED, (
            f"mu = {mu:.4g} is not resolved: its error {v['mu_err']:.2g} is not smaller than mu itself "
            f"and the measured range {s_pos[0]:.4g}..{s_pos[-1]:.4g} (too few points across the drop); "
            f"use mu_crossing = {mu_c:.4g} or measure more sigmas near it.")
    # Where the points cross the fit's own half level, against where the fitted curve sampled
    # at the same sigmas and interpolated the same way crosses it: the interpolation bias of a
    # coarse grid is common to both and cancels, so only a misplaced fit shows.
    level = a_min + 0.5 * drop
    c_fit = crossing(p.s_u, p.a_u, level)
    c_model = crossing(p.s_u, evaluate(mdl, p.s_u, mu, v["slope"], v["delta_a"], a_min), level)
    c_err = _crossing_boot_err(p, out.rep_u, level)
    if math.isfinite(c_fit) and math.isfinite(c_model) and math.isfinite(c_err):
        gap = abs(c_model - c_fit) / math.hypot(v["mu_err_cov"], c_err)
        if gap > SIGNIFICANCE:
            return FitStatus.DISAGREES, (
                f"the points cross the fitted half level {level:.4g} at {c_fit:.4g} ± {c_err:.2g} (bootstrap), "
                f"the fitted curve on the same grid at {c_model:.4g} (fit mu {mu:.4g} ± {v['mu_err_cov']:.2g}): "
                f"{gap:.1f} combined errors apart (> {SIGNIFICANCE:g}): the {name} misplaces the half-way point.")
    interval = (f", bootstrap [{v['mu_boot_lo']:.4g}, {v['mu_boot_hi']:.4g}]"
                if math.isfinite(v["mu_boot_lo"]) else "")
    return FitStatus.OK, (f"mu = {mu:.4g} ± {v['mu_err']:.2g}{interval} ({name}, reduced chi2 "
                          f"{v['chi2_red']:.3g}; crossing {mu_c:.4g}).")

