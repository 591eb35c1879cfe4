"""Output noise of an analog matrix-vector product (aihwkit's ``out_noise``), as a noise model
on the activation side, at conv/linear outputs.

aihwkit-lightning (``nn/modules/torch_utils/torch_linear.py``, ``TorchLinear.linear``, in
training mode, with the input range enabled, which it requires for output noise) adds to each
tile's product ``x @ W.T``, before the digital bias,

    ``out_noise / sqrt(n_tiles) · input_range · w_max · ε``,

``w_max = max_j |W_ij|`` of each output channel ``i`` (``out_noise_per_channel=True``) or of the
whole matrix, ``input_range`` the tile's (static: learned or calibrated) input range, the range
of its DAC. With the layer on one tile (``mapping.max_input_size`` 0 or at least the layer's
input size, ``n_tiles = 1``) this is ``OutNoise``: ``y = x + σ · input_range · w_max · ε`` with
``σ = out_noise``. The bias is added after the noise there and before it here: Gaussian noise of
fixed standard deviation added on either side of a constant gives the same output distribution
(the order matters only where a nonlinear step, an ADC, sits between them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, FrozenSet, Optional

from torch import Tensor

from .models import NoiseModel, Role, SigmaUnits, register

__all__ = ["OutNoise"]


@register
@dataclass(frozen=True)
class OutNoise(NoiseModel):
    """``y = x + σ · input_range · w_max · ε`` at a conv/linear output: the output noise of an
    analog matrix-vector product, ``σ`` in units of the product's full scale (aihwkit's
    ``IOParameters.out_noise``; module doc for the peer's formula). ``w_max`` is ``max|W|`` of
    each output channel (``per_channel``, ``out_noise_per_channel``) or of the layer's weight;
    ``input_range`` is ``input_range`` if given, else the bound of the configured DAC. The
    site's scale ``input_range · w_max`` is set when the model is hardened
    (``Noise.set_out_scale``), from the weight as it is then (re-harden after training)."""

    name: ClassVar[str] = "out_noise"
    acts_on: ClassVar[FrozenSet[Role]] = frozenset({Role.ACTIVATIONS})
    units: ClassVar[SigmaUnits] = SigmaUnits.OUT_SCALE
    consumes_draw: ClassVar[bool] = True
    needs_out_scale: ClassVar[bool] = True
    per_channel: bool = False
    """``w_max`` of each output channel (a row of a linear weight, a filter of a convolution),
    not of the whole weight."""
    input_range: Optional[float] = None
    """The range of the layer's inputs (aihwkit's input range: inputs are clipped to
    ``[-input_range, input_range]``), > 0; ``None``: the bound of ``HardenConfig.dac``, which
    must then be set with a fixed bound."""

    def __post_init__(self) -> None:
        r = self.input_range
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r)
                              or r <= 0):
            raise ValueError(f"OutNoise input_range must be a finite number > 0, or None (the DAC's bound), got {r!r}")

    def term(self, x, eps, sigma, rms, ops, group_dim=None):
        return ops.mul(eps, rms), sigma

    def out_scale(self, weight: Tensor, input_range: float, channel_dim: int = 0, trailing: int = 0) -> Tensor:
        """The site's scale ``input_range · w_max`` from the layer's ``weight`` (its output
        channels along ``channel_dim``): one value, or with ``per_channel`` one per channel,
        shaped ``(C, 1, ..., 1)`` with ``trailing`` ones (the output dims after the channel:
        2 for a 2-d convolution, 0 for a linear layer)."""
        a = weight.detach().abs().float()
        if not self.per_channel:
            return a.amax() * float(input_range)
        rows = a.movedim(channel_dim, 0).flatten(1).amax(1)
        return rows.view(-1, *([1] * trailing)) * float(input_range)
