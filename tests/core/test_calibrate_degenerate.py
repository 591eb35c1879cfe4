"""Calibration on data that cannot calibrate, and steps that do not fit the data: empty batches
are skipped (a forward on one gives the plain model's empty output), and a quantizer whose
step erases or clips the signal is named in one warning and in the harden report."""

import math
import warnings

import pytest
import torch
from torch import nn

import fxharden
from fxharden import HardenConfig, SiteRules
from fxharden.core.noise_models import ConverterConfig
from fxharden.core.quant import CLIP_FRACTION, FEW_LEVELS, ActQuant, GridWarning


def sigmoid_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()).eval()


def batches(k=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(32, 4, generator=g) * 3 for _ in range(k)]


def grid_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, GridWarning)]


# ---------------------------------------------------------------- empty batches


@pytest.mark.parametrize("kwargs", [dict(bits=8), dict(bits=8, scale=None), dict(bits=8, sigma=0.1)],
                         ids=["constant", "statistics", "noisy"])
def test_an_uncalibrated_forward_on_an_empty_batch_gives_the_plain_output(kwargs):
    plain = sigmoid_net()
    hm = fxharden.harden(plain, **kwargs).eval()
    empty = torch.zeros(0, 4)
    with torch.no_grad():
        out, ref = hm(empty), plain(empty)
    assert out.shape == ref.shape == (0, 4) and out.dtype == ref.dtype and torch.equal(out, ref)
    quant = hm.get_submodule("fxharden.input__quant")
    assert quant.needs_data and quant._observed == 0  # the empty batch calibrated nothing


def test_calibration_skips_empty_batches_with_one_warning():
    hm = fxharden.harden(sigmoid_net(), bits=8, scale=1 / 255).eval()
    real = batches(2)
    empty = torch.zeros(0, 4)
    with pytest.warns(UserWarning) as record:
        got = fxharden.calibrate_quantizers(hm, [empty, real[0], (empty, torch.zeros(0)), real[1]])
    skipped = [str(w.message) for w in record if "empty" in str(w.message)]
    assert skipped == ["calibrate_quantizers skipped 2 empty batches (batch size 0) and calibrated on the other 2"]
    # hand count: the input step is max|x| / 127 over the real batches only
    assert got["fxharden.input__quant"] == pytest.approx(max(float(x.abs().max()) for x in real) / 127, rel=1e-6)


def test_calibrate_noise_warns_once_about_empty_batches():
    hm = fxharden.harden(sigmoid_net(), bits=8, scale=1 / 255).eval()
    with pytest.warns(UserWarning) as record:
        fxharden.calibrate_noise(hm, [torch.zeros(0, 4)] + batches(1))
    assert len([w for w in record if "empty" in str(w.message)]) == 1


@pytest.mark.parametrize("calibrate", [fxharden.calibrate_quantizers, fxharden.calibrate_noise],
                         ids=["quantizers", "noise"])
def test_calibration_on_empty_batches_only_says_no_data_was_seen(calibrate):
    hm = fxharden.harden(sigmoid_net(), bits=8, scale=None).eval()
    with pytest.raises(ValueError, match=r"saw no data: all 2 of its batches were empty \(batch size 0\); "
                                         r"pass batches with at least one sample"):
        calibrate(hm, [torch.zeros(0, 4), {"input": torch.zeros(0, 4)}])


# ---------------------------------------------------------------- steps that do not fit the data


def test_a_step_that_leaves_two_levels_is_reported_once():
    plain, data = sigmoid_net(), batches(3)
    # independent count, eager: the plain sigmoid's values round to {0, 1} on the step 1.0
    with torch.no_grad():
        levels = len(torch.unique(torch.round(torch.cat([plain(x) for x in data]))))
    assert levels == 2 <= FEW_LEVELS
    hm = fxharden.harden(plain, bits=8).eval()  # scale=1.0
    with pytest.warns(GridWarning) as record:
        fxharden.calibrate_quantizers(hm, data)
    (message,) = grid_warnings(record)  # one warning for all batches and sites
    assert f"site '1': its quantizer uses {levels} of its 256 levels (step 1;" in message
    assert "scale=None" in message and "more bits" in message and "smaller" in message
    assert "'input'" not in message  # the statistics-based input step fits its data
    report = fxharden.harden_report(hm).quant_warnings
    assert list(report) == ["1"] and f"uses {levels} of its 256 levels" in report["1"]
    with warnings.catch_warnings():  # checked once per model: no second warning
        warnings.simplefilter("error")
        fxharden.calibrate_quantizers(hm, data)
        fxharden.calibrate_noise(hm, data)


