"""Graph capture. Every tracer call in fxharden lives here.

One ``Tracer`` subclass with timm's not-traceable modules and functions plugged in. It
records the dotted module scope of every node (``node.meta["scope"]``) so sites get stable
names (``layer1.0.conv1``, ``layer1.0.add``), and it remembers the innermost submodule
whose forward failed, so an untraceable submodule can become one opaque layer instead of
refusing the whole model.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn

__all__ = ["UntraceableModelError", "Capture", "capture", "OPAQUE_ROOT", "leaf_predicate", "opaque_reason",
           "route_note"]

OPAQUE_ROOT = "model"
"""Attribute under which a model whose own ``forward`` cannot be traced is wrapped."""

_TORCH_DIR = os.path.dirname(torch.__file__)


class UntraceableModelError(RuntimeError):
    """A model (or one of its submodules) could not be traced by torch.fx.

    Attributes:
        module: dotted name of the innermost submodule that failed ('' for the root).
        module_type: its class name.
        location: ``file:line`` of the model code that failed, when known.
    """

    def __init__(self, module: str, module_type: str, location: str, cause: BaseException,
                 construct: str = "") -> None:
        self.module, self.module_type, self.location = module, module_type, location
        where = f"submodule {module!r} ({module_type})" if module else f"the model's own forward ({module_type})"
        super().__init__(
            f"torch.fx cannot trace {where}: {construct or f'{type(cause).__name__}: {cause}'}\n"
            f"  at {location}\n"
            "  Fixes: pass it as a leaf so it becomes one opaque layer "
            f"(harden(..., leaf_modules=[{module_type}]) or leaf_modules=[{module!r}]), "
            "or wrap the offending function with torch.fx.wrap, "
            "or call harden(..., strict=False) to treat untraceable submodules as opaque layers."
        )


def _user_location(err: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith((_TORCH_DIR, _OWN_DIR))]
    if not frames:
        return "<unknown>"
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


_OWN_DIR = os.path.dirname(os.path.abspath(__file__))

_CONSTRUCTS = (
    ("cannot be used as inputs to control flow",
     "data-dependent control flow (an if/while/assert on the value of a tensor)"),
    ("Proxy object cannot be iterated", "iteration over a tensor (a for loop over it, or *args/**kwargs unpacking "
                                        "of it)"),
    ("'len' is not supported", "len() of a tensor"),
    ("is not supported in symbolic tracing", "a Python built-in applied to a tensor"),
)


def _decorated(module: nn.Module) -> Optional[Any]:
    """The function wrapped around ``module.forward`` by a decorator (``functools.wraps``), if any."""
    forward = getattr(type(module), "forward", None)
    return forward if forward is not None and hasattr(forward, "__wrapped__") else None


def _defined_at(fn: Any) -> str:
    try:
        fn = inspect.unwrap(fn)
        return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return "<unknown>"


def failure(module: nn.Module, err: BaseException) -> tuple:
    """``(construct, location)``: what torch.fx could not trace in ``module``'s forward, in
    words, and where (``file:line: code`` of the model, when known)."""
    text = f"{err}"
    for marker, construct in _CONSTRUCTS:
        if marker in text:
            return construct, _user_location(err)
    wrapper = _decorated(module)
    if wrapper is not None and isinstance(err, (ValueError, TypeError)) and "co_" in text:
        # torch.fx reads the parameters of the wrapped function, then rebuilds the wrapper's code object
        code = wrapper.__code__
        n = code.co_argcount + code.co_kwonlyargcount
        params = list(code.co_varnames[:n])
        if code.co_flags & inspect.CO_VARARGS:
            params.append("*" + code.co_varnames[n])
        if code.co_flags & inspect.CO_VARKEYWORDS:
            params.append("**" + code.co_varnames[n + bool(code.co_flags & inspect.CO_VARARGS)])
        return (f"its forward is wrapped by a decorator (the wrapper {code.co_name}({', '.join(params)}) at "
                f"{code.co_filename}:{code.co_firstlineno}, made with functools.wraps), and torch.fx cannot rebuild "
                f"that wrapper with the forward's own parameters ({type(err).__name__}: {text})",
                _defined_at(wrapper))
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first}", _user_location(err)


def opaque_reason(name: str, module: nn.Module, err: BaseException) -> str:
    """Why the submodule ``name`` ('' for the model's own forward) is one opaque layer."""
    construct, location = failure(module, err)
    where = f"submodule {name!r} ({type(module).__name__})" if name else \
        f"the model's own forward ({type(module).__name__})"
    return f"torch.fx cannot trace {where}: {construct}, at {location}"


def route_note(reason: str, kinds: Sequence[str]) -> str:
    """An opaque part's reason with the route its layers took: ``kinds`` are the kinds of the
    layers found inside it (hardened by hooks), empty when none was."""
    if not kinds:
        return f"{reason}; treated as one layer: no layer of a known kind inside it is hardened"
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    listed = ", ".join(f"{n} {k}" for k, n in counts.items())
    return f"{reason}; treated as one layer: its layers ({listed}) are hardened by hooks (module route)"


def _timm_notrace() -> tuple:
    """timm's registered not-traceable modules and functions. A model can only hold them once
    timm is imported, so timm is never imported here (it costs seconds and is optional)."""
    timm_fx = sys.modules.get("timm.layers._fx")
    if timm_fx is None:
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())


