"""Sweeps of networks with weight noise: one weight draw per repeat, however the repeats are batched."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import fxharden
from fxharden.core.config import HardenConfig, WeightNoiseConfig, WeightNoiseKind
from fxharden.core.harden import weight_noise_modules
from fxharden.measure.sweep import sweep


def weight_noisy(model, sigma, kind=WeightNoiseKind.ADDITIVE):
    cfg = HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind=kind, sigma=sigma))
    return fxharden.harden(model, config=cfg).eval()


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_sweep_repeats_get_independent_weight_noise_whatever_the_batching():
    torch.manual_seed(0)
    model = Teacher().eval()
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    hm = weight_noisy(model, 0.05)
    repeats, kwargs = 12, dict(sigmas=[1e-6], batch_size=64, seed=3)
    batched = sweep(hm, (x, y), repeats=repeats, points_per_forward=repeats, forward_images=repeats * 64, **kwargs)
    single = sweep(hm, (x, y), repeats=repeats, points_per_forward=1, **kwargs)
    assert batched.timing["forwards"] == 2 * 256 // 64  # the case under test: all repeats in one pass
    # the clean pass has no weight noise: the teacher's labels are its own clean predictions
    assert batched.clean_accuracy == single.clean_accuracy == 1.0
    a = batched.points[0].accuracy.ravel()
    b = single.points[0].accuracy.ravel()
    assert len(set(a.tolist())) > repeats // 2  # one weight draw per repeat, not one per forward
    assert 0.4 < b.mean() < 0.95  # weight noise matters at this strength
    # the two are samples of one distribution: means within 4 standard errors, spreads alike
    se = math.sqrt(b.var(ddof=1) / repeats + a.var(ddof=1) / repeats)
    assert abs(a.mean() - b.mean()) < 4 * se
    assert 0.4 < a.std(ddof=1) / b.std(ddof=1) < 2.5  # F(11, 11) ratio of std: 99.8% inside
    # sigma-0 points stay clean unless asked
    zero = sweep(hm, (x, y), sigmas=[0.0, 1e-6], repeats=2, batch_size=64, points_per_forward=4)
    assert zero.points[0].sigma == 0.0 and np.all(zero.points[0].accuracy == 1.0)
    asked = sweep(hm, (x, y), sigmas=[0.0, 1e-6], repeats=2, batch_size=64, weight_noise_at_zero=True)
    assert asked.clean_accuracy < 1.0 and np.all(asked.points[0].accuracy < 1.0)
    assert all(float(m.sigma) == pytest.approx(0.05) for m in weight_noise_modules(hm).values())  # restored


@pytest.mark.parametrize("shared", [True, False])
def test_weight_noise_follows_the_shared_draws_of_a_repeat(monkeypatch, shared):
    """With shared noise the items of one repeat use one weight draw (each point still gets the
    network's N(0, sigma_w^2)); without, every item draws its own; sigma-0 items none."""
    from fxharden.core.noise import Noise
    seen = []
    real = Noise.set_sigma

    def spy(self, sigma, draws=None):
        if self.site == "fc1.weight":
            seen.append((sigma, draws))
        return real(self, sigma, draws)

    monkeypatch.setattr(Noise, "set_sigma", spy)
    x = torch.randn(8, 16)
    sweep(weight_noisy(Teacher().eval(), 0.05), (x, torch.zeros(8, dtype=torch.long)), sigmas=[0.0, 0.1, 0.2],
          repeats=2, batch_size=8, points_per_forward=6, shared_noise=shared)
    chunk = [s for s in seen if isinstance(s[0], list)]
    assert len(chunk) == 1 and chunk[0][0] == pytest.approx([0.0, 0.0, 0.05, 0.05, 0.05, 0.05])
    assert chunk[0][1] == ([0, 1, 0, 1, 0, 1] if shared else None)
