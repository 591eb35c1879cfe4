"""Per-channel weight noise and the output noise of an analog matrix-vector product, against
their closed forms (aihwkit-lightning's definitions, ``fxharden.core.noise.mvm``):

- ``Additive(of_max=True, per_channel=True)``: ``w_ij + σ · max_k |w_ik| · ε``, row ``i`` an
  output channel; ``Additive(of_max=True)``: ``σ · max|W|`` for every element;
- ``OutNoise``: ``y_i + σ · input_range · max|W_i|`` (per channel) or ``· max|W|`` (per tensor).

Standard deviations are checked at 10^6 samples within 5 standard errors of the sample standard
deviation (relative error ``1 / sqrt(2 n)`` for ``n`` samples of a Gaussian)."""

import math

import pytest
import torch
from torch import nn

from fxharden.core.noise import Additive, Noise, OutNoise

SIGMA = 0.1


def tolerance(n):
    """5 standard errors of a sample standard deviation of ``n`` Gaussian samples, relative."""
    return 5 / math.sqrt(2 * n)


def rows_of_different_range(rows, cols, seed=0):
    """A weight whose row ``i`` has max|w| about ``2^(i/2)``: per-channel and per-tensor ranges differ."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * (2.0 ** (torch.arange(rows) / 2)).unsqueeze(1)


@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_noise_std_is_sigma_times_the_row_or_tensor_max(per_channel):
    w = rows_of_different_range(16, 62_500)  # 10^6 elements, 62 500 per row
    n = Noise("fc.weight", kind=Additive(of_max=True, per_channel=per_channel))
    n.set_channel_dim(0)
    n.set_sigma(SIGMA)
    with torch.no_grad():
        std = (n(w.clone()) - w).double().std(1)
    ref = w.abs().amax(1) if per_channel else w.abs().amax().expand(16)
    torch.testing.assert_close(std / (SIGMA * ref.double()), torch.ones(16, dtype=torch.float64), rtol=0,
                               atol=tolerance(62_500))


def test_per_channel_weight_noise_follows_the_channel_axis():
    """A ``(in, out)`` weight (channel axis 1) gets the max of each column; a conv filter the max
    over its input channels and kernel."""
    w = rows_of_different_range(8, 125_000).t().contiguous()  # (in, out): channels are columns
    n = Noise("conv1d.weight", kind=Additive(of_max=True, per_channel=True))
    n.set_channel_dim(1)
    n.set_sigma(SIGMA)
    with torch.no_grad():
        std = (n(w.clone()) - w).double().std(0)
    torch.testing.assert_close(std / (SIGMA * w.abs().amax(0).double()), torch.ones(8, dtype=torch.float64),
                               rtol=0, atol=tolerance(125_000))
    f = rows_of_different_range(4, 250_000).view(4, 10, 125, 200)  # (out, in, kh, kw)
    n.set_channel_dim(0)
    with torch.no_grad():
        std = (n(f.clone()) - f).double().flatten(1).std(1)
    torch.testing.assert_close(std / (SIGMA * f.abs().flatten(1).amax(1).double()),
                               torch.ones(4, dtype=torch.float64), rtol=0, atol=tolerance(250_000))


@pytest.mark.parametrize("per_channel", [True, False])
def test_output_noise_std_is_sigma_times_input_range_times_weight_max(per_channel):
    w = rows_of_different_range(8, 32)
    model = OutNoise(per_channel=per_channel, input_range=2.5)
    n = Noise("fc", kind=model)
    n.set_out_scale(model.out_scale(w, 2.5))
    n.set_sigma(SIGMA)
    y = torch.randn(125_000, 8, generator=torch.Generator().manual_seed(3))  # 10^6 outputs, 125 000 per channel
    with torch.no_grad():
        std = (n(y.clone()) - y).double().std(0)
    wmax = w.abs().amax(1) if per_channel else w.abs().amax().expand(8)
    torch.testing.assert_close(std / (SIGMA * 2.5 * wmax.double()), torch.ones(8, dtype=torch.float64), rtol=0,
                               atol=tolerance(125_000))


def test_output_scale_of_a_convolution_broadcasts_over_its_output_channels():
    conv = nn.Conv2d(3, 4, 3)
    model = OutNoise(per_channel=True)
    scale = model.out_scale(conv.weight, 0.5, channel_dim=0, trailing=2)
    assert scale.shape == (4, 1, 1)
    torch.testing.assert_close(scale.flatten(), 0.5 * conv.weight.detach().abs().flatten(1).amax(1))
    assert OutNoise().out_scale(conv.weight, 0.5).shape == ()


def test_sigma_zero_is_an_exact_no_op():
    w = rows_of_different_range(8, 100)
    n = Noise("fc.weight", kind=Additive(of_max=True, per_channel=True))
    n.set_channel_dim(0)
    n.set_sigma(0.0)
    assert torch.equal(n(w), w)
    o = Noise("fc", kind=OutNoise(per_channel=True))
    o.set_out_scale(OutNoise(per_channel=True).out_scale(w, 1.0))
    o.set_sigma(0.0)
    assert torch.equal(o(w.t()), w.t())


def test_bad_values_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match=r"input_range must be a finite number > 0"):
        OutNoise(input_range=0.0)
    n = Noise("fc", kind=OutNoise())
    with pytest.raises(ValueError, match=r"output scale must be finite and >= 0"):
        n.set_out_scale(torch.tensor([1.0, -1.0]))
