"""Which graph nodes are sites, what kind they are, and what the rules say about each.

Analysis only: nothing here changes a graph. Nodes are matched by module type or by
``node.target``, never by substrings of ``node.name``.
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .config import HardenConfig, LayerConfig, SiteKind
from .layer_kinds import is_passthrough, module_kind, module_unsigned
from .weight_calls import aten_name, call_arg, call_weights

__all__ = ["Site", "find_sites", "check_rules", "node_description", "input_nodes", "resolve_rule"]

_RECURRENT_EXPORT = ("a recurrent layer on the export route whose ATen call was not found: its weights and "
                     "matrix-vector products are used as they are (only its output gets noise); harden with "
                     "frontend='fx' to harden them")
_WEIGHT_KINDS = (SiteKind.CONV, SiteKind.LINEAR, SiteKind.RECURRENT, SiteKind.OPAQUE, SiteKind.OTHER)
"""Kinds of module sites whose layers may have weights to harden (e.g. attention is OTHER)."""


_UNSIGNED_FUNCS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, torch.sigmoid, F.sigmoid, F.hardsigmoid,
                   "relu", "relu_", "sigmoid", "sigmoid_"}
_ACT_FUNCS = _UNSIGNED_FUNCS | {
    F.gelu, F.silu, F.mish, F.hardswish, F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.hardtanh,
    F.tanh, torch.tanh, F.glu, "tanh", "tanh_", "gelu", "silu",
}
_FUNC_KINDS: Dict[Any, SiteKind] = {
    **{f: SiteKind.CONV for f in (F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d)},
    F.linear: SiteKind.LINEAR,
    **{f: SiteKind.MATMUL for f in (torch.matmul, operator.matmul, torch.bmm, torch.mm, torch.einsum,
                                     F.scaled_dot_product_attention, "matmul", "bmm")},
    **{f: SiteKind.POOL for f in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                                  F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                                  F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                                  F.adaptive_max_pool3d, F.lp_pool1d, F.lp_pool2d)},
    **{f: SiteKind.NORM for f in (F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm)},
    **{f: SiteKind.ADD for f in (operator.add, operator.iadd, torch.add, "add", "add_")},
    **{f: SiteKind.ACTIVATION for f in _ACT_FUNCS},
}
# ops whose result is not a float tensor, or that only reshape/select: never sites
_NOT_SITES = {
    getattr, operator.getitem, torch._assert, "size", "dim", "numel", "type", "to", "contiguous",
    "view", "reshape", "permute", "transpose", "flatten", "unsqueeze", "squeeze", "expand", "chunk",
    "split", "unbind", "__getitem__", torch.flatten, torch.reshape, torch.permute, torch.transpose,
    torch.cat, torch.stack, torch.chunk, torch.split, torch.unbind, operator.eq, operator.ne,
    operator.lt, operator.gt, operator.floordiv, torch.zeros, torch.ones,
    torch.arange, "float", "type_as", "clone", "detach",
}


_ATEN_KINDS: Dict[str, SiteKind] = {
    **{n: SiteKind.CONV for n in ("conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
                                  "conv_transpose2d", "conv_transpose3d")},
    **{n: SiteKind.LINEAR for n in ("linear", "embedding", "_grouped_mm", "grouped_mm_fallback")},
    **{n: SiteKind.MATMUL for n in ("matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "scaled_dot_product_attention",
                                    "_scaled_dot_product_flash_attention_for_cpu",
                                    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
                                    "_scaled_dot_product_cudnn_attention")},
    **{n: SiteKind.ACTIVATION for n in ("relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid",
                                        "sigmoid_", "tanh", "tanh_", "hardswish", "hardswish_", "hardsigmoid",
                                        "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu",
                                        "elu_", "selu", "selu_", "celu", "celu_", "softplus", "mish", "mish_", "glu",
                                        "prelu", "_prelu_kernel")},
    **{n: SiteKind.POOL for n in ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                                  "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                                  "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
                                  "max_pool2d_with_indices", "_adaptive_avg_pool2d")},
    **{n: SiteKind.NORM for n in ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
                                  "native_layer_norm", "native_batch_norm", "_native_batch_norm_legit",
                                  "_native_batch_norm_legit_no_training", "native_group_norm")},
    **{n: SiteKind.ADD for n in ("add", "add_")},
}
"""Kinds of ATen operations (the export route), by overload packet name."""
_ATEN_UNSIGNED = {"relu", "relu_", "relu6", "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_"}
_ATEN_NOT_SITES = {
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "expand_as", "slice", "select",
    "unsqueeze", "squeeze", "flatten", "unflatten", "cat", "stack", "split", "split_with_sizes", "chunk", "unbind",
    "contiguous", "clone", "detach", "alias", "to", "_to_copy", "lift_fresh_copy", "copy_", "copy", "type_as",
    "dropout", "dropout_", "native_dropout", "feature_dropout", "alpha_dropout", "zeros", "ones", "full",
    "zeros_like", "ones_like", "full_like", "empty", "empty_like", "arange", "scalar_tensor", "new_zeros",
    "new_ones", "new_full", "new_empty", "index_select", "gather", "repeat", "repeat_interleave", "narrow",
    "as_strided", "diagonal", "tril", "triu", "masked_fill", "masked_fill_", "where", "pad", "constant_pad_nd",
    "index", "histc", "bincount",
}
"""ATen operations that only move, select, copy or make values: never sites."""



def _float_value(node: fx.Node) -> bool:
    """Whether the export route recorded a floating tensor as the node's value."""
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()




