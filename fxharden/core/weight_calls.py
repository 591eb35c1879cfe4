"""Weighted calls: which calls of a graph take a weight that ``harden`` quantizes and perturbs
(``WEIGHT_FUNCS``, ``weight_arg``), whether that weight is computed from parameters, which
parameters a value is computed from (``param_targets``), and which parameters of a layer of no
known kind are weights (a mixture of experts' ``expert_weights``, a router's ``router_weight``).

Analysis only: nothing here changes a graph."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .layer_kinds import module_kind

__all__ = ["WeightArg", "WEIGHT_FUNCS", "weight_arg", "call_weights", "param_targets", "from_parameters",
           "expert_weights", "router_weight", "aten_name", "call_arg"]


def aten_name(node: fx.Node) -> Optional[str]:
    """The overload packet name of an ATen call (``"linear"`` for ``aten.linear.default``), else ``None``."""
    target = node.target
    if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    return None


def call_arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``index`` of a call, or its keyword ``name`` when fewer are positional (else ``default``)."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


@dataclass(frozen=True)
class WeightArg:
    """Where a weighted call takes its input and its weight (positional indices), and the
    per-channel axis of its weight quantizer (as ``layers.weight_axis``: 0 for convolutions,
    ``None``, one step per tensor, for linear maps)."""

    input: int = 0
    weight: int = 1
    axis: Optional[int] = None
    out_axis: int = 0
    """The weight's axis that indexes the call's output channels (per-channel weight noise):
    0 for ``(out, in, ...)`` weights, 1 for the ``(in, out)`` operand of a matrix product, the
    columns of an embedding table and the expert matrices ``(in, out)`` of a grouped product."""
    experts: bool = False
    """The weight holds one matrix per expert along dim 0 (a grouped mixture-of-experts call):
    each expert's matrix is quantized with its own step and perturbed by its own draw. The
    input rows are regrouped by expert, so batch groups cannot be told apart there."""


_aten = torch.ops.aten
WEIGHT_FUNCS: Dict[Any, WeightArg] = {
    F.conv1d: WeightArg(axis=0), F.conv2d: WeightArg(axis=0), F.conv3d: WeightArg(axis=0), F.linear: WeightArg(),
    # the export route's ATen calls
    **{op: WeightArg(axis=0) for op in (_aten.conv1d.default, _aten.conv2d.default, _aten.conv3d.default,
                                        _aten.convolution.default)},
    _aten.linear.default: WeightArg(),
    **{op: WeightArg(out_axis=1) for op in (_aten.mm.default, _aten.matmul.default)},
    _aten.addmm.default: WeightArg(input=1, weight=2, out_axis=1),
    _aten.embedding.default: WeightArg(input=1, weight=0, out_axis=1),
}
"""Functions whose weight argument ``harden`` quantizes and perturbs when it is computed from
parameters (``F.linear(x, self.fc.weight)``; on the export route every ``aten.linear``,
``aten.conv2d``, ``aten.addmm``, ``aten.embedding``, ... that reads a parameter).
``F.conv2d is torch.conv2d``: both spellings match."""
_GROUPED_OPS = {"aten::_grouped_mm", "transformers::grouped_mm_fallback"}
"""Grouped matrix products of mixture-of-experts layers, ``(input, weight[expert, in, out],
offsets)``, by schema name (transformers registers its fallback op only once imported)."""
_EXPERTS = WeightArg(axis=0, out_axis=1, experts=True)


def weight_arg(target: Any) -> Optional[WeightArg]:
    """Where the weighted call ``target`` takes its input and weight (``WEIGHT_FUNCS``, or a
    grouped expert product of ``_GROUPED_OPS``), else ``None``."""
    spec = WEIGHT_FUNCS.get(target) if not isinstance(target, str) else None
    if spec is None and isinstance(target, torch._ops.OpOverload) and target._schema.name in _GROUPED_OPS:
        return _EXPERTS
    return spec


_PARAM_OPERAND_FUNCS = {F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, torch.matmul, operator.matmul,
                        torch.mm, torch.bmm, torch.einsum, "matmul", "mm", "bmm"}
"""Functions that may take a parameter as an operand but whose weights are not hardened: such a
call is listed in the report's ``skipped``."""
_ATEN_PARAM_OPERANDS = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "bmm", "baddbmm", "einsum",
                        "matmul", "mm", "addmm", "embedding_bag"}
