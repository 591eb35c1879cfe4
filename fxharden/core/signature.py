"""The hardened model keeps the plain model's call signature.

A captured graph takes its inputs in the form it was captured with: torch.fx traces an
argument with a constant default at that default (``embed=False``, ``mask=None``) and renames
its placeholder (``embed_1``); torch.export takes the tensor inputs of ``example_inputs`` only,
in their structure. Code written for the plain model (``model(frames, embed=False)``) would
fail on the hardened one. ``CallSpec`` records the plain ``forward`` signature, the arguments
the graph was specialised on (with the values it accepts) and how the other arguments reach
the graph; ``adapt_forward`` puts a ``forward`` with the plain signature in front of the
generated one. It is generated source, not a ``*args`` shim, so ``torch.compile`` traces
straight through it and ``inspect.signature`` shows the plain signature.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from torch import Tensor, fx, nn

from .export import example_args
from .trace import Capture

__all__ = ["CallSpec", "SpecialisedArgumentError", "call_spec", "spec_from_fx", "spec_from_export", "adapt_forward"]

_P = inspect.Parameter


class SpecialisedArgumentError(ValueError):
    """An argument the hardened graph was specialised on got another value."""


@dataclass(frozen=True)
class CallSpec:
    """How a call with the plain model's signature reaches the hardened graph."""

    signature: inspect.Signature
    """The plain model's ``forward`` signature (without ``self``)."""
    fixed: Tuple[Tuple[str, Tuple[Any, ...]], ...]
    """``(argument, values the graph accepts)`` for each argument the graph was specialised on:
    its traced value first, then the plain default where that is accepted too."""
    positional: Tuple[str, ...]
    """The arguments passed to the graph positionally, in order (a ``*args`` parameter spread)."""
    keywords: Tuple[str, ...]
    """The arguments passed to the graph by keyword (a ``**kwargs`` parameter spread)."""
    frontend: str
    """``"fx"`` or ``"export"``: which capture specialised the graph (for the error message)."""


def _params(signature: inspect.Signature) -> Dict[str, inspect.Parameter]:
    return dict(signature.parameters)


def _empty_of(p: inspect.Parameter) -> Any:
    return () if p.kind is _P.VAR_POSITIONAL else {}


def _unused(params: Dict[str, inspect.Parameter], used: Sequence[str]) -> Optional[list]:
    """``fixed`` entries for the parameters the graph does not take: their default (a ``*args``
    or ``**kwargs`` parameter: empty); ``None`` when one has no default (the graph cannot run)."""
    out = []
    for name, p in params.items():
        if name in used:
            continue
        if p.kind in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD):
            out.append((name, (_empty_of(p),)))
        elif p.default is p.empty:
            return None
        else:
            out.append((name, (p.default,)))
    return out


def spec_from_fx(signature: inspect.Signature, graph: fx.Graph, concrete: Dict[str, Any]) -> Optional[CallSpec]:
    """The call spec of a torch.fx graph traced with ``concrete`` arguments (``trace._default_args``)
    or of the graph that calls an opaque root with its positional parameters; ``None`` when its
    placeholders do not map onto the signature."""
    params = _params(signature)
    positional, keywords, used = [], [], []
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        name = str(node.target).lstrip("*")
        if name not in params:
            base = re.fullmatch(r"(.+)_\d+", name)
            name = base.group(1) if base and base.group(1) in concrete else ""
        if not name or name in used:
            return None
        used.append(name)
        (keywords if params[name].kind is _P.VAR_KEYWORD else positional).append(name)
    fixed = [(n, (concrete[n],)) for n in used if n in concrete]
    unused = _unused(params, used)
    if unused is None:
        return None
    return CallSpec(signature, tuple(fixed + unused), tuple(positional), tuple(keywords), "fx")


def spec_from_export(signature: inspect.Signature, graph: fx.Graph, given: Tuple[tuple, Dict[str, Any]],
                     exported: Tuple[tuple, Dict[str, Any]]) -> Optional[CallSpec]:
    """The call spec of a torch.export graph: ``given`` are the example inputs as the caller gave
    them, ``exported`` as exported (``use_cache=False`` added). ``None`` when the graph's inputs
    do not map onto the signature's named parameters."""
    info = getattr(graph._codegen, "pytree_info", None)
    if info is None or info.in_spec is None or info.in_spec.num_children != 2:
        return None
    n_args = info.in_spec.child(0).num_children
    kw_names = list(info.in_spec.child(1).context or ())
    params = _params(signature)
    named = list(params)
    slots = [n for n in named if params[n].kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
    if n_args > len(slots) or any(k not in params or params[k].kind not in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)
                                  for k in kw_names):
        return None
    try:
        traced = signature.bind_partial(*exported[0], **exported[1]).arguments
        by_caller = signature.bind_partial(*given[0], **given[1]).arguments
    except TypeError:
        return None
    positional = slots[:n_args]
    fixed = []
    for name in named:
        p = params[name]
        if name not in traced or name in kw_names and isinstance(traced[name], Tensor):
            continue  # handled below (unused), or a tensor input the graph takes
        value = traced[name]
        if name in positional and _holds_tensor(value):
            continue
        if p.kind in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD):
            return None  # extra inputs in a *args / **kwargs parameter: the graph's form stays as exported
        accepted = (value,) if name in by_caller or p.default is p.empty else (value, p.default)
        fixed.append((name, accepted))
    unused = _unused(params, positional + kw_names + [n for n, _ in fixed])
    if unused is None:
        return None
    return CallSpec(signature, tuple(fixed + unused), tuple(positional), tuple(kw_names), "export")


