"""The log-σ midpoint model, the constraints, the bootstrap errors and the quoted value.

Synthetic curves are written out here, independently of the module: a logistic in ln σ,
``a_min + 2 δa / (1 + (σ/μ)^(1/w))``, and Eq. 1, a logistic in σ. Error claims are checked
against the spread of independent redraws (pulls, coverage), not against earlier output.
"""

import math

import numpy as np
import pytest

from fxharden.measure.midpoint import FitStatus, MidpointModel, QuoteKind, fit_midpoint
from fxharden.measure.options import FitOptions, SweepMode
from fxharden.measure.results import SweepPoint, SweepResult

GRID = np.geomspace(1e-2, 10.0, 16)
MU, W, A_MAX, A_MIN = 0.3, 0.5, 0.65, 0.1


def loglogistic(sig, mu=MU, w=W, a_max=A_MAX, a_min=A_MIN):
    return a_min + (a_max - a_min) / (1.0 + (np.asarray(sig, float) / mu) ** (1.0 / w))


def eq1(sig, mu=0.7, s=0.1, a_max=0.9, a_min=0.1):
    return a_min + (a_max - a_min) / (1.0 + np.exp((np.asarray(sig, float) - mu) / s))


def draw(curve, grid, err, seed):
    rng = np.random.default_rng(seed)
    return np.clip(curve(grid) + rng.normal(0.0, err, len(grid)), 0, 1), np.full(len(grid), err)


# ------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("w", [0.25, 0.5, 1.0])
def test_log_model_recovers_known_mu(w):
    acc, err = draw(lambda s: loglogistic(s, w=w), GRID, 0.006, seed=int(w * 100))
    r = fit_midpoint(GRID, acc, err, chance=0.1, plateau=(A_MAX, 0.005))
    assert r.ok and r.model is MidpointModel.LOG, r.message
    assert abs(r.mu - MU) < 3 * r.mu_err and r.mu_err < 0.1 * MU
    assert abs(r.slope - w) < 3 * r.slope_err
    assert abs(r.a_max - A_MAX) < 0.01 and abs(r.a_min - A_MIN) < 0.02
    assert r.chi2_red < 3 and abs(r.mu_crossing - MU) < 3 * r.mu_crossing_err
    np.testing.assert_allclose(r.curve(GRID), loglogistic(GRID, r.mu, r.slope, r.a_max, r.a_min), rtol=1e-10)


def test_paper_model_recovers_known_mu_on_linear_logistic_data():
    grid = np.linspace(0.05, 2.0, 14)
    acc, err = draw(eq1, grid, 0.01, seed=3)
    r = fit_midpoint(grid, acc, err, chance=0.1, model="paper", plateau=(0.9, 0.01))
    assert r.ok and r.model is MidpointModel.PAPER, r.message
    assert abs(r.mu - 0.7) < 3 * r.mu_err and abs(r.slope - 0.1) < 3 * r.slope_err


@pytest.mark.parametrize("model,curve,grid", [
    ("log", loglogistic, GRID), ("paper", eq1, np.linspace(0.05, 2.0, 14))], ids=["log", "paper"])
def test_pulls_have_unit_width(model, curve, grid):
    """(μ_fit − μ_true) / mu_err over 40 redraws: mean ≈ 0, width ≈ 1."""
    true = MU if model == "log" else 0.7
    top = float(curve(np.array([0.0 if model == "paper" else 1e-9]))[0])
    pulls = []
    for seed in range(40):
        acc, err = draw(curve, grid, 0.008, seed=100 + seed)
        r = fit_midpoint(grid, acc, err, chance=0.1, model=model, plateau=(top, 0.004), n_boot=0)
        if r.ok:
            pulls.append((r.mu - true) / r.mu_err)
    assert len(pulls) >= 36
    assert 0.65 < np.std(pulls) < 1.4 and abs(np.mean(pulls)) < 0.5


def test_log_model_fits_where_eq1_cannot():
    """On a log-logistic curve with a measured upper plateau, Eq. 1 is a poor fit; its status
    says so (reduced χ²), not that a plateau is missing."""
    acc, err = draw(loglogistic, GRID, 0.004, seed=7)
    n_top = int(np.sum(loglogistic(GRID) > A_MAX - 0.03))
    assert n_top >= 5  # the points do form an upper plateau
    log = fit_midpoint(GRID, acc, err, chance=0.1, plateau=(A_MAX, 0.004))
    paper = fit_midpoint(GRID, acc, err, chance=0.1, model="paper", plateau=(A_MAX, 0.004))
    assert log.ok and log.chi2_red < 3
    assert not paper.ok and paper.chi2_red > 5 and paper.status is FitStatus.POOR_FIT
    assert "plateau" not in paper.message and "reduced chi2" in paper.message
    # with a_max free, Eq. 1 overshoots the measured plateau; the message says what was measured
    free = fit_midpoint(GRID, acc, err, chance=0.1, model="paper")
    assert free.status is FitStatus.FIT_FAILED and free.a_max > A_MAX + 0.1
    assert f"level off at {acc.max():.4g}" in free.message and "no upper plateau" not in free.message


