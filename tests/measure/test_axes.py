"""Sweeps along a hardware axis: time after programming (a test-local device model whose effect
on accuracy has a closed form), the σ of one weight-noise link (chips whose accuracy is 0 or 1
with a known probability), the output-noise σ, the fit of μ along the axis, files and resume."""

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import ClassVar, FrozenSet

import numpy as np
import pytest
import torch
from torch import nn

import fxharden
from fxharden.core.config import HardenConfig, NoiseConfig, SiteKind, WeightNoise
from fxharden.core.noise import MODELS, Additive, NoiseModel, Role, SigmaUnits
from fxharden.core.noise.verbs import weight_noise_modules
from fxharden.measure.axes import STANDARD_TIMES, Axis, AxisConfig, sweep_axis
from fxharden.measure.axis_result import (AXIS_PNG, AXIS_RESULTS_CSV, AXIS_RESULTS_JSON, AxisResult,
                                          load_axis_result)
from fxharden import QuoteKind
from fxharden.measure.results import FitOptions
from fxharden.measure.sweep_points import SweepPoint

NU, T0 = 0.05, 1.0


@dataclass(frozen=True)
class Aging(NoiseModel):
    """Test device: every weight scaled by ``(t / t0)^(-ν σ)``, deterministic (no draw used)."""

    name: ClassVar[str] = "test_aging"
    acts_on: ClassVar[FrozenSet[Role]] = frozenset({Role.WEIGHTS})
    units: ClassVar[SigmaUnits] = SigmaUnits.DIMENSIONLESS
    t: float = T0
    t0: float = T0
    nu: float = NU

    def aged(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        xd = x.detach()
        return xd * torch.exp(-self.nu * math.log(self.t / self.t0) * s) + (x - xd)

    def apply(self, x, eps, sigma, rms=-1.0, out=None, group_dim=None):
        res = self.aged(x, sigma)
        return out.copy_(res) if out is not None else res

    def apply_tensor(self, x, eps, sigma, rms, group_dim=None):
        return self.aged(x, sigma)


@pytest.fixture
def aging():
    MODELS[Aging.name] = Aging  # registered for this test only (the package's registry stays as it ships)
    try:
        yield Aging
    finally:
        MODELS.pop(Aging.name, None)


def threshold_net():
    """Predicts class 0 iff ``s x > 1`` when its weight is scaled by ``s`` (the bias is not)."""
    net = nn.Linear(1, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net.bias.copy_(torch.tensor([-1.0, 1.0]))
    return net


X = (np.arange(400) + 0.5) / 200  # (0, 2): half the points above the threshold 1
DATA = (torch.tensor(X, dtype=torch.float32)[:, None], torch.tensor((X <= 1).astype(np.int64)))


def expected_accuracy(t: float) -> float:
    """Closed form: weight scale s = (t/t0)^-ν; a point is wrong iff 1 < x <= 1/s."""
    edge = (t / T0) ** NU
    assert np.abs(X - edge).min() > 1e-4  # no point on the edge: rounding cannot decide it
    return 1.0 - float(np.mean((X > 1) & (X <= edge)))


def test_time_sweep_follows_the_closed_form_and_restores_the_model(aging, tmp_path):
    cfg = HardenConfig(quant=None, weight_noise=(WeightNoise(Aging(t=7.0), 1.0, "aging"),))
    hm = fxharden.harden(threshold_net(), config=cfg)
    result = sweep_axis(hm, DATA, "time", repeats=2, batch_size=64, out=tmp_path)
    assert result.values == list(STANDARD_TIMES)
    for p in result.points:
        assert p.mean == pytest.approx(expected_accuracy(p.sigma), abs=1e-12)
    assert result.points[-1].mean == 0.5 and result.chance == 0.5  # a year: every x > 1 misclassified
    assert [m.model.t for m in weight_noise_modules(hm).values()] == [7.0]  # the model as it was
    assert result.time_links == ["linear.weight.aging"]
    for name in (AXIS_RESULTS_JSON, AXIS_RESULTS_CSV, AXIS_PNG):
        assert (tmp_path / name).is_file()
    back = load_axis_result(tmp_path)
    assert [p.mean for p in back.points] == [p.mean for p in result.points] and back.axis is Axis.TIME
    again = sweep_axis(hm, DATA, "time", repeats=2, batch_size=64, out=tmp_path)  # resumed: nothing measured
    assert again.timing["chunks_measured"] == 0 and [p.correct for p in again.points] == [p.correct for p in
                                                                                          result.points]


def test_weight_sigma_chips_draw_once_for_the_whole_data_set():
    """Logits ``(w0 x, w1 x)`` with ``w = (1, 0) + σ ε``: a chip is right on every point iff
    ``w0 > w1``, so each chip's accuracy is exactly 0 or 1 (one draw for all 16 batches), and
    the share of good chips is ``Φ(1 / (σ √2))``."""
    net = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [0.0]]))
    x = torch.tensor([1.0, -1.0] * 64)[:, None]
    y = (x[:, 0] < 0).long()
    hm = fxharden.harden(net, config=HardenConfig(quant=None, weight_noise=(WeightNoise(Additive(), 0.3),)))
    chips = 400
    result = sweep_axis(hm, (x, y), "weight-sigma", values=[0.5, 1.0], repeats=chips, batch_size=8)
    assert result.reference.mean == 1.0  # σ = 0 on the swept link: the plain network
    for p in result.points[1:]:
        acc = p.accuracy[0]
        assert set(np.unique(acc)) <= {0.0, 1.0}
        prob = 0.5 * (1 + math.erf(1 / (p.sigma * math.sqrt(2)) / math.sqrt(2)))
        assert abs(acc.mean() - prob) < 5 * math.sqrt(prob * (1 - prob) / chips)
        assert abs(acc.std() - math.sqrt(prob * (1 - prob))) < 0.08  # the chip spread
    assert [float(m.sigma) for m in weight_noise_modules(hm).values()] == [pytest.approx(0.3)]  # restored


