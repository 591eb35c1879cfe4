"""Device models over time: the weight of a conv/linear layer stored as device conductances
that are programmed with noise, drift and pick up read noise until the time ``t`` of
inference, as IBM aihwkit models them (``aihwkit/inference/noise/pcm.py``,
``aihwkit/inference/noise/reram.py``, ``aihwkit/inference/converter/conductance.py``,
``aihwkit/inference/compensation/drift.py``, ``aihwkit/simulator/tiles/inference.py``).

Units: conductances in µS, times in seconds. σ is one overall scale on the device's noise and
drift (``SigmaUnits.DEVICE_SCALE``): it multiplies the programming noise, the drift
coefficients and the read noise alike; 1 is the published device, 0 the ideal weight, exactly
(every deviation is built as a product with σ, so σ = 0 adds exact zeros). The time is a field
of the model value: a sweep over time replaces the value (``Noise.set_model``).

The weight is written as ``x + Δg / r`` with ``Δg`` the deviation of each conductance from its
target and ``r`` the weight-to-conductance ratio, rather than converted to conductances and
back: the same numbers up to rounding, and exactly ``x`` where nothing deviates. With global
drift compensation (``GlobalDriftCompensation``, aihwkit's default) the drifted weight is
scaled by ``α = mean|w_prog| / mean|w(t)|``, one scalar per layer: the mean absolute weight
read just after programming over the one read at ``t`` (aihwkit reads the tile with one-hot
inputs; on an ideal periphery that read is the weight itself). Forward only: the gradient
passes through unchanged (``y = noisy + (x - x.detach())``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, FrozenSet, Optional, Tuple

import torch
from torch import Tensor

from ..checks import check_param
from .models import Draw, NoiseModel, Role, SigmaUnits, register

__all__ = ["PCM", "ReRamCMO", "PCM_PROG_COEFF", "CMO_PROG_COEFF"]

ZERO_CLIP = 1e-7
"""aihwkit's ``_ZERO_CLIP``: the smallest ``max|w|`` (and normalised conductance) it divides by."""

PCM_PROG_COEFF = (0.26348, 1.9650, -1.1731)
"""``PCMLikeNoiseModel.__init__``: programming noise ``σ_prog(ĝ) = c0 + c1 ĝ + c2 ĝ²`` in µS,
``ĝ = g / g_max``, fitted at ``g_max = 25 µS`` (``prog_coeff_g_max_reference``)."""

CMO_PROG_COEFF = {0.2: (0.00081107, 0.00106879), 2.0: (0.0112185391, 0.01129027418)}
"""``ReRamCMONoiseModel.__init__`` (``coeff_dict``): programming noise ``σ_prog(g) = c0 + c1 g``
in µS (``g`` in µS, not normalised) for each program-and-verify acceptance range in percent."""

CMO_DECAY_MEAN = -0.08900206
"""``decay_dict["mean"]``: the mean conductance shift is ``CMO_DECAY_MEAN · ln t`` µS."""
CMO_DECAY_STD = (0.04201137, 0.41183342)
"""``decay_dict["std"]``: the relaxation spread is ``a ln t + b`` µS."""
CMO_READ_K = 0.0277316483
"""``read_dict["K"]``: read noise ``K log10(g) sqrt(ln((t + t_read) / (2 t_read)))`` µS."""


def _mean_abs(w: Tensor, group_dim: Optional[int]) -> Tensor:
    if group_dim is None:
        return w.abs().mean()
    return w.abs().mean(dim=[d for d in range(w.dim()) if d != group_dim], keepdim=True)


def _extreme(x: Tensor, group_dim: Optional[int], fn) -> Tensor:
    return fn(x) if group_dim is None else fn(x, dim=[d for d in range(x.dim()) if d != group_dim], keepdim=True)


