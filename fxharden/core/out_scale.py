"""The output scale of the noise sites whose model reads it (``OutNoise``: the output noise of
an analog matrix-vector product): the layer's input range times the ``max|W|`` of its weight,
set on the site's noise module by ``harden`` (``Noise.set_out_scale``)."""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, fx, nn

from .config import HardenConfig, SiteKind
from .layers import output_axis
from .noise import Noise
from .sites import Site
from .weight_calls import weight_arg

__all__ = ["site_weight", "bind_out_scale"]

_LAYERS = (SiteKind.CONV, SiteKind.LINEAR)


def site_weight(site: Site, root: nn.Module) -> Optional[Tuple[Tensor, int]]:
    """``(weight, output-channel axis)`` of the conv/linear layer at ``site``: the layer's own
    ``weight``, or the parameter a weighted call reads (the export route's ATen calls);
    ``None`` when neither is found."""
    m = site.module
    w = getattr(m, "weight", None) if m is not None else None
    if isinstance(w, Tensor) and w.dim() >= 2:
        return w, output_axis(m)
    for call in site.weight_calls or ():
        arg = weight_arg(call.target)
        node = call.args[arg.weight] if arg is not None and len(call.args) > arg.weight else None
        if isinstance(node, fx.Node) and node.op == "get_attr":
            return fx.graph_module._get_attr(root, node.target), arg.out_axis
    return None


def bind_out_scale(noise: Noise, config: HardenConfig, site: str, kind: SiteKind,
                   weight: Optional[Tuple[Tensor, int]]) -> None:
    """Set the output scale of ``noise`` (at site ``site`` of ``kind``, after the layer whose
    ``(weight, output-channel axis)`` is ``weight``) where its model reads one.

    Raises:
        ValueError: the site is not a conv/linear output with a known weight, or no input range
            is known (neither the model's ``input_range`` nor a fixed DAC bound)."""
    model = noise.model
    if not model.needs_out_scale:
        return
    if kind not in _LAYERS or weight is None:
        why = f"its kind is {kind.value}" if kind not in _LAYERS else "its weight was not found"
        raise ValueError(
            f"the {model.name} noise model is the output noise of a conv/linear layer, but site {site!r} has no "
            f"layer weight ({why}): give noise to conv/linear outputs only, NoiseConfig(kinds={{SiteKind.CONV, "
            "SiteKind.LINEAR}), or leave this site out with SiteRules")
    input_range = getattr(model, "input_range", None)
    if input_range is None and config.dac is not None:
        input_range = config.dac.bound_for(site)  # the fixed bound of this layer's DAC (its own, or the common one)
    if input_range is None:
        raise ValueError(
            f"the {model.name} noise at site {site!r} scales with the layer's input range (as aihwkit's out_noise, "
            f"which needs an input range too): give it one, {type(model).__name__}(input_range=...), or configure a "
            "DAC with a fixed bound, HardenConfig(dac=ConverterConfig(bits=..., bound=...))")
    w, axis = weight
    trailing = w.dim() - 2 if kind is SiteKind.CONV else 0
    noise.set_out_scale(model.out_scale(w, float(input_range), axis, trailing))