class _Tracer(fx.Tracer):
    """The tracer. Its arguments have defaults because ``GraphModule`` unpickling re-creates
    the tracer class without arguments (to retrace the stored code, every module a leaf)."""

    def __init__(self, leaf_types: tuple = (), leaf_names: frozenset = frozenset(),
                 autowrap: Optional[tuple] = None) -> None:
        super().__init__(autowrap_functions=_timm_notrace()[1] if autowrap is None else autowrap)
        self.leaf_types, self.leaf_names = leaf_types, leaf_names
        self.scopes: List[str] = []
        self.culprit: Optional[str] = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        self.scopes.append(qualname)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.culprit is None:
                self.culprit = qualname
            raise
        finally:
            self.scopes.pop()

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["scope"] = self.scopes[-1] if self.scopes else ""
        return node


def _opaque_root(model: nn.Module) -> tuple:
    """A root holding ``model`` as one layer, and the graph that calls it with the parameters of
    ``model.forward`` (``*args``/``**kwargs`` left out)."""
    root = nn.Module()
    setattr(root, OPAQUE_ROOT, model)
    graph = fx.Graph()
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    args, kwargs = [], {}
    for p in params:
        node = graph.placeholder(p.name, default_value=p.default if p.default is not p.empty else inspect.Signature.empty)
        node.meta["scope"] = ""
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = node
        else:
            args.append(node)
    call = graph.call_module(OPAQUE_ROOT, tuple(args), kwargs)
    call.meta["scope"] = ""
    graph.output(call)
    return root, graph


@dataclass
class Capture:
    """The result of ``capture``: one graph per mode and what had to be left opaque."""

    root: nn.Module
    graphs: Dict[bool, fx.Graph]
    """``{True: train-mode graph, False: eval-mode graph}``; the same object when they agree."""
    opaque: Dict[str, str] = field(default_factory=dict)
    """Dotted module name -> why it is one opaque layer."""
    wrapped: bool = False
    """The model's own forward could not be traced: ``root`` holds it as ``root.model``."""
    route: str = "graph"
    """``"graph"`` (torch.fx) or ``"export"`` (torch.export, ``fxharden.core.export``)."""
    layers: Dict[str, nn.Module] = field(default_factory=dict)
    """The export route: the model's modules by dotted path (its graph calls no modules)."""
    note: str = ""
    """Why this frontend was used, when ``Frontend.AUTO`` chose (``HardenReport.note``)."""
    example: Optional[Dict[str, Any]] = None
    """The export route: its example inputs as plain data (``export.example_spec``)."""
    concrete: Dict[str, Any] = field(default_factory=dict)
    """The torch.fx route: the arguments traced at their constant default (``_default_args``)."""
    inputs: Optional[Tuple[tuple, Dict[str, Any]]] = None
    """The export route: ``(args, kwargs)`` as exported (what the graph is specialised on)."""


