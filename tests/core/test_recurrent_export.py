"""Recurrent layers on the export frontend: the layer's ATen call runs the hardened layer."""

import copy

import pytest
import torch
from torch import nn

import fxharden
from fxharden.core.input_guard import InputShapeError
from fxharden import calibrate_quantizers


class Classifier(nn.Module):
    """An LSTM classifier reading the output sequence and the final cell state, then a cell."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 6, num_layers=2, batch_first=True, bidirectional=True, proj_size=4)
        self.cell = nn.GRUCell(8, 6)
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.fc(self.cell(out[:, -1])) + c[-1]


class Last(nn.Module):
    """A recurrent layer (time-major) whose final hidden state is the output, or a cell's new
    hidden state."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.rnn = layer

    def forward(self, x):
        if isinstance(self.rnn, nn.RNNCellBase):
            h = self.rnn(x)
            return h[0] if isinstance(h, tuple) else h
        _, h = self.rnn(x)
        return (h[0] if isinstance(h, tuple) else h)[-1]


EXAMPLE = (torch.randn(2, 5, 3),)


def test_noop_is_exact_on_shapes_other_than_the_example():
    torch.manual_seed(0)
    plain = Classifier().eval()
    hm = fxharden.harden(plain, frontend="export", example_inputs=EXAMPLE)
    assert type(hm.get_submodule("lstm")).__name__ == "HardenedLSTM"
    assert type(hm.get_submodule("cell")).__name__ == "HardenedGRUCell"
    with torch.no_grad():
        for shape in ((7, 5, 3), (1, 5, 3)):
            x = torch.randn(shape)
            assert torch.equal(hm(x), plain(x))
        with pytest.raises(InputShapeError, match=r"x\.shape\[1\] = 5 only, got 9"):
            hm(torch.randn(7, 9, 3))  # a float input's length is held at the example's (input_guard)


@pytest.mark.parametrize("layer", [nn.GRU(3, 5, num_layers=2), nn.RNN(3, 5, nonlinearity="relu"), nn.LSTMCell(3, 5),
                                   nn.RNNCell(3, 5)], ids=lambda m: type(m).__name__)
def test_noop_other_layers_and_cells(layer):
    torch.manual_seed(1)
    plain = Last(layer).eval()
    cell = isinstance(layer, nn.RNNCellBase)
    hm = fxharden.harden(plain, frontend="export", example_inputs=(torch.randn(4, 3) if cell else torch.randn(4, 2, 3),))
    assert type(hm.get_submodule("rnn")).__name__ == f"Hardened{type(layer).__name__}"
    x = torch.randn(7, 3) if cell else torch.randn(4, 2, 3)  # time-major: export holds the example's shape (input_guard)
    with torch.no_grad():
        assert torch.equal(hm(x), plain(x))


def _fake_quantize(t, bits=8, per_row=False):
    """The closed-form symmetric grid: step max|t| / (2^(b-1) - 1) (per row of a weight matrix
    with ``per_row``), round half to even."""
    peak = t.abs().amax(dim=1, keepdim=True) if per_row else t.abs().amax()
    step = peak / (2 ** (bits - 1) - 1)
    return torch.round(t * (1.0 / step)) * step


def test_8bit_weights_and_input_are_the_closed_form_grid():
    torch.manual_seed(2)
    plain = Last(nn.LSTM(3, 5, num_layers=2)).eval()
    hm = fxharden.harden(plain, bits=8, frontend="export", example_inputs=(torch.randn(4, 2, 3),))
    assert fxharden.harden_report(hm).skipped == {}
    x = torch.randn(4, 2, 3)
    calibrate_quantizers(hm, [x])
    reference = copy.deepcopy(plain)
    with torch.no_grad():
        for name, w in reference.rnn.named_parameters():
            if name.startswith("weight"):
                w.copy_(_fake_quantize(w, per_row=True))
        expected = reference(_fake_quantize(x))
        out = hm(x)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, plain(x), atol=1e-4)  # the grid moved it


def test_noise_sites_match_the_fx_route_draw_for_draw():
    torch.manual_seed(3)
    plain = Classifier().eval()
    exported = fxharden.harden(plain, bits=8, frontend="export", example_inputs=EXAMPLE)
    traced = fxharden.harden(plain, bits=8)
    sites = fxharden.noise_sites(exported)
    assert {"lstm.l0.ih", "lstm.l1_reverse.hh", "lstm.l1.hr", "lstm", "cell.ih", "cell.hh", "cell"} <= set(sites)
    assert set(sites) == set(fxharden.noise_sites(traced))
    assert {s.route for s in fxharden.harden_report(exported).sites} == {"export"}
    x = torch.randn(3, 5, 3)
    for hm in (exported, traced):
        calibrate_quantizers(hm, [x])
    with torch.no_grad():
        clean = exported(x)
        assert torch.equal(clean, traced(x))
        for hm in (exported, traced):
            fxharden.set_noise(hm, 0.1, sites=["lstm.l0.hh"])
            fxharden.seed_noise(hm, 7)
        first = exported(x)
        assert torch.equal(first, traced(x))  # the same hardened layer, the same streams
        assert not torch.allclose(first, clean, atol=1e-4)
        assert not torch.equal(exported(x), first)  # a fresh draw at every call
