"""Recurrent layers on the export route: the layer's ATen call runs the hardened layer.

torch.export records an ``nn.LSTM`` (``nn.GRU``, ``nn.RNN``, a cell) as one ATen call that
takes the input, the initial state (zeros made in the graph when none is given) and the
layer's parameters, after the layer's own argument handling (an unbatched input already
unsqueezed; torch.export cannot capture a ``PackedSequence`` input). That call is
replaced by a ``call_module`` of the hardened layer with the same input and state, and its
results are taken apart to the ATen call's own tuple, so the nodes around it (the user's code
and the layer's own) are untouched and the hardened layer computes exactly what the fx route's
does: quantized weights, weight noise, noise after every product and at its output.
"""

from __future__ import annotations

import operator
from typing import Dict, List, Optional

import torch
from torch import fx

__all__ = ["RECURRENT_CALLS", "recurrent_call", "call_hardened_recurrent"]

_aten = torch.ops.aten
RECURRENT_CALLS: Dict[object, str] = {
    **{op: "sequence" for op in (_aten.lstm.input, _aten.gru.input, _aten.rnn_tanh.input, _aten.rnn_relu.input)},
    **{op: "cell" for op in (_aten.lstm_cell.default, _aten.gru_cell.default, _aten.rnn_tanh_cell.default,
                             _aten.rnn_relu_cell.default)},
}
"""The ATen call of each recurrent layer and cell, by the form of its arguments: ``sequence``
``(input, hx, params, ...)``, ``cell`` ``(input, hx, w_ih, w_hh, ...)``."""


def recurrent_call(calls: List[fx.Node]) -> Optional[fx.Node]:
    """The one recurrent ATen call among a layer's calls (``meta["fxharden_calls"]``) that
    ``call_hardened_recurrent`` can replace (a layer's results used by index only), else ``None``."""
    found = [n for n in calls if n.op == "call_function" and n.target in RECURRENT_CALLS]
    if len(found) != 1:
        return None
    call = found[0]
    by_index = all(u.target is operator.getitem and isinstance(u.args[1], int) for u in call.users)
    return call if RECURRENT_CALLS[call.target] == "cell" or by_index else None


def call_hardened_recurrent(call: fx.Node, target: str) -> None:
    """Replace the recurrent ATen ``call`` (one ``recurrent_call`` returned) by a call of the
    module ``target`` (the hardened layer holding the same parameters), giving each user of
    the ATen call's results the same value."""
    form = RECURRENT_CALLS[call.target]
    graph = call.graph
    meta = {k: call.meta[k] for k in ("scope", "fxharden_layer", "nn_module_stack") if k in call.meta}
    with graph.inserting_before(call):
        x, hx = call.args[:2]
        state = tuple(hx) if isinstance(hx, (list, tuple)) else hx
        layer = graph.call_module(target, (x, state))
        layer.meta.update(meta)
    if form == "cell":  # a cell returns what its ATen call returns: (h, c) or h
        call.replace_all_uses_with(layer)
        graph.erase_node(call)
        return
    with graph.inserting_after(layer):
        out = graph.call_function(operator.getitem, (layer, 0))
    with graph.inserting_after(out):
        hidden = graph.call_function(operator.getitem, (layer, 1))
    parts = [out, hidden]
    if call.target is _aten.lstm.input:  # (output, h, c) from the layer's (output, (h, c))
        with graph.inserting_after(hidden):
            c = graph.call_function(operator.getitem, (hidden, 1))
        with graph.inserting_after(hidden):
            h = graph.call_function(operator.getitem, (hidden, 0))
        parts[1:] = [h, c]
    for node in dict.fromkeys([out, hidden, *parts]):
        node.meta.update(meta)
    for user in list(call.users):
        index = user.args[1]
        if "val" in user.meta:
            parts[index].meta["val"] = user.meta["val"]
        parts[index].meta.update({k: user.meta[k] for k in ("fxharden_output",) if k in user.meta})
        user.replace_all_uses_with(parts[index])
        graph.erase_node(user)
    params = [a for a in call.all_input_nodes if a.op == "get_attr"]
    graph.erase_node(call)
    for node in params:
        if not node.users:
            graph.erase_node(node)
