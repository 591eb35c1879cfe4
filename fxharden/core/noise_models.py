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
from typing import Any, Mapping, Optional, Tuple

__all__ = ["NoiseKind", "ACTIVATION_NOISE_KINDS", "ConverterConfig", "RangeCalibration", "WeightFaultConfig", "WeightDriftConfig",
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


class RangeCalibration(str, Enum):
    """How a converter without a fixed bound sets its bound B from calibration data."""

    MAX = "max"
    """B = running maximum of ``|x|`` over the calibration batches."""
    PERCENTILE = "percentile"
    """B = the ``percentile``-th percentile of ``|x|`` over all calibration values (numpy's
    default, linear interpolation); values above it clip."""


@dataclass(frozen=True)
class ConverterConfig:
    """An ideal data converter: ADC at conv/linear outputs (after their noise), DAC at
    conv/linear inputs.

    ``y = clamp(round(x / Δ), qmin, qmax) · Δ`` with the project's one quantizer. The default
    grid is two's complement: signed ``[qmin, qmax] = [-2^(b-1), 2^(b-1) - 1]``,
    ``Δ = bound / 2^(b-1)``; unsigned ``[0, 2^b - 1]``, ``Δ = bound / (2^b - 1)``. At most
    ``2^b`` output levels, all inside ``[-bound, bound]``. The symmetric grid (``symmetric`` or
    ``levels``, as analog tiles have it) has an odd number ``L`` of levels
    ``[qmin, qmax] = [-(L-1)/2, (L-1)/2]`` and ``Δ = bound / ((L-1)/2)``: the bound is its top
    level (8 bits: ``L = 255``, ``Δ = bound/127``).

    ``bound=None``: each converter calibrates its own bound on the first
    ``calibration_steps`` batches (``calibration``: running max of ``|x|``, or a percentile of
    ``|x|``), then keeps it, like a statistics-based quantizer (training, or eval mode for a
    model that has seen no training data; ``fxharden.calibrate_quantizers`` fixes it on real
    data). ``bounds`` gives single converters a fixed bound of their own; ``learn_range``
    makes the bound a trained parameter.
    """

    bits: int = 8
    """Resolution b (2..16)."""
    bound: Optional[float] = None
    """Full-scale bound (> 0, in the units of the signal); ``None``: calibrated."""
    signed: bool = True
    """Signed grid (bipolar converter) or unsigned (unipolar, for non-negative signals)."""
    calibration_steps: int = 30
    """Batches that set a calibrated bound."""
    symmetric: bool = False
    """The symmetric grid of ``2^b - 1`` levels (aihwkit's ``inp_res``/``out_res`` of
    ``1/(2^b - 2)``), instead of two's complement. Signed grids only."""
    levels: Optional[int] = None
    """An odd number of levels of the symmetric grid (3..65535), e.g. 127 or 511; overrides
    ``bits`` and ``symmetric``. Signed grids only."""
    calibration: RangeCalibration = RangeCalibration.MAX
    """How a calibrated bound (``bound=None``) is set from the data: ``max`` or ``percentile``."""
    percentile: float = 99.99
    """The percentile (in %, in (0, 100]) of ``|x|`` for ``calibration="percentile"``."""
    learn_range: bool = False
    """The bound is a trained parameter (initial value: ``bound``, or calibrated as above). Its
    gradient is straight-through: a clipped value passes its output gradient on to the bound
    (times its sign), a value inside the range passes none, and the input gets the gradient 1
    inside the range and 0 where it clipped (aihwkit-lightning's learned input ranges)."""
    bounds: Tuple[Tuple[str, float], ...] = ()
    """Fixed bounds of single converters, by site name (``{"fc1": 2.5}`` or ``(("fc1", 2.5),)``;
    the ADC and DAC of ``fc1``); the others follow ``bound``."""
    before_bias: bool = False
    """ADC only: quantize the layer's analog product before its digital bias,
    ``y = ADC(W x) + b`` (the layer's output noise then acts on ``W x`` too, before the ADC);
    ``False``: ``y = ADC(W x + b)``."""

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise ValueError(f"converter bits must be an integer in 2..16, got {self.bits!r}")
        if self.bound is not None:
            check_param("converter bound", self.bound, open_low=True)
        if not isinstance(self.calibration_steps, int) or self.calibration_steps < 1:
            raise ValueError(f"calibration_steps must be an integer >= 1, got {self.calibration_steps!r}")
        if self.levels is not None and (isinstance(self.levels, bool) or not isinstance(self.levels, int)
                                        or self.levels < 3 or self.levels > 65535 or self.levels % 2 == 0):
            raise ValueError(f"converter levels must be an odd integer in 3..65535 (a symmetric grid around 0), "
                             f"got {self.levels!r}; for 2^b - 1 levels give bits=b, symmetric=True")
        if (self.symmetric or self.levels is not None) and not self.signed:
            raise ValueError("a symmetric converter grid (symmetric=True or levels=...) is signed: "
                             "drop signed=False, or use the unsigned grid of 2^b levels without them")
        try:
            object.__setattr__(self, "calibration", RangeCalibration(self.calibration))
        except ValueError:
            raise ValueError(f"converter calibration must be one of {[c.value for c in RangeCalibration]}, "
                             f"got {self.calibration!r}") from None
        check_param("converter percentile", self.percentile, high=100.0, open_low=True)
        pairs = self.bounds.items() if isinstance(self.bounds, Mapping) else self.bounds
        try:
            bounds = tuple((str(name), check_param(f"converter bound of {name!r}", value, open_low=True))
                           for name, value in pairs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"converter bounds must map site names to bounds > 0, e.g. {{'fc1': 2.5}}: {err}") \
                from None
        object.__setattr__(self, "bounds", bounds)

    @property
    def grid_levels(self) -> Optional[int]:
        """The number of levels of the symmetric grid, ``None`` for two's complement."""
        if self.levels is not None:
            return self.levels
        return 2**self.bits - 1 if self.symmetric else None

    def bound_for(self, site: str) -> Optional[float]:
        """The fixed bound of the converter at ``site`` (``bounds``, else ``bound``)."""
        return dict(self.bounds).get(site, self.bound)

    def step_for(self, site: str) -> Optional[float]:
        """Δ of the converter at ``site`` for a fixed bound (see class doc); ``None`` when calibrated."""
        bound = self.bound_for(site)
        if bound is None:
            return None
        if self.grid_levels is not None:
            return bound / ((self.grid_levels - 1) // 2)
        return bound / (2 ** (self.bits - 1) if self.signed else 2**self.bits - 1)

    @property
    def step(self) -> Optional[float]:
        """Δ for the global fixed bound (see class doc); ``None`` when calibrated."""
        return self.step_for("")


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
