"""Midpoint noise level fit (fxharden.measure.midpoint): recovery, error calibration, degenerate cases.

References are independent of the module: synthetic data come from Eq. 1 written out here,
the global optimum is checked by a profile grid search (δa and a_min are linear given μ, s),
and the crossing estimate against hand-computed interpolations.
"""

import json
import math
import warnings
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fxharden.measure.midpoint import FitStatus, MidpointFit, fit_midpoint, midpoint_model

fit_paper = partial(fit_midpoint, model="paper")

LIN = np.linspace(0.0, 2.0, 11)
LOG = np.geomspace(0.02, 2.0, 12)


def eq1(sig, mu, s, da, amin):
    """Paper Eq. 1, written independently of the module."""
    return 2.0 * da / (1.0 + np.exp((np.asarray(sig, float) - mu) / s)) + amin


def synth(grid, mu=0.7, s=0.1, da=0.4, amin=0.1, err=0.01, seed=0):
    rng = np.random.default_rng(seed)
    acc = np.clip(eq1(grid, mu, s, da, amin) + rng.normal(0.0, err, len(grid)), 0.0, 1.0)
    return acc, np.full(len(grid), err)


def profile_min_chi2(sig, acc, err, mus, slopes):
    """Grid search over (μ, s); δa and a_min by weighted linear least squares (2x2 normal eqs)."""
    M, S = np.meshgrid(mus, slopes, indexing="ij")
    g = 2.0 / (1.0 + np.exp((sig[None, None, :] - M[..., None]) / S[..., None]))  # (m, s, n)
    w = 1.0 / err**2
    sgg, sg, s1 = (w * g * g).sum(-1), (w * g).sum(-1), w.sum()
    sgy, sy = (w * g * acc).sum(-1), (w * acc).sum()
    det = sgg * s1 - sg**2
    da, amin = (sgy * s1 - sg * sy) / det, (sgg * sy - sg * sgy) / det
    chi2 = (w * (da[..., None] * g + amin[..., None] - acc) ** 2).sum(-1)
    i = np.unravel_index(np.argmin(chi2), chi2.shape)
    return float(chi2[i]), float(M[i])


# --------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("grid", [LIN, LOG], ids=["linear", "log"])
@pytest.mark.parametrize("slope", [0.05, 0.1, 0.2])
def test_recovers_known_mu(grid, slope):
    acc, err = synth(grid, s=slope, seed=int(slope * 100))
    r = fit_paper(grid, acc, err, chance=0.1)
    assert r.status is FitStatus.OK and r.ok, r.message
    assert abs(r.mu - 0.7) < 3 * r.mu_err
    assert 0 < r.mu_err < 0.1
    assert abs(r.delta_a - 0.4) < 0.03 and abs(r.a_min - 0.1) < 0.03
    assert abs(r.mu_crossing - 0.7) <= 3 * r.mu_crossing_err
    assert r.chi2_red < 5 and r.dof == len(grid) - 4 and r.weighted
    # the optimizer found the global minimum: no (μ, s) on a fine grid does better
    chi2_grid, mu_grid = profile_min_chi2(grid, acc, err, np.linspace(0.4, 1.0, 121), np.geomspace(0.01, 0.6, 80))
    assert r.chi2 <= chi2_grid + 1e-6
    assert abs(mu_grid - r.mu) < max(r.mu_err, 0.01)


@pytest.mark.parametrize("grid,fix", [(LIN, False), (LOG, True)], ids=["linear-free", "log-fixed"])
def test_mu_err_is_calibrated(grid, fix):
    """Pulls (μ_fit − μ_true)/μ_err over 50 datasets have unit width."""
    pulls, n_ok = [], 0
    for seed in range(50):
        acc, err = synth(grid, seed=1000 + seed)
        r = fit_paper(grid, acc, err, chance=0.1, fix_a_min=fix)
        n_ok += r.ok
        if r.ok:
            pulls.append((r.mu - 0.7) / r.mu_err)
    assert n_ok >= 45
    assert 0.6 < np.std(pulls) < 1.6
    assert abs(np.mean(pulls)) < 0.6


