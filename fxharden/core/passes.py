"""Graph surgery only. Every insertion goes through ``insert_after`` (or, on a layer's input,
``insert_before_input``); a functional call whose weight is hardened is replaced by
``replace_call``."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple, Union

from torch import fx, nn

__all__ = ["insert_after", "insert_before_input", "replace_call", "insert_site_modules", "detach_bias", "bias_attr",
           "CONTAINER"]

CONTAINER = "fxharden"
"""Attribute of the hardened module that holds the inserted quantizers and noise modules."""


def insert_after(node: fx.Node, target: Union[str, Tuple[Callable, tuple]]) -> fx.Node:
    """Insert ``call_module(target)(node)`` right after ``node`` and reroute ``node``'s users
    to the new node (all users but the new node itself). ``target`` may also be
    ``(function, extra args)``: ``call_function(function)(node, *extra args)``."""
    graph = node.graph
    with graph.inserting_after(node):
        if isinstance(target, str):
            new = graph.call_module(target, (node,))
        else:
            new = graph.call_function(target[0], (node, *target[1]))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    return new


def insert_before_input(node: fx.Node, target: str) -> fx.Node:
    """Insert ``call_module(target)`` on ``node``'s first argument, for ``node`` only (other
    users of that argument keep the original value)."""
    arg = node.args[0]
    graph = node.graph
    with graph.inserting_before(node):
        new = graph.call_module(target, (arg,))
    node.replace_input_with(arg, new)
    return new


def replace_call(node: fx.Node, target: str) -> fx.Node:
    """Put ``call_module(target)(*args, **kwargs)`` in place of the call ``node``
    (``fn(*args, **kwargs)``) and reroute its users to it. ``input`` and ``weight`` given by
    keyword (``F.linear(input=x, weight=w)``) become the first two positional arguments."""
    kwargs = dict(node.kwargs)
    args = list(node.args)
    head = [args.pop(0) if args else kwargs.pop(name) for name in ("input", "weight")
            if args or name in kwargs]
    graph = node.graph
    with graph.inserting_before(node):
        new = graph.call_module(target, tuple(head + args), kwargs)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return new


def detach_bias(node: fx.Node) -> Optional[fx.Node]:
    """Set the bias argument of the call ``node`` (``fn(input, weight, bias, ...)``, or
    ``bias=`` by keyword) to ``None``; return the bias value it had (``None``: it had none)."""
    if len(node.args) > 2:
        bias = node.args[2]
        node.args = node.args[:2] + (None,) + node.args[3:]
    else:
        bias = node.kwargs.get("bias")
        if "bias" in node.kwargs:
            node.kwargs = {**node.kwargs, "bias": None}
    return bias if isinstance(bias, fx.Node) else None


def bias_attr(node: fx.Node, target: str) -> fx.Node:
    """A ``get_attr(target)`` node (a layer's bias, ``"fc.bias"``) right before ``node``."""
    with node.graph.inserting_before(node):
        return node.graph.get_attr(target)


def key_for(site: str, taken: Dict[str, object]) -> str:
    """A ``ModuleDict`` key for a dotted site name (dots are not allowed in keys)."""
    key = site.replace(".", "__") or "root"
    base, i = key, 1
    while key in taken:
        key, i = f"{base}__{i}", i + 1
    return key


def insert_site_modules(graph: fx.Graph, insertions: List[tuple], before: List[tuple] = (),
                        calls: List[tuple] = ()) -> None:
    """Apply ``(node, [dotted module targets...])`` insertions: each target is called on the
    node's output in order (e.g. quantizer then noise; a ``(function, extra args)`` target is
    a function call, ``insert_after``); ``before``: ``(node, target)`` pairs
    called on the node's first input (e.g. a DAC); ``calls``: ``(node, target)`` pairs whose
    module replaces the functional call ``node`` (``replace_call``, after the insertions, which
    it keeps). One ``lint`` at the end."""
    for node, target in before:
        if node.args and isinstance(node.args[0], fx.Node):
            insert_before_input(node, target)
    for node, targets in insertions:
        current = node
        for target in targets:
            current = insert_after(current, target)
    for node, target in calls:
        replace_call(node, target)
    graph.lint()


def ensure_container(root: nn.Module) -> nn.ModuleDict:
    """The ``ModuleDict`` under ``root.fxharden`` (created on first use)."""
    container = getattr(root, CONTAINER, None)
    if container is None:
        container = nn.ModuleDict()
        root.add_module(CONTAINER, container)
    return container
