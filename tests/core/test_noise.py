"""Noise injection: statistics, placement, reproducibility, gradients."""

import math

import pytest
import torch
from torch import nn

import fxharden
from fxharden.core.config import WeightNoiseConfig, WeightNoiseKind
from fxharden.core.noise import Noise


def test_additive_noise_statistics_match_sigma():
    n = Noise("x", seed=3)
    n.set_sigma(0.3)
    x = torch.full((200_000,), 2.0)
    d = n(x) - x
    # sample mean and std of 200k N(0, 0.3^2) draws: 5-sigma bands of their sampling errors
    assert abs(float(d.mean())) < 5 * 0.3 / math.sqrt(d.numel())
    assert abs(float(d.std()) - 0.3) < 5 * 0.3 / math.sqrt(2 * d.numel())


def test_lognormal_drift_statistics():
    n = Noise("w", seed=1, kind=WeightNoiseKind.LOGNORMAL)
    n.set_sigma(0.2)
    x = torch.full((200_000,), 1.5)
    lam = torch.log(n(x) / x)
    assert abs(float(lam.mean())) < 5 * 0.2 / math.sqrt(lam.numel())
    assert abs(float(lam.std()) - 0.2) < 0.01


def test_zero_sigma_is_identity_and_returns_same_tensor():
    n = Noise("x")
    x = torch.randn(10)
    assert n(x) is x


def test_per_group_sigma():
    n = Noise("x", seed=0)
    n.set_sigma([0.0, 1.0, 0.1])
    x = torch.zeros(3 * 20_000, 2)
    d = n(x).view(3, -1)
    assert torch.equal(d[0], torch.zeros_like(d[0]))
    assert abs(float(d[1].std()) - 1.0) < 0.03
    assert abs(float(d[2].std()) - 0.1) < 0.003
    with pytest.raises(ValueError, match="equal groups"):
        n(torch.zeros(4, 2))


def test_seeded_noise_repeats_exactly():
    n = Noise("x", seed=7)
    n.set_sigma(1.0)
    x = torch.zeros(100)
    a = n(x)
    n.reseed(7)
    assert torch.equal(n(x), a)
    assert not torch.equal(n(x), a)  # the stream advances


def test_gradient_passes_unchanged():
    for kind in (WeightNoiseKind.ADDITIVE, WeightNoiseKind.LOGNORMAL):
        n = Noise("x", kind=kind)
        n.set_sigma(0.5)
        x = torch.randn(50, requires_grad=True)
        g = torch.randn(50)
        n(x).backward(g)
        assert torch.equal(x.grad, g)


def test_bad_sigma():
    n = Noise("x")
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            n.set_sigma(bad)
    with pytest.raises(ValueError, match="sigma"):
        n.set_sigma([0.1, -1.0])


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 4)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def intermediates(model, x):
    """Eager outputs of every call_module node, recorded by forward hooks."""
    out = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: out.__setitem__(name, o.detach().clone()))
             for name, m in model.named_modules() if name in ("a", "b", "c")]
    model(x)
    for h in hooks:
        h.remove()
    return out


def test_per_site_injection_changes_only_downstream():
    torch.manual_seed(0)
    hm = fxharden.harden(Chain(), bits=None).eval()
    x = torch.randn(16, 8)
    clean = intermediates(hm, x)
    fxharden.set_noise(hm, 0.5, sites=["b"])
    noisy = intermediates(hm, x)
    assert torch.equal(noisy["a"], clean["a"])  # upstream of the site
    assert torch.equal(noisy["b"], clean["b"])  # the layer itself: noise is added after it
    assert not torch.allclose(noisy["c"], clean["c"])  # downstream
    # what reaches c is b's output plus N(0, 0.5^2) noise, propagated linearly through c
    seen = {}
    hook = hm.c.register_forward_pre_hook(lambda mod, args: seen.__setitem__("in", args[0].detach().clone()))
    big = torch.randn(4096, 8)
    out = hm(big)
    hook.remove()
    eps = seen["in"] - hm.b(hm.a(big)).detach()
    assert abs(float(eps.std()) - 0.5) < 0.02
    expected = torch.nn.functional.linear(hm.b(hm.a(big)) + eps, hm.c.weight, hm.c.bias)
    assert torch.allclose(out, expected, atol=1e-5)


def test_global_noise_seeded_model_runs_repeat():
    hm = fxharden.harden(Chain(), bits=8, scale=0.05, sigma=0.1).eval()
    x = torch.randn(4, 8)
    fxharden.seed_noise(hm, 11)
    a = hm(x)
    fxharden.seed_noise(hm, 11)
    assert torch.equal(hm(x), a)
    fxharden.seed_noise(hm, 12)
    assert not torch.equal(hm(x), a)


def test_weight_noise_additive_and_lognormal():
    for kind in (WeightNoiseKind.ADDITIVE, WeightNoiseKind.LOGNORMAL):
        cfg = fxharden.HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind=kind, sigma=0.05))
        model = Chain().eval()
        hm = fxharden.harden(model, config=cfg).eval()
        x = torch.randn(4, 8)
        assert not torch.equal(hm(x), model(x))
        assert torch.allclose(hm(x), model(x), atol=1.0)


def test_weight_noise_streams_differ_between_layers():
    cfg = fxharden.HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind=WeightNoiseKind.ADDITIVE, sigma=0.1))
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    with torch.no_grad():
        model[1].weight.copy_(model[0].weight)
    hm = fxharden.harden(model, config=cfg)
    d0 = hm.get_submodule("0").hardened_weight() - model[0].weight
    d1 = hm.get_submodule("1").hardened_weight() - model[1].weight
    assert not torch.allclose(d0, d1)  # independent draws, not one shared stream
