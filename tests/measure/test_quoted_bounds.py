"""μ is printed as what it is: a curve at chance has no crossing estimate, even where its
noisy points happen to cross their own half level; a curve beyond the grid shows a bound."""

import numpy as np

from fxharden.cli.sweep import _crossing_text, _mu_text
from fxharden.measure.midpoint import FitStatus, fit_midpoint

SIGMAS = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
ERR = np.full(len(SIGMAS), 0.01)


def test_a_curve_at_chance_prints_no_crossing_estimate():
    # peak 0.13 against chance 0.1: at chance; the points still pass their half level (0.115)
    # between σ = 0.02 and 0.05, which is noise, not a midpoint
    acc = np.array([0.13, 0.12, 0.10, 0.09, 0.1, 0.1, 0.1])
    fit = fit_midpoint(SIGMAS, acc, ERR, chance=0.1)
    assert fit.status is FitStatus.AT_CHANCE and np.isfinite(fit.mu_crossing)
    assert _crossing_text(fit) == "-" and _mu_text(fit) == "- (at_chance)"


def test_a_curve_beyond_the_grid_prints_a_bound_and_no_crossing():
    fit = fit_midpoint(SIGMAS, np.full(len(SIGMAS), 0.9), ERR, chance=0.1)
    assert fit.status is FitStatus.BEYOND_GRID
    assert _mu_text(fit) == "> 1 (beyond_grid)" and _crossing_text(fit) == "-"


def test_a_falling_curve_keeps_its_crossing():
    # 0.9 down to chance: the half level 0.5 is crossed between σ = 0.1 (0.8) and 0.2 (0.2)
    acc = np.array([0.9, 0.9, 0.88, 0.8, 0.2, 0.1, 0.1])
    fit = fit_midpoint(SIGMAS, acc, ERR, chance=0.1)
    assert 0.1 < fit.mu_crossing < 0.2
    assert _crossing_text(fit).startswith(f"{fit.mu_crossing:.4g}")
