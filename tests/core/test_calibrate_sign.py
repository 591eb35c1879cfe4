"""An input that is never negative (a power spectrogram, an image in [0, 1]) takes the unsigned
grid at calibration: twice the levels over its range of values, half the step."""

import torch
from torch import nn

import fxharden
from fxharden import calibrate_quantizers
from fxharden.core.quant import ActQuant

BITS = 8


def power_mels(n=64, bins=40, seed=0):
    """Power-spectrogram-like values: exponentially distributed, never negative, peak ~30."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.log(torch.rand(n, bins, generator=g).clamp_min(1e-12))
    return x * (30.0 / x.max())


def hardened():
    torch.manual_seed(0)
    return fxharden.harden(nn.Sequential(nn.Linear(40, 8)).eval(), bits=BITS)


def input_quant(hm):
    (quant,) = [m for m in hm.modules() if isinstance(m, ActQuant) and m.sign_from_data]
    return quant


def input_row(hm):
    return next(s for s in fxharden.harden_report(hm).sites if s.name == "input")


def zeros_on(x, step):
    """How many values round to 0 on the grid of ``step`` (round half to even)."""
    return int((torch.round(x / step) == 0).sum())


def test_never_negative_input_takes_the_unsigned_grid():
    hm, x = hardened(), power_mels()
    assert "unsigned if the calibration data are >= 0" in input_row(hm).quantizer
    calibrate_quantizers(hm, [x])
    quant = input_quant(hm)
    unsigned_step = x.max() / (2 ** BITS - 1)
    signed_step = x.max() / (2 ** (BITS - 1) - 1)
    assert torch.allclose(quant.scale, unsigned_step)
    q = quant(x)
    assert int((q == 0).sum()) == zeros_on(x, unsigned_step)
    assert zeros_on(x, unsigned_step) < zeros_on(x, signed_step)  # the signed grid erased more
    assert torch.allclose(q, torch.round(x / unsigned_step) * unsigned_step, atol=1e-5)
    assert input_row(hm).quantizer.startswith(f"bits={BITS}, unsigned (calibration data >= 0)")


def test_one_negative_value_keeps_the_signed_grid():
    hm, x = hardened(), power_mels()
    negative = power_mels(seed=1)
    negative[0, 0] = -1.0
    calibrate_quantizers(hm, [x, negative])  # unsigned after the first batch, signed from the second on
    quant = input_quant(hm)
    peak = torch.maximum(x.abs().max(), negative.abs().max())
    assert torch.allclose(quant.scale, peak / (2 ** (BITS - 1) - 1))
    assert quant(torch.tensor([-1.0])).item() < 0
    assert ", signed," in input_row(hm).quantizer


def test_the_chosen_grid_travels_in_the_state_dict():
    hm, x = hardened(), power_mels()
    calibrate_quantizers(hm, [x])
    fresh = hardened()
    fresh.load_state_dict(hm.state_dict())
    assert not input_quant(fresh).signed
    with torch.no_grad():
        assert torch.equal(fresh(x), hm(x))
