"""The input shapes an exported graph holds for, checked at every call of the hardened model.

torch.export records the model for the example's shapes: a dimension the model's code needs
at one size (a loop over positions, a ``reshape`` to a constant) is fixed at the example's
size, a branch on a size (``if ids.shape[1] > 8``) limits that size to the branch taken. The
graph computes wrong numbers, or fails deep inside, outside those shapes, so the hardened
model checks its inputs first (``InputGuard``, one module per graph) and refuses the others
with an ``InputShapeError`` that names the dimension, what the graph takes and what to do.

``guard_from_export`` reads the checks from an ``ExportedProgram``: the size or range of every
dimension of every tensor input, the dimensions that must be equal (one symbol for both) and
torch.export's other guards (relations between sizes) as expressions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, fx, nn

__all__ = ["InputShapeError", "DimCheck", "InputGuard", "guard_from_export", "insert_input_guards",
           "GUARDS_META"]

GUARDS_META = "fxharden_input_guards"
"""Key of the exported root's ``meta``: ``{mode: InputGuard}`` until ``insert_input_guards``."""

_WAY_OUT = ("harden with example_inputs of the shape you will use, or with frontend='fx' (untraceable parts then "
            "take the module route)")


class InputShapeError(ValueError):
    """An input of a hardened model has a shape its exported graph was not recorded for."""


@dataclass(frozen=True)
class DimCheck:
    """What one dimension of one tensor input of an exported graph may be."""

    slot: int
    """Position of the input among the guard's arguments."""
    name: str
    """The input as the caller passes it (``input_ids``, ``x``)."""
    dim: int
    low: int
    """Smallest size the graph holds for (sizes 0 to 2 are never checked: torch.export
    records a dynamic dimension for any size from 2, and 0 or 1 rarely change the code)."""
    high: Optional[int]
    """Largest size, ``None`` for no bound; ``low == high`` when the size is fixed."""
    example: int
    """The example's size."""
    asked_dynamic: bool
    """The export route asked torch.export for any size here (the batch, and every dimension
    of integer inputs), so a fixed size or a range was the model's doing."""
    integer: bool = False

    @property
    def label(self) -> str:
        seq = " (the sequence length)" if self.integer and self.dim == 1 else ""
        return f"{self.name}.shape[{self.dim}]{seq}"

    @property
    def allowed(self) -> str:
        if self.high == self.low:
            return f"= {self.low}"
        if self.high is None:
            return f">= {self.low}"
        return f"in [{self.low}, {self.high}]"

    def holds(self, size: int) -> bool:
        return size >= self.low if self.high is None else self.low <= size <= self.high

    def describe(self) -> str:
        """The note of a dimension torch.export narrowed (``HardenReport.note``)."""
        what = f"fixed at {self.low}" if self.high == self.low else f"limited to {self.allowed} (example: {self.example})"
        return f"{self.label} {what} by torch.export: the hardened model refuses other sizes ({_WAY_OUT})"