# ---------------------------------------------------------------------- constraints
def test_a_max_never_exceeds_one_and_tied_a_max_follows_the_plateau():
    acc, err = draw(lambda s: loglogistic(s, a_max=0.995), GRID, 0.01, seed=2)
    free = fit_midpoint(GRID, acc, err, chance=0.1)
    assert free.a_max <= 1.0 + 1e-12
    # a curve that falls from the smallest σ on: free a_max runs above the clean accuracy,
    # tied a_max stays within its error of it
    grid = np.geomspace(0.1, 10, 12)
    acc, err = draw(lambda s: loglogistic(s, mu=0.6, w=0.8), grid, 0.004, seed=4)
    tied = fit_midpoint(grid, acc, err, chance=0.1, plateau=(0.65, 0.003))
    assert abs(tied.a_max - 0.65) < 3 * 0.003 and tied.a_max_tied and tied.plateau == 0.65
    assert abs(tied.mu - 0.6) < 3 * tied.mu_err and tied.ok, tied.message
    loose = fit_midpoint(grid, acc, err, chance=0.1)
    assert not loose.a_max_tied and math.isnan(loose.plateau)


def test_a_min_stays_near_chance_and_non_negative():
    acc, err = draw(lambda s: loglogistic(s, a_min=0.0), GRID, 0.01, seed=5)
    r = fit_midpoint(GRID, acc, err)
    assert r.a_min >= 0.0
    # a curve that levels off at 0.35 with chance 0.1: a_min may not follow it above chance + 10 %
    acc, err = draw(lambda s: loglogistic(s, a_min=0.35), GRID, 0.004, seed=6)
    r = fit_midpoint(GRID, acc, err, chance=0.1, plateau=(A_MAX, 0.004))
    assert r.a_min <= 0.1 + 0.1 * 0.9 + 1e-9 and not r.ok


# ---------------------------------------------------------------------- uncertainties
def _repeats(seed, n_rep=5, err=0.01):
    rng = np.random.default_rng(seed)
    return np.clip(loglogistic(GRID)[None, :] + rng.normal(0.0, err, (n_rep, len(GRID))), 0, 1)


def test_bootstrap_interval_covers_true_mu_about_68_percent():
    hits, n = 0, 20
    rng = np.random.default_rng(0)
    for seed in range(n):
        reps = _repeats(1000 + seed)
        acc, err = reps.mean(0), reps.std(0, ddof=1) / math.sqrt(reps.shape[0])
        boot = np.stack([reps[rng.integers(5, size=(5, len(GRID))), np.arange(len(GRID))].mean(0)
                         for _ in range(60)])
        r = fit_midpoint(GRID, acc, err, chance=0.1, plateau=(A_MAX, 0.004), replicas=boot)
        assert r.n_boot >= 55 and r.mu_boot_lo < r.mu < r.mu_boot_hi
        hits += r.mu_boot_lo <= MU <= r.mu_boot_hi
    # 68 % nominal; resampling 5 repeats narrows the interval by about sqrt(4/5)
    assert 0.4 * n <= hits <= 0.95 * n


def test_crossing_error_matches_the_spread_of_redrawn_crossings():
    crossings, errs = [], []
    for seed in range(40):
        acc, err = draw(loglogistic, GRID, 0.01, seed=500 + seed)
        r = fit_midpoint(GRID, acc, err, chance=0.1, plateau=(A_MAX, 0.005), seed=seed)
        crossings.append(r.mu_crossing)
        errs.append(r.mu_crossing_err)
    ratio = np.median(errs) / np.std(crossings, ddof=1)
    assert 0.6 < ratio < 1.7


def test_systematic_floor_adds_in_quadrature():
    acc, err = draw(loglogistic, GRID, 0.006, seed=8)
    a = fit_midpoint(GRID, acc, err, chance=0.1, plateau=(A_MAX, 0.004))
    b = fit_midpoint(GRID, acc, err, chance=0.1, plateau=(A_MAX, 0.004), systematic=0.05)
    assert math.isclose(b.mu_err**2, a.mu_err**2 + (0.05 * a.mu) ** 2, rel_tol=1e-9)
    with pytest.raises(ValueError, match="systematic"):
        fit_midpoint(GRID, acc, err, systematic=-0.1)


