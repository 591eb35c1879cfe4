"""Sweeps in relative units: σ relative to each site's clean RMS, μ in both units."""

import json
import math

import numpy as np
import pytest
import torch

from fxharden.measure.options import SweepMode, Units
from fxharden.measure.results import SweepPoint, SweepResult, load_result
from fxharden.measure.sweep import sweep

from torch import nn


class Teacher(nn.Module):
    """An MLP labelled by its own clean predictions; ``fc1`` computes with a signal scaled by
    ``shrink`` and is scaled back up after, so the function does not depend on ``shrink``."""

    def __init__(self, shrink: float) -> None:
        super().__init__()
        self.gain, self.fc1, self.act, self.fc2 = 1 / shrink, nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)
        with torch.no_grad():
            self.fc1.weight.mul_(shrink)
            self.fc1.bias.mul_(shrink)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x) * self.gain))


def make_teacher(shrink):
    torch.manual_seed(0)
    model = Teacher(shrink).eval()
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model, (x, model(x).argmax(1))

SIGMAS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]


def per_layer(model, data, units, **kw):
    return sweep(model, data, sigmas=SIGMAS, repeats=2, batch_size=128, mode=SweepMode.PER_LAYER, sites=["fc1"],
                 units=units, **kw)


def test_relative_units_remove_a_pure_rescaling():
    """``fc1`` of the shrunk teacher computes the same function with a 100x smaller signal:
    in absolute units it is far more sensitive, in relative units the curves are the same."""
    (shrunk, data), (plain, _) = make_teacher(0.01), make_teacher(1.0)
    rel = [per_layer(m, data, Units.RELATIVE) for m in (shrunk, plain)]
    acc = [np.array([p.mean for p in r.site_points("fc1")]) for r in rel]
    assert np.abs(acc[0] - acc[1]).max() <= 2 / 256  # at most a couple of rounding-level flips
    assert acc[0][0] > 0.9 and acc[0][-1] < 0.6  # the grid spans the drop
    absolute = [per_layer(m, data, Units.ABSOLUTE) for m in (shrunk, plain)]
    drop = [np.array([p.mean for p in r.site_points("fc1")]) for r in absolute]
    assert drop[0].mean() < drop[1].mean() - 0.2  # absolute units: the shrunk copy is far worse


def test_site_rms_and_the_conversion_between_units(tmp_path):
    model, (x, y) = make_teacher(0.01)
    r = per_layer(model, (x, y), Units.RELATIVE, out=tmp_path)
    with torch.no_grad():
        rms = float(model.fc1(x).double().pow(2).mean().sqrt())  # independent: the eager activation
    assert r.site_rms["fc1"] == pytest.approx(rms, rel=1e-5)
    mu_rel, err_rel = r.mu_in(Units.RELATIVE, "fc1")
    mu_abs, err_abs = r.mu_in(Units.ABSOLUTE, "fc1")
    assert math.isfinite(mu_rel)
    assert mu_abs == pytest.approx(mu_rel * rms, rel=1e-5) and err_abs == pytest.approx(err_rel * rms, rel=1e-5)
    back = load_result(tmp_path)
    assert back.units is Units.RELATIVE and back.site_rms == pytest.approx(r.site_rms)


def test_global_mu_in_both_units():
    model, data = make_teacher(1.0)
    r = sweep(model, data, sigmas=SIGMAS, repeats=2, batch_size=128)
    assert r.units is Units.ABSOLUTE
    ref = math.sqrt(np.mean([r.site_rms[s] ** 2 for s in r.sites]))
    assert r.rms_ref == pytest.approx(ref)
    assert math.isfinite(r.fit.mu)
    assert r.mu_abs[0] == r.fit.mu and math.isnan(r.mu_rel[0])  # no relative sweep was measured
    assert r.equal_power_units is Units.RELATIVE and r.mu_equal_power[0] == pytest.approx(r.fit.mu / ref)


def _relative_result(site_rms):
    """A global relative-units result whose points follow a known log-logistic (μ = 0.34)."""
    rng = np.random.default_rng(0)
    total, sigmas = 4000, np.geomspace(0.03, 3.0, 13)
    acc = 0.1 + 0.8 / (1 + (sigmas / 0.34) ** (1 / 0.3))
    points = [SweepPoint(None, float(s), (tuple(int(c) for c in rng.binomial(total, a, size=3)),), total)
              for s, a in zip(sigmas, acc)]
    return SweepResult(mode=SweepMode.GLOBAL, points=points, sites=list(site_rms), clean_accuracy=0.9,
                       clean_accuracies=[0.9], chance=0.1, num_images=total, networks=["net"], config={},
                       harden_configs=[{}], seed=0, seeding="test", units=Units.RELATIVE,
                       site_rms=dict(site_rms)).refit()


def test_relative_sweep_labels_its_rescaling_equal_power_not_mu_abs():
    """A relative sweep's μ converted by rms_ref is the equal-noise-power rescaling: it is
    never shown or stored as a measured μ_abs (files of earlier versions still load)."""
    site_rms = {"a": 1.0, "b": 3.0}
    r = _relative_result(site_rms)
    assert r.fit.ok, r.fit.message
    rms_ref = math.sqrt((1.0**2 + 3.0**2) / 2)  # by hand: sqrt(mean rms²) = sqrt(5)
    assert math.isnan(r.mu_abs[0])  # was mu_rel · rms_ref, labelled μ_abs
    assert r.mu_rel == (r.fit.mu, r.fit.mu_err)
    assert r.equal_power_units is Units.ABSOLUTE
    assert r.mu_equal_power[0] == pytest.approx(r.fit.mu * rms_ref)
    d = r.to_dict()
    assert d["mu_abs"] is None and d["mu_rel"] == [r.fit.mu, r.fit.mu_err]
    assert d["mu_equal_power"]["units"] == "absolute" and d["mu_equal_power"]["rms_ref"] == pytest.approx(rms_ref)
    assert d["mu_equal_power"]["mu"][0] == pytest.approx(r.fit.mu * rms_ref)
    old = dict(d, mu_abs=list(r.mu_equal_power))  # an earlier version's file: the rescaling under mu_abs
    del old["mu_equal_power"]
    back = SweepResult.from_dict(json.loads(json.dumps(old)))
    assert math.isnan(back.mu_abs[0]) and back.mu_equal_power[0] == pytest.approx(r.fit.mu * rms_ref)


def test_unknown_units_are_refused():
    with pytest.raises(ValueError, match="units must be 'absolute' or 'relative'"):
        sweep(*make_teacher(1.0), units="decibel")