def test_output_sigma_sets_only_conv_linear_outputs():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    hm = fxharden.harden(net, config=HardenConfig(quant=None, noise=NoiseConfig(sigma=0.0)))
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)
    kinds = {s.name: s.kind for s in hm.report.sites}
    seen = {}

    def record(mod, args, out):
        seen.setdefault(mod.site, set()).add(float(mod.sigma.flatten()[0]))

    from fxharden.core.noise import Noise
    hooks = [m.register_forward_hook(record) for m in hm.modules() if isinstance(m, Noise)]
    result = sweep_axis(hm, (x, y), "output-sigma", values=[0.5, 100.0], repeats=2)
    for h in hooks:
        h.remove()
    for site, sigmas in seen.items():
        layer = kinds[site] in (SiteKind.CONV.value, SiteKind.LINEAR.value)
        assert sigmas == ({0.0, 0.5, 100.0} if layer else {0.0}), site
    assert result.reference.mean == 1.0 and result.points[-1].mean < 0.9
    assert all(float(m.sigma) == 0.0 and m.seed == 0 for m in hm.modules() if isinstance(m, Noise))


def _logistic_points(times, mu, chance=0.1, top=0.9, k=2.0, total=100000):
    acc = chance + (top - chance) / (1 + (np.asarray(times) / mu) ** k)
    return [SweepPoint(None, float(t), ((int(round(a * total)),) * 3,), total) for t, a in zip(times, acc)]


def _result(points, axis=Axis.TIME):
    return AxisResult(axis=axis, points=points, chance=0.1, num_images=points[0].total, networks=["n"], config={},
                      harden_configs=[]).refit(FitOptions(n_boot=50))


def test_mu_of_a_constructed_time_curve():
    times = np.geomspace(1.0, 3.2e7, 15)
    result = _result(_logistic_points(times, mu=3600.0))
    q = result.fit.quote()
    assert q.kind is QuoteKind.MU and q.value == pytest.approx(3600.0, rel=0.02)


def test_a_curve_that_never_falls_half_way_quotes_a_lower_bound():
    times = np.array(STANDARD_TIMES)
    result = _result(_logistic_points(times, mu=1e12))
    q = result.fit.quote()
    assert q.kind is QuoteKind.LOWER_BOUND and q.value == times[-1]


def test_time_sweep_refuses_a_network_without_a_time_field():
    hm = fxharden.harden(threshold_net(), config=HardenConfig(quant=None, weight_noise=(WeightNoise(Additive(), 0.1),)))
    with pytest.raises(ValueError, match="time field t"):
        sweep_axis(hm, DATA, "time", repeats=1)


def test_weight_sigma_refuses_an_unknown_link():
    hm = fxharden.harden(threshold_net(), config=HardenConfig(quant=None, weight_noise=(WeightNoise(Additive(), 0.1),)))
    with pytest.raises(ValueError, match="no weight-noise link named 'drift'.*''"):
        sweep_axis(hm, DATA, "weight-sigma", repeats=1, link="drift")


@pytest.mark.parametrize("kwargs, message", [
    (dict(axis="sigma"), "fxharden.sweep"),
    (dict(axis="volts"), "axis must be one of"),
    (dict(axis="time", values=[0.0, 1.0]), "times after programming > 0"),
    (dict(axis="time", link="x"), "takes none"),
])
def test_axis_config_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AxisConfig(**kwargs)


def test_axis_result_json_is_strict(tmp_path):
    result = _result(_logistic_points(np.geomspace(1, 1e6, 6), mu=100.0))
    result.save(tmp_path)
    json.loads((tmp_path / AXIS_RESULTS_JSON).read_text())  # no NaN tokens
    assert dataclasses.asdict(load_axis_result(tmp_path).points[0]) == dataclasses.asdict(result.points[0])
