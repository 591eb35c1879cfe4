"""THE noise module: Gaussian noise on activations or weights, forward only.

Sigma lives in a buffer (changing it needs no retrace; it travels with ``state_dict``),
randomness comes from a per-module ``torch.Generator`` whose seed is derived from the base
seed and the site's name (``stream_seed``), so a seeded run repeats exactly and no two sites
ever share a stream, whatever the base seeds.

Batch groups: sigma may hold ``R`` values, one per group of the batch (the sweep measures
``R`` noise settings in one forward pass). Group ``r`` is the ``r``-th of ``R`` equal slices
of the batch dimension at the site, which ``fxharden.groups.locate_batch_dims`` finds (it is
not always dim 0: sequence-first layers put the batch in dim 1). On activations every group
gets its own draw anyway; on weights (``draw_weights``) each group gets its own perturbed
copy of the weight, one draw per group. All randomness is drawn by ``_draw``.
"""

from __future__ import annotations

import hashlib
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .config import WeightNoiseKind, check_sigma

__all__ = ["Noise", "SigmaLike", "stream_seed", "GroupDimError"]

SigmaLike = Union[float, Sequence[float], Tensor]


def stream_seed(seed: int, site: str) -> int:
    """The seed of site ``site``'s generator under base seed ``seed``: a hash of both, so the
    streams of different sites (and of one site under different base seeds) never coincide."""
    return int(hashlib.sha256(f"{int(seed)}/{site}".encode()).hexdigest()[:15], 16)


class GroupDimError(ValueError):
    """A per-group sigma was used at a site whose batch dimension is not known."""


class Noise(nn.Module):
    """Forward-only noise: the gradient passes through unchanged.

    ``kind=ADDITIVE``: ``x + sigma * N(0, 1)`` (activations; Noisy Machines on weights).
    ``kind=LOGNORMAL``: ``x * exp(sigma * N(0, 1))`` (BayesFT drift on weights).

    Sigma is a scalar or one value per batch group (see the module doc). Noise is generated
    and added in float32 (or float64) at the site: under bf16/fp16 autocast the site's output
    is upcast to float32, so small noise on large activations is not rounded away.

    Args:
        site: dotted name of the layer this module follows (``<layer>.weight`` on weights).
        seed: base seed; the generator is seeded with ``stream_seed(seed, site)``.
        kind: the noise model.
        relative: additive only: the standard deviation is ``sigma * max|x|`` of the tensor
            the noise is added to (Noisy Machines' convention for weights).
    """

    def __init__(self, site: str, seed: int = 0, kind: WeightNoiseKind = WeightNoiseKind.ADDITIVE,
                 relative: bool = False) -> None:
        super().__init__()
        if kind is WeightNoiseKind.NONE:
            raise ValueError("Noise needs an additive or log-normal kind")
        if relative and kind is not WeightNoiseKind.ADDITIVE:
            raise ValueError("relative noise is defined for the additive kind only")
        self.site, self.seed, self.kind, self.relative = site, int(seed), kind, bool(relative)
        self.register_buffer("sigma", torch.tensor(0.0))
        self._active = False  # mirror of (sigma != 0).any(), read without a device sync
        self._generator: Optional[torch.Generator] = None
        self.batch_dim: Optional[int] = 0
        """Batch dimension of the tensors at this site: 0 for a module used on its own; inside
        a hardened model ``locate_batch_dims`` sets it (``None``: the site has none)."""
        self._record: Optional[List[tuple]] = None  # shapes seen while locating batch dims

    def extra_repr(self) -> str:
        rel = ", relative" if self.relative else ""
        return f"site={self.site!r}, kind={self.kind.value}{rel}, seed={self.seed}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_generator"], state["_record"] = None, None  # a generator is restarted from the seed
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "sigma"
        if key in state_dict and state_dict[key].shape != self.sigma.shape:
            self.sigma = torch.empty_like(state_dict[key], device=self.sigma.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._active = bool((self.sigma != 0).any())

    @property
    def active(self) -> bool:
        """Whether any group has sigma != 0."""
        return self._active

    @property
    def groups(self) -> int:
        """Number of batch groups (1 for a scalar sigma)."""
        return self.sigma.numel() if self.sigma.dim() == 1 else 1

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
        """Restart the random stream from base seed ``seed``."""
        self.seed = int(seed)
        self._generator = None

    def _gen(self, device: torch.device) -> torch.Generator:
        gen = self._generator
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(stream_seed(self.seed, self.site))
            self._generator = gen
        return gen

    def _draw(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """Standard normal numbers: the one place that consumes this site's random stream."""
        return torch.randn(tuple(shape), generator=self._gen(device), device=device, dtype=dtype)

    # ------------------------------------------------------------------ batch groups

    def observe(self, x: Tensor) -> bool:
        """While batch dims are located: record the shape of ``x`` (a batched tensor at this
        site) and return True; otherwise return False."""
        if self._record is None:
            return False
        if isinstance(x, Tensor):
            self._record.append(tuple(x.shape))
        return True

    def group_dim(self, x: Tensor) -> int:
        """The dimension of ``x`` that holds the batch, checked to split into the groups."""
        dim, groups = self.batch_dim, self.groups
        if dim is None or dim >= x.dim():
            raise GroupDimError(
                f"noise site {self.site!r} has {groups} sigma values (one per batch group) but the batch "
                f"dimension of its {tuple(x.shape)} tensors is not known: the site's tensors have no "
                "dimension that follows the batch size. Measure one sigma value per forward pass "
                "(sweep: points_per_forward=1), or exclude this site")
        if x.shape[dim] % groups:
            raise GroupDimError(
                f"noise site {self.site!r} has {groups} sigma values but the batch of {x.shape[dim]} "
                f"(dim {dim} of {tuple(x.shape)}) does not split into {groups} equal groups; "
                "use a batch size divisible by the number of sigma values")
        return dim

    # ------------------------------------------------------------------ noise

    def forward(self, x: Tensor) -> Tensor:
        if self.observe(x) or not self._active or not isinstance(x, Tensor) or not x.is_floating_point():
            return x
        sigma = self.sigma
        if self.groups > 1:
            dim = self.group_dim(x)
            per_group = x.shape[dim] // self.groups
            shape = [1] * x.dim()
            shape[dim] = -1
            sigma = sigma.repeat_interleave(per_group).view(shape)
        x32 = x if x.dtype in (torch.float32, torch.float64) else x.float()
        eps = self._draw(x32.shape, x32.device, x32.dtype)
        return self._inject(x32, eps, sigma.reshape(sigma.shape if self.groups > 1 else ()))

    def draw_weights(self, w: Tensor) -> List[Tensor]:
        """One perturbed copy of weight ``w`` per batch group (``[w]`` ... for sigma 0)."""
        sig = self.sigma.tolist() if self.groups > 1 else [float(self.sigma)]
        out = []
        for s in sig:
            if s == 0:
                out.append(w)
            else:
                out.append(self._inject(w, self._draw(w.shape, w.device, w.dtype), self.sigma.new_tensor(s)))
        return out

    def _inject(self, x: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.to(device=x.device, dtype=x.dtype)
        if self.kind is WeightNoiseKind.ADDITIVE:
            if self.relative:
                sigma = sigma * x.detach().abs().amax()
            return torch.addcmul(x, eps, sigma)
        # multiplicative drift, forward only: x * exp(l) = x + x * (exp(l) - 1)
        drift = eps.mul_(sigma).exp_().sub_(1).mul_(x.detach())
        return x + drift
