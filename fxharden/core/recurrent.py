"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their ``*Cell``) hardened like
conv and linear layers: a class swap (parameters, ``state_dict`` keys and ``isinstance`` stay),
the weights through THE weight quantizer and weight noise of ``fxharden.core.layers``, and a
noise module after every matrix-vector product, as an analog chip with one tile per product
computes it.

Sites of a layer ``lstm`` (``k`` the layer, ``_reverse`` the backward direction):

- ``lstm.l{k}.ih`` / ``lstm.l{k}_reverse.ih``: the input-to-hidden product ``x W_ih^T + b_ih``,
  a fresh draw for every element and time step;
- ``lstm.l{k}.hh``: the hidden-to-hidden product ``h W_hh^T + b_hh``, fresh at every step;
- ``lstm.l{k}.hr``: an LSTM's projection ``h W_hr^T`` (``proj_size > 0``), fresh at every step;
- ``lstm``: the layer's output sequence (a cell's new hidden state), as at a linear layer.

A cell's products are ``cell.ih`` and ``cell.hh``. The states handed back (``h_n``, ``c_n``)
carry the products' noise but no output noise of their own.

Speed: while no product noise is active (sigma 0 everywhere inside the recurrence) the layer
runs torch's own fused forward with its hardened weights (quantized, one weight-noise draw per
batch group): no Python loop. With product noise it runs a step loop whose input-to-hidden
products of all time steps are one matmul before the loop.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .layers import Run, _HardenedWeight, _parameters_replaced, harden_layer
from .noise import Noise
from .quant import WeightQuant

__all__ = ["product_sites", "harden_recurrent", "recurrent_noises"]


def product_sites(module: nn.Module) -> List[str]:
    """The suffixes of a recurrent layer's product sites (``l0.ih``, ``l0.hh``,
    ``l0_reverse.ih``, ...; ``ih``, ``hh`` for a cell), in the order the layer computes them."""
    if isinstance(module, nn.RNNCellBase):
        return ["ih", "hh"]
    products = ["ih", "hh"] + (["hr"] if getattr(module, "proj_size", 0) else [])
    directions = ["", "_reverse"] if module.bidirectional else [""]
    return [f"l{k}{d}.{p}" for k in range(module.num_layers) for d in directions for p in products]