def test_fix_a_min_uses_chance():
    acc, err = synth(LIN, seed=5)
    free = fit_paper(LIN, acc, err, chance=0.1)
    fixed = fit_paper(LIN, acc, err, chance=0.1, fix_a_min=True)
    assert fixed.ok, fixed.message
    assert fixed.a_min == 0.1 and fixed.a_min_err == 0.0 and fixed.fixed_a_min
    assert fixed.param_names == ("mu", "slope", "delta_a") and fixed.cov_matrix.shape == (3, 3)
    assert free.param_names == ("mu", "slope", "delta_a", "a_min") and free.cov_matrix.shape == (4, 4)
    assert fixed.dof == free.dof + 1
    assert abs(fixed.mu - 0.7) < 3 * fixed.mu_err
    assert fixed.mu_err <= 1.05 * free.mu_err  # one parameter fewer: no larger error
    with pytest.raises(ValueError, match="chance"):
        fit_paper(LIN, acc, err, fix_a_min=True)


def test_unweighted_fit_and_input_forms():
    acc, _ = synth(LIN, seed=7)
    r = fit_paper(list(LIN), list(acc))
    assert r.ok and not r.weighted and "unweighted" in r.message
    assert abs(r.mu - 0.7) < 3 * r.mu_err
    # order and repeated sigmas do not matter beyond averaging
    perm = np.random.default_rng(0).permutation(len(LIN))
    acc2, err2 = synth(LIN, seed=8)
    a = fit_paper(LIN, acc2, err2)
    b = fit_paper(LIN[perm], acc2[perm], err2[perm])
    assert a.status is b.status and math.isclose(a.mu, b.mu, rel_tol=1e-6)
    rep = fit_paper(np.r_[LIN, LIN], np.r_[acc2, acc2], np.r_[err2, err2])
    assert rep.ok and rep.n_points == 22 and abs(rep.mu - a.mu) < a.mu_err / 10


def test_curve_and_model_match_eq1():
    acc, err = synth(LIN, seed=3)
    r = fit_paper(LIN, acc, err)
    x = np.linspace(0, 3, 31)
    np.testing.assert_allclose(r.curve(x), eq1(x, r.mu, r.slope, r.delta_a, r.a_min), rtol=1e-12)
    assert math.isclose(float(r.curve([r.mu])[0]), r.delta_a + r.a_min)  # half way
    assert math.isclose(r.a_max, r.a_min + 2 * r.delta_a)
    assert np.all(np.isfinite(midpoint_model([0.0, 1e6], 0.1, 1e-4, 0.4, 0.1)))  # no overflow


# ----------------------------------------------------------------- crossing estimate
def test_crossing_linear_and_log_interpolation():
    acc = [0.9, 0.8, 0.4, 0.2]  # half of max/min = 0.55, reached 5/8 of the way from pt 1 to 2
    # a σ = 0 point (the clean accuracy) does not switch the grid to linear σ: ln σ between σ > 0
    lin = fit_paper([0.0, 1.0, 2.0, 3.0], acc, [0.01] * 4)
    assert math.isclose(lin.mu_crossing, 2**0.625)
    # only a crossing in the segment from σ = 0 is interpolated linearly: 0.35/0.5 of the way to 1
    first = fit_paper([0.0, 1.0, 2.0, 3.0], [0.9, 0.4, 0.3, 0.2], [0.01] * 4)
    assert math.isclose(first.mu_crossing, 0.7)
    log = fit_paper([0.1, 1.0, 10.0, 100.0], acc, [0.01] * 4)
    assert math.isclose(log.mu_crossing, 10**0.625)
    # its error: the spread of the crossing over curves redrawn within the errors, plus the
    # interpolation ambiguity; a 0.01 error on a 0.4 step moves it by about 0.01/0.4 of the interval
    assert 0.01 < lin.mu_crossing_err < 0.25 and 0.1 < log.mu_crossing_err < 9.0


# ----------------------------------------------------------------- degenerate cases
def test_never_falls_is_beyond_grid():
    rng = np.random.default_rng(1)
    r = fit_paper(LIN, 0.9 + rng.normal(0, 0.01, 11), np.full(11, 0.01))
    assert r.status is FitStatus.BEYOND_GRID and not r.ok
    assert math.isnan(r.mu) and r.mu_lower == 2.0 and np.all(np.isnan(r.curve(LIN)))
    assert "chance=" in r.message