@dataclass
class Site:
    """One place in the graph where fxharden acts."""

    name: str
    """Stable dotted name (``layer1.0.conv1``, ``layer1.0.relu_1``); an input site is ``input``
    when ``forward`` has one tensor argument, else the argument's name (``a``, ``b``)."""
    node: fx.Node
    kind: SiteKind
    noise: bool
    """Insert a noise node after this node."""
    quantize_output: bool
    """Insert an activation quantizer after this node (activations and the input)."""
    quantize_weights: bool
    """Quantize the weights of this site's layer: swap the conv/linear/attention module for one
    with quantized weights, or for a functional conv/linear call (``weight_calls.WEIGHT_FUNCS``) whose weight is
    computed from parameters, put a ``HardenedCall`` in its place."""
    weight_noise: bool
    """Perturb the weights of this site's layer (the config has weight noise, drift or faults and no rule of
    ``None`` leaves the layer alone)."""
    signed: bool
    """Grid of the output quantizer."""
    module: Optional[nn.Module] = None
    skip_weights: str = ""
    """Why the parameters this call takes as an operand are used as they are (a transposed
    convolution or matmul with a parameter operand, ``weight_calls.call_weights``); '' otherwise."""
    weight_calls: tuple = ()
    """The calls whose weight argument this site hardens (``weight_calls.WEIGHT_FUNCS``, weight computed from
    parameters, a ``HardenedCall`` in each one's place): the node itself for a functional
    conv/linear call, the layer's weighted ATen calls on the export route; empty for a module
    whose class is swapped."""
    fresh: bool = False
    """The node's result is a new tensor that aliases no other value of the graph (a layer's
    output; not the model's input, a view or the result of an in-place op), so the node
    after it may overwrite it once nothing else reads it."""


_MEANS = {torch.mean, "mean"}
_FLATTENS = {torch.flatten, "flatten"}



