"""Conv, linear and attention layers whose weights pass through the quantizer and weight noise.

A hardened layer is the original layer object's class swapped for a subclass that
transforms its weights before use: the parameters, their names in ``state_dict`` and
``isinstance`` checks stay the same; the transform's modules are added as children.
A weight that reaches a functional call as a graph value (``F.linear(x, self.fc.weight)``,
timm's ``StdConv2d``) is hardened by ``HardenedCall``, which takes the call's place in the
graph and behaves like the swapped layers. A mixture-of-experts layer that multiplies its own
3-D expert matrices, or a router its own ``weight``, gets ``HardenedParameters``: its forward
runs with those parameters hardened (one quantizer step and one noise draw per expert).

Weight noise and batch groups: when the weight-noise module holds one sigma per batch group
(a sweep measuring several repeats in one forward), the layer splits its input along the
batch dimension and uses one perturbed weight per group, exactly as if each group had run in
its own forward pass (groups that share a draw and a sigma share the weight, and adjacent
ones run in one call).

Under ``torch.compile`` a layer with weight noise draws a new weight in every call through
the noise module's compiled path (single sigma; batch groups and held draws run eagerly only).

Held draws: by default every forward pass draws new weights. Within ``weight_draws_held``
each layer draws them (one per group) in its first forward pass and reuses the very same
weights in every later one, as a programmed chip evaluated on one batch after another does:
the sweep evaluates a data set in many forward passes, and its result must not depend on how
the data are cut into them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .counter_rng import compiling
from .noise import Noise
from .quant import WeightQuant
from .weight_calls import expert_weights, router_weight

Run = Tuple[int, int, Dict[str, Tensor]]  # (first batch group, number of groups, their weights)

__all__ = ["HARDENED_LAYERS", "HardenedCall", "HardenedParameters", "parameters_class", "harden_layer",
           "can_harden_weights", "weight_axis", "output_axis", "weight_draws_held"]


class _HardenedWeight:
    """Mixin: each weight ``w`` of the layer is used as weight noise(weight quantizer(w))."""

    weight_quant: Optional[WeightQuant]
    weight_noise: Optional[Noise]
    _weight_names: Tuple[str, ...] = ("weight",)
    """Dotted names of the parameters that are hardened."""
    _held: Optional[List[Run]] = None
    """``None``: every forward pass draws its weights; a list: held (``weight_draws_held``), the
    runs of the first forward pass in the block, empty until it has run."""
    _per_expert: bool = False
    """The weights hold one matrix per expert along dim 0: each is perturbed by its own draw
    (and quantized with its own step: the quantizer's axis is 0)."""

    bias_outside: bool = False
    """A conv or linear layer leaves its bias out (``y = W x``): the graph adds it after the
    ADC (``ConverterConfig.before_bias``, ``fxharden.core.converters``)."""

    def _layer_bias(self) -> Optional[Tensor]:
        """The bias a conv or linear layer adds itself (``None`` when it is added outside)."""
        return None if self.bias_outside else self.bias  # type: ignore[attr-defined]

    def _raw_weights(self) -> Dict[str, Tensor]:
        """The weights before quantization and noise, by name."""
        return {n: self.get_parameter(n) for n in self._weight_names}  # type: ignore[attr-defined]

    def _quantized(self) -> Dict[str, Tensor]:
        ws = self._raw_weights()
        if self.weight_quant is not None:
            ws = {n: self.weight_quant(w) for n, w in ws.items()}
        return ws

    def hardened_weights(self) -> Dict[str, Tensor]:
        """The weights as the next (single-group) forward uses them: quantized, one noise draw
        (the held one within ``weight_draws_held``, once drawn)."""
        noise = self.weight_noise
        if noise is not None and noise.active and noise.groups > 1:
            raise ValueError(f"{noise.site}: weight noise has one sigma per batch group; a forward pass "
                             "draws one weight per group (there is no single hardened weight)")
        if noise is None or not noise.active:
            return self._quantized()
        return dict(self._runs()[0][2])

    def _draw(self) -> Dict[str, Tensor]:
        """One new draw of the (single-group) hardened weights."""
        if self._per_expert:
            return {n: torch.stack([self.weight_noise(e) for e in w.unbind(0)]) for n, w in self._quantized().items()}
        return {n: self.weight_noise(w) for n, w in self._quantized().items()}

    def hardened_weight(self) -> Tensor:
        """The single hardened weight of a conv or linear layer (see ``hardened_weights``)."""
        return self.hardened_weights()["weight"]

    def _runs(self) -> List[Run]:
        """The weights of every batch group (``Noise.draw_weights``), adjacent groups that use
        the very same weights merged: ``(first group, number of groups, weights)``; drawn now,
        or the held ones (``weight_draws_held``)."""
        groups = self.weight_noise.groups
        if self._held:
            if sum(k for _, k, _ in self._held) != groups:
                raise ValueError(f"{self.weight_noise.site}: the weight noise changed from "
                                 f"{sum(k for _, k, _ in self._held)} to {groups} batch groups while its "
                                 "draws are held; set the noise before entering weight_draws_held")
            return self._held
        runs = [(0, 1, self._draw())] if groups == 1 else self._draw_runs(groups)
        if self._held is not None:
            self._held.extend(runs)
        return runs

    def _draw_runs(self, groups: int) -> List[Run]:
        draw = self.weight_noise.draw_weights
        # per weight and group: the parts (the experts' matrices, or the whole weight) as drawn
        parts = {n: list(zip(*(draw(e) for e in w.unbind(0)))) if self._per_expert else [(v,) for v in draw(w)]
                 for n, w in self._quantized().items()}
        runs: List[Run] = []
        last: Dict[str, tuple] = {}
        for r in range(groups):
            now = {n: v[r] for n, v in parts.items()}
            if runs and all(len(now[n]) == len(last[n]) and all(a is b for a, b in zip(now[n], last[n]))
                            for n in now):
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, runs[-1][2])
            else:
                runs.append((r, 1, {n: torch.stack(v) if self._per_expert else v[0] for n, v in now.items()}))
            last = now
        return runs

    def _grouped(self, x: Tensor, apply: Callable[[Tensor, Dict[str, Tensor]], Tensor]) -> Tensor:
        """``apply(x, weights)`` with hardened weights; one weight draw per batch group."""
        noise = self.weight_noise
        if noise is not None and compiling() and self._held is None:
            return apply(x, self._draw())  # the noise's compiled path: no host mirror read
        if noise is None or noise.observe(x) or not noise.active:
            return apply(x, self._quantized())
        runs = self._runs()
        if len(runs) == 1:
            return apply(x, runs[0][2])
        dim = noise.group_dim(x)
        per = x.shape[dim] // noise.groups
        outs = [apply(x.narrow(dim, r * per, k * per), ws) for r, k, ws in runs]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim)