def test_partial_drop_is_never_ok():
    acc, err = synth(LIN, mu=2.5, s=0.3, seed=2)  # falls from 0.9 to ~0.77 only
    with_chance = fit_paper(LIN, acc, err, chance=0.1)
    assert with_chance.status is FitStatus.BEYOND_GRID and math.isnan(with_chance.mu)
    assert with_chance.mu_lower == 2.0 and "half way to chance" in with_chance.message
    # free a_min: either the fit puts mu past the grid, or it lacks a lower plateau
    for seed in range(6):
        r = fit_paper(LIN, *synth(LIN, mu=2.5, s=0.3, seed=seed))
        assert r.status in (FitStatus.BEYOND_GRID, FitStatus.FIT_FAILED), r.message
    r = fit_paper(LIN, *synth(LIN, mu=2.1, s=0.4, seed=1))
    assert r.status is FitStatus.BEYOND_GRID and math.isnan(r.mu) and "extrapolation" in r.message


def test_missing_lower_plateau_needs_fixed_a_min():
    acc, err = synth(LIN, mu=1.7, s=0.3, seed=3)  # last point still 0.2 above chance
    free = fit_paper(LIN, acc, err)
    assert free.status is FitStatus.FIT_FAILED and "lower plateau" in free.message
    assert np.isfinite(free.mu)  # values kept for inspection
    fixed = fit_paper(LIN, acc, err, chance=0.1, fix_a_min=True)
    assert fixed.ok, fixed.message
    assert abs(fixed.mu - 1.7) < 3 * fixed.mu_err


def test_at_chance_from_the_start():
    rng = np.random.default_rng(2)
    acc = np.clip(0.1 + rng.normal(0, 0.01, 11), 0, 1)
    r = fit_paper(LIN, acc, np.full(11, 0.01), chance=0.1)
    assert r.status is FitStatus.AT_CHANCE and not r.ok and math.isnan(r.mu)


def test_flat_noisy_and_rising_curves():
    zigzag = np.where(np.arange(11) % 2, 0.3, 0.8)
    assert fit_paper(LIN, zigzag, np.full(11, 0.01)).status is FitStatus.FLAT
    rising = eq1(LIN, 1.0, 0.1, -0.3, 0.8)
    r = fit_paper(LIN, rising, np.full(11, 0.01))
    assert r.status is FitStatus.FLAT and "rises" in r.message


def test_too_few_points():
    r = fit_paper([0.0, 0.5, 1.0], [0.9, 0.5, 0.1], [0.01] * 3)
    assert r.status is FitStatus.FIT_FAILED and math.isnan(r.mu)
    assert math.isclose(r.mu_crossing, 0.5)
    assert fit_paper([0.3], [0.8]).status is FitStatus.FIT_FAILED
    # unweighted needs dof >= 3: 5 points, 4 parameters
    r = fit_paper(LIN[::2][:5], synth(LIN[::2][:5])[0])
    assert r.status is FitStatus.FIT_FAILED and np.isfinite(r.mu_crossing)


def test_step_like_drop_has_grid_limited_error():
    acc = np.where(LIN < 0.9, 0.9, 0.1)
    r = fit_paper(LIN, acc, np.full(11, 0.01))
    assert r.ok and 0.8 < r.mu < 1.0
    assert r.mu_err >= 0.2 / math.sqrt(12) - 1e-12


@pytest.mark.parametrize("grid", [np.linspace(0.05, 3, 15), np.geomspace(0.05, 3, 12)], ids=["linear", "log"])
@pytest.mark.parametrize("fix", [False, True])
def test_noisy_training_curve_stays_bounded(grid, fix):
    """acc = 0.1 + 0.6 exp(-σ/0.8) falls from the smallest σ on: not a logistic in σ."""
    rng = np.random.default_rng(11)
    acc = 0.1 + 0.6 * np.exp(-grid / 0.8) + rng.normal(0, 0.005, len(grid))
    err = np.full(len(grid), 0.005)
    r = fit_paper(grid, acc, err, chance=0.1, fix_a_min=fix)
    rng_obs = acc.max() - acc.min()
    assert np.isfinite(r.mu) and r.mu > 0 and np.isfinite(r.mu_err)
    assert 0 < r.delta_a <= rng_obs + 1e-9 and 0 <= r.a_min <= acc.max()
    # model-free crossing: where the noiseless curve is half way between the observed max/min
    half = 0.5 * (acc.max() + acc.min())
    exact = -0.8 * math.log((half - 0.1) / 0.6)
    assert abs(r.mu_crossing - exact) < 3 * r.mu_crossing_err
    # the logistic's tail is not a half-way point: flagged one way or the other, and quoted as
    # the marked crossing, never as mu
    assert not r.ok and r.status in (FitStatus.DISAGREES, FitStatus.FIT_FAILED, FitStatus.POOR_FIT), r.message
    q = r.quote()
    assert q.kind.value == "crossing" and q.value == r.mu_crossing and q.text().startswith("~")


