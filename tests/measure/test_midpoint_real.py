"""The default midpoint fit on measured CIFAR-10 curves (LeNet-5, 25 epochs, all 10,000 test
images, 5 noise repeats), stored as fixtures by ``tests/fixtures/make_curve_fixture.py`` (each
file records the commands that measured it).

Targets: the quoted μ (log-σ model, a_max tied to the clean accuracy) lies within 5 % of the
model-free crossing with reduced χ² < 3, and stays within its error when every second grid
point is dropped.
"""

import json
import math
from pathlib import Path

import pytest

from fxharden.measure.midpoint import MidpointModel
from fxharden.measure.options import FitOptions, SweepMode
from fxharden.measure.results import SweepPoint, SweepResult

FIXTURES = Path(__file__).parents[1] / "fixtures"
CURVES = ["lenet5_fp32_25ep.json", "lenet5_b8_s8_25ep.json"]


def _result(doc, keep=slice(None)):
    pts = [SweepPoint(None, s, tuple(tuple(c) for c in corr), doc["total"])
           for s, corr in zip(doc["sigmas"], doc["correct"])][keep]
    clean = doc["clean_accuracies"]
    return SweepResult(mode=SweepMode.GLOBAL, points=pts, sites=[], clean_accuracy=sum(clean) / len(clean),
                       clean_accuracies=clean, chance=doc["chance"], num_images=doc["total"],
                       networks=["net"] * len(clean), config={}, harden_configs=[], seed=0, seeding="", versions={})


@pytest.mark.parametrize("name", CURVES)
def test_default_fit_on_measured_curve(name):
    doc = json.loads((FIXTURES / name).read_text())
    full = _result(doc).refit(FitOptions(n_boot=100))
    f = full.fit
    assert f.model is MidpointModel.LOG and f.a_max_tied
    assert f.ok, f.message
    assert abs(f.mu - f.mu_crossing) < 0.05 * f.mu_crossing, (f.mu, f.mu_crossing)
    assert f.chi2_red < 3, f.chi2_red
    assert f.mu_boot_lo < f.mu < f.mu_boot_hi
    # every second grid point dropped: μ moves by less than its error
    half = _result(doc, slice(None, None, 2)).refit(FitOptions(n_boot=0))
    assert half.fit.ok, half.fit.message
    assert abs(half.fit.mu - f.mu) < f.mu_err, (half.fit.mu, f.mu, f.mu_err)
    other = _result(doc, slice(1, None, 2)).refit(FitOptions(n_boot=0))
    assert abs(other.fit.mu - f.mu) < f.mu_err, (other.fit.mu, f.mu, f.mu_err)
    # the paper's Eq. 1 on the same points is fitted beside it (for comparison, not quoted)
    assert full.other_fit.model is MidpointModel.PAPER and math.isfinite(full.other_fit.chi2_red)