class HardenedConv1d(_HardenedWeight, nn.Conv1d):
    def forward(self, x: Tensor) -> Tensor:
        return self._grouped(x, lambda x, w: self._conv_forward(x, w["weight"], self._layer_bias()))


class HardenedConv2d(_HardenedWeight, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._grouped(x, lambda x, w: self._conv_forward(x, w["weight"], self._layer_bias()))


class HardenedConv3d(_HardenedWeight, nn.Conv3d):
    def forward(self, x: Tensor) -> Tensor:
        return self._grouped(x, lambda x, w: self._conv_forward(x, w["weight"], self._layer_bias()))


class HardenedLinear(_HardenedWeight, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return self._grouped(x, lambda x, w: F.linear(x, w["weight"], self._layer_bias()))


class HardenedEmbedding(_HardenedWeight, nn.Embedding):
    """An embedding table read through the quantizer and weight noise (one-hot times the table)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._grouped(x, lambda x, w: F.embedding(x, w["weight"], self.padding_idx, self.max_norm,
                                                         self.norm_type, self.scale_grad_by_freq, self.sparse))


class _OpName(str):
    """The name of an ATen operation (``"aten.linear.default"``) in a pickled ``HardenedCall``."""


class HardenedCall(_HardenedWeight, nn.Module):
    """A conv, linear, matmul or embedding call whose weight argument is hardened, for weights
    that reach the call as a graph value: ``F.linear(x, self.fc.weight, self.fc.bias)``,
    ``F.conv2d(x, self.weight)`` of a custom module, the ``F.conv2d`` inside a conv subclass
    with its own ``forward`` (timm's ``StdConv2d`` standardises its weight first), or an ATen
    call of the export route (``aten.linear``, ``aten.addmm``, ``aten.embedding``). ``harden``
    puts it in the graph in place of the call, with the call's arguments: the call runs with
    ``noise(quant(weight))`` in place of its weight, one weight draw per batch group like the
    class-swapped layers. Held draws (``weight_draws_held``) keep the first call's weights,
    whatever weight later calls pass.

    Args:
        fn: the function called.
        quant: the weight quantizer (per output channel for convolutions), or ``None``.
        noise: the weight noise (a ``Noise`` or ``NoiseChain``), or ``None``.
        arg: where ``fn`` takes its input and its weight (default: ``fn(input, weight, ...)``).
    """

    def __init__(self, fn: Callable[..., Tensor], quant: Optional[WeightQuant], noise: Optional[Noise],
                 arg: Optional[Any] = None) -> None:
        super().__init__()
        self.fn = fn
        self.weight_quant = quant
        self.weight_noise = noise
        self.input_index, self.weight_index = (0, 1) if arg is None else (arg.input, arg.weight)
        self._per_expert = arg is not None and arg.experts
        self._weight: Optional[Tensor] = None  # the weight argument of the call in progress

    def extra_repr(self) -> str:
        return f"fn={getattr(self.fn, '__name__', self.fn)}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_weight"] = None
        state.pop("_held", None)
        if isinstance(self.fn, torch._ops.OpOverload):  # not picklable itself: stored by name
            state["fn"] = _OpName(str(self.fn))
        return state

    def __setstate__(self, state):
        state.setdefault("input_index", 0)
        state.setdefault("weight_index", 1)
        if isinstance(state["fn"], _OpName):
            namespace, packet, overload = state["fn"].split(".")
            if namespace == "transformers":  # its ops are registered when its MoE module is imported
                import transformers.integrations.moe  # noqa: F401
            state["fn"] = getattr(getattr(getattr(torch.ops, namespace), packet), overload)
        self.__dict__.update(state)

    def _raw_weights(self) -> Dict[str, Tensor]:
        if self._weight is None:
            raise ValueError("HardenedCall has no weight outside a call: its weight is the call's argument")
        return {"weight": self._weight}

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        i, j = self.input_index, self.weight_index
        noise = self.weight_noise
        if self._per_expert and noise is not None and noise.active and noise.groups > 1 and not compiling():
            raise ValueError(f"{noise.site}: weight noise has one sigma per batch group, but a grouped expert "
                             "product sees its rows sorted by expert, not by batch group. Measure one sigma "
                             "value per forward pass (sweep: points_per_forward=1), or harden with "
                             "frontend='fx', whose expert layers split their tokens by batch group")
        self._weight = args[j]

        def call(x: Tensor, w: Dict[str, Tensor]) -> Tensor:
            new = list(args)
            new[i], new[j] = x, w["weight"]
            return self.fn(*new, **kwargs)

        try:
            return self._grouped(args[i], call)
        finally:
            self._weight = None


@contextlib.contextmanager
def _parameters_replaced(module: nn.Module, tensors: Dict[str, Tensor]) -> Iterator[None]:
    """Within the block, ``module.<name>`` reads ``tensors[name]`` instead of the parameter."""
    saved: List[Tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for name, t in tensors.items():
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            saved.append((owner, attr, owner._parameters[attr]))
            owner._parameters[attr] = t  # read through Module.__getattr__; restored below
        yield
    finally:
        for owner, attr, p in reversed(saved):
            owner._parameters[attr] = p


class HardenedMultiheadAttention(_HardenedWeight, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (e.g. torchvision's ViT) with its input and output
    projection weights hardened, per tensor like linear layers."""

    @property
    def _weight_names(self) -> Tuple[str, ...]:  # type: ignore[override]
        inputs = ("in_proj_weight",) if self._qkv_same_embed_dim else ("q_proj_weight", "k_proj_weight",
                                                                        "v_proj_weight")
        return inputs + ("out_proj.weight",)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        batched = query.dim() == 3
        dim = 0 if self.batch_first or not batched else 1

        def part(t: Tensor, d: int, run: Tuple[int, int]) -> Tensor:
            """Groups ``run[0]`` to ``run[0] + run[1] - 1`` of ``t``, whose dim ``d`` holds the batch."""
            per = t.shape[d] // self.weight_noise.groups
            return t.narrow(d, run[0] * per, run[1] * per)

        def attend(q: Tensor, ws: Dict[str, Tensor], run: Optional[Tuple[int, int]] = None
                   ) -> Tuple[Tensor, Optional[Tensor]]:
            k, v, kpm, mask = key, value, key_padding_mask, attn_mask
            if run is not None:  # some groups of the batch: the same slice of key, value and masks
                k, v = part(key, dim, run), part(value, dim, run)
                if kpm is not None and kpm.dim() == 2:
                    kpm = part(kpm, 0, run)
                if mask is not None and mask.dim() == 3:
                    mask = part(mask, 0, run)
            with _parameters_replaced(self, ws):
                return nn.MultiheadAttention.forward(self, q, k, v, key_padding_mask=kpm, need_weights=need_weights,
                                                     attn_mask=mask, average_attn_weights=average_attn_weights,
                                                     is_causal=is_causal)

        noise = self.weight_noise
        if noise is not None and compiling() and self._held is None:
            return attend(query, self._draw())
        if noise is None or noise.observe(query) or not noise.active:
            return attend(query, self._quantized())
        runs = self._runs()
        if len(runs) == 1:
            return attend(query, runs[0][2])
        dim = noise.group_dim(query)
        outs = [attend(part(query, dim, (r, n)), ws, (r, n)) for r, n, ws in runs]
        if len(outs) == 1:
            return outs[0]
        weights = None if outs[0][1] is None else torch.cat([o[1] for o in outs], 0)
        return torch.cat([o[0] for o in outs], dim), weights


class HardenedParameters(_HardenedWeight):
    """Mixin for a layer that multiplies its own weight parameters inside its forward: a
    mixture-of-experts layer's 3-D expert matrices (``weight_calls.expert_weights``, one draw and one
    quantizer step per expert) or a router's ``weight`` (``weight_calls.router_weight``). Its forward
    runs with those parameters replaced by their hardened values; with one weight draw per
    batch group, every tensor argument is split along dim 0 (the tokens) by group. The class
    is made per layer class (``parameters_class``), so ``isinstance`` checks still hold."""

    _plain: type = nn.Module
    """The layer's own class."""

    def __reduce_ex__(self, protocol: int) -> Any:
        return _rebuild_parameters, (self._plain, self.__dict__.copy())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        plain = self._plain.forward
        x = next((a for a in args if isinstance(a, Tensor)), None)

        def run(ws: Dict[str, Tensor], rows: Optional[Tuple[int, int]] = None) -> Any:
            a = args if rows is None else tuple(
                v.narrow(0, *rows) if isinstance(v, Tensor) and v.dim() and v.shape[0] == x.shape[0] else v
                for v in args)
            with _parameters_replaced(self, ws):
                return plain(self, *a, **kwargs)

        noise = self.weight_noise
        if noise is not None and compiling() and self._held is None:
            return run(self._draw())
        if x is None or noise is None or noise.observe(x) or not noise.active:
            return run(self._quantized())
        runs = self._runs()
        if len(runs) == 1:
            return run(runs[0][2])
        if noise.group_dim(x) != 0:
            raise ValueError(f"{noise.site}: one weight draw per batch group needs the tokens of "
                             f"{type(self).__name__} in dim 0 of its input; measure one sigma value per forward pass")
        per = x.shape[0] // noise.groups
        outs = [run(ws, (r * per, k * per)) for r, k, ws in runs]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts, 0) for parts in zip(*outs))
        return torch.cat(outs, 0)


_PARAMETER_CLASSES: Dict[type, type] = {}


def parameters_class(cls: type) -> type:
    """The ``HardenedParameters`` subclass of layer class ``cls`` (one per class)."""
    if cls not in _PARAMETER_CLASSES:
        _PARAMETER_CLASSES[cls] = type(f"Hardened{cls.__name__}", (HardenedParameters, cls),
                                       {"_plain": cls, "__module__": __name__})
    return _PARAMETER_CLASSES[cls]


def _rebuild_parameters(cls: type, state: Dict[str, Any]) -> nn.Module:
    new = parameters_class(cls).__new__(parameters_class(cls))
    new.__dict__.update(state)
    return new


_SWAP = {
    nn.Conv1d: HardenedConv1d,
    nn.Conv2d: HardenedConv2d,
    nn.Conv3d: HardenedConv3d,
    nn.Linear: HardenedLinear,
    nn.modules.linear.NonDynamicallyQuantizableLinear: HardenedLinear,
    nn.MultiheadAttention: HardenedMultiheadAttention,
    nn.Embedding: HardenedEmbedding,
}
HARDENED_LAYERS = (_HardenedWeight,)
"""Every hardened layer is an instance of this mixin."""

_OPTIONAL_SWAPS = {
    ("transformers.pytorch_utils", "Conv1D"): ("fxharden.core.layers_hf", "HardenedConv1D"),
    **{("torch.nn.modules.rnn", c): ("fxharden.core.recurrent", f"Hardened{c}")
       for c in ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")},
}
"""Layers of optional libraries, and recurrent layers (``fxharden.core.recurrent`` builds on this
module): ``(module, class)`` -> their hardened class, imported only when a model holds one."""


def _swap_class(module: nn.Module) -> Optional[type]:
    cls = type(module)
    if expert_weights(module) or router_weight(module):
        return parameters_class(cls)
    hardened = _SWAP.get(cls)
    if hardened is None and (cls.__module__, cls.__name__) in _OPTIONAL_SWAPS:
        import importlib

        module, name = _OPTIONAL_SWAPS[(cls.__module__, cls.__name__)]
        hardened = getattr(importlib.import_module(module), name)
    return hardened


def can_harden_weights(module: nn.Module) -> bool:
    """Whether ``module``'s weights can be quantized/perturbed by a class swap: the plain torch
    layers (and transformers' ``Conv1D``), and layers that multiply their own expert or router
    matrices (``HardenedParameters``); not a subclass with its own ``forward`` (it would lose it). The tracer enters such a subclass, unless it is a leaf, and its functional call is
    hardened (``HardenedCall``)."""
    return _swap_class(module) is not None


def weight_axis(module: nn.Module) -> Optional[int]:
    """The per-channel axis of the layer's weight quantizer: 0 (output channels) for
    convolutions, expert matrices (one step per expert) and recurrent layers (one step per gate
    row of each input-to-hidden, hidden-to-hidden and projection matrix: an analog tile scales
    each output row on its own), ``None`` (one step per tensor) for linear and attention
    projections."""
    if isinstance(module, (nn.modules.conv._ConvNd, nn.RNNBase, nn.RNNCellBase)) or expert_weights(module):
        return 0
    return None


def output_axis(module: nn.Module) -> int:
    """The axis of the layer's weights (of each expert matrix, for a mixture of experts) that
    indexes its output channels, as per-channel weight noise reads it: 0 for torch's conv,
    linear, attention and recurrent weights (``(out, in, ...)``), 1 for transformers' ``Conv1D``
    (``(in, out)``), an embedding table (its columns are the outputs) and expert matrices
    stored transposed (``is_transposed``)."""
    if isinstance(module, nn.Embedding) or type(module).__name__ == "Conv1D" or getattr(module, "is_transposed", False):
        return 1
    return 0


@contextlib.contextmanager
def weight_draws_held(model: nn.Module) -> Iterator[None]:
    """Within the block, every hardened layer of ``model`` draws its noisy weights (one per
    batch group) in its first forward pass and uses the very same weights in every later one:
    one programmed chip per group, whatever the number of forward passes it is evaluated in.
    Set the noise (sigma per group, seed) before entering; leaving the block drops the draws,
    and the next forward pass draws again. Meant for evaluation: the held weights do not follow
    changes of the parameters inside the block."""
    layers = [m for m in model.modules() if isinstance(m, _HardenedWeight) and m.weight_noise is not None]
    try:
        for m in layers:
            m._held = []
        yield
    finally:
        for m in layers:
            m.__dict__.pop("_held", None)  # back to the class default: draw every forward


def harden_layer(module: nn.Module, quant: Optional[WeightQuant], noise: Optional[Noise]) -> nn.Module:
    """Return a hardened layer sharing ``module``'s parameters, buffers and hooks."""
    cls = _swap_class(module)
    experts = expert_weights(module)
    new = cls.__new__(cls)
    new.__dict__ = module.__dict__.copy()
    new._modules = dict(module._modules)
    if issubclass(cls, HardenedParameters):
        new._weight_names = experts or ("weight",)
        new._per_expert = bool(experts)
    new.weight_quant = quant
    new.weight_noise = noise
    return new