# ----------------------------------------------------------------- uncertainties
def test_zero_uncertainties_do_not_crash():
    acc = eq1(LIN, 1.0, 0.15, 0.4, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = fit_paper(LIN, acc, np.zeros(11))
        assert r.ok and not r.weighted and "zero" in r.message and abs(r.mu - 1.0) < 1e-6
        err = np.full(11, 0.01)
        err[[0, 5]] = 0.0
        r = fit_paper(LIN, acc, err)
        assert r.ok and r.weighted and np.isfinite(r.mu_err) and r.mu_err > 0 and "raised" in r.message


# ----------------------------------------------------------------- input validation
@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (([0, 1, 2], [0.9, 0.5]), {}, "3 values but acc has 2"),
        (([0, 1, 2], [0.9, 0.5, 0.1], [0.01, 0.01]), {}, "acc_err has 2"),
        (([-0.1, 1, 2], [0.9, 0.5, 0.1]), {}, ">= 0"),
        (([0, 1, np.nan], [0.9, 0.5, 0.1]), {}, "NaN"),
        (([0, 1, 2], [0.9, np.nan, 0.1]), {}, "NaN"),
        (([0, 1, 2], [90, 50, 10]), {}, "fractions"),
        (([0, 1, 2], [0.9, 0.5, 0.1], [0.01, -0.01, 0.01]), {}, "acc_err"),
        (([[0, 1]], [[0.9, 0.5]]), {}, "1-D"),
        (([], []), {}, "empty"),
        (([0, 1, 2], [0.9, 0.5, 0.1]), {"chance": 1.5}, "chance"),
    ],
)
def test_bad_input_raises_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_paper(*args, **kwargs)


# ----------------------------------------------------------------- serialization
def test_to_dict_from_dict_round_trip():
    acc, err = synth(LIN, seed=4)
    for r in (
        fit_paper(LIN, acc, err, chance=0.1, fix_a_min=True),
        fit_paper(LIN, np.full(11, 0.9), err),
    ):
        text = json.dumps(r.to_dict(), allow_nan=False)  # NaN became None
        back = MidpointFit.from_dict(json.loads(text))
        assert back.to_dict() == r.to_dict() and back.status is r.status and back.ok == r.ok
        for name in ("mu", "mu_err", "mu_crossing", "mu_lower", "chance"):
            a, b = getattr(r, name), getattr(back, name)
            assert a == b or (math.isnan(a) and math.isnan(b))
        np.testing.assert_array_equal(back.cov_matrix, r.cov_matrix)


# ----------------------------------------------------------------- property test
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 5), st.floats(0, 1), st.floats(0, 0.1)), min_size=1, max_size=14),
    st.booleans(),
    st.sampled_from([None, 0.0, 0.1]),
)
def test_never_raises_on_valid_data_and_ok_means_sane(points, use_err, chance):
    sig, acc, err = (np.array(c) for c in zip(*points))
    r = fit_paper(sig, acc, err if use_err else None, chance=chance)
    assert isinstance(r.status, FitStatus) and r.ok == (r.status is FitStatus.OK) and r.message
    json.dumps(r.to_dict(), allow_nan=False)
    if r.ok:
        assert 0 < r.mu <= sig.max() and np.isfinite(r.mu_err) and np.isfinite(r.mu_crossing)
        assert abs(r.mu - r.mu_crossing) <= 3 * math.hypot(r.mu_err, r.mu_crossing_err)
    if r.status is FitStatus.BEYOND_GRID:
        assert math.isnan(r.mu) and r.mu_lower == sig.max()