def _global_mean(node: fx.Node) -> bool:
    """Whether a ``mean`` node is a global average pool over the spatial dims of an NC... tensor.

    Recognised from the call alone (no shapes), with or without ``keepdim``:
    ``x.mean((2, 3))``, ``torch.mean(x, [2, 3, 4])`` (two or more dims, all >= 2),
    ``x.mean(dim=(-2, -1))`` (the last two or more dims), and ``x.flatten(2).mean(-1)`` /
    ``torch.flatten(x, 2).mean(2)``. Not: one dim of an unflattened tensor (``x.mean(1)``,
    the token mean of a transformer or ``x.pow(2).mean(-1)`` of an RMS norm), a mean over
    everything, or ``x.sum((2, 3)) / n``; select those with ``SiteRules.by_name``.
    """
    dim = call_arg(node, 1, "dim")
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        return False
    if len(dims) >= 2:
        return all(d >= 2 for d in dims) or sorted(dims) == list(range(-len(dims), 0))
    src = node.args[0] if node.args else node.kwargs.get("input")
    return (isinstance(src, fx.Node) and src.op in ("call_function", "call_method") and src.target in _FLATTENS
            and call_arg(src, 1, "start_dim") == 2 and call_arg(src, 2, "end_dim", -1) == -1 and dims[0] in (2, -1))


def _layer_kind(m: nn.Module, path: str, opaque: set) -> Optional[SiteKind]:
    """The kind of a site at a layer (a ``call_module`` node, or a layer's output on the export route)."""
    kind = module_kind(m)
    if kind is not None:
        return kind
    if path in opaque:
        return SiteKind.OPAQUE
    if is_passthrough(m):
        return None
    return SiteKind.OTHER


def _export_kind(node: fx.Node, modules: Dict[str, nn.Module], opaque: set) -> Optional[SiteKind]:
    """The kind of an ATen node of the export route (``fxharden.core.export`` annotates them)."""
    layer = node.meta.get("fxharden_layer")
    if layer is not None:
        return _layer_kind(modules[layer], layer, opaque) if node.meta.get("fxharden_output") else None
    name = aten_name(node)
    if name is None or name in _ATEN_NOT_SITES or not _float_value(node):
        return None
    if name == "mean" and _global_mean(node):
        return SiteKind.POOL
    kind = _ATEN_KINDS.get(name)
    if kind is SiteKind.ADD and not all(isinstance(a, fx.Node) for a in node.args[:2]):
        return SiteKind.OTHER  # x + constant is not a residual add
    return kind or SiteKind.OTHER


def _kind(node: fx.Node, modules: Dict[str, nn.Module], opaque: set) -> Optional[SiteKind]:
    if node.op == "placeholder":
        return SiteKind.INPUT
    if "fxharden_layer" in node.meta or aten_name(node) is not None:
        return _export_kind(node, modules, opaque)
    if node.op == "call_module":
        return _layer_kind(modules[node.target], str(node.target), opaque)
    if node.op in ("call_function", "call_method"):
        target = node.target
        if target in _NOT_SITES:
            return None
        if target in _MEANS and _global_mean(node):
            return SiteKind.POOL
        kind = _FUNC_KINDS.get(target)
        if kind is SiteKind.ADD and not all(isinstance(a, fx.Node) for a in node.args[:2]):
            return SiteKind.OTHER  # x + constant is not a residual add
        return kind or SiteKind.OTHER
    return None


_FRESH_KINDS = (SiteKind.CONV, SiteKind.LINEAR, SiteKind.POOL, SiteKind.NORM, SiteKind.MATMUL)
_IN_PLACE_FUNCS = {F.relu_, torch.relu_, operator.iadd, "relu_", "sigmoid_", "tanh_", "add_"}


def _fresh(node: fx.Node, module: Optional[nn.Module], kind: SiteKind) -> bool:
    """Whether ``node``'s result is a new tensor (see ``Site.fresh``); unknown layers are not."""
    if isinstance(node.target, torch._ops.OpOverload):  # ATen: neither a view nor in place, by its schema
        returns = node.target._schema.returns
        return bool(returns) and returns[0].alias_info is None and (kind in _FRESH_KINDS or kind in (
            SiteKind.ACTIVATION, SiteKind.ADD))
    if node.op == "call_module":
        if kind is SiteKind.ACTIVATION:
            return not getattr(module, "inplace", False)
        return kind in _FRESH_KINDS
    if node.op not in ("call_function", "call_method") or "out" in node.kwargs:
        return False
    if kind is SiteKind.ACTIVATION:
        # an ``inplace`` flag by keyword, or any positional True (F.relu6(x, True), F.elu(x, 1.0, True))
        inplace = node.kwargs.get("inplace") is True or any(a is True for a in node.args[1:])
        return node.target not in _IN_PLACE_FUNCS and not inplace
    if kind is SiteKind.ADD:
        return node.target not in _IN_PLACE_FUNCS
    return kind in _FRESH_KINDS and node.target is not torch.einsum  # einsum("ij->ji", x) is a view


