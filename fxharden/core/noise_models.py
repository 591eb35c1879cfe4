"""The hardware noise models, as typed configuration (no torch here).

Every model is applied by the one noise module (``fxharden.core.noise.Noise``) or by the one
quantizer (``fxharden.core.quant.ActQuant``, for converters) at the sites ``harden`` finds.
``ε`` is a standard normal draw, fresh at every forward pass and independent per element.
The paper's configuration, additive absolute noise on activations, is the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Optional

__all__ = ["NoiseKind", "ACTIVATION_NOISE_KINDS", "ConverterConfig", "WeightFaultConfig", "WeightDriftConfig",
           "check_param", "parse_kind"]


class NoiseKind(str, Enum):
    """What one noise module does to the tensor ``x`` that passes through it, at strength σ."""

    ADDITIVE = "additive"
    """``y = x + σ ε``: absolute noise, σ in the units of ``x`` (the paper, Eq. 2)."""
    RELATIVE = "relative"
    """``y = x + σ · rms · ε``: σ is relative to the site's clean signal, ``rms =
    sqrt(mean(x²))`` over calibration data with no noise anywhere (``calibrate_noise``),
    stored in the module's ``rms`` buffer so it travels in checkpoints. Dimensionless."""
    MULTIPLICATIVE = "multiplicative"
    """``y = x · (1 + σ ε)``: noise proportional to each element. Dimensionless."""
    LOGNORMAL = "lognormal"
    """``y = x · exp(σ ε)``: log-normal drift (BayesFT; weights). Dimensionless."""
    STUCK = "stuck"
    """Stuck-at faults (weights): each element independently with probability ``p = σ`` is
    replaced by 0 (with probability ``zero_fraction``) or by ``±max|x|`` (random sign),
    ``max|x|`` over the tensor (after quantization: the grid's end). A new fault map per
    forward pass. σ is a probability in [0, 1]."""


ACTIVATION_NOISE_KINDS = frozenset({NoiseKind.ADDITIVE, NoiseKind.RELATIVE, NoiseKind.MULTIPLICATIVE})
"""The kinds ``NoiseConfig.model`` accepts (the others act on weights)."""


def parse_kind(value: Any, allowed=frozenset(NoiseKind)) -> NoiseKind:
    """A ``NoiseKind`` from itself or its name; unknown names list the valid ones."""
    try:
        kind = NoiseKind(value)
    except ValueError:
        kind = None
    if kind is None or kind not in allowed:
        names = ", ".join(sorted(k.value for k in allowed))
        raise ValueError(f"unknown noise model {value!r} here; choose one of: {names}")
    return kind


def check_param(name: str, value: Any, low: float = 0.0, high: float = math.inf, open_low: bool = False) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``open_low``), else a message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or v > high or (open_low and v == low):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return v


@dataclass(frozen=True)
class ConverterConfig:
    """An ideal data converter: ADC at conv/linear outputs (after their noise), DAC at
    conv/linear inputs.

    ``y = clamp(round(x / Δ), qmin, qmax) · Δ`` with the project's one quantizer; signed:
    ``[qmin, qmax] = [-2^(b-1), 2^(b-1) - 1]``, ``Δ = bound / 2^(b-1)``; unsigned:
    ``[0, 2^b - 1]``, ``Δ = bound / (2^b - 1)``. At most ``2^b`` output levels, all inside
    ``[-bound, bound]``. ``bound=None``: the bound is the running maximum of ``|x|`` (signed
    and unsigned grids alike) over the first ``calibration_steps`` batches, then fixed, like a
    statistics-based quantizer (training, or eval mode for a model that has seen no training
    data; ``fxharden.calibrate_quantizers`` fixes it on real data).
    """

    bits: int = 8
    """Resolution b (2..16)."""
    bound: Optional[float] = None
    """Full-scale bound (> 0, in the units of the signal); ``None``: calibrated."""
    signed: bool = True
    """Signed grid (bipolar converter) or unsigned (unipolar, for non-negative signals)."""
    calibration_steps: int = 30
    """Batches whose running maximum of ``|x|`` sets a calibrated bound."""

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise ValueError(f"converter bits must be an integer in 2..16, got {self.bits!r}")
        if self.bound is not None:
            check_param("converter bound", self.bound, open_low=True)
        if not isinstance(self.calibration_steps, int) or self.calibration_steps < 1:
            raise ValueError(f"calibration_steps must be an integer >= 1, got {self.calibration_steps!r}")

    @property
    def step(self) -> Optional[float]:
        """Δ for a fixed bound (see class doc); ``None`` when calibrated."""
        if self.bound is None:
            return None
        return self.bound / (2 ** (self.bits - 1) if self.signed else 2**self.bits - 1)


@dataclass(frozen=True)
class WeightFaultConfig:
    """Stuck-at faults on conv/linear weights (``NoiseKind.STUCK``): a fraction ``p`` of the
    weights is stuck, each at 0 with probability ``zero_fraction``, else at ``±max|w|``."""

    p: float = 0.0
    """Probability that a weight is stuck, in [0, 1]."""
    zero_fraction: float = 0.5
    """Share of the stuck weights stuck at 0 (the rest at ±max|w|, equal odds of sign)."""

    def __post_init__(self) -> None:
        check_param("weight fault fraction p", self.p, high=1.0)
        check_param("zero_fraction", self.zero_fraction, high=1.0)


@dataclass(frozen=True)
class WeightDriftConfig:
    """Conductance drift of weights over time: ``w(t) = w · exp(σ(t) ε)`` (log-normal), with
    ``σ(t) = sigma_decade · log10(1 + t / t0)``: no drift at ``t = 0``, ``sigma_decade`` more
    spread per decade of time once ``t >> t0``."""

    sigma_decade: float = 0.0
    """Spread added per decade of time (>= 0, dimensionless)."""
    t: float = 0.0
    """Time since programming (>= 0, same unit as ``t0``)."""
    t0: float = 1.0
    """Reference time (> 0)."""

    def __post_init__(self) -> None:
        check_param("sigma_decade", self.sigma_decade)
        check_param("drift time t", self.t)
        check_param("drift reference time t0", self.t0, open_low=True)

    @property
    def sigma(self) -> float:
        """σ(t) of the log-normal factor."""
        return self.sigma_decade * math.log10(1.0 + self.t / self.t0)


def dataclass_from_dict(cls, data: Optional[Mapping[str, Any]]):
    """``cls(**data)``, ``None`` for ``None`` (config files)."""
    return None if data is None else cls(**data)
