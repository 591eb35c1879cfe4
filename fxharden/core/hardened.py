"""The hardened model: a ``GraphModule`` with one graph per mode, its report, and pickling.

``harden`` builds it (``build_hardened``); ``pickle``/``torch.save`` of a whole hardened
model round-trips (``HardenedModule.__reduce__``): each mode's graph is stored as a plain
``GraphModule`` over the shared submodules and rebuilt into a ``HardenedModule`` on load.

Its ``forward`` has the plain model's signature (``fxharden.core.signature``): the same
argument names, defaults and keyword use, whichever frontend captured the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import fx, nn

from .config import HardenConfig
from .counter_rng import compiling
from .groups import ensure_batch_dims
from .signature import adapt_forward

__all__ = ["SiteInfo", "HardenReport", "HardenedModule", "build_hardened"]


@dataclass(frozen=True)
class SiteInfo:
    """One row of the harden report (what ``fxharden inspect`` prints)."""

    name: str
    kind: str
    op: str
    quantizer: str
    noise: bool
    note: str = ""
    route: str = "graph"
    """How the site was reached: ``"graph"`` (a node of the torch.fx graph), ``"export"`` (a node
    of the torch.export graph, ``fxharden.core.export``) or ``"module"`` (a layer inside a part
    torch.fx cannot trace, hardened by hooks: ``fxharden.core.module_route``)."""


@dataclass(frozen=True)
class HardenReport:
    """What ``harden`` did: every site, and what it left out and why."""

    sites: tuple
    opaque: Dict[str, str] = field(default_factory=dict)
    """Submodules that could not be traced and were treated as one layer, with the reason."""
    skipped: Dict[str, str] = field(default_factory=dict)
    """Layers and calls whose weights were not quantized/perturbed, and every parameter (and
    buffer used as a weight) left as it is, with the reason."""
    frontend: str = "fx"
    """How the graph was captured: ``"fx"`` (torch.fx, with the module route inside opaque
    parts) or ``"export"`` (torch.export)."""
    note: str = ""
    """Why, when ``Frontend.AUTO`` chose."""
    quant_warnings: Dict[str, str] = field(default_factory=dict)
    """Sites whose activation quantizer (or ADC/DAC) does not fit the data calibration saw,
    with what is wrong: at most ``FEW_LEVELS`` levels used (the step erases the signal) or
    more than ``CLIP_FRACTION`` of the values clipped (``fxharden.core.quant``). Filled by
    ``calibrate_quantizers`` (which ``calibrate_noise`` and ``sweep`` run);
    empty before calibration."""
    ledger: Dict[str, str] = field(default_factory=dict)
    """Every parameter of the model by its dotted name: ``"hardened at <site>"`` (quantized
    and/or perturbed there; ``"... (with its layer)"`` for a hardened layer's bias), or why it is
    used as it is (also listed in ``skipped``). See ``fxharden.core.ledger``."""

    @property
    def noise_sites(self) -> List[str]:
        return [s.name for s in self.sites if s.noise]


class HardenedModule(fx.GraphModule):
    """A ``GraphModule`` that keeps one graph per mode when the model's code differs between
    ``train()`` and ``eval()`` (e.g. ``F.dropout(x, p, self.training)``), so both modes
    behave like the original model. ``meta['fxharden']`` holds the config and report."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not compiling():  # batch groups run eagerly only (the noise modules refuse them compiled)
            ensure_batch_dims(self, args, kwargs)  # only does work when some site has several sigma groups
        return super().__call__(*args, **kwargs)

    def recompile(self) -> Any:
        code = super().recompile()
        self._adapt_forward()
        return code

    def _adapt_forward(self) -> None:
        """Put the plain model's signature (``meta["fxharden_call"]``, a ``CallSpec``) in front
        of the generated ``forward``."""
        spec = self.__dict__.get("meta", {}).get("fxharden_call")
        cls = type(self)
        raw = getattr(cls.forward, "_fxharden_raw", cls.forward)
        cls.forward = adapt_forward(spec, raw, cls.__name__) if spec is not None else raw

    def __deepcopy__(self, memo: Dict[int, Any]) -> "HardenedModule":
        res = super().__deepcopy__(memo)
        res._adapt_forward()  # the copy's class is new: its forward is the generated one
        return res

    def train(self, mode: bool = True) -> "HardenedModule":
        super().train(mode)
        graphs = self.meta.get("fxharden_graphs") if hasattr(self, "meta") else None
        if graphs is not None and graphs[mode] is not self.graph:
            self._use_graph(graphs[mode])
        return self

    def _use_graph(self, graph: fx.Graph) -> None:
        """Make ``graph`` the current one. The code generated for each graph is kept and
        reused, so switching modes back and forth gives the same ``forward`` each time
        (``torch.compile`` then compiles once per mode instead of at every switch)."""
        cache = self.__dict__.setdefault("_fxharden_code", {})

        def keep(g: fx.Graph) -> None:
            cache[id(g)] = (g, type(self).forward, {k: self.__dict__[k] for k in _CODE_FIELDS if k in self.__dict__})

        if cache.get(id(self._graph), (None,))[0] is not self._graph:
            keep(self._graph)
        cached = cache.get(id(graph))
        if cached is None or cached[0] is not graph:
            self.graph = graph  # generates the code
            keep(graph)
            return
        _, forward, fields = cached
        self._graph = graph
        graph.owning_module = self
        type(self).forward = forward
        self.__dict__.update(fields)

    @property
    def harden_config(self) -> HardenConfig:
        return self.meta["fxharden"]["config"]

    @property
    def report(self) -> HardenReport:
        return self.meta["fxharden"]["report"]

    def __reduce__(self):
        graphs = self.meta.get("fxharden_graphs") or {True: self.graph, False: self.graph}
        train_gm = fx.GraphModule(self, graphs[True])  # shares this module's submodules
        eval_gm = None if graphs[False] is graphs[True] else fx.GraphModule(self, graphs[False])
        meta = {k: v for k, v in self.meta.items() if k != "fxharden_graphs"}
        return (_unpickle, (train_gm, eval_gm, meta, self.training, type(self).__name__))


_CODE_FIELDS = ("_code", "_lineno_map", "_prologue_start", "_in_spec", "_out_spec")
"""What ``GraphModule.recompile`` stores on the instance besides ``forward``."""


def _copy_targets(root: nn.Module, hm: nn.Module, graph: fx.Graph) -> None:
    """Copy into ``hm`` what ``graph`` references but the graph ``hm`` was built from does
    not (e.g. tensor constants recorded only while tracing the other mode)."""
    for node in graph.nodes:
        if node.op not in ("get_attr", "call_module"):
            continue
        *path, attr = str(node.target).split(".")
        src, dst = root, hm
        for part in path:
            src = getattr(src, part)
            if not hasattr(dst, part):
                dst.add_module(part, nn.Module())
            dst = getattr(dst, part)
        if not hasattr(dst, attr):
            value = getattr(src, attr)
            if isinstance(value, nn.Module):
                dst.add_module(attr, value)
            elif isinstance(value, nn.Parameter):
                dst.register_parameter(attr, value)
            elif isinstance(value, torch.Tensor):
                dst.register_buffer(attr, value)
            else:
                setattr(dst, attr, value)


def build_hardened(root: nn.Module, graphs: Dict[bool, fx.Graph], training: bool, class_name: str,
                   meta: Dict[str, Any]) -> HardenedModule:
    """A ``HardenedModule`` over ``root``'s submodules with ``graphs[True]`` for train mode and
    ``graphs[False]`` for eval mode (one object when they agree), in mode ``training``."""
    hm = HardenedModule(root, graphs[training], class_name=class_name)
    hm.meta.update(meta)
    hm._adapt_forward()
    if graphs[True] is not graphs[False]:
        hm.meta["fxharden_graphs"] = graphs
        _copy_targets(root, hm, graphs[not training])
    hm.train(training)
    return hm


def _unpickle(train_gm: fx.GraphModule, eval_gm: Optional[fx.GraphModule], meta: Dict[str, Any], training: bool,
              class_name: str) -> HardenedModule:
    graphs = {True: train_gm.graph, False: (eval_gm or train_gm).graph}
    root = train_gm
    if eval_gm is not None:
        _copy_targets(eval_gm, train_gm, eval_gm.graph)  # one root holding what either graph uses
    return build_hardened(root, graphs, training, class_name, meta)