def _unsigned(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if "fxharden_layer" in node.meta:
        return module_unsigned(modules[node.meta["fxharden_layer"]])
    if node.op == "call_module":
        return module_unsigned(modules.get(node.target))
    return node.target in _UNSIGNED_FUNCS or aten_name(node) in _ATEN_UNSIGNED


def _matches_type(key: Any, node: Optional[fx.Node], module: Optional[nn.Module]) -> bool:
    if isinstance(key, type):
        return module is not None and isinstance(module, key)
    if node is None or node.op not in ("call_function", "call_method"):
        return False
    if node.target == key:
        return True
    # an ATen call (export route) matches the function or method of its name: torch.add, "relu"
    name = aten_name(node)
    return name is not None and module is None and name.rstrip("_") == (key if isinstance(key, str) else getattr(
        key, "__name__", None) or "").rstrip("_")


_LEFT_ALONE = LayerConfig(noise=False, quantize=False)


def resolve_rule(cfg: HardenConfig, name: str, node: Optional[fx.Node], module: Optional[nn.Module],
                 kind: SiteKind) -> Optional[LayerConfig]:
    """The rule of one site (``node`` is ``None`` for a layer reached by the module route).
    Precedence (later wins): kind defaults < by_type < by_regex < by_name. Each rule overrides
    the fields it sets (``LayerConfig.over``); a rule of ``None`` leaves the layer alone. Returns a
    config with every field set, or ``None``."""
    rule: Optional[LayerConfig] = LayerConfig(noise=kind in cfg.noise.kinds, quantize=True)
    matching = [value for key, value in cfg.rules.by_type if _matches_type(key, node, module)]
    matching += [value for pattern, value in cfg.rules.by_regex if re.fullmatch(pattern, name)]
    matching += [value for key, value in cfg.rules.by_name if key == name]
    for value in matching:
        rule = None if value is None else value.over(_LEFT_ALONE if rule is None else rule)
    return rule


def check_rules(cfg: HardenConfig, names: List[str]) -> None:
    """Refuse ``by_name`` keys and ``by_regex`` patterns that match none of the site ``names``.

    Raises:
        ValueError: naming the rule, the closest site names (difflib) and what to do.
    """
    unique = list(dict.fromkeys(names))
    for key, _ in cfg.rules.by_name:
        if key in unique:
            continue
        inside = [n for n in unique if n.startswith(f"{key}.")]
        close = [] if inside else difflib.get_close_matches(key, unique, n=5)
        hint = f" did you mean {', '.join(map(repr, close))}?" if close else ""
        if inside:
            regex = re.escape(key) + r"\..*"
            hint += (f" {key!r} is a module holding sites ({', '.join(map(repr, inside[:3]))}"
                     f"{', ...' if len(inside) > 3 else ''}): use by_regex={{r'{regex}': ...}}.")
        raise ValueError(f"SiteRules.by_name[{key!r}] matches no site of this model;{hint or ' no close match.'} "
                         f"Fix or remove the rule (fxharden.harden_report(hm).sites lists the {len(unique)} "
                         "site names; by_name needs the exact dotted name).")
    for pattern, _ in cfg.rules.by_regex:
        if any(re.fullmatch(pattern, n) for n in unique):
            continue
        close = [n for n in unique if re.search(pattern, n)][:5] or difflib.get_close_matches(pattern, unique, n=5)
        hint = f" close site names: {', '.join(map(repr, close))}." if close else ""
        raise ValueError(f"SiteRules.by_regex[{pattern!r}] matches no site of this model (the pattern must match "
                         f"the whole dotted name, re.fullmatch);{hint} Fix or remove the rule "
                         f"(fxharden.harden_report(hm).sites lists the {len(unique)} site names).")


def node_description(node: fx.Node, module: Optional[nn.Module]) -> str:
    """Short human description of what a node computes (for ``inspect``)."""
    if node.op == "placeholder":
        return f"input {node.target}"
    if module is not None:
        return type(module).__name__
    if aten_name(node) is not None:
        return f"aten.{aten_name(node)}"
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def input_nodes(graph: fx.Graph) -> List[fx.Node]:
    """The placeholders that are input sites: the required arguments of ``forward`` that the
    graph reads. Not the parameters traced at a constant default (``mask=None``, see
    ``trace.capture``), whose value is fixed."""
    return [n for n in graph.nodes if n.op == "placeholder" and not n.args and n.users
            and ("val" not in n.meta or _float_value(n))]  # the export route knows: token ids are no input site



def _base_name(node: fx.Node, inputs: List[fx.Node]) -> str:
    if node.op == "placeholder":
        return "input" if len(inputs) == 1 else str(node.target)
    if node.op == "call_module":
        return str(node.target)
    if "fxharden_layer" in node.meta:
        return node.meta["fxharden_layer"]
    if aten_name(node) is not None:
        base = aten_name(node).rstrip("_") or aten_name(node)
    else:
        base = re.sub(r"_\d+$", "", node.name)
    scope = node.meta.get("scope", "")
    return f"{scope}.{base}" if scope else base


def find_sites(graph: fx.Graph, modules: Dict[str, nn.Module], cfg: HardenConfig, opaque: set) -> List[Site]:
    """All sites of ``graph`` in graph order with their resolved behaviour.

    Every required argument of ``forward`` that the graph reads is an input site
    (``input_nodes``): ``input`` for a model with one, the argument's name for each of
    several, so ``SiteRules.by_name`` can address each.

    Args:
        graph: a graph captured by ``trace.capture``.
        modules: ``dict(root.named_modules())``.
        cfg: the harden configuration (kinds, rules, quantization).
        opaque: names of call_module targets that are opaque layers (untraceable submodules
            and user leaf modules of no known kind).
    """
    sites: List[Site] = []
    counts: Dict[str, int] = {}
    inputs = input_nodes(graph)
    for node in graph.nodes:
        kind = _kind(node, modules, opaque)
        if kind is None or (kind is SiteKind.INPUT and node not in inputs):
            continue
        base = _base_name(node, inputs)
        count = counts.get(base, 0)
        counts[base] = count + 1
        name = base if count == 0 else f"{base}_{count}"
        layer = node.meta.get("fxharden_layer")
        module = modules.get(node.target) if node.op == "call_module" else modules.get(layer) if layer else None
        rule = resolve_rule(cfg, name, node, module, kind)
        quant = cfg.quant is not None and rule is not None and rule.quantize
        calls, skip = [], ""
        for call in node.meta.get("fxharden_calls", [node]):  # a layer's calls on the export route
            hardened, why = call_weights(call, modules)
            calls += [call] if hardened else []
            skip = skip or why
        has_weights = (kind in _WEIGHT_KINDS and node.op == "call_module") or bool(calls) or (
            kind is SiteKind.RECURRENT and module is not None)  # on the export route too (harden swaps the layer)
        perturbs = cfg.perturbs_weights
        sites.append(Site(
            name=name, node=node, kind=kind, module=module,
            noise=rule is not None and rule.noise,
            quantize_output=quant and kind in (SiteKind.INPUT, SiteKind.ACTIVATION),
            quantize_weights=quant and cfg.quant.quantize_weights and has_weights,
            weight_noise=rule is not None and has_weights and perturbs,
            skip_weights=skip if rule is not None and ((quant and cfg.quant.quantize_weights) or perturbs) else "",
            signed=not _unsigned(node, modules),
            weight_calls=tuple(calls),
            fresh=_fresh(node, module, kind),
        ))
    return sites
