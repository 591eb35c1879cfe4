"""THE noise module: Gaussian noise on activations or weights, forward only.

Sigma lives in a buffer (changing it needs no retrace; it travels with ``state_dict``),
randomness comes from a per-module ``torch.Generator`` so a seeded run repeats exactly.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .config import WeightNoiseKind, check_sigma

__all__ = ["Noise", "SigmaLike"]

SigmaLike = Union[float, Sequence[float], Tensor]


class Noise(nn.Module):
    """Forward-only noise: the gradient passes through unchanged.

    ``kind=ADDITIVE``: ``x + sigma * N(0, 1)`` (activations; Noisy Machines on weights).
    ``kind=LOGNORMAL``: ``x * exp(sigma * N(0, 1))`` (BayesFT drift on weights).

    Sigma is either a scalar or a vector of ``R`` values. With ``R`` values the batch (dim 0)
    is split into ``R`` equal groups and group ``r`` gets ``sigma[r]``: one forward pass then
    measures ``R`` noise settings (used by the sweep to batch sigma points and repeats).

    Args:
        site: dotted name of the layer this module follows.
        seed: seed of this module's generator.
        kind: the noise model.
    """

    def __init__(self, site: str, seed: int = 0, kind: WeightNoiseKind = WeightNoiseKind.ADDITIVE) -> None:
        super().__init__()
        if kind is WeightNoiseKind.NONE:
            raise ValueError("Noise needs an additive or log-normal kind")
        self.site, self.seed, self.kind = site, int(seed), kind
        self.register_buffer("sigma", torch.tensor(0.0))
        self._active = False  # mirror of (sigma != 0).any(), read without a device sync
        self._generator: Optional[torch.Generator] = None

    def extra_repr(self) -> str:
        return f"site={self.site!r}, kind={self.kind.value}, seed={self.seed}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "sigma"
        if key in state_dict and state_dict[key].shape != self.sigma.shape:
            self.sigma = torch.empty_like(state_dict[key], device=self.sigma.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._active = bool((self.sigma != 0).any())

    def set_sigma(self, sigma: SigmaLike) -> None:
        """Set the noise strength: a float, or one float per batch group (see class doc)."""
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            values = torch.tensor(check_sigma(sigma))
        else:
            values = torch.as_tensor(sigma, dtype=torch.float32).detach().cpu().flatten()
            for v in values.tolist():
                check_sigma(v)
        self._active = bool((values != 0).any())
        self.sigma = values.to(device=self.sigma.device, dtype=torch.float32)

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed``."""
        self.seed = int(seed)
        self._generator = None

    def _gen(self, device: torch.device) -> torch.Generator:
        gen = self._generator
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._generator = gen
        return gen

    def forward(self, x: Tensor) -> Tensor:
        if not self._active or not isinstance(x, Tensor) or not x.is_floating_point():
            return x
        eps = torch.randn(x.shape, generator=self._gen(x.device), device=x.device, dtype=x.dtype)
        sigma = self.sigma.to(x.dtype)
        if sigma.dim() == 1 and sigma.numel() > 1:
            groups = sigma.numel()
            if x.dim() == 0 or x.shape[0] % groups:
                raise ValueError(
                    f"noise site {self.site!r} has {groups} sigma values but the batch of "
                    f"{tuple(x.shape)} does not split into {groups} equal groups; "
                    "use a batch size divisible by the number of sigma values"
                )
            sigma = sigma.view((groups,) + (1,) * x.dim())
            shape = x.shape
            x, eps = x.view((groups, -1) + shape[1:]), eps.view((groups, -1) + shape[1:])
            return self._inject(x, eps, sigma).view(shape)
        return self._inject(x, eps, sigma.reshape(()))

    def _inject(self, x: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
        if self.kind is WeightNoiseKind.ADDITIVE:
            return torch.addcmul(x, eps, sigma)
        # multiplicative drift, forward only: x * exp(l) = x + x * (exp(l) - 1)
        drift = eps.mul_(sigma).exp_().sub_(1).mul_(x.detach())
        return x + drift