def call_spec(model: nn.Module, cap: Capture, example_inputs: Any) -> Optional[CallSpec]:
    """The call spec of the graphs ``cap`` captured from ``model`` (``None``: the graph keeps
    the form it was captured with)."""
    signature = inspect.signature(model.forward)
    graph = cap.graphs[True]
    if cap.route == "export":
        if cap.inputs is None:
            return None
        return spec_from_export(signature, graph, example_args(example_inputs), cap.inputs)
    return spec_from_fx(signature, graph, cap.concrete)


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def _same(value: Any, accepted: Tuple[Any, ...]) -> bool:
    """Whether ``value`` is one of the ``accepted`` values (``1`` and ``1.0`` alike; ``True``
    and ``1`` not; tensors by identity)."""
    for a in accepted:
        if value is a:
            return True
        if isinstance(value, Tensor) or isinstance(a, Tensor):
            continue
        if isinstance(value, bool) != isinstance(a, bool):
            continue
        numbers = isinstance(value, (int, float)) and isinstance(a, (int, float))
        if not numbers and type(value) is not type(a):
            continue
        try:
            if bool(value == a):
                return True
        except (RuntimeError, TypeError, ValueError):
            continue
    return False


def _refuse(spec: CallSpec, class_name: str, name: str, value: Any) -> None:
    accepted = dict(spec.fixed)[name]
    p = spec.signature.parameters[name]
    if p.kind is _P.VAR_POSITIONAL:
        raise TypeError(f"{class_name} takes no extra positional arguments (*{name}): its graph was captured "
                        f"without them; got {len(value)}")
    if p.kind is _P.VAR_KEYWORD:
        raise TypeError(f"{class_name} was captured without the keyword arguments {sorted(value)} (**{name}); "
                        "harden the model with them in example_inputs (frontend='export')")
    how = ("torch.fx traces an argument with a constant default at that default"
           if spec.frontend == "fx" else "torch.export fixes inputs that are not tensors at their example value")
    shown = "a tensor" if isinstance(value, Tensor) else repr(value)
    raise SpecialisedArgumentError(
        f"{class_name} was captured with {name}={accepted[0]!r} ({how}): its graph computes that case only, "
        f"and {name}={shown} was passed. Harden the model with that value: "
        f"harden(model, ..., frontend='export', example_inputs={{..., {name!r}: <the value>}}) captures the "
        f"{name}={shown} path (an argument that is a tensor stays an input of the graph); or call the "
        "plain model for that case.")


_NAMES = ("_fxharden_raw", "_fxharden_same", "_fxharden_refuse", "_fxharden_spec")


def adapt_forward(spec: CallSpec, raw: Callable[..., Any], class_name: str) -> Callable[..., Any]:
    """A ``forward(self, ...)`` with ``spec.signature`` that checks the specialised arguments
    and calls ``raw`` (the generated graph code) in the graph's form."""
    params = list(spec.signature.parameters.values())
    if any(p.name in _NAMES or p.name == "self" or p.name.startswith("_fxharden_") for p in params):
        raise ValueError(f"{class_name}.forward has a parameter named like fxharden's own ({_NAMES})")
    ns: Dict[str, Any] = {"_fxharden_raw": raw, "_fxharden_same": _same, "_fxharden_spec": spec,
                          "_fxharden_refuse": lambda name, value: _refuse(spec, class_name, name, value)}
    text, star = ["self"], False
    for i, p in enumerate(params):
        if p.kind is _P.KEYWORD_ONLY and not star:
            text.append("*")
            star = True
        prefix = "*" if p.kind is _P.VAR_POSITIONAL else "**" if p.kind is _P.VAR_KEYWORD else ""
        star = star or p.kind is _P.VAR_POSITIONAL
        default = ""
        if p.default is not p.empty:
            ns[f"_fxharden_d{i}"] = p.default
            default = f"=_fxharden_d{i}"
        text.append(f"{prefix}{p.name}{default}")
        if p.kind is _P.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not _P.POSITIONAL_ONLY):
            text.append("/")
    body = []
    for i, (name, accepted) in enumerate(spec.fixed):
        ns[f"_fxharden_v{i}"] = accepted
        body.append(f"    if not _fxharden_same({name}, _fxharden_v{i}):\n"
                    f"        _fxharden_refuse({name!r}, {name})")
    kinds = spec.signature.parameters
    call = ["self"] + [f"*{n}" if kinds[n].kind is _P.VAR_POSITIONAL else n for n in spec.positional]
    call += [f"**{n}" if kinds[n].kind is _P.VAR_KEYWORD else f"{n}={n}" for n in spec.keywords]
    src = (f"def forward({', '.join(text)}):\n" + "".join(line + "\n" for line in body)
           + f"    return _fxharden_raw({', '.join(call)})\n")
    exec(compile(src, f"<fxharden forward of {class_name}>", "exec"), ns)  # noqa: S102 (source built above)
    forward = ns["forward"]
    forward.__signature__ = spec.signature.replace(
        parameters=[_P("self", _P.POSITIONAL_OR_KEYWORD)] + params)
    forward.__doc__ = f"The hardened forward, with the plain model's signature {spec.signature}."
    forward._fxharden_raw = raw
    return forward