@pytest.mark.parametrize("scale", [1 / 255, None], ids=["fitting-constant", "statistics"])
def test_a_step_that_fits_the_data_is_not_reported(scale):
    hm = fxharden.harden(sigmoid_net(), bits=8, scale=scale).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fxharden.calibrate_noise(hm, batches(3))
    assert fxharden.harden_report(hm).quant_warnings == {}
    assert all(m.grid_checked for m in hm.modules() if isinstance(m, ActQuant))


def test_values_on_the_grid_are_not_erased():
    """A binary signal (0 and 1) on the step 1.0 uses two levels but loses nothing."""
    hm = fxharden.harden(nn.Sequential(nn.ReLU()), bits=8, rules=SiteRules(by_name={"input": None})).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fxharden.calibrate_quantizers(hm, [torch.randint(0, 2, (64, 8)).float()])
    assert fxharden.harden_report(hm).quant_warnings == {}


def test_a_step_that_clips_reports_the_clipped_fraction():
    """tanh on the signed 4-bit grid of step 0.1, [-0.8, 0.7]: round(y / 0.1) leaves the grid
    where tanh(x) >= 0.75 or tanh(x) < -0.85, i.e. x >= atanh(0.75) or x < -atanh(0.85).
    NaNs are not values: they change no fraction."""
    hm = fxharden.harden(nn.Sequential(nn.Tanh()), bits=4, scale=0.1,
                         rules=SiteRules(by_name={"input": None})).eval()
    x = torch.linspace(-3, 3, 601).unsqueeze(1)
    fraction = float(((x >= math.atanh(0.75)) | (x < -math.atanh(0.85))).double().mean())
    assert fraction > CLIP_FRACTION
    with pytest.warns(GridWarning) as record:
        fxharden.calibrate_quantizers(hm, [x[::2], torch.cat([x[1::2], torch.full((7, 1), math.nan)])])
    (message,) = grid_warnings(record)
    assert f"site '0': its quantizer clips {fraction:.1%} of its values (grid [-0.8, 0.7];" in message
    assert "larger where values are clipped" in message
    assert f"clips {fraction:.1%}" in fxharden.harden_report(hm).quant_warnings["0"]


def test_an_adc_that_clips_is_named_by_its_site():
    """A 4-bit signed ADC of bound 1 (Δ = 1 / 8) at the linear layer's output clips its
    values where the plain layer's output y >= 7.5 Δ or y < -8.5 Δ."""
    plain, data = sigmoid_net(), batches(2)
    hm = fxharden.harden(plain, config=HardenConfig(quant=None, adc=ConverterConfig(bits=4, bound=1.0))).eval()
    with torch.no_grad():
        y = torch.cat([plain[0](x) for x in data])
    delta = 1 / 8
    fraction = float(((y >= 7.5 * delta) | (y < -8.5 * delta)).double().mean())
    with pytest.warns(GridWarning, match=r"ConverterConfig bound") as record:
        fxharden.calibrate_quantizers(hm, data)
    (message,) = grid_warnings(record)
    assert f"site '0': its ADC clips {fraction:.1%} of its values" in message
    assert list(fxharden.harden_report(hm).quant_warnings) == ["0"]


# ---------------------------------------------------------------- fxharden inspect


def test_inspect_lists_the_steps_that_do_not_fit_the_calibration_data():
    from typer.testing import CliRunner

    from fxharden.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["inspect", "lenet5", "--bits", "8", "--synthetic", "--max-images", "64"])
    assert res.exit_code == 0, res.output
    table = res.stdout.split("Quantization steps that do not fit the calibration data")[1]
    rows = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    # the random LeNet-5's ReLU outputs stay below 1: on the constant step 1.0 they keep a level or two
    assert rows and set(rows) <= {"relu1", "relu2", "relu3", "relu4"}
    assert "levels (step 1;" in table and "a smaller --scale" in res.stdout
    res = runner.invoke(app, ["inspect", "lenet5", "--bits", "8", "--dynamic", "--synthetic", "--max-images", "64"])
    assert res.exit_code == 0, res.output
    assert "every one fits the calibration data" in res.stdout and "do not fit" not in res.stdout
    assert "Quantization steps" not in runner.invoke(app, ["inspect", "lenet5", "--bits", "8"]).stdout
