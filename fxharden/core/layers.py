"""Conv and linear layers whose weights pass through the quantizer and weight noise.

A hardened layer is the original layer object's class swapped for a subclass that
transforms its weight before use: the parameters, their names in ``state_dict`` and
``isinstance`` checks stay the same; the transform's modules are added as children.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .noise import Noise
from .quant import WeightQuant

__all__ = ["HARDENED_LAYERS", "harden_layer", "can_harden_weights"]


class _HardenedWeight:
    """Mixin: ``hardened_weight()`` = weight noise(weight quantizer(weight))."""

    weight: Tensor
    weight_quant: Optional[WeightQuant]
    weight_noise: Optional[Noise]

    def hardened_weight(self) -> Tensor:
        w = self.weight
        if self.weight_quant is not None:
            w = self.weight_quant(w)
        if self.weight_noise is not None:
            w = self.weight_noise(w)
        return w


class HardenedConv1d(_HardenedWeight, nn.Conv1d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.hardened_weight(), self.bias)


class HardenedConv2d(_HardenedWeight, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.hardened_weight(), self.bias)


class HardenedConv3d(_HardenedWeight, nn.Conv3d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.hardened_weight(), self.bias)


class HardenedLinear(_HardenedWeight, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.hardened_weight(), self.bias)


_SWAP = {
    nn.Conv1d: HardenedConv1d,
    nn.Conv2d: HardenedConv2d,
    nn.Conv3d: HardenedConv3d,
    nn.Linear: HardenedLinear,
    nn.modules.linear.NonDynamicallyQuantizableLinear: HardenedLinear,
}
HARDENED_LAYERS = tuple(set(_SWAP.values()))


def can_harden_weights(module: nn.Module) -> bool:
    """Whether ``module``'s weights can be quantized/perturbed: the plain torch layers only
    (a subclass with its own ``forward``, e.g. timm's ``StdConv2d``, would lose it)."""
    return type(module) in _SWAP


def harden_layer(module: nn.Module, quant: Optional[WeightQuant], noise: Optional[Noise]) -> nn.Module:
    """Return a hardened layer sharing ``module``'s parameters, buffers and hooks."""
    cls = _SWAP[type(module)]
    new = cls.__new__(cls)
    new.__dict__ = module.__dict__.copy()
    new._modules = dict(module._modules)
    new.weight_quant = quant
    new.weight_noise = noise
    return new