@dataclass(frozen=True)
class DeviceModel(NoiseModel):
    """A device model over time (module doc): ``deltas`` gives the weight's deviation just
    after programming and at time ``t``; compensation, σ = 0 and the gradient are handled here
    once for every device."""

    acts_on: ClassVar[FrozenSet[Role]] = frozenset({Role.WEIGHTS})
    units: ClassVar[SigmaUnits] = SigmaUnits.DEVICE_SCALE
    sigma_means: ClassVar[str] = "a device noise scale (1: the published device)"

    def deltas(self, x: Tensor, eps: Any, sigma: Any, group_dim: Optional[int]) -> Tuple[Tensor, Tensor]:
        """``(Δw_prog, Δw_t)``: the weight's deviation just after programming and at ``t``."""
        raise NotImplementedError

    def noisy(self, x: Tensor, eps: Any, sigma: Any, group_dim: Optional[int] = None) -> Tensor:
        """The formula: ``x`` as the devices hold it at ``t`` (compensated if asked)."""
        xd = x.detach()
        d_prog, d_t = self.deltas(xd, eps, sigma, group_dim)
        w = xd + d_t
        if self.compensation and self.t > 0 and (torch.is_tensor(sigma) or sigma != 0):
            ref, now = _mean_abs(xd + d_prog, group_dim), _mean_abs(w, group_dim)
            alpha = torch.where(now > 0, ref / torch.where(now > 0, now, 1.0), 1.0)
            if torch.is_tensor(sigma):  # σ = 0: exactly 1, whatever order a compiler sums in
                alpha = torch.where(sigma == 0, 1.0, alpha)
            w = w * alpha
        return w + (x - xd)

    def apply(self, x, eps, sigma, rms=-1.0, out=None):
        res = self.noisy(x, eps, sigma)
        return out.copy_(res) if out is not None else res

    def apply_tensor(self, x, eps, sigma, rms, group_dim=None):
        return self.noisy(x, eps, sigma, group_dim)


