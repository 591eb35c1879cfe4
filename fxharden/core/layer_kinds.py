"""The kind of a layer, known by its type: conv, linear, recurrent, activation, pooling, norm
(``module_kind``), whether its output is never negative (``module_unsigned``), and the layers
that are never sites (``is_passthrough``). timm's and transformers' layers count once their
library is imported; neither is imported here."""

from __future__ import annotations

import functools
import sys
from typing import Optional

from torch import nn

from .config import SiteKind

__all__ = ["module_kind", "module_unsigned", "is_passthrough"]

_ACT_TYPES: tuple = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.GLU, nn.Threshold,
)
_UNSIGNED_TYPES: tuple = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid)
_POOL_TYPES: tuple = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
)
_NORM_TYPES: tuple = (
    nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)
_CONV_TYPES: tuple = (nn.modules.conv._ConvNd,)
_LINEAR_TYPES: tuple = (nn.Linear, nn.Bilinear, nn.Embedding)
"""Layers whose output is a weighted sum (an embedding lookup is one-hot times its table)."""
_RECURRENT_TYPES: tuple = (nn.RNNBase, nn.RNNCellBase)

_TIMM_ACTIVATION_MODULES = ("timm.layers.activations", "timm.layers.activations_me")
_HF_ACTIVATIONS = "transformers.activations"
_HF_NOT_ACTIVATIONS = ("LinearActivation",)  # the identity: a site there would repeat the layer before it
_HF_CONV1D = ("transformers.pytorch_utils", "Conv1D")
"""GPT-2's linear layer (``x @ W + b`` with ``W`` stored transposed)."""


@functools.lru_cache(maxsize=None)
def _module_types(name: str) -> tuple:
    mod = sys.modules[name]
    return tuple(v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, nn.Module)
                 and v.__module__ == mod.__name__ and v.__name__ not in _HF_NOT_ACTIVATIONS)


def _activation_types() -> tuple:
    """torch's activation modules plus timm's and transformers'. A model can only hold theirs
    once the library is imported, so neither is imported here (they cost seconds and are
    optional)."""
    names = _TIMM_ACTIVATION_MODULES + (_HF_ACTIVATIONS,)
    extra = tuple(t for name in names if name in sys.modules for t in _module_types(name))
    return _ACT_TYPES + extra


def _linear_types() -> tuple:
    """torch's linear layers, plus transformers' ``Conv1D`` once transformers is imported."""
    hf = sys.modules.get(_HF_CONV1D[0])
    return _LINEAR_TYPES + ((getattr(hf, _HF_CONV1D[1]),) if hf is not None else ())


def module_kind(m: nn.Module) -> Optional[SiteKind]:
    """The kind of a layer known by its type (conv, linear, recurrent, activation, pooling, norm), else ``None``."""
    for types, kind in ((_CONV_TYPES, SiteKind.CONV), (_linear_types(), SiteKind.LINEAR),
                        (_RECURRENT_TYPES, SiteKind.RECURRENT),
                        (_activation_types(), SiteKind.ACTIVATION), (_POOL_TYPES, SiteKind.POOL),
                        (_NORM_TYPES, SiteKind.NORM)):
        if isinstance(m, types):
            return kind
    return None


def module_unsigned(m: nn.Module) -> bool:
    """Whether the layer's output is never negative (its quantizer takes the unsigned grid)."""
    return isinstance(m, _UNSIGNED_TYPES)


def is_passthrough(m: nn.Module) -> bool:
    """Layers that are never sites: identity, dropout, drop-path, reshapes."""
    return isinstance(m, (nn.Identity, nn.Dropout, nn.Flatten, nn.Unflatten)) or type(m).__name__ == "DropPath"
