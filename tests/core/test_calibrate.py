"""Calibration on clean data: every noise setting survives it, and the statistics-based steps
it fixes come from real data only (a smoke-test forward of zeros changes nothing)."""

import math
import warnings

import pytest
import torch
from torch import nn

import fxharden
from fxharden import HardenConfig, QuantConfig, WeightDriftConfig, WeightFaultConfig, WeightNoiseConfig
from fxharden.core.noise import Noise, noise_off
from fxharden.core.quant import ActQuant
from fxharden.measure.noise_cost import site_ops

N = 200_000


class Ident(nn.Module):
    def forward(self, x):
        return x * 1.0


def input_noise(hm) -> Noise:
    return hm.get_submodule("fxharden.input")


# ---------------------------------------------------------------- noise survives calibration


def test_calibrate_noise_keeps_the_noise_that_was_set_before():
    hm = fxharden.harden(Ident(), bits=None, sigma=0.3)
    fxharden.calibrate_noise(hm, [torch.randn(8, 100)])
    with torch.no_grad():
        d = hm(torch.zeros(N // 100, 100)).double()  # the output is the noise itself
    assert float(input_noise(hm).sigma) == pytest.approx(0.3)
    assert float(d.std()) == pytest.approx(0.3, rel=0.01)  # std estimate: ~0.16 % standard error


@pytest.mark.parametrize("switch_off", [
    lambda hm: fxharden.calibrate_noise(hm, [torch.randn(8, 100)]),
    lambda hm: site_ops(hm, torch.randn(2, 100)),
], ids=["calibrate_noise", "site_ops"])
def test_per_group_sigma_and_shared_draws_survive(switch_off):
    hm = fxharden.harden(Ident(), bits=None)
    input_noise(hm).set_sigma([0.1, 0.2], draws=[0, 0])  # two groups sharing one draw
    switch_off(hm)
    with torch.no_grad():
        d = hm(torch.zeros(2 * N // 100, 100)).double()
    g0, g1 = d[:N // 100], d[N // 100:]
    assert float(g0.std()) == pytest.approx(0.1, rel=0.01)
    assert float(g1.std()) == pytest.approx(0.2, rel=0.01)
    assert torch.allclose(g1, 2 * g0)  # the shared draw: group 1 is group 0 scaled by 0.2 / 0.1


def _eye_output(hm, n):
    """Output of a bias-free linear layer for the identity input: its (perturbed) weight, transposed."""
    with torch.no_grad():
        return hm(torch.eye(n)).double()


@pytest.mark.parametrize("cfg,check", [
    # additive weight noise: w + σε, so the deviation has std σ
    (HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind="additive", sigma=0.05)),
     lambda out, w: float((out - w).std()) == pytest.approx(0.05, rel=0.02)),
    # drift: w · exp(σ(t) ε), σ(t) = 0.05 · log10(1 + 999) = 0.15
    (HardenConfig(quant=None, weight_drift=WeightDriftConfig(0.05, 999.0)),
     lambda out, w: float(torch.log(out / w).std()) == pytest.approx(0.15, rel=0.02)),
    # stuck-at faults with p = 0.1: the share of changed weights is p (5 binomial standard errors)
    (HardenConfig(quant=None, weight_faults=WeightFaultConfig(p=0.1)),
     lambda out, w: abs(float((out != w).double().mean()) - 0.1) < 5 * math.sqrt(0.09 / w.numel())),
], ids=["weight_noise", "drift", "faults"])
def test_weight_models_stay_on_after_calibrate_noise(cfg, check):
    torch.manual_seed(0)
    lin = nn.Linear(400, 400, bias=False)
    hm = fxharden.harden(nn.Sequential(lin), config=cfg)
    fxharden.calibrate_noise(hm, [torch.randn(8, 400)])
    w = lin.weight.detach().double().t()
    assert check(_eye_output(hm, 400), w)


def test_noise_off_restores_every_setting_even_on_error():
    n = Noise("x")
    n.set_sigma([0.1, 0.0, 0.3], draws=[0, 1, 0])
    before = n.setting()
    with pytest.raises(RuntimeError):
        with noise_off(nn.Sequential(n)):
            assert not n.active and n._host == (0.0,)
            raise RuntimeError("boom")
    after = n.setting()
    assert torch.equal(after.sigma, before.sigma) and after.host == before.host and after.draws == (0, 1, 0)
    assert n.active and n.groups == 3


# ---------------------------------------------------------------- statistics-based steps


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def batches(k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 16, generator=g) * (1 + i) for i in range(k)]


def steps(hm):
    return {name: float(m.scale.detach()) for name, m in hm.named_modules() if isinstance(m, ActQuant)}


@pytest.mark.parametrize("smoke", [torch.zeros(1, 16), torch.full((4, 16), 0.5)], ids=["zeros", "constant"])
def test_a_degenerate_first_forward_does_not_fix_the_steps(smoke):
    data = batches()
    ref = fxharden.harden(mlp(), bits=8, scale=None).eval()
    hm = fxharden.harden(mlp(), bits=8, scale=None).eval()
    with torch.no_grad():
        hm(smoke)  # the smoke test
        for x in data:
            ref(x)
            hm(x)
    assert steps(hm) == steps(ref)
    # independent reference: the input step is max|x| / 127 over the real batches (running max)
    peak = max(float(x.abs().max()) for x in data)
    assert steps(hm)["fxharden.input__quant"] == pytest.approx(peak / 127, rel=1e-6)
    assert steps(hm)["fxharden.input__quant"] > 1e-3  # not the MIN_STEP an all-zero batch gives


def test_calibrate_quantizers_fixes_the_steps_on_real_data():
    cfg = HardenConfig(quant=QuantConfig(bits=8, scaling="dynamic", scale=None, quantize_weights=False))
    hm = fxharden.harden(mlp(), config=cfg).eval()
    data = batches()
    with torch.no_grad():
        hm(torch.zeros(1, 16))
    got = fxharden.calibrate_quantizers(hm, data)
    # hand count, eager: the input step is the running max of |x| / 127; the hidden ReLU
    # output (unsigned grid, qmax 255) is computed from the input quantized with the step so far
    model, peak, relu_peak = mlp(), 0.0, 0.0
    with torch.no_grad():
        for x in data:
            peak = max(peak, float(x.abs().max()))
            xq = torch.clamp(torch.round(x / (peak / 127)), -128, 127) * (peak / 127)
            relu_peak = max(relu_peak, float(model[1](model[0](xq)).max()))
    assert got["fxharden.input__quant"] == pytest.approx(peak / 127, rel=1e-6)
    assert got["fxharden.1__quant"] == pytest.approx(relu_peak / 255, rel=1e-5)
    before = steps(hm)
    with torch.no_grad():
        hm(torch.randn(64, 16) * 100)  # larger data in eval mode: fixed
        hm.train()(torch.randn(64, 16) * 100)  # and in training mode
    assert steps(hm) == before
    assert fxharden.calibrate_quantizers(hm, data) == {}  # nothing waits for data any more


def test_calibrate_quantizers_warns_when_only_degenerate_data_fix_a_step():
    hm = fxharden.harden(mlp(), bits=8, scale=None).eval()
    with pytest.warns(UserWarning, match=r"'fxharden.input__quant' saw only degenerate batches.*calibrate_quantizers"):
        fxharden.calibrate_quantizers(hm, [torch.zeros(4, 16)])
    assert all(m.calibration_left == 0 for m in hm.modules() if isinstance(m, ActQuant))


def test_real_data_fix_steps_without_a_warning():
    hm = fxharden.harden(mlp(), bits=8, scale=None).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fxharden.calibrate_quantizers(hm, [torch.zeros(4, 16)] + batches(2))


def test_calibrate_noise_of_a_fresh_model_calibrates_its_steps_first():
    """The RMS is measured with the final steps (reference: the quantized input of the hand
    step max|x|/127, in plain torch), and the steps are fixed afterwards."""
    hm = fxharden.harden(mlp(), bits=8, scale=None).eval()
    data = batches()
    rms = fxharden.calibrate_noise(hm, iter(data))  # a one-shot iterator works too
    s = max(float(x.abs().max()) for x in data) / 127
    q = torch.cat([torch.clamp(torch.round(x / s), -128, 127) * s for x in data]).double()
    assert rms["input"] == pytest.approx(float(q.pow(2).mean().sqrt()), rel=1e-5)
    assert all(m.calibration_left == 0 for m in hm.modules() if isinstance(m, ActQuant))


def test_quantizers_that_saw_training_data_are_left_alone():
    cfg = HardenConfig(quant=QuantConfig(bits=8, scaling="dynamic", scale=None, calibration_steps=5))
    hm = fxharden.harden(mlp(), config=cfg).train()
    with torch.no_grad():
        hm(torch.randn(64, 16))  # one training batch of five
    before = steps(hm)
    assert fxharden.calibrate_quantizers(hm, [torch.randn(64, 16) * 10]) == {}
    with torch.no_grad():
        hm.eval()(torch.randn(64, 16) * 10)  # eval mode does not move a step calibrated in training
    assert steps(hm) == before


def test_locating_batch_dims_keeps_a_calibration_under_way():
    """The probe forwards of ``locate_batch_dims`` restore the quantizers' state: a fresh
    model that saw one eval batch still calibrates on the next ones (hand count: max|x|/127)."""
    hm = fxharden.harden(mlp(), bits=8, scale=0.05).eval()
    data = batches(3)
    with torch.no_grad():
        hm(data[0])
        input_noise(hm).set_sigma([0.0, 0.0])  # per-group sigma: the next forward locates batch dims
        hm(data[0][:2])
    quant = hm.get_submodule("fxharden.input__quant")
    assert quant.needs_data and quant._observed == 2  # both batches counted, the probes not
    fxharden.calibrate_quantizers(hm, data[1:])
    assert float(quant.scale) == pytest.approx(max(float(x.abs().max()) for x in data) / 127, rel=1e-6)