"""ATen operations that may take a parameter as an operand that is not hardened (listed in the
report's ``skipped``)."""


def expert_weights(m: nn.Module) -> tuple:
    """Names of the expert matrices of a mixture-of-experts layer that reads them in its own
    forward: the 3-D float parameters (one matrix per expert along dim 0, e.g. transformers'
    ``gate_up_proj`` and ``down_proj``) held directly by a module of no known kind; ``()`` else."""
    if module_kind(m) is not None:
        return ()
    return tuple(n for n, p in m.named_parameters(recurse=False) if p.dim() == 3 and p.is_floating_point())


def router_weight(m: nn.Module) -> bool:
    """Whether ``m`` is a router of a mixture of experts: a module of no known kind and no
    children whose matrix parameter ``weight`` it multiplies itself (``F.linear(x, self.weight)``),
    its other parameters vectors (a bias)."""
    params = dict(m.named_parameters(recurse=False))
    weight = params.get("weight")
    return (module_kind(m) is None and not any(True for _ in m.children()) and weight is not None
            and weight.dim() == 2 and min(weight.shape) > 1
            and all(p.dim() <= 1 for n, p in params.items() if n != "weight"))


def _parameter(target: str, modules: Dict[str, nn.Module]) -> bool:
    owner, _, attr = target.rpartition(".")
    module = modules.get(owner)
    return module is not None and isinstance(getattr(module, attr, None), nn.Parameter)


def from_parameters(value: Any, modules: Dict[str, nn.Module]) -> bool:
    """Whether the graph value ``value`` is computed from parameters (``get_attr`` of an
    ``nn.Parameter``) and from no model input: a weight, not an activation."""
    if not isinstance(value, fx.Node):
        return False
    stack, seen, found = [value], set(), False
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "placeholder":
            return False
        if node.op == "get_attr":
            found = found or _parameter(str(node.target), modules)
        stack.extend(node.all_input_nodes)
    return found


def _operand_call_name(node: fx.Node) -> Optional[str]:
    """The name of a call that may take a parameter operand it does not harden
    (``_PARAM_OPERAND_FUNCS``, ``_ATEN_PARAM_OPERANDS``), else ``None``."""
    if aten_name(node) in _ATEN_PARAM_OPERANDS:
        return f"aten.{aten_name(node)}"
    if node.target in _PARAM_OPERAND_FUNCS:
        return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
    return None


def param_targets(value: Any, modules: Dict[str, nn.Module]) -> List[str]:
    """The ``get_attr`` targets of the parameters that the graph value ``value`` is computed from."""
    if not isinstance(value, fx.Node):
        return []
    stack, seen, found = [value], set(), []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "get_attr" and _parameter(str(node.target), modules):
            found.append(str(node.target))
        stack.extend(node.all_input_nodes)
    return found


def call_weights(node: fx.Node, modules: Dict[str, nn.Module]) -> tuple:
    """``(hardened, skip reason)`` for a function call: whether it is a ``WEIGHT_FUNCS`` call
    whose weight is computed from parameters, and why parameters it takes as an operand are
    not hardened ('' when it takes none or they are)."""
    if node.op not in ("call_function", "call_method"):
        return False, ""
    spec = weight_arg(node.target) if node.op == "call_function" else None
    if spec is not None:
        if from_parameters(call_arg(node, spec.weight, "weight"), modules):
            return True, ""
        if aten_name(node) is None or not any(from_parameters(a, modules) for a in node.all_input_nodes):
            return False, ""
    operand = _operand_call_name(node)
    if operand is not None and any(from_parameters(a, modules) for a in node.all_input_nodes):
        return False, (f"{operand} with a parameter operand that is not a weight argument: only the weights of "
                       "conv and linear calls (on the export route also mm, matmul, addmm, embedding and grouped "
                       "expert products) and of conv, linear, embedding, attention and expert modules are "
                       "quantized and perturbed; used as it is")
    return False, ""
