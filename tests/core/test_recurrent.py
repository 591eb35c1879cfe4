"""Recurrent layers (LSTM, GRU, RNN and their cells) hardened like conv and linear layers."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fxharden
from fxharden.core.config import HardenConfig, QuantConfig, WeightNoiseConfig, WeightNoiseKind

LOOP_TOL = dict(rtol=1e-5, atol=1e-6)
"""The step loop against torch's fused kernel: the same products summed in another order
(torch's CPU kernel may use oneDNN for LSTM and GRU), so float32 rounding differs by a few ulps."""


class Wrap(nn.Module):
    """A model whose graph calls one recurrent layer and hands on its first output."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.rnn = layer
        self.tuple_out = not isinstance(layer, (nn.GRUCell, nn.RNNCell))

    def forward(self, x):
        out = self.rnn(x)
        return out[0] if self.tuple_out else out


def _hardened(layer: nn.Module, **kw):
    """The hardened copy of ``layer`` (through a hardened model) and the model."""
    hm = fxharden.harden(Wrap(layer), **kw)
    return hm.get_submodule("rnn"), hm


def _states(cls, layers, directions, batch, hidden, proj):
    h = torch.randn(layers * directions, batch, proj or hidden)
    return (h, torch.randn(layers * directions, batch, hidden)) if cls is nn.LSTM else h


def _same(a, b, exact: bool):
    """Outputs (tensors, tuples, packed sequences) equal, or equal within ``LOOP_TOL``."""
    if isinstance(a, torch.nn.utils.rnn.PackedSequence):
        a, b = pad_packed_sequence(a)[0], pad_packed_sequence(b)[0]
    if isinstance(a, tuple):
        return all(_same(x, y, exact) for x, y in zip(a, b))
    return torch.equal(a, b) if exact else torch.allclose(a, b, **LOOP_TOL)


CONFIGS = [(cls, bi, bf, proj) for cls in (nn.LSTM, nn.GRU, nn.RNN) for bi in (False, True) for bf in (False, True)
           for proj in ((0, 3) if cls is nn.LSTM else (0,))]


@pytest.mark.parametrize("cls,bidirectional,batch_first,proj", CONFIGS)
def test_noop_is_torch_and_the_step_loop_agrees(cls, bidirectional, batch_first, proj):
    torch.manual_seed(0)
    kw = dict(proj_size=proj) if proj else {}
    plain = cls(5, 6, num_layers=2, bidirectional=bidirectional, batch_first=batch_first, **kw).eval()
    layer, hm = _hardened(plain)
    x = torch.randn(3, 4, 5)
    hx = _states(cls, 2, 2 if bidirectional else 1, 3 if batch_first else 4, 6, proj)
    lengths = torch.tensor([4, 2, 3] if batch_first else [3, 1, 3, 2])
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    with torch.no_grad():
        assert torch.equal(hm(x), plain(x)[0])  # through the graph
        for args in [(x,), (x, hx), (packed,), (packed, hx), (x[0] if batch_first else x[:, 0],)]:
            want = plain(*args)
            layer.always_step = False
            assert _same(layer(*args), want, exact=True)
            layer.always_step = True
            assert _same(layer(*args), want, exact=False)
            layer.always_step = False


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_cells_noop_is_torch_and_the_step_agrees(cls):
    torch.manual_seed(0)
    plain = cls(5, 6).eval()
    layer, hm = _hardened(plain)
    x = torch.randn(4, 5)
    h = torch.randn(4, 6)
    hx = (h, torch.randn(4, 6)) if cls is nn.LSTMCell else h
    with torch.no_grad():
        assert torch.equal(hm(x), plain(x)[0] if cls is nn.LSTMCell else plain(x))
        for args in [(x,), (x, hx), (x[0],)]:
            want = plain(*args)
            assert _same(layer(*args), want, exact=True)
            layer.always_step = True
            assert _same(layer(*args), want, exact=False)
            layer.always_step = False


def test_state_dict_keys_and_values_unchanged_and_sites_reported():
    plain = nn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3)
    layer, hm = _hardened(plain, bits=8)
    sd = layer.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in plain.state_dict().items())
    assert isinstance(layer, nn.LSTM)
    names = [s.name for s in fxharden.harden_report(hm).sites]
    want = [f"rnn.l{k}{d}.{p}" for k in range(2) for d in ("", "_reverse") for p in ("ih", "hh", "hr")] + ["rnn"]
    assert [n for n in names if n.startswith("rnn")] == want
    assert [n for n in fxharden.noise_sites(hm) if n.startswith("rnn")] == want
    assert fxharden.harden_report(hm).skipped == {}


def _fake_quant(w, bits):
    """Symmetric fake quantization with one step per row (gate row) of the matrix, as an
    analog tile scales each output row (written out here)."""
    qmax = 2 ** (bits - 1) - 1
    step = w.abs().amax(dim=1, keepdim=True) / qmax
    return torch.clamp(torch.round(w / step), -qmax, qmax) * step


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.LSTMCell])
def test_quantized_weights_match_an_independent_fake_quant(cls):
    torch.manual_seed(1)
    plain = cls(5, 6, bidirectional=True) if cls is not nn.LSTMCell else cls(5, 6)
    layer, _ = _hardened(plain, bits=4)
    ref = copy.deepcopy(plain)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("weight"):
                p.copy_(_fake_quant(p, 4))
        x = torch.randn(7, 3, 5) if cls is not nn.LSTMCell else torch.randn(3, 5)
        ws = layer.hardened_weights()
        assert set(ws) == {n for n, _ in plain.named_parameters() if n.startswith("weight")}
        for name, w in ws.items():
            assert torch.equal(w, _fake_quant(plain.get_parameter(name), 4))
        assert _same(layer(x), ref(x), exact=True)


def _zeroed(cls, hidden=4, **kw):
    layer = cls(3, hidden, **kw)
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    return layer


@pytest.mark.parametrize("product", ["ih", "hh"])
def test_product_noise_has_spread_sigma_fresh_at_every_step(product):
    """Weights and biases zero, tanh RNN: the pre-activation at each step is the product's
    noise alone, so atanh(h_t) ~ N(0, sigma^2), independent across steps."""
    sigma = 0.3
    layer, hm = _hardened(_zeroed(nn.RNN), sigma=0.0)
    fxharden.set_noise(hm, sigma, sites=[f"rnn.l0.{product}"])
    with torch.no_grad():
        out = hm(torch.randn(6, 4000, 3))  # (T, B, H)
    pre = torch.atanh(out)
    assert abs(pre.std().item() - sigma) < 0.01 * sigma * 3
    assert abs(pre.mean().item()) < 0.005
    steps = pre.reshape(6, -1)
    corr = torch.corrcoef(steps)
    assert (corr - torch.eye(6)).abs().max() < 5 / math.sqrt(steps.shape[1])  # a fresh draw per step
    fxharden.set_noise(hm, {f"rnn.l0.{'hh' if product == 'ih' else 'ih'}": 0.0})
    with torch.no_grad():
        assert torch.equal(hm(torch.randn(6, 5, 3)), torch.zeros(6, 5, 4))


def test_output_noise_and_projection_noise_sites():
    sigma = 0.2
    layer, hm = _hardened(_zeroed(nn.LSTM, proj_size=2), sigma=0.0)
    fxharden.set_noise(hm, {"rnn.l0.hr": sigma})
    with torch.no_grad():
        out = hm(torch.randn(5, 3000, 3))
    assert abs(out.std().item() - sigma) < 0.03 * sigma  # h = W_hr(...) + noise, W_hr = 0
    fxharden.set_noise(hm, {"rnn": sigma})
    with torch.no_grad():
        out, (h, c) = layer(torch.randn(5, 3000, 3))
    assert abs(out.std().item() - sigma) < 0.03 * sigma
    assert torch.equal(h, torch.zeros_like(h))  # the state carries no output noise


def test_weight_noise_one_draw_per_batch_group():
    torch.manual_seed(0)
    cfg = HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind=WeightNoiseKind.ADDITIVE, sigma=0.0))
    plain = nn.GRU(3, 4, batch_first=True).eval()
    layer, hm = _hardened(plain, config=cfg)
    fxharden.set_weight_noise(hm, [0.0, 0.5])
    x = torch.randn(1, 5, 3).repeat(6, 1, 1)  # groups of 3 identical rows
    with torch.no_grad():
        for stepping in (False, True):
            layer.always_step = stepping
            out = hm(x)
            assert torch.allclose(out[:3], plain(x[:3])[0], **LOOP_TOL)  # sigma 0: the clean weights
            assert torch.equal(out[3], out[4]) and torch.equal(out[4], out[5])  # one weight for the group
            assert not torch.allclose(out[3], out[0], atol=1e-3)


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(2, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


def _sequences(n, seed):
    """Class 1: the sequence's running sum ends positive in channel 0 (a learnable rule)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, 2, generator=g)
    return x, (x[:, :, 0].sum(1) > 0).long()


def test_sweep_and_train_on_a_tiny_lstm_classifier():
    from fxharden.measure.sweep_config import SweepConfig
    from fxharden.training.train import TrainConfig, train

    torch.manual_seed(0)
    model = TinyClassifier()
    hm = fxharden.harden(model, bits=8)
    train(hm, _sequences(256, 0), config=TrainConfig(max_steps=2, batch_size=64, train_sigma=0.1, device="cpu",
                                                      eval_each_epoch=False))
    assert all(p.grad is not None for p in hm.parameters() if p.requires_grad)
    res = fxharden.sweep(hm, _sequences(128, 1), config=SweepConfig(sigmas=(0.0, 0.5, 2.0, 8.0), repeats=2,
                                                                   batch_size=64, device="cpu"))
    assert res.sites == fxharden.noise_sites(hm) and "lstm.l0.hh" in res.sites
    assert res.fit is not None and (math.isfinite(res.fit.mu) or res.fit.status.value != "ok")
    assert all(p.total == 128 and all(0 <= c <= 128 for row in p.correct for c in row) for p in res.points)


@pytest.mark.parametrize("bad", [nn.LSTM])
def test_weight_groups_refuse_packed_input(bad):
    cfg = HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind=WeightNoiseKind.ADDITIVE, sigma=0.0))
    layer, hm = _hardened(bad(3, 4), config=cfg)
    fxharden.set_weight_noise(hm, [0.1, 0.2])
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="PackedSequence"):
        layer(packed)


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx leaves it opaque, its layers take the module route."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4)

    def forward(self, x):
        out, _ = self.lstm(x)
        return out if out.sum() > -1e9 else -out


