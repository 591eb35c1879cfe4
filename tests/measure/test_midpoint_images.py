"""The images are a sample of the data: μ's bootstrap redraws them too (issue item 8).

References: a synthetic population of images with known per-image difficulty (a robustness
threshold each, and noise that blurs it), from which disjoint subsets are drawn, so the
subset-to-subset spread of μ is measured directly; and the closed-form moments of the
threshold model (variance ``a (1 - a) / N``, correlation ``sqrt(a2 (1 - a1) / (a1 (1 - a2)))``).
"""

import numpy as np
import pytest
from scipy.special import ndtr

from fxharden.measure.midpoint import image_sampling_shifts
from fxharden.measure.options import FitOptions, SweepMode
from fxharden.measure.results import SweepPoint, SweepResult, image_share

SIG = np.geomspace(0.03, 3.0, 13)


def _subset_result(clean, thr, rng, reps=5):
    """One network on these images: image i is right at σ with probability
    ``0.1 + 0.9 Φ((ln T_i - ln σ) / 0.3)`` if it is right when clean, else ``0.1 (1 - Φ(·))``."""
    z = ndtr((np.log(thr)[None, :] - np.log(SIG)[:, None]) / 0.3)
    p = np.where(clean[None, :], 0.1 + 0.9 * z, 0.1 * (1 - z))
    n = clean.size
    pts = [SweepPoint(None, float(s), (tuple(int(c) for c in (rng.random((reps, n)) < p[j]).sum(1)),), n)
           for j, s in enumerate(SIG)]
    return SweepResult(mode=SweepMode.GLOBAL, points=pts, sites=["x"], clean_accuracy=float(clean.mean()),
                       clean_accuracies=[float(clean.mean())], chance=0.1, num_images=n, networks=["net"],
                       config={}, harden_configs=[{}], seed=0, seeding="synthetic")


def _spread_over_quoted_error(images, k=12, n=400, seed=0):
    rng = np.random.default_rng(seed)
    clean, thr = rng.random(k * n) < 0.85, np.exp(rng.normal(np.log(0.35), 0.6, k * n))
    mus, errs = [], []
    for i in range(k):  # disjoint subsets of the same population, the same model
        r = _subset_result(clean[i * n:(i + 1) * n], thr[i * n:(i + 1) * n], np.random.default_rng(100 + i))
        fit = r.refit(FitOptions(images=images, n_boot=100)).fit
        assert fit.ok, fit.message
        mus.append(fit.mu)
        errs.append(fit.mu_err)
    return float(np.std(mus, ddof=1) / np.mean(errs))


def test_quoted_error_covers_the_spread_between_disjoint_image_subsets():
    """12 disjoint 400-image subsets: the spread of μ over the mean quoted error is about 1
    (it was about 2: the errors covered only the noise draws)."""
    assert 0.6 < _spread_over_quoted_error(images=True) < 1.6
    assert _spread_over_quoted_error(images=False) > 1.6  # the old bootstrap, for contrast


def test_image_shifts_have_the_threshold_model_moments():
    a = np.array([0.9, 0.5, 0.2, 0.6])
    s = image_sampling_shifts(a, 400, np.ones(4), 20000, np.random.default_rng(0))
    assert s.std(axis=0) == pytest.approx(np.sqrt(a * (1 - a) / 400), rel=0.03)
    corr = np.corrcoef(s.T)
    assert corr[0, 1] == pytest.approx(np.sqrt(0.5 * 0.1 / (0.9 * 0.5)), abs=0.03)  # nested sets: 0.9 ⊃ 0.5
    assert corr[1, 2] == pytest.approx(np.sqrt(0.2 * 0.5 / (0.5 * 0.8)), abs=0.03)
    half = image_sampling_shifts(a, 400, np.full(4, 0.25), 20000, np.random.default_rng(0))
    assert half.std(axis=0) == pytest.approx(0.5 * np.sqrt(a * (1 - a) / 400), rel=0.03)


def test_image_share_splits_the_bernoulli_variance():
    """Deterministic images (p_i ∈ {0, 1}): all variance is between images, share 1; every image
    a coin (p_i = 0.5): none is, share ≈ 0; half each at p 0.8 / 0.2: Var_i(p) / (a (1 - a)) = 0.09 / 0.25."""
    rng = np.random.default_rng(0)

    def point(p_i, reps=400):
        return SweepPoint(None, 1.0, (tuple(int(c) for c in (rng.random((reps, p_i.size)) < p_i).sum(1)),), p_i.size)

    assert image_share(point(np.r_[np.ones(500), np.zeros(500)])) == 1.0
    assert image_share(point(np.full(1000, 0.5))) < 0.1
    assert image_share(point(np.r_[np.full(500, 0.8), np.full(500, 0.2)])) == pytest.approx(0.36, abs=0.08)
    assert image_share(SweepPoint(None, 1.0, ((500,),), 1000)) == 1.0  # one repeat: no estimate, all of it


def test_old_files_keep_their_options_and_new_ones_redraw_images():
    assert FitOptions().images is True
    assert FitOptions.from_dict({"model": "log", "n_boot": 200}).images is False  # written before the option
    assert FitOptions.from_dict(FitOptions().to_dict()).images is True
