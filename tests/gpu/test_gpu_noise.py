"""Noise on the device against known statistics: N(0, sigma^2) at 10^7 samples (mean,
standard deviation, kurtosis, Kolmogorov-Smirnov) in float32 and under bf16/fp16 autocast; no
correlation between sites, groups, repeats or consecutive calls; and every noise model of
docs/noise_models.md against its closed form."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import fxharden
from fxharden import ConverterConfig, HardenConfig, NoiseKind, WeightDriftConfig, WeightFaultConfig
from fxharden.core.noise import Noise

N = 10_000_000


def standard_normal_checks(z: torch.Tensor) -> None:
    """``z`` (float64, n samples) is standard normal: each check at about 5 standard errors."""
    n = z.numel()
    mean, var = float(z.mean()), float(z.var())
    kurt = float(((z - mean) ** 4).mean()) / var**2
    assert abs(mean) < 5 / math.sqrt(n), mean
    assert abs(math.sqrt(var) - 1) < 5 * math.sqrt(0.5 / n), math.sqrt(var)
    assert abs(kurt - 3) < 5 * math.sqrt(24 / n), kurt
    sample = z[:: max(1, n // 1_000_000)].cpu().numpy()
    assert stats.kstest(sample, "norm").pvalue > 1e-4


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_injected_noise_is_standard_normal_times_sigma(device, precision):
    sigma = 0.3
    mod = Noise("stats", seed=4).to(device)
    mod.set_sigma(sigma)
    x = torch.zeros(N, device=device)
    if precision == "fp32":
        out = mod(x)
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast(device.type, dtype=dtype):
            out = mod(x.to(dtype))
        assert out.dtype == torch.float32  # drawn and added in float32: nothing rounded away
    assert out.device.type == device.type
    standard_normal_checks((out.double() - x.double()) / sigma)


def test_noise_on_large_bf16_activations_is_not_rounded_away(device):
    """bf16 keeps 8 bits: at 100, its spacing is 0.5, so noise of 0.05 added in bf16 would
    vanish; under autocast the site's output is float32 and keeps it."""
    mod = Noise("big", seed=5).to(device)
    mod.set_sigma(0.05)
    x = torch.full((1_000_000,), 100.0, device=device, dtype=torch.bfloat16)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = mod(x)
    assert float((out.double() - 100).std()) == pytest.approx(0.05, rel=0.01)


def test_no_correlation_between_sites_repeats_and_calls(device):
    n = 2_000_000
    bound = 5 / math.sqrt(n)
    x = torch.zeros(n, device=device)
    a, b = Noise("layer1", seed=0).to(device), Noise("layer2", seed=0).to(device)
    for m in (a, b):
        m.set_sigma(1.0)
    first_a, first_b = a(x).clone(), b(x).clone()
    assert abs(corr(first_a, first_b)) < bound  # two sites, one base seed
    second_a = a(x).clone()
    assert abs(corr(first_a, second_a)) < bound  # consecutive calls
    a.reseed(1)
    assert abs(corr(first_a, a(x))) < bound  # repeats are run under different base seeds
    a.reseed(0)
    assert torch.equal(a(x), first_a)  # positive control: the same seed repeats bit for bit


def test_batch_groups_are_independent_unless_they_share_a_draw(device):
    n = 1_000_000
    mod = Noise("groups", seed=2).to(device)
    x = torch.zeros(2 * n, device=device)
    mod.set_sigma([1.0, 2.0])
    out = mod(x)
    assert abs(corr(out[:n], out[n:])) < 5 / math.sqrt(n)
    assert float(out[n:].std()) == pytest.approx(2.0, rel=0.01)
    mod.set_sigma([1.0, 2.0], draws=[0, 0])  # common random numbers: one draw, two sigmas
    out = mod(x)
    assert torch.allclose(out[n:], 2 * out[:n])