@register
@dataclass(frozen=True)
class PCM(DeviceModel):
    """Phase-change memory, aihwkit's ``PCMLikeNoiseModel`` (Nandakumar et al., ICECS 2019;
    Joshi et al., Nat. Commun. 11, 2473, 2020) on the ``SinglePairConductanceConverter``.

    Each weight is a pair ``(g+, g-)``: ``r = g_max / max|w|``, ``g± = clamp(±w r, 0, g_max)``.
    For each device with target ``g`` (``ĝ = g / g_max``) and its three normals:

    - programming: ``g_p = max(0, g + σ s_p σ_prog(ĝ) ε₁)``, ``σ_prog = (c0 + c1 ĝ + c2 ĝ²) ·
      g_max / 25`` µS (``PCM_PROG_COEFF``);
    - drift (``t > 0``): ``g_d = g_p ((t + t0) / t0)^(-ν)``, ``ν = σ s_d |μ_ν + σ_ν ε₂|``,
      ``μ_ν = clip(-0.0155 ln ĝ' + 0.0244, 0.049, 0.1)``, ``σ_ν = clip(-0.0125 ln ĝ' - 0.0059,
      0.008, 0.045)``, ``ĝ' = max(ĝ, 1e-7)`` (``generate_drift_coefficients``);
    - read (1/f) noise (``t > 0``): ``g_t = max(0, g_d + |g_d| σ s_r σ_read ε₃)``, ``σ_read =
      q_s sqrt(ln((t + t0 + t_read) / (2 t_read)))``, ``q_s = min(0.2, 0.0088 /
      max(1e-3, (g_p / g_max)^0.65))`` (``apply_drift_noise_to_conductance``).

    ``w_t = (g+_t - g-_t) / r``, compensated (module doc). ``t`` counts from the end of
    programming, as aihwkit's ``t_inference``; at ``t = 0`` only programming noise applies.
    Six normals per element (``Draw.NORMAL6``: the three of ``g+``, then those of ``g-``)."""

    name: ClassVar[str] = "pcm"
    draw: ClassVar[Draw] = Draw.NORMAL6
    t: float = 0.0
    """Time of inference in seconds after programming (aihwkit's ``t_inference``)."""
    g_max: float = 25.0
    """The conductance ``max|w|`` maps to, µS."""
    t0: float = 20.0
    """Time of the first read after programming, s (aihwkit's ``t_0``)."""
    compensation: bool = True
    """Global drift compensation (``GlobalDriftCompensation``; ``False``: none)."""
    t_read: float = 250e-9
    """Read duration of the 1/f fit, s."""
    prog_noise_scale: float = 1.0
    """Extra scale on the programming noise (aihwkit's ``prog_noise_scale``)."""
    read_noise_scale: float = 1.0
    """Extra scale on the read noise (``read_noise_scale``)."""
    drift_scale: float = 1.0
    """Extra scale on the drift coefficients (``drift_scale``)."""

    def __post_init__(self) -> None:
        for f in ("t", "prog_noise_scale", "read_noise_scale", "drift_scale"):
            object.__setattr__(self, f, check_param(f, getattr(self, f)))
        for f in ("g_max", "t0", "t_read"):
            object.__setattr__(self, f, check_param(f, getattr(self, f), open_low=True))
        if not isinstance(self.compensation, bool):
            raise TypeError(f"compensation must be True or False, got {self.compensation!r}")

    def device(self, g: Tensor, e: Any, sigma: Any) -> Tuple[Tensor, Tensor]:
        """``(g_p - g, g_t - g)`` of devices with targets ``g`` (µS) and normals ``e[0..2]``."""
        gh = g / self.g_max
        c0, c1, c2 = PCM_PROG_COEFF
        sig_prog = (c0 + c1 * gh + c2 * gh * gh) * (self.g_max / 25.0)
        d_prog = (sigma * self.prog_noise_scale * sig_prog * e[0]).clamp(min=-g)
        if self.t == 0:
            return d_prog, d_prog
        lg = torch.log(gh.clamp(min=ZERO_CLIP))
        mu_nu = (-0.0155 * lg + 0.0244).clamp(0.049, 0.1)
        sd_nu = (-0.0125 * lg - 0.0059).clamp(0.008, 0.045)
        nu = (mu_nu + sd_nu * e[1]).abs() * (sigma * self.drift_scale)
        g_prog = g + d_prog
        total = self.t + self.t0
        g_drift = g_prog + g_prog * torch.expm1(-nu * math.log(total / self.t0))
        q_s = (0.0088 / (g_prog / self.g_max).pow(0.65).clamp(min=1e-3)).clamp(max=0.2)
        sig_read = q_s * math.sqrt(math.log((total + self.t_read) / (2 * self.t_read)))
        d_t = g_drift - g + g_drift.abs() * (sigma * self.read_noise_scale) * sig_read * e[2]
        return d_prog, d_t.clamp(min=-g)

    def deltas(self, x, eps, sigma, group_dim):
        top = _extreme(x.abs(), group_dim, torch.amax)
        r = self.g_max / top.clamp(min=ZERO_CLIP)
        s = x * r
        p_prog, p_t = self.device(s.clamp(0.0, self.g_max), eps[0:3], sigma)
        m_prog, m_t = self.device((-s).clamp(0.0, self.g_max), eps[3:6], sigma)
        return (p_prog - m_prog) / r, (p_t - m_t) / r


