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
from torch import Tensor, fx, nn

from ..core.harden import HardenedModule, noise_sites
from ..core.noise import Noise, noise_off
from ..core.checks import check_param
from ..core.passes import CONTAINER
from ..core.quant import ActQuant

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
    conv/linear layers (``fxharden.zoo.summary.count_flops``'s convention without bias). Each
    site is one call of its layer (a graph node): a layer called twice is two sites, each
    counted on its own call. The model's noise strengths, mode and state (e.g. batch-norm
    statistics) are left as they were."""
    sites = noise_sites(model)
    was_training = model.training
    try:
        with noise_off(model), torch.inference_mode():
            model.eval()  # one image through a training-mode batch norm fails, and would move its statistics
            counter = _OpCounter(model)
            counter.run(x[:1])
    finally:
        model.train(was_training)
    return {site: int(counter.ops.get(site, 0)) for site in sites}


class _OpCounter(fx.Interpreter):
    """Runs the model's current graph and counts at each noise node: the MACs of the conv or
    linear node it follows (through the site's output quantizer), else its input's elements."""

    def __init__(self, model: HardenedModule) -> None:
        super().__init__(model, graph=model.graph)
        self.ops: Dict[str, int] = {}
        self.macs: Dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.op != "call_module":
            return out
        mod = self.module.get_submodule(str(n.target))
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            inp = self.env[n.args[0]] if isinstance(n.args[0], fx.Node) else n.args[0]
            self.macs[n] = _macs(mod, inp, out)
        elif isinstance(mod, Noise) and mod.site not in self.ops:
            source = _site_node(self.module, n)
            inp = self.env[n.args[0]]
            self.ops[mod.site] = self.macs.get(source, inp.numel())
        return out


def _site_node(model: nn.Module, noise_node: fx.Node) -> fx.Node:
    """The node whose output a noise node perturbs: back through the quantizers that
    ``harden`` put between them."""
    node = noise_node.args[0]
    while (isinstance(node, fx.Node) and node.op == "call_module"
           and str(node.target).startswith(f"{CONTAINER}.")
           and isinstance(model.get_submodule(str(node.target)), ActQuant)):
        node = node.args[0]
    return node


def _macs(layer: nn.Module, inp: Tensor, out: Tensor) -> int:
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return inp.numel() * (layer.out_channels // layer.groups) * layer.weight[0, 0].numel()
    return out.numel() * layer.weight[0].numel()  # fan-in: in_channels/groups × kernel, or in_features


def allocation_cost(ops: Mapping[str, int], sigma: Mapping[str, float], digital_sigma: float) -> float:
    """``E`` of an allocation: ``sigma[s] > 0`` analog, ``sigma[s] == 0`` (or missing) digital."""
    total = 0.0
    for site, n in ops.items():
        s = float(sigma.get(site, 0.0))
        total += n / (s * s if s > 0 else digital_sigma * digital_sigma)
    return total if math.isfinite(total) else math.inf
