"""Weights that reach a conv/linear call as graph values (``F.linear(x, self.fc.weight)``,
``F.conv2d(x, self.weight)``, a conv subclass with its own forward) are quantized and
perturbed like the class-swapped layers, checked against eager computations by hand."""

import io

import pytest
import torch
import torch.nn.functional as F
from timm.layers import StdConv2d
from torch import nn

import fxharden
from fxharden import SiteRules, WeightNoiseConfig
from fxharden.core.layers import HARDENED_LAYERS, HardenedCall
from fxharden.core.quant import WeightQuant
from fxharden.core.noise import stream_seed

NO_INPUT = SiteRules(by_name={"input": None})  # the input left alone: only weights change the output


def quantized(w, bits=8, per_channel=False):
    """Symmetric signed grid, step max|w| / (2^(b-1) - 1) per tensor or per output channel."""
    qmax = 2 ** (bits - 1) - 1
    peak = w.abs().flatten(1).amax(1).view(-1, *[1] * (w.dim() - 1)) if per_channel else w.abs().amax()
    step = peak / qmax
    return torch.clamp(torch.round(w / step), -qmax - 1, qmax) * step


def draw(site, shape, seed=0):
    """The standard normals of site ``site``'s first draw (its documented stream)."""
    g = torch.Generator().manual_seed(stream_seed(seed, site))
    return torch.empty(shape).normal_(generator=g)


class Functional(nn.Module):
    """A custom module with its own parameter and a linear layer used functionally."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = F.conv2d(x, self.weight, padding=1).mean((2, 3))
        return F.linear(y, self.fc.weight, self.fc.bias)

    def reference(self, x, w_conv, w_fc):
        return F.linear(F.conv2d(x, w_conv, padding=1).mean((2, 3)), w_fc, self.fc.bias)


class Std(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = StdConv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return self.conv(x)

    def standardized(self):
        c = self.conv
        w = c.weight
        return F.batch_norm(w.reshape(1, c.out_channels, -1), None, None, training=True, momentum=0.0,
                            eps=c.eps).reshape_as(w)

    def reference(self, x, w):
        c = self.conv
        return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


X = torch.randn(4, 3, 8, 8)


def test_functional_weights_are_quantized_like_the_layers():
    torch.manual_seed(0)
    m = Functional().eval()
    hm = fxharden.harden(m, bits=8, rules=NO_INPUT)
    ref = m.reference(X, quantized(m.weight.detach(), per_channel=True), quantized(m.fc.weight.detach()))
    torch.testing.assert_close(hm(X), ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(m(X), ref, rtol=1e-5, atol=1e-6)
    quantizers = {s.name: s.quantizer for s in fxharden.harden_report(hm).sites}
    assert quantizers["conv2d"] == "weights bits=8, per-channel"
    assert quantizers["linear"] == "weights bits=8, per-tensor"
    assert fxharden.harden_report(hm).skipped == {}


def test_functional_weight_noise_follows_its_stream_and_per_group_sigma():
    torch.manual_seed(0)
    m = Functional().eval()
    hm = fxharden.harden(m, weight_noise=WeightNoiseConfig(kind="additive", sigma=0.5))
    assert set(fxharden.core.harden.weight_noise_modules(hm)) == {"conv2d.weight", "linear.weight"}
    assert "linear.weight" not in fxharden.noise_sites(hm)  # weight noise is not activation noise
    w_conv = m.weight.detach() + 0.5 * draw("conv2d.weight", m.weight.shape)
    w_fc = m.fc.weight.detach() + 0.5 * draw("linear.weight", m.fc.weight.shape)
    with torch.no_grad():
        torch.testing.assert_close(hm(X), m.reference(X, w_conv, w_fc))
        fxharden.seed_noise(hm, 0)
        fxharden.set_weight_noise(hm, [0.0, 0.5])  # one weight draw per batch group of 2
        out = hm(X)
        torch.testing.assert_close(out[:2], m(X[:2]))
        torch.testing.assert_close(out[2:], m.reference(X[2:], w_conv, w_fc))


def test_conv_subclass_with_its_own_forward_is_hardened_through_its_functional_call():
    torch.manual_seed(0)
    m = Std().eval()
    w = m.standardized().detach()
    hm = fxharden.harden(m, bits=8, rules=NO_INPUT)
    torch.testing.assert_close(hm(X), m.reference(X, quantized(w, per_channel=True)), rtol=1e-5, atol=1e-6)
    assert {s.name: s.quantizer for s in fxharden.harden_report(hm).sites}["conv.conv2d"] == \
        "weights bits=8, per-channel"
    hn = fxharden.harden(m, weight_noise=WeightNoiseConfig(kind="additive", sigma=0.5))
    with torch.no_grad():
        torch.testing.assert_close(hn(X), m.reference(X, w + 0.5 * draw("conv.conv2d.weight", w.shape)))
    assert torch.equal(fxharden.harden(m)(X), m(X))  # the no-op oracle


class MyConv(nn.Conv2d):
    """A conv subclass without a forward of its own: traced through to F.conv2d."""


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = nn.Conv2d(3, 4, 3, padding=1)
        self.sub = MyConv(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.sub(self.plain(x)).mean((2, 3)))


def test_every_weight_is_hardened_once():
    torch.manual_seed(0)
    m = Mixed().eval()
    hm = fxharden.harden(m, bits=8, rules=NO_INPUT,
                         weight_noise=WeightNoiseConfig(kind="additive", sigma=0.1))
    assert sum(isinstance(x, WeightQuant) for x in hm.modules()) == 3
    assert sum(isinstance(x, HardenedCall) for x in hm.modules()) == 1  # sub; plain and fc are class-swapped
    assert sum(isinstance(x, HARDENED_LAYERS) and not isinstance(x, HardenedCall) for x in hm.modules()) == 2
    fxharden.set_weight_noise(hm, 0.0)
    q = lambda layer, pc: quantized(layer.weight.detach(), per_channel=pc)  # noqa: E731
    y = F.conv2d(F.conv2d(X, q(m.plain, True), m.plain.bias, padding=1), q(m.sub, True), m.sub.bias, padding=1)
    torch.testing.assert_close(hm(X), F.linear(y.mean((2, 3)), q(m.fc, False), m.fc.bias), rtol=1e-5, atol=1e-6)


def test_pickled_model_with_functional_weights_computes_the_same():
    torch.manual_seed(0)
    m = Functional().eval()
    hm = fxharden.harden(m, bits=8)
    buf = io.BytesIO()
    torch.save(hm, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert torch.equal(back(X), hm(X))


class MatmulParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 2))

    def forward(self, x):
        return x @ self.w


@pytest.mark.parametrize("cfg", [{"bits": 8}, {"weight_noise": WeightNoiseConfig(kind="additive", sigma=0.1)}])
def test_parameter_operands_that_are_not_hardened_are_reported(cfg):
    hm = fxharden.harden(MatmulParam(), **cfg)
    assert "matmul" in fxharden.harden_report(hm).skipped["matmul"]
    assert fxharden.harden_report(fxharden.harden(MatmulParam())).skipped == {}  # nothing to harden: no note
