"""The parameter ledger: what ``harden`` did with every parameter of the model.

Each parameter of the model (by its dotted name in the caller's model) is either
``"hardened at <site>"`` (its matrix is quantized and/or perturbed there; the bias and other
vectors of a hardened layer are ``"hardened at <site> (with its layer)"``), or left as it is
with the reason, which ``harden`` also lists in the report's ``skipped``. A buffer that a
conv/linear/matmul call takes as its weight is listed in ``skipped`` too (only parameters are
hardened). Analysis only: nothing here changes the model.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

import torch
from torch import fx, nn

from .config import SiteKind
from .layers import HARDENED_LAYERS, HardenedCall, can_harden_weights
from .layer_kinds import module_kind
from .sites import _ATEN_KINDS, _ATEN_NOT_SITES, _FUNC_KINDS, _NOT_SITES
from .weight_calls import aten_name, from_parameters, param_targets, weight_arg

__all__ = ["HARDENED", "NORM", "VECTOR", "ADDED", "UNUSED", "LEFT_ALONE", "NO_WEIGHTS", "build_ledger"]

HARDENED = "hardened at "
"""Prefix of a hardened parameter's ledger entry; the site name follows."""
NORM = "normalization parameter (scale or shift of a norm layer): not an analog weight matrix; used as it is"
VECTOR = ("vector parameter (a norm scale or shift, a bias, a gain) applied elementwise: not an analog weight "
          "matrix; used as it is")
ADDED = ("added to or concatenated with activations (a bias such as an expert's, a position embedding, a class "
         "or register token): not an analog weight matrix; used as it is")
UNUSED = "not read by the captured forward; used as it is"
LEFT_ALONE = ("the weight of a layer or call that the rules leave alone (a rule of None, or neither weight "
              "quantization nor weight noise there); used as it is")
NO_WEIGHTS = "the config neither quantizes nor perturbs weights"
"""The entry of every parameter when ``harden`` hardens no weight (not listed in ``skipped``)."""
_ADDITIVE = {"add", "add_", "cat", "concat", "expand", "expand_as", "repeat", "sub", "rsub", "__add__", "__radd__"}


def _op(node: fx.Node) -> str:
    """The name of a node's operation (``aten.add``, ``cat``, ``matmul``)."""
    if aten_name(node) is not None:
        return aten_name(node)
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _passes_through(node: fx.Node) -> bool:
    """Whether a node only moves, reshapes or copies its input (follow it to the real users)."""
    if node.op not in ("call_function", "call_method"):
        return False
    if aten_name(node) is not None:
        return aten_name(node) in _ATEN_NOT_SITES and aten_name(node) not in _ADDITIVE
    return (node.target in _NOT_SITES or _op(node) in _ATEN_NOT_SITES) and _op(node) not in _ADDITIVE


def _consumers(node: fx.Node) -> List[fx.Node]:
    """The nodes that compute with ``node``'s value, through reshapes and copies."""
    out, stack, seen = [], list(node.users), set()
    while stack:
        user = stack.pop()
        if user in seen:
            continue
        seen.add(user)
        if _passes_through(user):
            stack.extend(user.users)
        else:
            out.append(user)
    return out


def _norm(node: fx.Node) -> bool:
    kind = _ATEN_KINDS.get(aten_name(node)) if aten_name(node) is not None else _FUNC_KINDS.get(node.target)
    return kind is SiteKind.NORM


def _hardened_calls(graphs: Iterable[fx.Graph], root: nn.Module) -> Iterable[Tuple[fx.Node, HardenedCall]]:
    for graph in graphs:
        for node in graph.nodes:
            if node.op == "call_module":
                mod = root.get_submodule(str(node.target))
                if isinstance(mod, HardenedCall):
                    yield node, mod


