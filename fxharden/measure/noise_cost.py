"""The cost model of a noise allocation: the energy of an analog operation grows as its noise
shrinks, ``E ∝ 1/σ²`` (averaging k repeated executions divides the noise variance by k at k
times the energy), so a network whose site ``s`` runs ``ops_s`` operations per input at noise
``σ_s`` costs

    E = Σ_analog  ops_s / σ_s²  +  Σ_digital  ops_s / σ_d²

where a site kept digital (protected, σ = 0) is charged as if it ran analog at the noise
floor ``σ_d`` (``CostModel.digital_sigma``). ``ops_s``: the multiply-accumulates of a conv or
linear site (output elements × fan-in, per input image), and one operation per output
element at every other site (activation, pooling, residual add, input). σ is in the sweep's
units (absolute, or relative to each site's clean RMS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from ..core.harden import HardenedModule, noise_sites
from ..core.noise import Noise, noise_off
from ..core.noise_models import check_param

__all__ = ["CostModel", "site_ops", "allocation_cost"]


@dataclass(frozen=True)
class CostModel:
    """``E = Σ_analog ops_s/σ_s² + Σ_digital ops_s/σ_d²`` (module doc)."""

    digital_sigma: Optional[float] = None
    """σ_d: a protected (digital) site costs as much as its operations would at analog
    noise σ_d. ``None``: the smallest σ > 0 the per-layer profile measured."""

    def __post_init__(self) -> None:
        if self.digital_sigma is not None:
            check_param("digital_sigma", self.digital_sigma, open_low=True)


def site_ops(model: HardenedModule, x: Tensor) -> Dict[str, int]:
    """Operations per input image of every noise site (module doc), counted on one clean
    forward of ``x[:1]`` in eval mode: output elements at the noise modules, MACs at
    conv/linear layers (``fxharden.zoo.summary.count_flops``'s convention without bias). The
    model's noise strengths, mode and state (e.g. batch-norm statistics) are left as they were."""
    sites = noise_sites(model)
    ops: Dict[str, int] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, Noise) and m.site in sites:
            hooks.append(m.register_forward_hook(lambda mod, inp, out: _count(ops, mod.site, inp[0].numel())))
    for site in sites:
        layer = _layer(model, site)
        if isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
            hooks.append(layer.register_forward_hook(
                lambda mod, inp, out, site=site: _count(ops, site, _macs(mod, inp[0], out), replace=True)))
    was_training = model.training
    try:
        with noise_off(model), torch.inference_mode():
            model.eval()  # one image through a training-mode batch norm fails, and would move its statistics
            model(x[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {site: int(ops.get(site, 0)) for site in sites}


def _count(ops: Dict[str, int], site: str, n: int, replace: bool = False) -> None:
    """Record (a hook must return None: a value would replace the output)."""
    if replace or site not in ops:
        ops[site] = n


def _macs(layer: nn.Module, inp: Tensor, out: Tensor) -> int:
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return inp.numel() * (layer.out_channels // layer.groups) * layer.weight[0, 0].numel()
    return out.numel() * layer.weight[0].numel()  # fan-in: in_channels/groups × kernel, or in_features


def _layer(model: nn.Module, site: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(site)
    except AttributeError:
        return None


def allocation_cost(ops: Mapping[str, int], sigma: Mapping[str, float], digital_sigma: float) -> float:
    """``E`` of an allocation: ``sigma[s] > 0`` analog, ``sigma[s] == 0`` (or missing) digital."""
    total = 0.0
    for site, n in ops.items():
        s = float(sigma.get(site, 0.0))
        total += n / (s * s if s > 0 else digital_sigma * digital_sigma)
    return total if math.isfinite(total) else math.inf
