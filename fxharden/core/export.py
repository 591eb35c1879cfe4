"""The torch.export frontend: an ATen-level graph of a model torch.fx cannot trace.

torch.export runs the model on example inputs and records every ATen operation it performs,
through any Python (``ModelOutput`` results, caches, data-dependent shapes resolved at the
example). Its graph is a ``torch.fx.Graph`` too, so the passes of ``harden`` stay graph
passes: ``capture`` returns the same ``trace.Capture`` as torch.fx does, with

- one graph per mode (train and eval are exported separately, each from the model as it was:
  ``_untouched``), the batch dimension (and every dimension of integer inputs such as token
  ids and masks) dynamic; the shapes each graph holds for, where the model's code fixed or
  limited a size, are checked at every call (``input_guard``, inserted by ``harden``);
- the parameters and buffers read by ``get_attr`` under their dotted names in the model;
- each node annotated so sites keep human names: ``node.meta["scope"]`` is the dotted path
  of the module whose code ran the operation (``model.layers.0.self_attn``); the operations
  of a *layer* (a module torch.fx would not enter: torch's own layers, timm's not-traceable
  ones, user leaf modules, and known conv/linear types such as transformers' ``Conv1D``) are
  grouped per call: the node that leaves the call is the layer's output
  (``meta["fxharden_layer"]`` = its path, ``meta["fxharden_output"]``), the others are its
  internals (never sites), and the weighted ATen calls among them are listed on the output
  (``meta["fxharden_calls"]``) so the layer's weights are quantized and perturbed.

Inputs that are not tensors (``use_cache=False``) are fixed at their example value: the
hardened model takes the tensor inputs only, positional or by keyword as in
``example_inputs``. A model whose ``forward`` takes ``use_cache`` (a Hugging Face model) is
exported with ``use_cache=False`` unless the example sets it: a noisy model's key/value cache
would hold stale noise, and torch.export cannot return a cache object.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.utils._pytree as pytree
from torch import Tensor, fx, nn

from .input_guard import GUARDS_META, InputGuard, guard_from_export
from .layer_kinds import module_kind
from .trace import Capture, leaf_predicate

__all__ = ["ExportError", "capture_export", "example_args", "example_spec", "example_from_spec"]


class ExportError(RuntimeError):
    """torch.export could not capture the model (or the example inputs do not fit it)."""


def example_args(example_inputs: Any) -> Tuple[tuple, Dict[str, Any]]:
    """``(args, kwargs)`` from ``example_inputs``: a tensor, a tuple of positional arguments,
    or a dict of keyword arguments (e.g. ``{"input_ids": ids, "attention_mask": mask}``).

    Raises:
        TypeError: anything else, or no tensor among them.
    """
    if isinstance(example_inputs, Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, tuple):
        args, kwargs = example_inputs, {}
    elif isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, list):
        raise TypeError("example_inputs is a list; pass a tuple of positional arguments "
                        "(example_inputs=(x,)) or a dict of keyword arguments")
    else:
        raise TypeError(f"example_inputs must be a tensor, a tuple of positional arguments or a dict of "
                        f"keyword arguments, got {type(example_inputs).__name__}")
    if not any(isinstance(v, Tensor) for v in pytree.tree_leaves((args, kwargs))):
        raise TypeError("example_inputs holds no tensor: pass the inputs of one forward pass, e.g. "
                        "example_inputs=(torch.randn(2, 3, 32, 32),) or {'input_ids': ids}")
    return args, kwargs


def example_spec(args: tuple, kwargs: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Plain data describing example inputs (shapes and dtypes of tensors, other values as they
    are), stored in checkpoints so loading exports the same graph; ``None`` for nested inputs."""
    def one(v: Any) -> Optional[Dict[str, Any]]:
        if isinstance(v, Tensor):
            return {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        return {"value": v} if _is_constant(v) else None

    spec = {"args": [one(a) for a in args], "kwargs": {k: one(v) for k, v in kwargs.items()}}
    return None if None in spec["args"] or None in spec["kwargs"].values() else spec


def example_from_spec(spec: Dict[str, Any]) -> Any:
    """Example inputs (zeros of the recorded shapes and dtypes) from ``example_spec``."""
    def one(d: Dict[str, Any]) -> Any:
        return torch.zeros(d["shape"], dtype=getattr(torch, d["dtype"])) if "shape" in d else d["value"]

    if spec["kwargs"]:
        return {k: one(v) for k, v in spec["kwargs"].items()}
    return tuple(one(a) for a in spec["args"])


def _batch_of_two(args: tuple, kwargs: Dict[str, Any]) -> Tuple[tuple, Dict[str, Any]]:
    """When every tensor input has one row, two copies of it: torch.export specialises a
    dimension of size 1, and the hardened model must take any batch size."""
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor) and t.dim() > 0]
    if not tensors or any(t.shape[0] != 1 for t in tensors):
        return args, kwargs
    return pytree.tree_map(lambda t: torch.cat([t, t]) if isinstance(t, Tensor) and t.dim() > 0 else t,
                           (args, kwargs))


