"""Hardware noise models, each against a closed form or an independent eager computation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxharden
from fxharden import ConverterConfig, HardenConfig, NoiseConfig, NoiseKind, WeightDriftConfig, WeightFaultConfig
from fxharden.core.config import config_from_dict, config_to_dict
from fxharden.core.harden import converter
from fxharden.core.noise import Additive, LogNormal, Multiplicative, Noise, StuckAt

N = 400_000


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def test_relative_noise_std_is_sigma_times_the_clean_rms():
    n = Noise("x", seed=2, kind=NoiseKind.RELATIVE)
    x = torch.randn(N, generator=torch.Generator().manual_seed(0)) * 3 + 1  # rms sqrt(9 + 1)
    fxharden.calibrate_noise(nn.Sequential(n), [x])
    assert float(n.rms) == pytest.approx(math.sqrt(float((x.double() ** 2).mean())), rel=1e-6)
    n.set_sigma(0.2)
    d = (n(x) - x).double()
    assert float(d.std()) == pytest.approx(0.2 * math.sqrt(10), rel=0.02)


def test_calibrated_rms_matches_the_eager_activations_and_travels_in_the_state_dict():
    model = mlp()
    x = torch.randn(512, 16)
    hm = fxharden.harden(model, config=HardenConfig(quant=None, noise=NoiseConfig(model=NoiseKind.RELATIVE)))
    rms = fxharden.calibrate_noise(hm, [x[:256], x[256:]])
    with torch.no_grad():
        h = model[0](x)
        eager = {"input": x, "0": h, "1": model[1](h), "2": model[2](model[1](h))}
    for site, ref in eager.items():
        assert rms[site] == pytest.approx(float(ref.double().pow(2).mean().sqrt()), rel=1e-5)
    fresh = fxharden.harden(model, config=hm.harden_config)
    fresh.load_state_dict(hm.state_dict())
    fxharden.set_noise(fresh, 0.1)
    fresh(x)  # calibrated through the state dict: no error


def test_relative_noise_on_an_uncalibrated_model_says_how():
    hm = fxharden.harden(mlp(), config=HardenConfig(quant=None, noise=NoiseConfig(sigma=0.1, model="relative")))
    with pytest.raises(RuntimeError, match=r"calibrate_noise\(model, data\)"):
        hm(torch.randn(4, 16))


def test_multiplicative_noise_is_proportional_to_each_element():
    n = Noise("x", seed=1, kind="multiplicative")
    n.set_sigma(0.3)
    x = torch.rand(N) + 0.5
    ratio = (n(x) / x - 1).double()
    assert abs(float(ratio.mean())) < 5 * 0.3 / math.sqrt(N)
    assert float(ratio.std()) == pytest.approx(0.3, rel=0.01)


@pytest.mark.parametrize("bits,bound,signed", [(3, 1.0, True), (4, 0.5, False)])
def test_adc_output_has_at_most_2_to_the_b_levels_inside_its_bound(bits, bound, signed):
    model = mlp()
    cfg = HardenConfig(quant=None, adc=ConverterConfig(bits=bits, bound=bound, signed=signed))
    hm = fxharden.harden(model, config=cfg)
    x = torch.randn(2000, 16)
    step = bound / (2 ** (bits - 1) if signed else 2**bits - 1)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    adc = lambda t: torch.clamp(torch.round(t / step), lo, hi) * step  # noqa: E731 independent: clip, round, scale
    with torch.no_grad():
        y = hm(x)
        expected = adc(model[2](model[1](adc(model[0](x)))))  # an ADC after each linear layer
    levels = torch.unique(y)
    assert len(levels) <= 2**bits and float(levels.min()) >= -bound - 1e-6 and float(levels.max()) <= bound + 1e-6
    assert torch.allclose(y, expected, atol=1e-6)


def test_dac_quantizes_the_conv_and_linear_inputs():
    model = mlp()
    hm = fxharden.harden(model, config=HardenConfig(quant=None, dac=ConverterConfig(bits=4, bound=2.0)))
    x = torch.randn(300, 16)
    q = lambda t: torch.clamp(torch.round(t / 0.25), -8, 7) * 0.25  # noqa: E731
    with torch.no_grad():
        expected = F.linear(q(model[1](F.linear(q(x), model[0].weight, model[0].bias))), model[2].weight,
                            model[2].bias)
        assert torch.allclose(hm(x), expected, atol=1e-5)


def test_stuck_at_fraction_is_p_within_binomial_error():
    p, zf = 0.05, 0.4
    lin = nn.Linear(500, 400)
    cfg = HardenConfig(quant=None, weight_faults=WeightFaultConfig(p=p, zero_fraction=zf))
    hm = fxharden.harden(nn.Sequential(lin), config=cfg)
    w, hw = lin.weight.detach(), hm.get_submodule("0").hardened_weight().detach()
    changed = hw != w
    n = w.numel()
    assert abs(float(changed.float().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)
    peak = float(w.abs().max())
    stuck = hw[changed]
    assert bool(((stuck == 0) | (stuck.abs() == peak)).all())
    k = int(changed.sum())
    assert abs(float((stuck == 0).float().mean()) - zf) < 5 * math.sqrt(zf * (1 - zf) / k)


@pytest.mark.parametrize("signed,x,delta,levels", [
    # signed, B = max|x| = 2, 4 bits: Δ = B / 2^3 = 0.25, levels -2, -1.75, ..., 1.75 (2 is clipped)
    (True, torch.linspace(-2, 2, 17), 0.25, [k * 0.25 for k in range(-8, 8)]),
    # unsigned, B = max|x| = 3 (the negative end), 4 bits: Δ = B / 15 = 0.2, levels 0, ..., 3.0
    (False, torch.tensor([-3.0, 0.0, 0.55, 1.0, 1.42]), 0.2, [0.0, 0.6, 1.0, 1.4]),
])
def test_calibrated_converter_bound_is_the_full_scale_of_the_documented_grid(signed, x, delta, levels):
    adc = converter(ConverterConfig(bits=4, signed=signed)).eval()
    y = adc(x)
    assert float(adc.scale) == pytest.approx(delta, rel=1e-6)
    if signed:
        assert torch.allclose(y, torch.tensor(levels[:-1] + [levels[-1], levels[-1]]))  # -2..1.75, then 2 -> 1.75
    else:
        assert torch.allclose(y, torch.tensor([0.0] + levels))  # -3 clipped to 0; 0.55 -> 3Δ, 1 -> 5Δ, 1.42 -> 7Δ


@pytest.mark.parametrize("bits,signed", [(3, True), (4, False)])
def test_calibrated_adc_matches_the_closed_form_per_layer(bits, signed):
    """ADCs with ``bound=None`` in a hardened model: each layer's bound is B = max|output| of
    its calibration batch (eager), and the output is the clip-round-rescale with that grid."""
    model = mlp()
    hm = fxharden.harden(model, config=HardenConfig(quant=None, adc=ConverterConfig(bits=bits, signed=signed)))
    x = torch.randn(2000, 16)
    fxharden.calibrate_quantizers(hm, [x])
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    levels = 2 ** (bits - 1) if signed else 2**bits - 1

    def adc(t):  # independent: bound from the data, then clip, round, scale
        step = float(t.abs().max()) / levels
        return torch.clamp(torch.round(t / step), lo, hi) * step

    with torch.no_grad():
        y = hm.eval()(x)
        expected = adc(model[2](model[1](adc(model[0](x)))))
    assert torch.allclose(y, expected, atol=1e-5)
    assert len(torch.unique(y)) <= 2**bits


def test_weight_models_draw_once_per_batch_group():
    """A forward with one fault probability and drift per batch group: group r computes with
    its own weight (own fault map and drift), exactly as an eager layer with that weight."""
    p = 0.05
    lin = nn.Linear(300, 200)
    cfg = HardenConfig(quant=None, weight_faults=WeightFaultConfig(p=p), weight_drift=WeightDriftConfig(0.05, 9.0))
    hm = fxharden.harden(nn.Sequential(lin), config=cfg)
    layer = hm.get_submodule("0")
    drift, faults = layer.weight_noise
    assert (drift.site, faults.site) == ("0.weight.drift", "0.weight.faults")  # own sites, own streams
    faults.set_sigma([0.0, p, p])
    drift.set_sigma([0.0, drift.sigma.item(), drift.sigma.item()])
    ws = layer.weight_noise.draw_weights(lin.weight.detach())
    w = lin.weight.detach()
    assert torch.equal(ws[0], w)  # sigma 0 in group 0: the clean weight
    stuck = [(wr.abs() == wr.abs().max()) | (wr == 0) for wr in ws[1:]]
    n = w.numel()
    for s in stuck:
        assert abs(float(s.float().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert float((stuck[0] & stuck[1]).float().mean()) < p * p + 5 * math.sqrt(p * p / n)  # independent maps
    x = torch.randn(3 * 4, 300)
    fxharden.seed_noise(hm, 7)
    with torch.no_grad():
        out = hm(x)
    fxharden.seed_noise(hm, 7)
    ws = layer.weight_noise.draw_weights(w)  # the same draws again, from the restarted streams
    for r in range(3):
        eager = F.linear(x[4 * r:4 * r + 4], ws[r], lin.bias)
        assert torch.allclose(out[4 * r:4 * r + 4], eager, atol=1e-5), r


def test_drift_is_lognormal_with_the_time_dependent_sigma():
    drift = WeightDriftConfig(sigma_decade=0.05, t=999.0, t0=1.0)
    assert drift.sigma == pytest.approx(0.05 * 3.0)  # log10(1000) = 3
    lin = nn.Linear(1000, 400)
    hm = fxharden.harden(nn.Sequential(lin), config=HardenConfig(quant=None, weight_drift=drift))
    lam = torch.log(hm.get_submodule("0").hardened_weight().detach() / lin.weight.detach()).double()
    assert float(lam.std()) == pytest.approx(0.15, rel=0.01) and abs(float(lam.mean())) < 5 * 0.15 / math.sqrt(4e5)


def test_weight_models_combine_and_round_trip_through_the_config_file():
    cfg = HardenConfig(quant=None, noise=NoiseConfig(model=NoiseKind.MULTIPLICATIVE),
                       adc=ConverterConfig(bits=6), dac=ConverterConfig(bits=8, bound=1.0, signed=False),
                       weight_faults=WeightFaultConfig(p=0.01), weight_drift=WeightDriftConfig(0.1, 10.0))
    assert config_from_dict(config_to_dict(cfg)) == cfg
    hm = fxharden.harden(mlp(), config=cfg)
    kinds = [m.kind for m in hm.get_submodule("0").weight_noise]
    assert kinds == [NoiseKind.LOGNORMAL, NoiseKind.STUCK]
    old = config_to_dict(HardenConfig())
    for key in ("adc", "dac"):
        del old[key]
    del old["noise"]["model"]
    del old["weight_noise"]
    assert config_from_dict(old) == HardenConfig()  # configs saved before these models existed
    # a file of fxharden 0.1: one weight-noise dict with a kind, drift and faults keys of their own
    old = {**config_to_dict(HardenConfig(quant=None)), "weight_drift": {"sigma_decade": 0.1, "t": 10.0, "t0": 1.0},
           "weight_faults": {"p": 0.01, "zero_fraction": 0.25},
           "weight_noise": {"kind": "additive", "sigma": 0.05, "relative": True}}
    old["noise"]["model"] = "multiplicative"
    loaded = config_from_dict(old)
    assert [(x.name, x.model, x.sigma) for x in loaded.weight_noise] == [
        ("drift", LogNormal(), pytest.approx(0.1 * math.log10(11.0))), ("", Additive(of_max=True), 0.05),
        ("faults", StuckAt(zero_fraction=0.25), 0.01)]
    assert loaded.noise.model == Multiplicative()


@pytest.mark.parametrize("make,match", [
    (lambda: NoiseConfig(model="thermal"), "unknown noise model 'thermal'.*additive, multiplicative, out_noise, relative"),
    (lambda: NoiseConfig(model="stuck"), "the stuck noise model does not act on activations; choose one of: additive"),
    (lambda: WeightFaultConfig(p=-0.1), r"p must be a finite number in \[0, 1\]"),
    (lambda: WeightFaultConfig(p=float("nan")), "finite"),
    (lambda: WeightFaultConfig(p=1.5), r"\[0, 1\]"),
    (lambda: ConverterConfig(bits=4, bound=-1.0), "bound must be a finite number"),
    (lambda: ConverterConfig(bits=4, bound=float("inf")), "bound must be a finite number"),
    (lambda: ConverterConfig(bits=1), "2..16"),
    (lambda: WeightDriftConfig(0.1, t=-1.0), "drift time t"),
    (lambda: WeightDriftConfig(0.1, t=1.0, t0=0.0), "t0"),
    (lambda: WeightDriftConfig(float("inf")), "sigma_decade"),
])
def test_bad_parameters_are_refused_with_the_valid_range(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_stuck_probability_above_one_is_refused():
    n = Noise("w", kind=NoiseKind.STUCK)
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        n.set_sigma(2.0)


def test_state_dicts_saved_before_the_rms_buffer_still_load_strictly():
    hm = fxharden.harden(mlp())
    old = {k: v for k, v in hm.state_dict().items() if not k.endswith(".rms")}
    fresh = fxharden.harden(mlp())
    fresh.load_state_dict(old)  # strict: no missing-key error for rms
    assert not any(m.calibrated for m in fresh.modules() if isinstance(m, Noise))
