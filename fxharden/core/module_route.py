"""The module route: quantizers and noise on the layers inside parts torch.fx cannot trace.

A part of a model that torch.fx cannot capture (an opaque layer of ``trace.capture``, or the
whole model, e.g. a Hugging Face model whose forward returns a ``ModelOutput``) is still
built from known layers: linear, conv, embedding, activation and pooling modules. The module
route makes each of them (and each mixture-of-experts layer and router) a site of its own, named by its dotted path in the caller's model
(``model.layers.0.self_attn.q_proj``): the layer gets a ``LayerSite`` child
(``fxharden_site``) holding its output quantizer and noise (and ADC/DAC), which a forward
hook (and, for the DAC, a forward pre-hook) registered on the layer runs. The hooks are
instances of module-level classes and the ``LayerSite`` is a child module, so both travel
with ``state_dict``, ``pickle``, ``deepcopy`` and ``.to(device)``. The layer's weights are
hardened like every other layer's (``layers.harden_layer``).

What the route cannot see: functions called inside the part (attention matmuls, residual
adds, normalisation arithmetic written as tensor code) get no site; a graph frontend that
captures them (torch.export) is the way to reach those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from .config import SiteKind
from .converters import add_bias
from .layer_kinds import is_passthrough, module_kind
from .weight_calls import expert_weights, router_weight

__all__ = ["LayerSite", "LayerCandidate", "SITE_ATTR", "find_layers", "attach_site", "layer_sites"]

SITE_ATTR = "fxharden_site"
"""Attribute of a layer on the module route that holds its ``LayerSite``."""


class LayerSite(nn.Module):
    """What a layer on the module route runs around itself: on its output the quantizer,
    the noise and the ADC (in this order, as on the graph route); on its input the DAC.
    Each part is optional (``None``)."""

    def __init__(self, site: str, quant: Optional[nn.Module], noise: Optional[nn.Module],
                 adc: Optional[nn.Module] = None, dac: Optional[nn.Module] = None, bias_spatial: int = 0) -> None:
        super().__init__()
        self.site = site
        self.quant, self.noise, self.adc, self.dac = quant, noise, adc, dac
        self.bias_spatial = bias_spatial  # spatial dims of the layer output, for a bias added after the ADC

    def extra_repr(self) -> str:
        return f"site={self.site!r}"

    def forward(self, y: Any, bias: Optional[Tensor] = None) -> Any:
        """``y`` through quantizer, noise and ADC, then ``bias`` added (a layer that leaves its
        bias out for an ADC before the bias)."""
        if not isinstance(y, Tensor):
            return y  # known layers return tensors; anything else is passed on untouched
        for m in (self.quant, self.noise, self.adc):
            if m is not None:
                y = m(y)
        return y if bias is None else add_bias(y, bias, self.bias_spatial)


class _AfterLayer:
    """Forward hook: the layer's output through its ``LayerSite`` (and the layer's bias, when
    the layer leaves it out: ``ConverterConfig.before_bias``)."""

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        bias = module.bias if getattr(module, "bias_outside", False) else None
        return getattr(module, SITE_ATTR)(output, bias)


class _BeforeLayer:
    """Forward pre-hook: the layer's first input through its DAC."""

    def __call__(self, module: nn.Module, args: Tuple[Any, ...]) -> Any:
        dac = getattr(module, SITE_ATTR).dac
        if not args or not isinstance(args[0], Tensor):
            return None
        return (dac(args[0]),) + tuple(args[1:])


@dataclass
class LayerCandidate:
    """A known layer inside an opaque part."""

    path: str
    """Dotted path from the hardened model's root (``model.model.layers.0.mlp.up_proj``)."""
    name: str
    """The site name: the path in the caller's model (the root wrapper's prefix removed)."""
    kind: SiteKind
    part: str
    """The opaque part it belongs to."""


def find_layers(root: nn.Module, parts: Sequence[str], taken: set, strip: str = "") -> Dict[str, List[LayerCandidate]]:
    """The known layers inside each opaque part, in module order.

    A known layer (conv, linear, embedding, activation, pooling, norm; ``nn.MultiheadAttention``
    and a mixture-of-experts router as a whole, of kind ``OTHER``: its output is the routing,
    no noise site by default) is not entered; identity, dropout and drop-path are skipped; a
    mixture-of-experts layer holding 3-D expert matrices (``weight_calls.expert_weights``) is a linear
    site and is entered too (its activation is a site); every other module is entered. A module object is found once (shared modules, nested parts), and
    modules in ``taken`` (ids of layers the graph calls itself) are left to the graph.

    Args:
        root: the captured root.
        parts: dotted names of the opaque parts.
        taken: ids of modules that are graph sites already.
        strip: a path prefix that is not part of the caller's model (the root wrapper's).
    """
    seen = set(taken)
    out: Dict[str, List[LayerCandidate]] = {}

    def walk(module: nn.Module, path: str) -> Iterator[Tuple[str, nn.Module, SiteKind]]:
        for child_name, child in module.named_children():
            p = f"{path}.{child_name}" if path else child_name
            if id(child) in seen:
                continue
            seen.add(id(child))
            kind = module_kind(child)
            if kind is None and (isinstance(child, nn.MultiheadAttention) or router_weight(child)):
                kind = SiteKind.OTHER
            if kind is None and expert_weights(child):
                yield p, child, SiteKind.LINEAR  # and its activation inside, below
                yield from walk(child, p)
            elif kind is not None:
                yield p, child, kind
            elif not is_passthrough(child):
                yield from walk(child, p)

    for part in sorted(parts, key=lambda p: p.count(".")):  # outer parts first: they own nested ones
        found = []
        for path, _, kind in walk(root.get_submodule(part), part):
            name = path[len(strip) + 1:] if strip and path.startswith(f"{strip}.") else path
            found.append(LayerCandidate(path, name, kind, part))
        out[part] = found
    return out


def attach_site(layer: nn.Module, site: LayerSite) -> None:
    """Put ``site`` around ``layer``: its child ``fxharden_site`` and the hooks that run it."""
    layer.add_module(SITE_ATTR, site)
    layer.register_forward_hook(_AfterLayer())
    if site.dac is not None:
        layer.register_forward_pre_hook(_BeforeLayer())


def layer_sites(module: nn.Module) -> List[LayerSite]:
    """The ``LayerSite`` modules under ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, LayerSite)]
