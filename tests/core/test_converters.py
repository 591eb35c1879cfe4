"""Data converters as analog tiles have them: symmetric grids of 2^b - 1 (or any odd number
of) levels, per-layer bounds (fixed, max, percentile, learned), and the ADC before the bias."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxharden
from fxharden import ConverterConfig, HardenConfig, QuantConfig, SiteRules
from fxharden.core.config import config_from_dict, config_to_dict
from fxharden.core.converters import ConverterError, converter


def levels_of(y: torch.Tensor, step: float) -> np.ndarray:
    """The integer levels ``y / step`` (checked to be integers)."""
    k = y.detach().double().numpy() / step
    assert np.allclose(k, np.round(k), atol=1e-4)
    return np.unique(np.round(k).astype(int))


@pytest.mark.parametrize("cfg,half", [
    (ConverterConfig(bits=8, bound=2.0, symmetric=True), 127),  # aihwkit's inp_res = 1/(2^8 - 2): step r/127
    (ConverterConfig(bits=4, bound=2.0, symmetric=True), 7),
    (ConverterConfig(levels=127, bound=2.0), 63),
    (ConverterConfig(levels=511, bound=2.0), 255),
])
def test_symmetric_grid_has_an_odd_number_of_levels_and_the_bound_as_top_level(cfg, half):
    q = converter(cfg)
    y = q(torch.linspace(-3.0, 3.0, 20001))
    step = 2.0 / half
    assert float(q.scale) == pytest.approx(step, rel=1e-7)
    k = levels_of(y, step)
    assert k.tolist() == list(range(-half, half + 1))  # 2*half + 1 levels, symmetric, every one used
    assert float(y.max()) == pytest.approx(2.0, rel=1e-6) and float(y.min()) == pytest.approx(-2.0, rel=1e-6)


def test_default_grid_stays_twos_complement():
    q = converter(ConverterConfig(bits=4, bound=2.0))
    k = levels_of(q(torch.linspace(-3.0, 3.0, 2001)), 0.25)  # Δ = B / 2^(b-1)
    assert k.tolist() == list(range(-8, 8))


@settings(max_examples=40, deadline=None)
@given(half=st.integers(1, 300), bound=st.floats(0.01, 100.0),
       xs=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=64))
def test_symmetric_grid_properties(half, bound, xs):
    q = converter(ConverterConfig(levels=2 * half + 1, bound=bound))
    x = torch.tensor(xs, dtype=torch.float32)
    y = q(x)
    step = float(q.scale)
    k = y.double() / step
    assert torch.equal(k, k.round()) or torch.allclose(k, k.round(), atol=1e-3)
    assert float(k.abs().max()) <= half + 1e-3  # inside the bound, the bound included
    assert torch.equal(q(-x), -y)  # odd symmetry: the grid has no extra negative level
    inside = x.abs() <= half * step
    assert bool(((y - x).abs()[inside] <= step / 2 * (1 + 1e-5)).all())  # nearest level inside the range


@pytest.mark.parametrize("kwargs,match", [
    ({"levels": 128}, "odd integer"),
    ({"levels": 1}, "odd integer"),
    ({"symmetric": True, "signed": False}, "signed"),
    ({"calibration": "median"}, "max.*percentile"),
    ({"percentile": 0.0}, "percentile"),
    ({"bounds": {"fc1": -1.0}}, "bounds must map"),
])
def test_bad_converter_settings_are_refused_with_the_way_out(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConverterConfig(**kwargs)


def test_calibrated_symmetric_bound_does_not_clip_the_peak():
    q = converter(ConverterConfig(bits=8, symmetric=True)).eval()
    x = torch.randn(4000) * 3
    y = q(x)
    peak = float(x.abs().max())
    assert float(q.scale) * 127 == pytest.approx(peak, rel=1e-6)
    i = int(x.abs().argmax())
    assert float(y[i]) == pytest.approx(float(x[i]), rel=1e-6)  # the peak is a level, not clipped by a step


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


def test_percentile_bound_is_numpys_percentile_of_the_calibration_data():
    model = mlp()
    cfg = HardenConfig(quant=None, dac=ConverterConfig(levels=255, calibration="percentile", percentile=99.0))
    hm = fxharden.harden(model, config=cfg)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(64, 16, generator=g) * 2, torch.randn(64, 16, generator=g), torch.randn(10, 16, generator=g)]
    fxharden.calibrate_quantizers(hm, batches)
    dac = hm.get_submodule("fxharden.0__dac")
    expected = np.percentile(np.abs(torch.cat(batches).numpy()), 99.0)
    assert float(dac.scale) * 127 == pytest.approx(expected, rel=1e-6)
    assert float(dac.scale) * 127 < float(torch.cat(batches).abs().max())  # not the maximum


def test_learned_range_gets_the_clipped_values_gradient_and_moves():
    q = converter(ConverterConfig(levels=255, bound=1.0, learn_range=True))
    x = torch.tensor([0.3, -0.7, 1.5, -2.0], requires_grad=True)
    w = torch.tensor([1.0, 1.0, 1.0, 2.0])
    (q(x) * w).sum().backward()
    # bound B = 127 Δ: dL/dB = Σ over clipped values of sign(x) w = 1 - 2; nothing from values inside
    assert float(q.scale.grad) / 127 == pytest.approx(-1.0, rel=1e-6)  # dL/dΔ / 127
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]  # straight through inside, 0 where clipped
    opt = torch.optim.SGD(q.parameters(), lr=1e-3)
    data = torch.randn(512) * 3
    for _ in range(20):
        opt.zero_grad()
        ((q(data) - data) ** 2).mean().backward()
        opt.step()
    assert float(q.scale.detach()) * 127 > 1.2  # the bound grew towards the data's range


def test_per_layer_bounds_and_unknown_names():
    model = mlp()
    cfg = HardenConfig(quant=None, adc=ConverterConfig(levels=255, bound=1.0, bounds={"2": 4.0}))
    hm = fxharden.harden(model, config=cfg)
    assert float(hm.get_submodule("fxharden.0__adc").scale) * 127 == pytest.approx(1.0)
    assert float(hm.get_submodule("fxharden.2__adc").scale) * 127 == pytest.approx(4.0)
    bad = HardenConfig(quant=None, adc=ConverterConfig(bound=1.0, bounds={"fc2": 4.0}))
    with pytest.raises(ConverterError, match="names 'fc2', which has no ADC"):
        fxharden.harden(model, config=bad)


def test_converter_settings_round_trip_through_json_and_old_configs_load():
    cfg = HardenConfig(quant=None, adc=ConverterConfig(levels=511, bounds={"fc": 2.0}, before_bias=True,
                                                       calibration="percentile", learn_range=True))
    back = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert back == cfg
    old = config_to_dict(HardenConfig(quant=None, adc=ConverterConfig(bits=6, bound=1.5)))
    old["adc"] = {"bits": 6, "bound": 1.5, "signed": True, "calibration_steps": 30}  # saved before these options
    assert config_from_dict(old).adc == ConverterConfig(bits=6, bound=1.5)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


BOUND = 127 / 64  # Δ = 1/64: a power of two, so x / Δ is exact in the reference


def adc_ref(t):
    return torch.round(torch.clamp(t / (1 / 64), -127, 127)) * (1 / 64)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_adc_before_bias_equals_eager_reference(frontend):
    model = ConvNet().eval()
    x = torch.randn(6, 3, 8, 8) * 4
    cfg = HardenConfig(quant=None, frontend=frontend,
                       adc=ConverterConfig(levels=255, bound=BOUND, before_bias=True))
    hm = fxharden.harden(model, config=cfg, example_inputs=(x,))
    with torch.no_grad():
        h = adc_ref(F.conv2d(x, model.conv.weight)) + model.conv.bias.view(-1, 1, 1)  # y = ADC(W x) + b
        ref = adc_ref(F.linear(torch.relu(h).flatten(1), model.fc.weight)) + model.fc.bias
        after = adc_ref(model.fc(torch.relu(adc_ref(model.conv(x))).flatten(1)))  # y = ADC(W x + b)
        out = hm(x)
    assert torch.equal(out, ref)
    assert not torch.allclose(out, after, atol=1e-3)  # the bias position matters for these layers
    assert set(dict(hm.named_parameters())) >= {"conv.weight", "conv.bias", "fc.weight", "fc.bias"}
    cfg_after = cfg.replace(adc=ConverterConfig(levels=255, bound=BOUND))
    with torch.no_grad():
        assert torch.equal(fxharden.harden(model, config=cfg_after, example_inputs=(x,))(x), after)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_adc_before_bias_with_quantized_weights(frontend):
    """The layers whose class is already swapped (quantized weights) leave their bias out too."""
    model = ConvNet().eval()
    x = torch.randn(6, 3, 8, 8) * 4
    rules = SiteRules(by_name=(("input", None), ("relu", None)))  # only the layers' weights are quantized
    cfg = HardenConfig(quant=QuantConfig(bits=8), rules=rules, frontend=frontend,
                       adc=ConverterConfig(levels=255, bound=BOUND, before_bias=True))
    hm = fxharden.harden(model, config=cfg, example_inputs=(x,))

    def wq(w, dims):  # symmetric 8-bit weights: per output channel (conv) or per tensor (linear)
        s = w.abs().amax(dim=dims, keepdim=True) / 127
        return torch.round(w / s) * s

    with torch.no_grad():
        h = adc_ref(F.conv2d(x, wq(model.conv.weight, (1, 2, 3)))) + model.conv.bias.view(-1, 1, 1)
        ref = adc_ref(F.linear(torch.relu(h).flatten(1), wq(model.fc.weight, (0, 1)))) + model.fc.bias
        assert torch.allclose(hm(x), ref, rtol=0, atol=1e-5)


def test_adc_before_bias_of_a_functional_linear_call():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.w, self.b = nn.Parameter(torch.randn(3, 6)), nn.Parameter(torch.randn(3))

        def forward(self, x):
            return F.linear(x, self.w, bias=self.b)

    model = Functional().eval()
    cfg = HardenConfig(quant=None, frontend="fx", adc=ConverterConfig(levels=255, bound=BOUND, before_bias=True))
    hm = fxharden.harden(model, config=cfg)
    x = torch.randn(5, 6) * 3
    with torch.no_grad():
        assert torch.equal(hm(x), adc_ref(F.linear(x, model.w)) + model.b)


def test_adc_before_bias_on_the_module_route():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            if x.sum() > -1e9:  # data-dependent: torch.fx cannot trace it
                return self.fc(x)
            return x

    model = Branchy().eval()
    hm = fxharden.harden(model, config=HardenConfig(quant=None, frontend="fx", adc=ConverterConfig(
        levels=255, bound=BOUND, before_bias=True)))
    x = torch.randn(5, 6) * 3
    assert [s.route for s in fxharden.harden_report(hm).sites if s.name == "fc"] == ["module"]
    with torch.no_grad():
        assert torch.equal(hm(x), adc_ref(F.linear(x, model.fc.weight)) + model.fc.bias)


def test_adc_before_bias_refuses_a_layer_that_adds_its_bias_itself():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.bil = nn.Bilinear(3, 3, 2)

        def forward(self, a, b):
            return self.bil(a, b)

    cfg = HardenConfig(quant=None, adc=ConverterConfig(bound=1.0, before_bias=True))
    with pytest.raises(ConverterError, match=r"layer 'bil' cannot be moved.*Bilinear.*before_bias=False"):
        fxharden.harden(Pair(), config=cfg)
    with pytest.raises(ConverterError, match="Set it on adc="):
        fxharden.harden(Pair(), config=HardenConfig(quant=None, dac=ConverterConfig(bound=1.0, before_bias=True)))