@register
@dataclass(frozen=True)
class ReRamCMO(DeviceModel):
    """Conductive-metal-oxide/HfOx ReRAM, aihwkit's ``ReRamCMONoiseModel`` (Falcone et al.,
    IBM Research Zurich) on the ``SingleDeviceConductanceConverter``.

    One device per weight: ``r = (g_max - g_min) / (max w - min w)``, ``g = (w - min w) r +
    g_min``. With its three normals:

    - programming: ``g_p = g + σ s_p (c0 + c1 g) ε₁`` µS (``CMO_PROG_COEFF`` of the
      acceptance range);
    - relaxation (``t > 0``): ``g_d = g_p + σ s_d (m ln t + (a ln t + b) ε₂)``
      (``CMO_DECAY_MEAN``, ``CMO_DECAY_STD``);
    - read noise (``t > 0``): ``g_t = clip(g_d + σ s_r K log10(g_d) sqrt(ln((t + t_read) /
      (2 t_read))) ε₃, g_min, g_max)`` (``CMO_READ_K``).

    ``w_t = min w + (g_t - g_min) / r``, compensated (module doc). At ``t = 0`` only
    programming noise applies, unclipped (as aihwkit's programmed weights). ``log10`` reads
    ``max(g_d, 1e-7)``: where aihwkit's ``g_d <= 0`` gives NaN this gives a finite value."""

    name: ClassVar[str] = "reram_cmo"
    draw: ClassVar[Draw] = Draw.NORMAL3
    t: float = 0.0
    """Time of inference in seconds after programming: 0, or at least ``t_read``."""
    g_max: float = 88.199997
    """The conductance ``max w`` maps to, µS (aihwkit's default for this device)."""
    g_min: float = 9.0
    """The conductance ``min w`` maps to, µS."""
    acceptance_range: float = 0.2
    """Program-and-verify acceptance range in percent: 0.2 or 2 (aihwkit's default
    ``acceptance_range=2e-2`` is not one of its keys and falls back to 0.2)."""
    compensation: bool = True
    """Global drift compensation (``GlobalDriftCompensation``; ``False``: none)."""
    t_read: float = 1e-6
    """Read duration of the read-noise fit, s (``read_dict["t_read"]``)."""
    prog_noise_scale: float = 1.0
    """Extra scale on the programming noise."""
    read_noise_scale: float = 1.0
    """Extra scale on the read noise."""
    drift_scale: float = 1.0
    """Extra scale on the relaxation (mean shift and spread)."""

    def __post_init__(self) -> None:
        for f in ("t", "g_min", "prog_noise_scale", "read_noise_scale", "drift_scale"):
            object.__setattr__(self, f, check_param(f, getattr(self, f)))
        for f in ("g_max", "t_read"):
            object.__setattr__(self, f, check_param(f, getattr(self, f), open_low=True))
        if self.g_min >= self.g_max:
            raise ValueError(f"g_min must be below g_max, got g_min={self.g_min!r}, g_max={self.g_max!r}")
        if 0 < self.t < self.t_read:
            raise ValueError(f"t must be 0 or at least t_read={self.t_read:g} s (the read-noise law is "
                             f"undefined below it), got {self.t!r}")
        if self.acceptance_range not in CMO_PROG_COEFF:
            raise ValueError(f"acceptance_range must be one of {sorted(CMO_PROG_COEFF)} (percent), "
                             f"got {self.acceptance_range!r}")
        object.__setattr__(self, "acceptance_range", float(self.acceptance_range))
        if not isinstance(self.compensation, bool):
            raise TypeError(f"compensation must be True or False, got {self.compensation!r}")

    def deltas(self, x, eps, sigma, group_dim):
        low = _extreme(x, group_dim, torch.amin)
        span = _extreme(x, group_dim, torch.amax) - low
        r = (self.g_max - self.g_min) / span.clamp(min=ZERO_CLIP)
        g = (x - low) * r + self.g_min
        c0, c1 = CMO_PROG_COEFF[self.acceptance_range]
        d_prog = sigma * self.prog_noise_scale * (c0 + c1 * g) * eps[0]
        if self.t == 0:
            return d_prog / r, d_prog / r
        lt = math.log(self.t)
        a, b = CMO_DECAY_STD
        d_drift = d_prog + (sigma * self.drift_scale) * (CMO_DECAY_MEAN * lt + (a * lt + b) * eps[1])
        sig_read = CMO_READ_K * torch.log10((g + d_drift).clamp(min=ZERO_CLIP))
        sig_read = sig_read * math.sqrt(math.log((self.t + self.t_read) / (2 * self.t_read)))
        d_t = d_drift + (sigma * self.read_noise_scale) * sig_read * eps[2]
        d_t = d_t.clamp(min=(self.g_min - g).clamp(max=0.0), max=(self.g_max - g).clamp(min=0.0))
        return d_prog / r, d_t / r