def build_ledger(params: List[Tuple[str, nn.Parameter]], buffers: Dict[int, str], owners: Dict[str, nn.Module],
                 root: nn.Module, graphs: Iterable[fx.Graph], modules: Dict[str, nn.Module], skipped: Dict[str, str],
                 exported: bool, hardens_weights: bool, opaque: Iterable[str] = ()) -> Dict[str, str]:
    """The ledger of ``params`` (``(name, parameter)`` of the caller's model, before hardening).

    Args:
        params: the model's parameters by their names in the caller's model.
        buffers: the model's buffers, ``id -> name``.
        owners: the model's modules by name, before hardening.
        root: the hardened root (its layers swapped, its ``HardenedCall`` modules in place).
        graphs: the hardened graphs (each mode's).
        modules: the module lookup of the graphs' ``get_attr`` targets (``find_sites``'s).
        skipped: the report's ``skipped``; each parameter left as it is is added to it, and each
            buffer used as a weight.
        exported: the graphs are torch.export's (they read every parameter the forward uses).
        hardens_weights: the config quantizes or perturbs weights (else every entry is
            ``NO_WEIGHTS`` and ``skipped`` is left as it is).
        opaque: the parts torch.fx cannot trace (their layers took the module route).
    """
    if not hardens_weights:
        return {n: NO_WEIGHTS for n, _ in params}
    graphs = list(dict.fromkeys(graphs))
    names = {id(p): n for n, p in params}
    ledger: Dict[str, str] = {}

    def mark(p: torch.Tensor, entry: str) -> None:
        if id(p) in names:
            ledger.setdefault(names[id(p)], entry)

    # layers whose class was swapped: their weight names, their other parameters with them
    for module in root.modules():
        if isinstance(module, HARDENED_LAYERS) and not isinstance(module, HardenedCall):
            raw = {n: module.get_parameter(n) for n in module._weight_names}
            first = next(iter(raw))
            name = names.get(id(raw[first]))
            site = name[:-len(first) - 1] if name is not None else ""
            for p in raw.values():
                mark(p, f"{HARDENED}{site}")
            for p in module.parameters():
                mark(p, f"{HARDENED}{site} (with its layer)")
    # calls hardened in the graph: the parameters of their weight argument, the others with them
    def targets(value) -> List[torch.Tensor]:
        found = (_resolve(root, t) for t in param_targets(value, modules))
        return [t for t in found if t is not None]

    for node, call in _hardened_calls(graphs, root):
        site = getattr(call, "site", "") or str(node.target)
        weight = node.args[call.weight_index] if len(node.args) > call.weight_index else None
        for p in targets(weight):
            mark(p, f"{HARDENED}{site}")
        for a in node.all_input_nodes:  # the bias: an argument computed from parameters alone
            for p in targets(a) if from_parameters(a, modules) else ():
                mark(p, f"{HARDENED}{site} (with its layer)")
    # what reads the others, in the graphs
    readers: Dict[str, List[fx.Node]] = {}
    for graph in graphs:
        for node in graph.nodes:
            if node.op != "get_attr":
                continue
            value = _resolve(root, str(node.target))
            if value is None:
                continue
            readers.setdefault(names.get(id(value), buffers.get(id(value), "")), []).extend(_consumers(node))
    layers = {str(n.target) for g in graphs for n in g.nodes if n.op == "call_module"
              and not isinstance(root.get_submodule(str(n.target)), HardenedCall)} - set(opaque)
    params_named = set(names.values())
    for name, users in readers.items():
        if not name or name in params_named:
            continue  # a parameter, or a tensor of no name in the model (a constant)
        for user in users:
            spec = weight_arg(user.target) if user.op == "call_function" else None
            if spec is not None and len(user.args) > spec.weight and _reads(user.args[spec.weight], name, root, buffers):
                skipped[name] = (f"a buffer, not a parameter, used as the weight of {_op(user)}: used as it is "
                                 "(register it as an nn.Parameter to harden it)")
    for name, p in params:
        if name in ledger:
            continue
        owner_name = name.rpartition(".")[0]
        owner = owners.get(owner_name)
        users = readers.get(name)
        reason = skipped.get(owner_name)
        outer = next((leaf for leaf in _prefixes(owner_name) if leaf in layers and leaf != owner_name), None)
        if reason is None:
            if (owner is not None and module_kind(owner) is SiteKind.NORM) or any(_norm(u) for u in users or []):
                reason = NORM
            elif p.dim() <= 1:
                reason = VECTOR
            elif outer is not None and not users:
                held = type(root.get_submodule(outer)).__name__
                reason = (f"inside {outer} ({held}), which the graph calls as one layer: the layers inside it "
                          "are no sites; used as it is")
            elif any(_weight_of(u, name, root, names) for u in users or []) or (
                    not users and owner is not None and can_harden_weights(owner)):
                reason = LEFT_ALONE
            elif users and all(_op(u) in _ADDITIVE for u in users):
                reason = ADDED
            elif users:
                ops = ", ".join(dict.fromkeys(_op(u) for u in users))
                reason = f"read by {ops}, which is not a weighted call fxharden hardens; used as it is"
            elif exported:
                reason = UNUSED
            else:
                held = type(owner).__name__ if owner is not None else "the model"
                reason = (f"held by {held}, whose forward neither route hardens (only conv, linear, embedding, "
                          "attention, expert and router weights are); used as it is")
        ledger[name] = reason
        skipped[name] = reason
    return {n: ledger[n] for n, _ in params}


def _prefixes(path: str) -> List[str]:
    """``a``, ``a.b``, ``a.b.c`` for ``a.b.c``: the enclosing modules, outermost first."""
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _weight_of(user: fx.Node, name: str, root: nn.Module, names: Dict[int, str]) -> bool:
    """Whether ``user`` is a weighted call (``weight_calls.weight_arg``) whose weight is computed from
    parameter ``name``."""
    spec = weight_arg(user.target) if user.op == "call_function" else None
    if spec is None or len(user.args) <= spec.weight:
        return False
    return _reads(user.args[spec.weight], name, root, names)


def _reads(value: Any, name: str, root: nn.Module, names: Dict[int, str]) -> bool:
    """Whether the graph value ``value`` is computed from the tensor ``name`` (``names``: id -> name)."""
    stack, seen = [value], set()
    while stack:
        node = stack.pop()
        if node in seen or not isinstance(node, fx.Node):
            continue
        seen.add(node)
        if node.op == "get_attr":
            t = _resolve(root, str(node.target))
            if t is not None and names.get(id(t)) == name:
                return True
        stack.extend(node.all_input_nodes)
    return False


def _resolve(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None
