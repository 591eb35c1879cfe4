"""Hardened versions of the layers of Hugging Face transformers that are not torch layers.

Imported only when a model holds one of them (``layers._OPTIONAL_SWAPS``), so transformers
is never imported by fxharden itself.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.pytorch_utils import Conv1D

from .layers import _HardenedWeight

__all__ = ["HardenedConv1D"]


class HardenedConv1D(_HardenedWeight, Conv1D):
    """GPT-2's linear layer ``x @ W + b`` (``W`` of shape ``(in, out)``), weights hardened
    per tensor like ``nn.Linear``."""

    def forward(self, x: Tensor) -> Tensor:
        def apply(x: Tensor, w: dict) -> Tensor:
            out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), w["weight"])
            return out.view(x.size()[:-1] + (self.nf,))

        return self._grouped(x, apply)