class InputGuard(nn.Module):
    """Checks the tensor inputs of one exported graph (its node takes them in ``slot`` order).

    Its state is plain data (it pickles with the hardened model); the expressions are compiled
    on first use.
    """

    def __init__(self, names: Sequence[str], dims: Sequence[DimCheck], equal: Sequence[Tuple[int, int, int, int]],
                 exprs: Sequence[Tuple[str, str]], model: str) -> None:
        super().__init__()
        self.names = tuple(names)
        self.dims = tuple(dims)
        self.equal = tuple(equal)
        """``(slot, dim, slot, dim)``: two dimensions the graph takes as one size."""
        self.exprs = tuple(exprs)
        """torch.export's other guards: ``(python over args[i], readable text)``."""
        self.model = model

    @property
    def narrowed(self) -> List[DimCheck]:
        """The dimensions asked dynamic that torch.export fixed or limited."""
        return [d for d in self.dims if d.asked_dynamic and (d.high is not None or d.low > 2)]

    def forward(self, *inputs: Tensor) -> None:
        for d in self.dims:
            size = inputs[d.slot].shape[d.dim]
            if not d.holds(size):
                why = ("torch.export fixed it at the example's size: the model's code needs one size there "
                       "(e.g. a loop over positions)" if d.asked_dynamic and d.high == d.low else
                       f"torch.export recorded the graph of the example's size ({d.example}), where the model's "
                       "code branches on it" if d.asked_dynamic else
                       "the export route keeps the dimensions of floating-point inputs after the batch at the "
                       "example's size")
                raise InputShapeError(f"{self.model} takes {d.label} {d.allowed} only, got {size}: {why}; {_WAY_OUT}")
        for a, da, b, db in self.equal:
            if inputs[a].shape[da] != inputs[b].shape[db]:
                raise InputShapeError(
                    f"{self.model} takes {self.names[a]}.shape[{da}] == {self.names[b]}.shape[{db}] only (torch.export "
                    f"recorded one size for both), got {inputs[a].shape[da]} and {inputs[b].shape[db]}: pass inputs "
                    f"of matching shapes, or {_WAY_OUT}")
        fns = self.__dict__.get("_fns")
        if fns is None:
            fns = self.__dict__["_fns"] = [eval(f"lambda args: {code}", _namespace()) for code, _ in self.exprs]
        for fn, (_, text) in zip(fns, self.exprs):
            if not fn(inputs):
                sizes = ", ".join(f"{n}: {tuple(t.shape)}" for n, t in zip(self.names, inputs))
                raise InputShapeError(f"{self.model} holds only for inputs where {text} (torch.export recorded the "
                                      f"graph under that condition), got {sizes}; {_WAY_OUT}")

    def __getstate__(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_fns"}

    def extra_repr(self) -> str:
        return ", ".join([f"{d.label} {d.allowed}" for d in self.dims if d.high is not None or d.low > 2]
                         + [text for _, text in self.exprs])


def _namespace() -> Dict[str, Any]:
    from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP
    return {**SYMPY_INTERP, "math": math, "inf": math.inf}


def guard_from_export(ep: "torch.export.ExportedProgram", names: Sequence[str], dynamic: Sequence[Sequence[int]],
                      tensors: Sequence[bool], sources: Sequence[str], model: str) -> InputGuard:
    """The checks of ``ep``'s graph, over its user inputs (the flat leaves of the example).

    Args:
        ep: the exported program.
        names: each input as the caller passes it (``input_ids``, ``x``, ``x[0]``).
        dynamic: per input, the dimensions asked dynamic.
        tensors: per input, whether it is a tensor (the others are fixed at their example value).
        sources: per input, how torch.export's guards name it (``L['input_ids']``).
        model: the model's name for the messages.
    """
    from torch.utils._sympy.numbers import int_oo

    specs = [s for s in ep.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    slots = [i for i, is_tensor in enumerate(tensors) if is_tensor]
    slot_of = {i: s for s, i in enumerate(slots)}
    dims: List[DimCheck] = []
    equal: List[Tuple[int, int, int, int]] = []
    first: Dict[Any, Tuple[int, int]] = {}
    for i, spec in enumerate(specs):
        val = placeholders[spec.arg.name].meta.get("val")
        if i not in slot_of or not isinstance(val, Tensor):
            continue
        for d, size in enumerate(val.shape):
            asked = d in dynamic[i]
            integer = not (val.is_floating_point() or val.is_complex())
            expr = size.node.expr if isinstance(size, torch.SymInt) else size
            if isinstance(expr, int) or expr.is_number:  # a size torch.export specialised
                dims.append(DimCheck(slot_of[i], names[i], d, int(expr), int(expr), int(expr), asked, integer))
                continue
            if expr in first:
                equal.append((*first[expr], slot_of[i], d))
                continue
            first[expr] = (slot_of[i], d)
            vr = ep.range_constraints.get(expr)
            if vr is None:
                continue
            high = None if vr.upper == int_oo else int(vr.upper)
            if high is not None or int(vr.lower) > 2:
                dims.append(DimCheck(slot_of[i], names[i], d, int(vr.lower), high, int(size.node.hint), asked, integer))
    exprs = []
    for code in getattr(ep, "_guards_code", ()):
        made = _rewrite(code, sources, slot_of, names)
        if made is not None:
            exprs.append(made)
    return InputGuard([names[i] for i in slots], dims, equal, exprs, model)


def _rewrite(code: str, sources: Sequence[str], slot_of: Dict[int, int], names: Sequence[str]) -> Optional[Tuple[str, str]]:
    """A guard of torch.export over the guard's arguments (``args[slot]``) and as readable
    text; ``None`` when it names an input that is no tensor (fixed) or that it cannot place."""
    code = re.sub(r"L\['flat_args'\]\[(\d+)\]", lambda m: sources[int(m.group(1))]
                  if int(m.group(1)) < len(sources) else m.group(0), code)
    python, text = code, code
    for i in sorted(range(len(sources)), key=lambda i: -len(sources[i])):
        if sources[i] in python:
            if i not in slot_of:
                return None
            python = python.replace(sources[i], f"args[{slot_of[i]}]")
            text = text.replace(sources[i], names[i])
    if "L[" in python:
        return None
    text = re.sub(r"\.size\(\)\[(\d+)\]", r".shape[\1]", text)
    return python, text


def insert_input_guards(root: nn.Module, graphs: Dict[bool, fx.Graph], container: nn.ModuleDict) -> None:
    """Call each graph's ``InputGuard`` (from ``root.meta[GUARDS_META]``, set by the export
    route) on its tensor inputs, right after them; the guard lives in ``container``."""
    meta = getattr(root, "meta", None)
    guards = meta.pop(GUARDS_META, None) if isinstance(meta, dict) else None  # a model may name its own 'meta'
    if not guards:
        return
    done = set()
    for mode in (True, False):
        graph, guard = graphs[mode], guards[mode]
        if id(graph) in done or not (guard.dims or guard.equal or guard.exprs):
            continue
        done.add(id(graph))
        key = "input_guard" if mode else "input_guard_eval"
        container[key] = guard
        inputs = [n for n in graph.nodes if n.op == "placeholder" and "fxharden_input" in n.meta]
        inputs.sort(key=lambda n: n.meta["fxharden_input"])
        with graph.inserting_after(inputs[-1]):
            graph.call_module(f"{_container_name(root, container)}.{key}", tuple(inputs))


def _container_name(root: nn.Module, container: nn.Module) -> str:
    return next(name for name, m in root.named_children() if m is container)
