"""Sweeps of networks with weight noise: a repeat is one programmed chip (one weight draw for
the whole data set), however the repeats and the data are batched."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


def teacher_data(n):
    """The teacher and ``n`` inputs labelled with its own clean predictions."""
    torch.manual_seed(0)
    model = Teacher().eval()
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_sweep_repeats_get_independent_weight_noise_whatever_the_batching():
    model, x, y = teacher_data(256)
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


def chips_of(monkeypatch, hm, run):
    """Run ``run()`` and return the noisy weights of every ``F.linear`` call of the teacher's two
    layers, paired per forward and group: ``[(w1, w2, rows)]`` in call order (the clean passes,
    which use the parameters themselves, left out)."""
    linear, calls = F.linear, []

    def spy(x, w, b=None):
        calls.append((w, len(x)))
        return linear(x, w, b)

    monkeypatch.setattr(F, "linear", spy)
    result = run()
    monkeypatch.setattr(F, "linear", linear)
    clean = {id(hm.fc1.weight), id(hm.fc2.weight)}
    fc1 = [(w, n) for w, n in calls if w.shape == hm.fc1.weight.shape and id(w) not in clean]
    fc2 = [w for w, _ in calls if w.shape == hm.fc2.weight.shape and id(w) not in clean]
    assert len(fc1) == len(fc2)
    return result, [(w1, w2, n) for (w1, n), w2 in zip(fc1, fc2)]


def distinct(chips):
    """The distinct (w1, w2) pairs, in order of first use."""
    out = []
    for w1, w2, _ in chips:
        if not any(torch.equal(w1, a) and torch.equal(w2, b) for a, b in out):
            out.append((w1, w2))
    return out


@pytest.mark.parametrize("points_per_forward, forward_images", [(1, 512), (1, 8), (4, 32), (4, 4096)],
                         ids=["1 per forward", "1 per forward, slices of 8", "4 per forward, slices of 8",
                              "4 per forward, whole batches"])
def test_a_repeat_is_one_chip_for_the_whole_data_set(monkeypatch, points_per_forward, forward_images):
    """Every forward pass of a repeat (all batches and slices of the data) uses the same noisy
    weights, and the sweep's counts are those of an independent plain-torch evaluation of the
    whole data set with those weights."""
    model, x, y = teacher_data(96)
    hm = weight_noisy(model, 0.05)
    repeats = 4
    res, chips = chips_of(monkeypatch, hm, lambda: sweep(
        hm, (x, y), sigmas=[1e-6], repeats=repeats, batch_size=32, seed=5, points_per_forward=points_per_forward,
        forward_images=forward_images))
    assert res.timing["forwards"] > 1 + 2 * repeats // points_per_forward  # the case under test: many slices
    assert sum(n for *_, n in chips) == repeats * len(x)  # every image of every repeat ran on a noisy chip
    pairs = distinct(chips)
    assert len(pairs) == repeats  # one chip per repeat, whatever the batching
    for w1, w2 in pairs:
        assert abs(float((w1 - hm.fc1.weight).detach().std()) - 0.05) < 0.015  # N(0, 0.05^2) on every weight
        assert abs(float((w2 - hm.fc2.weight).detach().std()) - 0.05) < 0.02
    with torch.no_grad():
        reference = [int((F.linear(F.relu(F.linear(x, w1, hm.fc1.bias)), w2, hm.fc2.bias).argmax(1) == y).sum())
                     for w1, w2 in pairs]
    assert list(res.points[0].correct[0]) == reference
    assert len(set(reference)) > 1  # the chips differ


def test_per_forward_weight_draws_stay_available(monkeypatch):
    """``weight_draws="forward"``: every forward pass draws its own weights (the old behaviour)."""
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    hm = weight_noisy(Teacher().eval(), 0.05)
    res, chips = chips_of(monkeypatch, hm, lambda: sweep(
        hm, (x, torch.zeros(64, dtype=torch.long)), sigmas=[1e-6], repeats=2, batch_size=32, points_per_forward=2,
        forward_images=32, weight_draws="forward"))
    assert len(distinct(chips)) == len(chips) == 2 * 64 // 16  # one draw per repeat and slice of 16 images
    assert res.config["weight_draws"] == "forward"
    with pytest.raises(ValueError, match="weight_draws must be one of"):
        sweep(hm, (x, torch.zeros(64, dtype=torch.long)), sigmas=[1e-6], weight_draws="image")


def test_spread_over_repeats_does_not_depend_on_the_batching():
    """The issue's measurement, small: the standard deviation of the correct counts over repeats
    is the same (within its statistical error) for 1 or 8 points per forward and for slices of
    8 or 512 images, i.e. on a CPU and on CUDA, whose defaults differ only in those."""
    model, x, y = teacher_data(512)
    hm = weight_noisy(model, 0.05)
    spreads = {}
    for ppf, images in ((1, 512), (8, 64), (8, 4096)):
        res = sweep(hm, (x, y), sigmas=[1e-6], repeats=24, batch_size=512, seed=2, points_per_forward=ppf,
                    forward_images=images)
        spreads[(ppf, images)] = float(np.std(res.points[0].correct[0], ddof=1))
    assert spreads[(8, 64)] == spreads[(8, 4096)]  # the same chunks, the same chips: slicing changes nothing
    ratio = spreads[(8, 64)] / spreads[(1, 512)]
    assert 0.45 < ratio < 2.2, spreads  # F(23, 23) ratio of std: 99.9 % inside; per-slice draws gave ~0.3