def _dynamic_dims(v: Any) -> Tuple[int, ...]:
    """The dimensions of an input asked dynamic: dim 0 of every tensor, and every dim of
    integer tensors (token ids, masks, whose sequence length varies)."""
    if not isinstance(v, Tensor) or v.dim() == 0:
        return ()
    return tuple(range(v.dim())) if not (v.is_floating_point() or v.is_complex()) else (0,)


def _dynamic_shapes(model: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> Any:
    """``_dynamic_dims`` of every input; ``Dim.AUTO`` lets export keep a dim static when the
    model needs it so (``input_guard`` then checks it at every call)."""
    auto = torch.export.Dim.AUTO
    specs = pytree.tree_map(lambda v: {d: auto for d in _dynamic_dims(v)} if isinstance(v, Tensor) else None,
                            (args, kwargs), is_leaf=lambda v: v is None)
    if not kwargs:
        return specs[0]
    return {**dict(zip(_positional_names(model), specs[0])), **specs[1]}


def _positional_names(model: nn.Module) -> List[str]:
    return [p.name for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _describe(args: tuple, kwargs: Dict[str, Any]) -> str:
    def one(v: Any) -> str:
        return f"Tensor{tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" if isinstance(v, Tensor) else repr(v)

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def _export(model: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> "torch.export.ExportedProgram":
    try:
        ep = torch.export.export(model, args, kwargs, dynamic_shapes=_dynamic_shapes(model, args, kwargs), strict=False)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExportError(
            f"torch.export cannot capture {type(model).__name__} called with ({_describe(args, kwargs)}): "
            f"{type(err).__name__}: {first}\n"
            "  Check that example_inputs are what the model's forward takes (a tuple of positional arguments "
            "or a dict of keyword arguments, e.g. {'input_ids': ids}), or harden with frontend='fx' (parts it "
            "cannot trace get noise at their layers)."
        ) from err
    return ep


class _untouched:
    """Restores every module's own attributes after an export, as they were before it.

    Non-strict torch.export runs the model's Python code on fake tensors, so a model that keeps
    a tensor in a plain attribute (transformers' LongRoPE ``long_inv_freq``, any lazily built
    table) is left holding a fake tensor, which breaks the next export and any later use. The
    attributes (and the contents of the dicts, lists and sets among them: parameters, buffers,
    submodules, caches) are put back as they were.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> "_untouched":
        self.saved = [(m, dict(vars(m)), {k: _contents(v) for k, v in vars(m).items() if isinstance(v, _CONTAINERS)})
                      for m in self.model.modules()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, attrs, contents in self.saved:
            now = vars(module)
            for key in [k for k in now if k not in attrs]:
                del now[key]
            for key, value in attrs.items():
                if now.get(key, _MISSING) is not value:
                    now[key] = value
                if key in contents:
                    _refill(value, contents[key])


_MISSING = object()
_CONTAINERS = (dict, list, set)


def _contents(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else set(value)


def _refill(container: Any, contents: Any) -> None:
    if isinstance(container, dict):
        if container.keys() != contents.keys() or any(container[k] is not v for k, v in contents.items()):
            container.clear()
            container.update(contents)
    elif isinstance(container, list):
        if len(container) != len(contents) or any(a is not b for a, b in zip(container, contents)):
            container[:] = contents
    elif container != contents:
        container.clear()
        container.update(contents)


def _fix_constants(gm: fx.GraphModule, args: tuple, kwargs: Dict[str, Any]) -> None:
    """Drop torch.export's guard call (``input_guard`` checks the inputs instead, pickles and
    fits the placeholders that stay) and the placeholders of keyword inputs that are not tensors (fixed
    at their example value, e.g. ``use_cache=False``), so the graph takes the tensor keyword
    inputs (and every positional one) in the structure of the example."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards_fn") and not node.users:
            graph.erase_node(node)
    leaves = pytree.tree_flatten((args, kwargs))[0]
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    flat = all(isinstance(v, Tensor) or _is_constant(v) for v in list(args) + list(kwargs.values()))
    if not flat or len(placeholders) != len(leaves):  # nested inputs: they stay as exported
        graph.lint()
        gm.recompile()
        return
    fixed = []
    for name, node in zip(kwargs, placeholders[len(args):]):
        if _is_constant(kwargs[name]) and not node.users:  # export specialised the graph to its value
            fixed.append(name)
            graph.erase_node(node)
    kept = {k: v for k, v in kwargs.items() if k not in fixed}
    info = graph._codegen.pytree_info
    graph._codegen.pytree_info = info._replace(orig_args=[a for a in info.orig_args if a not in fixed],
                                               in_spec=pytree.tree_flatten((args, kept))[1])
    graph.lint()
    gm.recompile()


def _is_constant(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _annotate(graph: fx.Graph, model: nn.Module, is_layer: Any) -> None:
    """Set ``scope``, and per layer call its output and internals (see the module docstring).
    A module reached under several paths (shared) is named by its first, as torch.fx names it."""
    modules = dict(model.named_modules(remove_duplicate=False))
    canonical = {id(m): name for name, m in model.named_modules()}
    calls: Dict[str, List[fx.Node]] = {}
    path_of: Dict[str, str] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        entries = [(key, path) for key, (path, _) in stack.items()]
        node.meta["scope"] = entries[-1][1] if entries else ""
        for key, path in entries:
            module = modules.get(path) if path else None
            if module is not None and is_layer(module, path):
                calls.setdefault(key, []).append(node)
                path_of[key] = canonical.get(id(module), path)
                break
    for key, nodes in calls.items():
        members = set(nodes)
        outs = [n for n in nodes if any(u not in members for u in n.users)]
        floats = [n for n in outs if isinstance(n.meta.get("val"), Tensor) and n.meta["val"].is_floating_point()]
        out = (floats or outs or nodes[-1:])[0]
        for n in nodes:
            n.meta["fxharden_layer"] = path_of[key]
        out.meta["fxharden_output"] = True
        out.meta["fxharden_calls"] = [n for n in nodes if n.op == "call_function"]


def _layer_rule(leaf_modules: Sequence[Any]) -> Any:
    """A layer of the export route: what torch.fx would not enter, and every module of known
    kind (``layer_kinds.module_kind``) that holds no layer of known kind itself: transformers'
    ``Conv1D`` computes ``addmm`` + ``view``, one linear site; its ``NewGELUActivation`` a tanh
    formula, one activation site; timm's ``BatchNormAct2d`` (a batch norm holding its
    activation) is entered, so its activation stays a site."""
    is_leaf = leaf_predicate(leaf_modules)

    def is_layer(module: nn.Module, path: str) -> bool:
        return is_leaf(module, path) or (module_kind(module) is not None
                                         and not any(module_kind(c) is not None for c in module.children()))

    return is_layer


def capture_export(model: nn.Module, example_inputs: Any, leaf_modules: Sequence[Any] = ()) -> Capture:
    """Export ``model`` in train and in eval mode with ``example_inputs``.

    Returns:
        A ``Capture`` (``route="export"``) whose root is the exported module (it holds the
        model's own parameters and buffers) and whose ``layers`` are the model's modules.

    Raises:
        TypeError: ``example_inputs`` of the wrong form (see ``example_args``).
        ExportError: torch.export fails (the message names the inputs and what to do).
    """
    args, kwargs = _batch_of_two(*example_args(example_inputs))
    spec = example_spec(args, kwargs)  # as given: use_cache below is added again on every export
    if "use_cache" in inspect.signature(model.forward).parameters and "use_cache" not in kwargs:
        kwargs["use_cache"] = False
    device = next((t.device for t in itertools.chain(model.parameters(), model.buffers())), None)
    if device is not None:
        args, kwargs = pytree.tree_map(lambda v: v.to(device) if isinstance(v, Tensor) else v, (args, kwargs))
    modules = dict(model.named_modules())
    is_layer = _layer_rule(leaf_modules)
    was_training = model.training
    exported: Dict[bool, fx.GraphModule] = {}
    guards: Dict[bool, InputGuard] = {}
    try:
        for mode in (True, False):
            model.train(mode)
            with _untouched(model):  # each export starts from the model as it was
                ep = _export(model, args, kwargs)
            gm = ep.module()
            guards[mode] = _guard(ep, gm, model, args, kwargs)
            _fix_constants(gm, args, kwargs)
            _annotate(gm.graph, model, is_layer)
            gm.graph._tracer_cls = None  # pickling re-traces the code with the plain tracer
            exported[mode] = gm
    finally:
        model.train(was_training)
    root = exported[True]
    _adopt(root, exported[False])
    graphs = {True: root.graph, False: exported[False].graph}
    graphs[False].owning_module = root  # one root holds what both graphs use
    if root.code == exported[False].code:
        graphs[False] = graphs[True]
        guards[False] = guards[True]
    root.meta[GUARDS_META] = guards  # harden calls them once its passes are done (insert_input_guards)
    narrowed = {d.describe(): None for g in guards.values() for d in g.narrowed}
    return Capture(root=root, graphs=graphs, route="export", layers=modules, example=spec, note="; ".join(narrowed),
                   inputs=(args, kwargs))


def _guard(ep: "torch.export.ExportedProgram", gm: fx.GraphModule, model: nn.Module, args: tuple,
           kwargs: Dict[str, Any]) -> InputGuard:
    """The ``InputGuard`` of ``ep``'s graph (``input_guard``); marks ``gm``'s placeholders of
    tensor inputs with their position among the guard's arguments (``meta["fxharden_input"]``)."""
    leaves = pytree.tree_flatten_with_path((args, kwargs))[0]
    positional = _positional_names(model)
    names, sources = [], []
    for path, _ in leaves:
        first = path[1]
        if path[0].idx == 0:
            base = positional[first.idx] if first.idx < len(positional) else f"args[{first.idx}]"
        else:
            base = first.key
        rest = pytree.keystr(path[2:])
        names.append(base + rest)
        sources.append(f"L[{base!r}]{rest}")
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(leaves):
        raise ExportError(f"torch.export took {len(placeholders)} inputs of {type(model).__name__} for the "
                          f"{len(leaves)} of the example ({_describe(args, kwargs)}); pass the inputs as a tuple of "
                          "tensors or a dict of tensors by keyword, or harden with frontend='fx'")
    tensors = [isinstance(v, Tensor) for _, v in leaves]
    slot = 0
    for node, is_tensor in zip(placeholders, tensors):
        if is_tensor:
            node.meta["fxharden_input"] = slot
            slot += 1
    return guard_from_export(ep, names, [_dynamic_dims(v) for _, v in leaves], tensors, sources,
                             f"Hardened{type(model).__name__}")


def _adopt(root: fx.GraphModule, other: fx.GraphModule) -> None:
    """Make ``root`` hold what ``other``'s graph reads. Parameters and buffers are the model's
    own (the same objects in both); a tensor constant that differs is renamed into ``root``."""
    for i, node in enumerate(n for n in other.graph.nodes if n.op == "get_attr"):
        value = _get(other, node.target)
        if _get(root, node.target) is value:
            continue
        name = f"_fxharden_eval_{node.target.replace('.', '_')}_{i}"
        if isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
            root.register_buffer(name, value, persistent=False)
        elif isinstance(value, nn.Module):
            root.add_module(name, value)
        else:
            setattr(root, name, value)
        node.target = name
    other.recompile()


def _get(root: nn.Module, target: str) -> Optional[Any]:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
