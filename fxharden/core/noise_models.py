"""The noise configuration (no torch here): the weight-noise chain (``WeightNoise`` links and the
shorthands ``WeightNoiseConfig``, ``WeightFaultConfig``, ``WeightDriftConfig``), converters, and
model values in config files; the noise models themselves are values in
``fxharden.core.noise.models`` (loaded when a config is built).

Every model is applied by the one noise module (``fxharden.core.noise.Noise``) or by the one
quantizer (``fxharden.core.quant.ActQuant``, for converters) at the sites ``harden`` finds.
``ε`` is a standard normal draw, fresh at every forward pass and independent per element.
The paper's configuration, additive absolute noise on activations, is the default.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any, Mapping, Optional, Sequence, Tuple

from .checks import check_param, check_sigma

__all__ = ["NoiseKind", "ConverterConfig", "RangeCalibration", "WeightFaultConfig", "WeightDriftConfig", "WeightNoiseKind",
           "WeightNoiseConfig", "WeightNoise", "check_param", "check_sigma", "model_to_dict", "model_from_dict"]


class NoiseKind(str, Enum):
    """The names of the first five noise models (the registry, ``fxharden.core.noise.models.MODELS``,
    holds every model by name; configs take a model value or any registered name)."""

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

    def to_dict(self) -> dict:
        """Its fields as plain values (enums by value, bounds as pairs): for JSON, TOML and
        checkpoints, whose loader takes no fxharden types (``ConverterConfig(**d)`` is the inverse)."""
        return {k: v.value if isinstance(v, Enum) else [list(b) for b in v] if k == "bounds" else v
                for k, v in asdict(self).items()}


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


class WeightNoiseKind(str, Enum):
    """The names ``WeightNoiseConfig`` (the shorthand for one weight-noise model) takes; any
    registered model that acts on weights goes into ``HardenConfig.weight_noise`` as a
    ``WeightNoise``."""

    NONE = "none"
    ADDITIVE = "additive"
    """Noisy Machines: ``w + N(0, sigma^2)``."""
    LOGNORMAL = "lognormal"
    """BayesFT memristor drift: ``w * exp(lambda)``, ``lambda ~ N(0, sigma^2)``."""


@dataclass(frozen=True)
class WeightNoiseConfig:
    """The shorthand for one weight-noise model (Noisy Machines, BayesFT): ``HardenConfig``
    turns it into the link ``WeightNoise(model, sigma)`` of its weight-noise chain (``link``).
    Weight noise is sampled afresh at every forward pass, but once per (point, repeat) for the
    whole data set in a sweep (``SweepConfig.weight_draws``)."""

    kind: WeightNoiseKind = WeightNoiseKind.NONE
    """Additive Gaussian or multiplicative log-normal drift."""
    sigma: float = 0.0
    """Standard deviation of the additive noise or of the log-normal exponent."""
    relative: bool = False
    """Additive only: the noise's standard deviation is ``sigma * max|w|`` of each (quantized)
    weight tensor, instead of ``sigma`` (Noisy Machines' convention)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", WeightNoiseKind(self.kind))
        check_sigma(self.sigma)
        if self.kind is WeightNoiseKind.NONE and (self.sigma or self.relative):
            raise ValueError(f"WeightNoiseConfig(sigma={self.sigma!r}) without a kind adds no noise: choose "
                             "kind='additive' (w + N(0, sigma^2)) or kind='lognormal' (w * exp(sigma * N(0, 1)))")
        if self.relative and self.kind is WeightNoiseKind.LOGNORMAL:
            raise ValueError("relative=True is defined for additive weight noise only; log-normal drift "
                             "is already relative to each weight")

    def link(self) -> Optional["WeightNoise"]:
        """The chain link this shorthand stands for (``None`` without a kind)."""
        if self.kind is WeightNoiseKind.NONE:
            return None
        params = {"of_max": True} if self.relative else {}
        return WeightNoise(_model_value(self.kind.value, "weights", **params), self.sigma)


_LINK_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _model_value(spec: Any, role: str, **params: Any) -> Any:
    """The noise-model value of ``spec`` (a value, or a registered name) that acts on
    ``role``; the models module (torch) loads on first use, so this module stays torch-free."""
    from .noise.models import Role, noise_model

    return noise_model(spec, Role(role), **params)


@dataclass(frozen=True)
class WeightNoise:
    """One noise model on the weights of every conv/linear layer (and weighted call): a link of
    the ordered chain ``HardenConfig.weight_noise``. A layer's weight passes through the links
    in order, each with its own random stream."""

    model: Any
    """A model value (``fxharden.core.noise.models``, e.g. ``Additive(of_max=True)``,
    ``LogNormal()``, ``StuckAt(zero_fraction=0.5)``) or the name of a registered model that
    acts on weights."""
    sigma: float = 0.0
    """The model's strength, in its units (``model.units``); ``fxharden.set_weight_noise``
    changes it later."""
    name: str = ""
    """Names the link's site, ``<layer>.weight.<name>`` (``<layer>.weight`` for ``""``), and
    with it the random stream. Distinct within a chain: a second link left at ``""`` is named
    after its model."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", _model_value(self.model, "weights"))
        check_sigma(self.sigma)
        self.model.check_sigma([float(self.sigma)], f"weight noise {self.name or self.model.name!r}")
        if self.name and not (isinstance(self.name, str) and _LINK_NAME.fullmatch(self.name)):
            raise ValueError(f"WeightNoise name must be lower-case letters, digits and '_' (it names the "
                             f"site <layer>.weight.<name>), got {self.name!r}")

    @property
    def suffix(self) -> str:
        """The site suffix after ``<layer>.weight``."""
        return f".{self.name}" if self.name else ""


def _weight_chain(value: Any) -> Tuple[WeightNoise, ...]:
    """``HardenConfig.weight_noise`` in any of its accepted forms, as a chain of links with
    distinct names."""
    if isinstance(value, WeightNoiseConfig):
        link = value.link()
        links: Sequence[Any] = () if link is None else (link,)
    elif isinstance(value, WeightNoise):
        links = (value,)
    elif isinstance(value, (tuple, list)):
        links = tuple(value)
    else:
        raise TypeError(f"weight_noise must be WeightNoise links (a tuple), one WeightNoise or a "
                        f"WeightNoiseConfig, got {value!r}")
    out: list = []
    for link in links:
        if not isinstance(link, WeightNoise):
            raise TypeError(f"weight_noise links must be WeightNoise values, got {link!r}")
        taken = {x.name for x in out}
        if link.name in taken and link.name == "" and link.model.name not in taken:
            link = replace(link, name=link.model.name)
        if link.name in taken:
            raise ValueError(f"two weight_noise links are named {link.name!r}; give each a distinct name= "
                             "(it names the site <layer>.weight.<name> and its random stream)")
        out.append(link)
    return tuple(out)


def _with_link(chain: Tuple[WeightNoise, ...], link: WeightNoise, first: bool) -> Tuple[WeightNoise, ...]:
    """``chain`` with ``link`` in place of the link of the same name, else first or last."""
    if any(x.name == link.name for x in chain):
        return tuple(link if x.name == link.name else x for x in chain)
    return (link, *chain) if first else (*chain, link)


def model_to_dict(model: Any) -> Any:
    """A model value for a config file: its name, or ``{"name": ..., <fields>}`` where a field
    differs from its default (inverse: ``model_from_dict``)."""
    params = {k: v for k, v in asdict(model).items() if v != type(model).__dataclass_fields__[k].default}
    return {"name": model.name, **params} if params else model.name


def model_from_dict(data: Any, role: str) -> Any:
    """The model value ``model_to_dict`` wrote (a name, or a dict with ``name``)."""
    if isinstance(data, Mapping):
        params = dict(data)
        return _model_value(params.pop("name"), role, **params)
    return _model_value(data, role)


def _weight_noise_from_dict(data: Any) -> Tuple[WeightNoise, ...]:
    """A saved weight-noise chain; files of fxharden 0.1 hold one ``WeightNoiseConfig`` (one
    without a kind, which kept a sigma that never took effect, loads as no weight noise, as
    it ran)."""
    if isinstance(data, Mapping):
        if WeightNoiseKind(data.get("kind", WeightNoiseKind.NONE)) is WeightNoiseKind.NONE:
            return ()
        return _weight_chain(WeightNoiseConfig(**data))
    return tuple(WeightNoise(model_from_dict(x["model"], "weights"), x.get("sigma", 0.0), x.get("name", ""))
                 for x in data)
