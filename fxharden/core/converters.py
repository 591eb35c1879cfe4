"""Data converters at conv/linear sites: the ADC/DAC quantizers ``harden`` builds from a
``ConverterConfig``, and the ADC before the digital bias (``before_bias``).

With ``before_bias`` a layer computes its analog product ``W x`` without its bias; the site's
output modules (noise, ADC) act on that, and ``add_bias`` adds the bias after them:
``y = ADC(W x) + b``. The layer is split where the bias is an argument of its call: a
``nn.Linear``/``nn.Conv1d/2d/3d`` module (its class is swapped for the hardened one, which then
leaves its bias out), or a ``F.linear``/``F.conv*`` call (torch.fx) or ``aten.linear``/
``aten.conv*`` call (torch.export), whose bias argument moves behind the ADC. Any other layer
with a bias is refused (``ConverterError``), never quantized after its bias.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .layers import HARDENED_LAYERS, HardenedParameters, can_harden_weights, harden_layer
from .noise_models import ConverterConfig, RangeCalibration
from .passes import bias_attr, detach_bias
from .quant import ActQuant

__all__ = ["converter", "add_bias", "split_layer_bias", "split_site_bias", "check_converter_config", "ConverterError"]

_aten = torch.ops.aten
_BIAS_CALLS = {F.linear: 0, F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, _aten.linear.default: 0,
               _aten.conv1d.default: 1, _aten.conv2d.default: 2, _aten.conv3d.default: 3}
"""Calls ``fn(input, weight, bias, ...)`` whose bias can move behind the ADC: their number of
spatial dimensions (0 for linear maps)."""


class ConverterError(ValueError):
    """A converter setting that ``harden`` cannot build for this model (the message says where
    and what to do instead)."""


def converter(cfg: ConverterConfig, site: str = "") -> ActQuant:
    """An ADC/DAC at ``site``: the one quantizer with the converter's grid and bound (fixed,
    calibrated by max or percentile, learned)."""
    percentile = cfg.percentile if cfg.calibration is RangeCalibration.PERCENTILE else None
    return ActQuant(cfg.bits, cfg.signed, step=cfg.step_for(site), learn=cfg.learn_range,
                    calibration_steps=cfg.calibration_steps, converter=True, grid_levels=cfg.grid_levels,
                    percentile=percentile)


def add_bias(y: Tensor, bias: Tensor, spatial: int) -> Tensor:
    """``y + bias`` with the bias along the channel dimension of a layer output that has
    ``spatial`` trailing spatial dimensions (0: a linear layer's last dimension)."""
    return y + bias.to(y.dtype).view(-1, *([1] * spatial))


def _module_spatial(layer: nn.Module) -> Optional[int]:
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return len(layer.kernel_size)
    if isinstance(layer, nn.Linear):
        return 0
    return None


def _refuse(site: str, why: str) -> ConverterError:
    return ConverterError(
        f"adc=ConverterConfig(before_bias=True): the bias of layer {site!r} cannot be moved behind its ADC: {why}. "
        "Use before_bias=False for this model (y = ADC(W x + b)), or leave this layer without an ADC with "
        f"rules=SiteRules(by_name={{{site!r}: None}}), or give the model an nn.Linear/nn.Conv1d/2d/3d there")


def split_layer_bias(layer: nn.Module, site: str) -> Tuple[Optional[nn.Module], int]:
    """The layer ``layer`` at ``site`` made to leave its bias out (swapped for its hardened
    class when it is a plain one): ``(layer to use, spatial dims)``, or ``(None, 0)`` when it has
    no bias (nothing to move).

    Raises:
        ConverterError: the layer adds its bias in a way that cannot be taken out.
    """
    if getattr(layer, "bias", None) is None:
        return None, 0
    spatial = _module_spatial(layer)
    swappable = isinstance(layer, HARDENED_LAYERS) or can_harden_weights(layer)
    if spatial is None or isinstance(layer, HardenedParameters) or not swappable:
        raise _refuse(site, f"{type(layer).__name__} adds its bias inside its own forward")
    if not isinstance(layer, HARDENED_LAYERS):
        layer = harden_layer(layer, None, None)
    layer.bias_outside = True
    return layer, spatial


def split_site_bias(root: nn.Module, node: fx.Node, site: str, swap) -> Optional[Tuple[fx.Node, int]]:
    """Take the bias out of the layer call ``node`` (site ``site``) for an ADC before the bias:
    ``(graph value of the bias, spatial dims)`` for ``add_bias``, or ``None`` when the layer has
    no bias. ``swap(path, layer)`` puts a swapped layer in place.

    Raises:
        ConverterError: the call is not one whose bias can be taken out.
    """
    if node.op == "call_module":
        layer, spatial = split_layer_bias(root.get_submodule(str(node.target)), site)
        if layer is None:
            return None
        swap(str(node.target), layer)
        return bias_attr(node, f"{node.target}.bias"), spatial
    if node.op == "call_function" and node.target in _BIAS_CALLS:
        bias = detach_bias(node)
        return None if bias is None else (bias, _BIAS_CALLS[node.target])
    what = getattr(node.target, "__name__", str(node.target))
    raise _refuse(site, f"its output is computed by {what}, not by a linear or conv call that takes the bias "
                        "as an argument")


def check_converter_config(config, sites: Iterable[str]) -> None:
    """Refuse converter settings that do not fit the model: ``before_bias`` on a DAC, and
    ``bounds`` keys that name no converter site (with close matches).

    Raises:
        ConverterError: the message names the setting and what to do.
    """
    if config.dac is not None and config.dac.before_bias:
        raise ConverterError("dac=ConverterConfig(before_bias=True): before_bias places an ADC before the layer's "
                             "digital bias; a DAC sits on the layer's input. Set it on adc=ConverterConfig(...)")
    sites = list(sites)
    for role in ("adc", "dac"):
        cfg = getattr(config, role)
        for name, _ in cfg.bounds if cfg is not None else ():
            if name not in sites:
                close = difflib.get_close_matches(name, sites, n=3)
                hint = f"; close matches: {', '.join(map(repr, close))}" if close else ""
                raise ConverterError(f"{role}=ConverterConfig(bounds=...) names {name!r}, which has no {role.upper()}"
                                     f" (converter sites: conv/linear layers with noise or quantized weights: "
                                     f"{', '.join(map(repr, sites[:8]))}{' ...' if len(sites) > 8 else ''}){hint}")