def _lstm_step(ih: Tensor, hh: Tensor, state: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    i, f, g, o = (ih + hh).chunk(4, 1)
    c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_step(ih: Tensor, hh: Tensor, state: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    ir, iz, in_ = ih.chunk(3, 1)
    hr, hz, hn = hh.chunk(3, 1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return (n + z * (state[0] - n),)  # torch's own arrangement of (1 - z) n + z h


def _rnn_step(act: Callable[[Tensor], Tensor]) -> Callable[..., Tuple[Tensor, ...]]:
    return lambda ih, hh, state: (act(ih + hh),)


def _step_of(module: nn.Module) -> Callable[..., Tuple[Tensor, ...]]:
    """The state update of one time step from the two products: ``step(ih, hh, state)``."""
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return _lstm_step
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return _gru_step
    relu = getattr(module, "nonlinearity", "tanh") == "relu" or getattr(module, "mode", "") == "RNN_RELU"
    return _rnn_step(torch.relu if relu else torch.tanh)


class _HardenedRecurrent(_HardenedWeight):
    """Mixin of the hardened recurrent layers and cells (see the module doc)."""

    products: nn.ModuleDict
    """Noise module per product site suffix (``"l0.ih"`` stored under ``"l0_ih"``)."""
    output_noise: Noise
    """The noise at the layer's output (absent when the layer gets no activation noise)."""
    _torch_class: type = nn.Module
    """The torch layer this class hardens (its forward is the fused path)."""
    always_step = False
    """Run the step loop even while no product noise is active (to compare it with the fused
    forward); the results agree to rounding."""

    @property
    def _weight_names(self) -> Tuple[str, ...]:  # type: ignore[override]
        return tuple(n for n, _ in self.named_parameters(recurse=False) if n.startswith("weight"))

    def _product(self, suffix: str) -> Optional[Noise]:
        products = self._modules.get("products")
        return None if products is None else products._modules.get(suffix.replace(".", "_"))

    def _stepping(self) -> bool:
        """Whether the step loop runs: product noise is active, or its batch dims are being
        located or its clean signal calibrated (the noise modules must see the products)."""
        products = self._modules.get("products")
        return self.always_step or (products is not None and any(
            m.active or m.watching for m in products.values()))

    def _weight_runs(self, x: Tensor) -> Tuple[int, List[Run]]:
        """``(groups, runs)``: the hardened weights of each run of batch groups (one run of
        one group without weight noise, ``_HardenedWeight._runs`` otherwise)."""
        noise = self.weight_noise
        if noise is None or noise.observe(x) or not noise.active:
            return 1, [(0, 1, self._quantized())]
        if noise.groups > 1 and isinstance(x, PackedSequence):
            raise ValueError(f"{noise.site}: weight noise with one sigma per batch group needs a padded input, "
                             "not a PackedSequence; pad the batch (torch.nn.utils.rnn.pad_packed_sequence) or set "
                             "one sigma per forward pass")
        return noise.groups, self._runs()

    def _output(self, y: Tensor) -> Tensor:
        noise = self._modules.get("output_noise")
        return y if noise is None else noise(y)


def _linear(x: Tensor, name: str, bias: Optional[Tensor], groups: int, runs: List[Run], dim: int) -> Tensor:
    """``x W^T + b`` with the weight ``name`` of each run applied to its groups along ``dim``."""
    if len(runs) == 1:
        return F.linear(x, runs[0][2][name], bias)
    per = x.shape[dim] // groups
    return torch.cat([F.linear(x.narrow(dim, r * per, k * per), ws[name], bias) for r, k, ws in runs], dim)


def _narrow(value, dim: int, start: int, length: int):
    """``value`` (a tensor, a tuple of tensors or ``None``) narrowed along ``dim``."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(v.narrow(dim, start, length) for v in value)
    return value.narrow(dim, start, length)


def _cat(values: list, dim: int):
    """The inverse of ``_narrow`` over a list of runs."""
    if isinstance(values[0], tuple):
        return tuple(torch.cat(parts, dim) for parts in zip(*values))
    return torch.cat(values, dim)


class _HardenedRNNBase(_HardenedRecurrent):
    """``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` hardened (any layers, directions, ``batch_first``,
    ``proj_size``, ``PackedSequence`` inputs, initial state given or not)."""

    def forward(self, input, hx=None):  # noqa: A002 (torch's own argument name)
        groups, runs = self._weight_runs(input)
        if self._stepping():
            output, hidden = self._step_forward(input, hx, groups, runs)
        else:
            output, hidden = self._fused(input, hx, groups, runs)
        if isinstance(output, PackedSequence):
            return output._replace(data=self._output(output.data)), hidden
        return self._output(output), hidden

    def _fused(self, input, hx, groups: int, runs: List[Run]):
        """torch's own forward (one fused kernel) with the hardened weights of each run."""
        base = self._torch_class
        if len(runs) == 1:
            with _parameters_replaced(self, runs[0][2]):
                return base.forward(self, input, hx)
        batched = input.dim() == 3
        dim = (0 if self.batch_first else 1) if batched else None
        if dim is None:
            raise ValueError(f"{self.weight_noise.site}: one weight draw per batch group needs a batched input")
        per = input.shape[dim] // groups
        outs, hiddens = [], []
        for r, k, ws in runs:
            with _parameters_replaced(self, ws):
                out, hidden = base.forward(self, input.narrow(dim, r * per, k * per), _narrow(hx, 1, r * per, k * per))
            outs.append(out)
            hiddens.append(hidden)
        return torch.cat(outs, dim), _cat(hiddens, 1)

    def _step_forward(self, input, hx, groups: int, runs: List[Run]):
        """The step loop: time-major padded sequences, each sequence's state frozen past its length."""
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            x, lengths = pad_packed_sequence(input)  # (T, B, F) in the caller's batch order
            lengths = lengths.to(x.device)
        else:
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1 if not self.batch_first else 0)
            x = x.transpose(0, 1) if self.batch_first else x
        lstm = isinstance(self, nn.LSTM)
        directions = 2 if self.bidirectional else 1
        out_size = self.proj_size if getattr(self, "proj_size", 0) else self.hidden_size
        batch = x.shape[1]
        if hx is None:
            h0 = x.new_zeros(self.num_layers * directions, batch, out_size)
            hx = (h0, x.new_zeros(self.num_layers * directions, batch, self.hidden_size)) if lstm else h0
        elif not packed and input.dim() == 2:
            hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
        states = hx if lstm else (hx,)
        step = _step_of(self)
        finals: List[Tuple[Tensor, ...]] = []
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(directions):
                index = layer * directions + d
                name = f"l{layer}{'_reverse' if d else ''}"
                out, final = self._direction(layer_input, tuple(s[index] for s in states), name, bool(d), step,
                                             lengths, groups, runs)
                outs.append(out)
                finals.append(final)
            layer_input = outs[0] if directions == 1 else torch.cat(outs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)
        hidden = tuple(torch.stack([f[i] for f in finals]) for i in range(len(states)))
        if packed:
            sorted_out = layer_input.index_select(1, input.sorted_indices) if input.sorted_indices is not None \
                else layer_input
            sorted_len = lengths.cpu() if input.sorted_indices is None else lengths.cpu()[input.sorted_indices.cpu()]
            data = pack_padded_sequence(sorted_out, sorted_len, enforce_sorted=True).data
            output = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        else:
            output = layer_input.transpose(0, 1) if self.batch_first else layer_input
            if input.dim() == 2:
                output = output.squeeze(0 if self.batch_first else 1)
                hidden = tuple(h.squeeze(1) for h in hidden)
        return output, (hidden if lstm else hidden[0])

    def _direction(self, x: Tensor, state: Tuple[Tensor, ...], name: str, reverse: bool, step, lengths,
                   groups: int, runs: List[Run]) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        """One layer and direction over the time-major ``x``: its output sequence and final state."""
        bias = self.bias
        b_ih = getattr(self, f"bias_ih_{name}") if bias else None
        b_hh = getattr(self, f"bias_hh_{name}") if bias else None
        ih = _linear(x, f"weight_ih_{name}", b_ih, groups, runs, 1)  # every time step in one matmul
        noise_ih, noise_hh, noise_hr = (self._product(f"{name}.{p}") for p in ("ih", "hh", "hr"))
        if noise_ih is not None:
            ih = noise_ih(ih)  # elementwise: a fresh draw per element and time step
        proj = getattr(self, "proj_size", 0) > 0
        outs: List[Optional[Tensor]] = [None] * x.shape[0]
        for t in (range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])):
            hh = _linear(state[0], f"weight_hh_{name}", b_hh, groups, runs, 0)
            if noise_hh is not None:
                hh = noise_hh(hh)
            new = step(ih[t], hh, state)
            if proj:
                h = _linear(new[0], f"weight_hr_{name}", None, groups, runs, 0)
                new = (h if noise_hr is None else noise_hr(h),) + tuple(new[1:])
            if lengths is not None:  # sequences that have ended keep their state (and output zeros)
                live = (t < lengths).unsqueeze(1)
                new = tuple(torch.where(live, n, s) for n, s in zip(new, state))
                outs[t] = new[0] * live
            else:
                outs[t] = new[0]
            state = new
        return torch.stack(outs), state


class _HardenedCell(_HardenedRecurrent):
    """``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell`` hardened."""

    def forward(self, input: Tensor, hx=None):  # noqa: A002
        groups, runs = self._weight_runs(input)
        if self._stepping():
            out = self._step(input, hx, groups, runs)
        elif len(runs) == 1:
            with _parameters_replaced(self, runs[0][2]):
                out = self._torch_class.forward(self, input, hx)
        else:
            if input.dim() != 2:
                raise ValueError(f"{self.weight_noise.site}: one weight draw per batch group needs a batched input")
            per = input.shape[0] // groups
            parts = []
            for r, k, ws in runs:
                with _parameters_replaced(self, ws):
                    parts.append(self._torch_class.forward(self, input.narrow(0, r * per, k * per),
                                                               _narrow(hx, 0, r * per, k * per)))
            out = _cat(parts, 0)
        if isinstance(out, tuple):
            return (self._output(out[0]),) + tuple(out[1:])
        return self._output(out)

    def _step(self, input: Tensor, hx, groups: int, runs: List[Run]):
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        lstm = isinstance(self, nn.LSTMCell)
        if hx is None:
            h0 = x.new_zeros(x.shape[0], self.hidden_size)
            hx = (h0, h0) if lstm else h0
        elif not batched:
            hx = tuple(h.unsqueeze(0) for h in hx) if lstm else hx.unsqueeze(0)
        state = hx if lstm else (hx,)
        ih = _linear(x, "weight_ih", self.bias_ih, groups, runs, 0)
        hh = _linear(state[0], "weight_hh", self.bias_hh, groups, runs, 0)
        noise_ih, noise_hh = self._product("ih"), self._product("hh")
        ih = ih if noise_ih is None else noise_ih(ih)
        hh = hh if noise_hh is None else noise_hh(hh)
        new = _step_of(self)(ih, hh, state)
        if not batched:
            new = tuple(n.squeeze(0) for n in new)
        return new if lstm else new[0]


class HardenedLSTM(_HardenedRNNBase, nn.LSTM):
    _torch_class = nn.LSTM


class HardenedGRU(_HardenedRNNBase, nn.GRU):
    _torch_class = nn.GRU


class HardenedRNN(_HardenedRNNBase, nn.RNN):
    _torch_class = nn.RNN


class HardenedLSTMCell(_HardenedCell, nn.LSTMCell):
    _torch_class = nn.LSTMCell


class HardenedGRUCell(_HardenedCell, nn.GRUCell):
    _torch_class = nn.GRUCell


class HardenedRNNCell(_HardenedCell, nn.RNNCell):
    _torch_class = nn.RNNCell


def harden_recurrent(module: nn.Module, site: str, quant: Optional[WeightQuant], weight_noise: Optional[nn.Module],
                     product_noise: Dict[str, Noise], output_noise: Optional[Noise]) -> nn.Module:
    """Return the hardened recurrent layer sharing ``module``'s parameters (see ``layers.harden_layer``).

    Args:
        module: an ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` or cell (exactly that class).
        site: the layer's site name.
        quant, weight_noise: the weight quantizer and weight noise, or ``None``.
        product_noise: the noise module of each product that gets noise, by suffix
            (``product_sites``: ``"l0.ih"``, ...); the others compute without noise.
        output_noise: the noise at the layer's output, or ``None``.
    """
    new = harden_layer(module, quant, weight_noise)
    unknown = set(product_noise) - set(product_sites(module))
    if unknown:
        raise ValueError(f"{site}: no product {sorted(unknown)} in a {type(module).__name__}; its products are "
                         f"{product_sites(module)}")
    if product_noise:
        new.products = nn.ModuleDict({s.replace(".", "_"): m for s, m in product_noise.items()})
    if output_noise is not None:
        new.output_noise = output_noise
    return new


def recurrent_noises(module: nn.Module) -> Dict[str, Noise]:
    """The activation noise modules of a hardened recurrent layer by site name: its products,
    then its output."""
    if not isinstance(module, _HardenedRecurrent):
        return {}
    products = module._modules.get("products")
    out = {m.site: m for m in products.values()} if products is not None else {}
    if module._modules.get("output_noise") is not None:
        out[module.output_noise.site] = module.output_noise
    return out