def _default_args(root: nn.Module) -> Dict[str, Any]:
    """Parameters of ``forward`` with a constant default (``mask=None``, ``flag=False``) are
    traced at that default, the way the model is normally called."""
    params = inspect.signature(root.forward).parameters.values()
    return {p.name: p.default for p in params
            if p.default is not p.empty and (p.default is None or isinstance(p.default, (bool, int, float, str)))}


def _trace_once(root: nn.Module, leaf_types: tuple, leaf_names: frozenset, autowrap: tuple) -> fx.Graph:
    tracer = _Tracer(leaf_types, leaf_names, autowrap)
    try:
        return tracer.trace(root, concrete_args=_default_args(root))
    except Exception as err:
        err.fxharden_culprit = tracer.culprit  # type: ignore[attr-defined]
        raise


def _leaf_types(leaf_modules: Sequence[Any]) -> tuple:
    from .layers import HARDENED_LAYERS

    return tuple(m for m in leaf_modules if isinstance(m, type)) + _timm_notrace()[0] + HARDENED_LAYERS


def leaf_predicate(leaf_modules: Sequence[Any] = ()) -> Any:
    """``is_leaf(module, dotted_name)``: whether the tracer treats a module as one layer
    (torch's own layers, timm's not-traceable ones, hardened layers and ``leaf_modules``)."""
    names = frozenset(m for m in leaf_modules if isinstance(m, str))
    return _Tracer(_leaf_types(leaf_modules), names, autowrap=()).is_leaf_module


def capture(model: nn.Module, leaf_modules: Sequence[Any] = (), strict: bool = False) -> Capture:
    """Trace ``model`` in train and in eval mode.

    Args:
        model: the module to trace; its train/eval mode is restored afterwards.
        leaf_modules: classes or dotted names the tracer must not enter.
        strict: raise ``UntraceableModelError`` instead of making failing submodules opaque.

    Returns:
        A ``Capture``. When the model's own forward cannot be traced (and not strict), the
        root is wrapped so that the whole model is one opaque layer named ``"model"``.
    """
    nt_functions = _timm_notrace()[1]
    leaf_types = _leaf_types(leaf_modules)
    names = {m for m in leaf_modules if isinstance(m, str)}
    opaque: Dict[str, str] = {}
    was_training = model.training
    try:
        graphs: Dict[bool, fx.Graph] = {}
        for mode in (True, False):
            model.train(mode)
            while True:
                try:
                    graphs[mode] = _trace_once(model, leaf_types, frozenset(names | set(opaque)), nt_functions)
                    break
                except Exception as err:
                    culprit = getattr(err, "fxharden_culprit", None)
                    if strict:
                        name = culprit or ""
                        construct, location = failure(model.get_submodule(name), err)
                        raise UntraceableModelError(name, type(model.get_submodule(name)).__name__, location, err,
                                                    construct) from err
                    if culprit is None:
                        root, graph = _opaque_root(model)
                        return Capture(root=root, graphs={True: graph, False: graph},
                                       opaque={OPAQUE_ROOT: opaque_reason("", model, err)}, wrapped=True)
                    opaque[culprit] = opaque_reason(culprit, model.get_submodule(culprit), err)
    finally:
        model.train(was_training)
    if graphs[True].python_code("self").src == graphs[False].python_code("self").src:
        graphs[False] = graphs[True]
    return Capture(root=model, graphs=graphs, opaque=opaque, concrete=_default_args(model))