# ---------------------------------------------------------------------- quoted value
def test_quote_is_mu_only_when_ok():
    acc, err = draw(loglogistic, GRID, 0.006, seed=9)
    ok = fit_midpoint(GRID, acc, err, chance=0.1, plateau=(A_MAX, 0.004)).quote()
    assert ok.kind is QuoteKind.MU and ok.is_mu and "~" not in ok.text()
    beyond = fit_midpoint(GRID, np.full(16, 0.65), np.full(16, 0.005), chance=0.1).quote()
    assert beyond.kind is QuoteKind.LOWER_BOUND and beyond.text().startswith("> 10")
    chance = fit_midpoint(GRID, np.full(16, 0.1), np.full(16, 0.005), chance=0.1).quote()
    assert chance.kind is QuoteKind.NONE and math.isnan(chance.value) and chance.sort_key == math.inf
    bad = fit_midpoint(GRID, acc, err, chance=0.1, model="paper")
    q = bad.quote()
    assert not bad.ok and q.kind is QuoteKind.CROSSING and q.value == bad.mu_crossing
    assert q.text().startswith("~") and bad.status.value in q.text()


def test_unknown_model_and_bad_plateau_are_explained():
    with pytest.raises(ValueError, match="'log', 'paper'"):
        fit_midpoint(GRID, loglogistic(GRID), model="linear")
    with pytest.raises(ValueError, match="plateau"):
        fit_midpoint(GRID, loglogistic(GRID), plateau=(0.6, 0.0))
    with pytest.raises(ValueError, match="replicas"):
        fit_midpoint(GRID, loglogistic(GRID), replicas=np.zeros((3, 2)))


def test_step_like_drop_has_grid_limited_error_in_log_sigma():
    acc = np.where(GRID < 0.3, 0.65, 0.1)
    r = fit_midpoint(GRID, acc, np.full(16, 0.005), chance=0.1)
    step = math.log(GRID[1] / GRID[0])
    assert r.ok and GRID[6] < r.mu < GRID[8], r.message
    assert r.mu_err >= r.mu * step / math.sqrt(12) * (1 - 1e-9)


# ---------------------------------------------------------------------- sweep results
def _result(n_nets, seed=0, total=2000, reps=4):
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, 0.1, n_nets)  # networks differ in μ by about 10 %
    points = []
    for s in GRID:
        p = [loglogistic(s, mu=MU * math.exp(o)) for o in offsets]
        points.append(SweepPoint(None, float(s), tuple(tuple(int(c) for c in rng.binomial(total, pi, reps))
                                                       for pi in p), total))
    return SweepResult(mode=SweepMode.GLOBAL, points=points, sites=["a"], clean_accuracy=A_MAX,
                       clean_accuracies=[A_MAX] * n_nets, chance=0.1, num_images=total, networks=["n"] * n_nets,
                       config={}, harden_configs=[], seed=0, seeding="", versions={})


def test_dy_is_the_spread_across_networks():
    r = _result(4)
    for p in r.points:
        per_net = np.asarray(p.correct, float).mean(1) / p.total
        assert math.isclose(p.dy, max(per_net.std(ddof=1), p.err / 100), rel_tol=1e-12) or p.dy >= per_net.std(ddof=1)
        assert p.dy >= p.err  # the spread, not its standard error
    single = _result(1)
    assert all(p.dy == p.err for p in single.points)


def test_result_carries_both_models_and_old_files_load():
    r = _result(3).refit(FitOptions(n_boot=60))
    assert r.fit.model is MidpointModel.LOG and r.other_fit.model is MidpointModel.PAPER
    assert r.fit.a_max_tied and r.fit.n_boot >= 50 and len(r.network_fits) == 3
    d = r.to_dict()
    assert d["fit"]["model"] == "log" and d["other_fit"]["model"] == "paper" and d["fit_options"]["n_boot"] == 60
    back = SweepResult.from_dict(d)
    assert back.fit == r.fit and back.other_fit == r.other_fit and back.fit_options == r.fit_options
    # a file written before the log model: its fits lack "model"; they are redone on load
    old = dict(d, format=d["format"])
    old["fit"] = {k: v for k, v in d["other_fit"].items() if k not in ("model", "mu_err_cov", "n_boot")}
    for key in ("other_fit", "other_per_site", "fit_options"):
        old.pop(key)
    loaded = SweepResult.from_dict(old)
    assert loaded.fit.model is MidpointModel.LOG and loaded.other_fit.model is MidpointModel.PAPER
    assert loaded.fit.ok and abs(loaded.fit.mu - r.fit.mu) < 0.2 * r.fit.mu_err  # same points, other bootstrap size