def test_recurrent_layer_inside_an_opaque_part_is_hardened():
    from fxharden.core.harden import weight_noise_modules

    torch.manual_seed(0)
    model = nn.Sequential(Untraceable()).eval()
    cfg = HardenConfig(quant=QuantConfig(bits=8), weight_noise=WeightNoiseConfig(kind=WeightNoiseKind.ADDITIVE,
                                                                               sigma=0.0))
    hm = fxharden.harden(model, config=cfg)
    assert [n for n in fxharden.noise_sites(hm) if n.startswith("0.")] == ["0.lstm.l0.ih", "0.lstm.l0.hh", "0.lstm"]
    assert list(weight_noise_modules(hm)) == ["0.lstm.weight"]
    x = torch.randn(5, 2, 3)
    layer = hm.get_submodule("0.lstm")
    ref = copy.deepcopy(model[0].lstm)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("weight"):
                p.copy_(_fake_quant(p, 8))
        assert torch.equal(layer(x)[0], ref(x)[0])  # the layer (the model quantizes its input too)
        clean = hm(x)
        fxharden.set_noise(hm, {"0.lstm.l0.hh": 0.1})
        assert not torch.allclose(hm(x), clean, atol=1e-3)


def test_rules_address_each_product():
    from fxharden import LayerConfig, SiteRules

    cfg = HardenConfig(quant=None, rules=SiteRules(by_regex={r"rnn\.l\d\.hh": None},
                                                   by_name={"rnn": LayerConfig(noise=False)}))
    layer, hm = _hardened(nn.GRU(3, 4, num_layers=2), config=cfg)
    assert [n for n in fxharden.noise_sites(hm) if n.startswith("rnn")] == ["rnn.l0.ih", "rnn.l1.ih"]
    rows = {s.name: s.noise for s in fxharden.harden_report(hm).sites}
    assert rows["rnn.l0.ih"] and not rows["rnn.l0.hh"] and not rows["rnn"]
    with pytest.raises(ValueError, match="rnn.l2.ih"):
        _hardened(nn.GRU(3, 4, num_layers=2), config=cfg.replace(rules=SiteRules(by_name={"rnn.l2.ih": None})))


def test_cell_product_noise_has_spread_sigma():
    sigma = 0.25
    layer, hm = _hardened(_zeroed(nn.RNNCell), sigma=0.0)
    assert [n for n in fxharden.noise_sites(hm) if n.startswith("rnn")] == ["rnn.ih", "rnn.hh", "rnn"]
    fxharden.set_noise(hm, {"rnn.hh": sigma})
    with torch.no_grad():
        first, second = hm(torch.randn(20000, 3)), hm(torch.randn(20000, 3))
    for out in (first, second):
        assert abs(torch.atanh(out).std().item() - sigma) < 0.03 * sigma
    assert abs(torch.corrcoef(torch.stack([first.flatten(), second.flatten()]))[0, 1]) < 5 / math.sqrt(80000)
