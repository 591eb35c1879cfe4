"""Noise modules together: ``NoiseChain`` (several models on one weight) and the weight noise
of a layer as configured (``weight_noise_for``), and ``noise_off`` (every noise of a model off
for a while)."""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Tuple

from torch import Tensor, nn

from ..config import HardenConfig
from .models import NoiseModel
from .module import Noise

__all__ = ["NoiseChain", "noise_off", "weight_models", "weight_noise_for", "DRIFT_SUFFIX", "FAULTS_SUFFIX"]

DRIFT_SUFFIX, FAULTS_SUFFIX = ".drift", ".faults"
"""Site names of the drift and fault modules of a layer: ``<layer>.weight.drift``,
``<layer>.weight.faults`` (the configured weight noise is ``<layer>.weight``); distinct names
give them distinct random streams."""


@contextlib.contextmanager
def noise_off(model: nn.Module) -> Iterator[nn.Module]:
    """A block in which every ``Noise`` module of ``model`` (activations and weights, all
    models) has sigma 0; each module's full setting (``Noise.setting``) is restored when the
    block ends, however it ends. Use it wherever noise is switched off for a while (clean
    calibration, clean accuracy): restoring only the ``sigma`` buffer would leave the values
    the forward reads at 0."""
    saved = {m: m.setting() for m in model.modules() if isinstance(m, Noise)}
    try:
        for m in saved:
            m.set_sigma(0.0)
        yield model
    finally:
        for m, setting in saved.items():
            m.restore(setting)


class NoiseChain(nn.Sequential):
    """Several noise models on one weight, applied in order (drift, weight noise, faults):
    the interface of ``Noise`` that hardened layers use; each group's weight passes through
    every model's own draw (``Noise.draw_weights``)."""

    @property
    def site(self) -> str:
        return self[0].site

    @property
    def active(self) -> bool:
        return any(m.active for m in self)

    @property
    def groups(self) -> int:
        return max(m.groups for m in self if m.active) if self.active else 1

    def observe(self, x: Tensor) -> bool:
        return any([m.observe(x) for m in self])  # a list, not a generator: every member records

    def group_dim(self, x: Tensor) -> int:
        return next(m for m in self if m.active and m.groups == self.groups).group_dim(x)

    def draw_weights(self, w: Tensor) -> List[Tensor]:
        ws: List[Tensor] = [w] * self.groups
        for m in self:
            if m.active:
                ws = m.draw_weights(ws)
        return ws


def weight_models(config: HardenConfig) -> List[Tuple[str, NoiseModel, float]]:
    """``(site suffix, model, sigma)`` of each link of the weight-noise chain
    (``HardenConfig.weight_noise``), in the chain's order (the shorthands put drift first and
    stuck-at faults last: a stuck weight stays put)."""
    return [(link.suffix, link.model, link.sigma) for link in config.weight_noise]


def weight_noise_for(layer: str, config: HardenConfig, channel_dim: int = 0) -> Optional[nn.Module]:
    """The weight noise of layer (or functional site) ``layer``: one ``Noise`` per configured
    model (sites ``<layer>.weight``, ``.weight.drift``, ``.weight.faults``), chained;
    ``channel_dim``: the axis of its weights that indexes the output channels
    (``layers.output_axis``; per-channel models read it)."""
    noises = []
    for suffix, model, sigma in weight_models(config):
        noise = Noise(f"{layer}.weight{suffix}", config.noise.seed, kind=model)
        noise.set_sigma(sigma)
        noise.set_channel_dim(channel_dim)
        noises.append(noise)
    return noises[0] if len(noises) == 1 else NoiseChain(*noises)