def test_a_seeded_run_repeats_bit_for_bit_on_the_device(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    hm = fxharden.harden(model, bits=8, scale=None, sigma=0.2).eval()
    x = torch.randn(256, 32, device=device)
    outs = []
    for _ in range(2):
        fxharden.seed_noise(hm, 7)
        outs.append(hm(x))
    assert torch.equal(outs[0], outs[1])


# ------------------------------------------------------------------ noise models

M = 2_000_000


def noise(kind, device, sigma, **kw):
    mod = Noise("model", seed=3, kind=kind, **kw).to(device)
    mod.set_sigma(sigma)
    return mod


def test_additive_and_relative_noise(device):
    x = (torch.randn(M, device=device, generator=torch.Generator(device).manual_seed(0)) * 3 + 1)
    d = noise("additive", device, 0.2)(x) - x
    assert float(d.double().std()) == pytest.approx(0.2, rel=0.01)
    rel = Noise("model", seed=3, kind=NoiseKind.RELATIVE).to(device)
    fxharden.calibrate_noise(nn.Sequential(rel), [x])
    assert float(rel.rms) == pytest.approx(float(x.double().pow(2).mean().sqrt()), rel=1e-5)
    rel.set_sigma(0.2)
    assert float((rel(x) - x).double().std()) == pytest.approx(0.2 * math.sqrt(10), rel=0.01)


def test_multiplicative_and_lognormal_noise(device):
    x = torch.rand(M, device=device) + 0.5
    ratio = (noise("multiplicative", device, 0.3)(x) / x - 1).double()
    assert abs(float(ratio.mean())) < 5 * 0.3 / math.sqrt(M)
    assert float(ratio.std()) == pytest.approx(0.3, rel=0.01)
    logs = torch.log(noise("lognormal", device, 0.4)(x).double() / x.double())
    standard_normal_checks(logs / 0.4)


def test_stuck_at_faults(device):
    x = torch.randn(M, device=device)
    p, zero_fraction = 0.1, 0.25
    out = noise("stuck", device, p, zero_fraction=zero_fraction)(x)
    changed = out != x
    peak = float(x.abs().max())
    frac = float(changed.double().mean())
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / M)
    stuck = out[changed]
    zeros = float((stuck == 0).double().mean())
    assert abs(zeros - zero_fraction) < 5 * math.sqrt(zero_fraction * (1 - zero_fraction) / stuck.numel())
    assert set(torch.unique(stuck.abs()).tolist()) <= {0.0, peak}


@pytest.mark.parametrize("bits,bound,signed", [(3, 1.0, True), (4, 0.5, False)])
def test_adc_and_dac_grids(device, bits, bound, signed):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval().to(device)
    cfg = HardenConfig(quant=None, adc=ConverterConfig(bits=bits, bound=bound, signed=signed),
                       dac=ConverterConfig(bits=bits, bound=bound, signed=signed))
    hm = fxharden.harden(model, config=cfg)
    x = torch.randn(4000, 16, device=device)
    step = bound / (2 ** (bits - 1) if signed else 2**bits - 1)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    conv = lambda t: torch.clamp(torch.round(t / step), lo, hi) * step  # noqa: E731 independent: round, clip, scale
    with torch.no_grad():
        y = hm(x)
        expected = conv(model[2](conv(model[1](conv(model[0](conv(x)))))))
    assert torch.allclose(y, expected, atol=1e-6)


def test_weight_noise_drift_and_faults_on_the_device(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512)).to(device)
    w = model[0].weight.detach().clone()
    cases = {
        "additive": HardenConfig.from_shorthand(bits=None).replace(
            weight_noise=fxharden.WeightNoiseConfig(kind="additive", sigma=0.1, relative=True)),
        "drift": HardenConfig.from_shorthand(bits=None).replace(weight_drift=WeightDriftConfig(sigma_decade=0.2, t=9.0)),
        "faults": HardenConfig.from_shorthand(bits=None).replace(weight_faults=WeightFaultConfig(p=0.05)),
    }
    for name, cfg in cases.items():
        hm = fxharden.harden(model, config=cfg)
        layer = hm.get_submodule("0")
        hw = layer.hardened_weight().detach()
        assert hw.device.type == device.type
        if name == "additive":
            d = (hw - w).double() / (0.1 * float(w.abs().max()))
            standard_normal_checks_loose(d)
        elif name == "drift":
            standard_normal_checks_loose(torch.log(hw.double() / w.double()) / 0.2)
        else:
            frac = float((hw != w).double().mean())
            assert abs(frac - 0.05) < 5 * math.sqrt(0.05 * 0.95 / w.numel())


def standard_normal_checks_loose(z: torch.Tensor) -> None:
    """Mean 0 and standard deviation 1 within 5 standard errors (for ~10^5 samples)."""
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.std()) - 1) < 5 * math.sqrt(0.5 / n)
    assert stats.kstest(z.flatten().cpu().numpy(), "norm").pvalue > 1e-4


def test_weight_noise_draws_one_weight_per_batch_group(device):
    """Two groups with weight noise: each group's output is the layer run with its own weight,
    and the two weights differ (independent draws)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64, bias=False)).to(device)
    cfg = HardenConfig.from_shorthand(bits=None).replace(
        weight_noise=fxharden.WeightNoiseConfig(kind="additive", sigma=0.5))
    hm = fxharden.harden(model, config=cfg).eval()
    fxharden.set_weight_noise(hm, [0.5, 0.5])
    x = torch.eye(64, device=device).repeat(2, 1)  # the identity: the output is the weight itself
    with torch.no_grad():
        out = hm(x)
    w0, w1 = out[:64].T, out[64:].T
    w = model[0].weight
    assert abs(corr(w0 - w, w1 - w)) < 5 / 64
    assert float((w0 - w).detach().std()) == pytest.approx(0.5, rel=0.05)
    assert np.isfinite(out.cpu().numpy()).all()
