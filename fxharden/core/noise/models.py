"""The noise models as values, each with its formula written once, and their registry.

A model is a frozen dataclass: what it is called (``name``, its key in the registry), what it
acts on (``acts_on``), the units of its σ (``units``), its valid σ range (``sigma_max``), the
random numbers it consumes (``draw``) and its parameters (fields). Its formula is one method,
``term``: from the tensor ``x``, the draw ``ε``, σ and the site's clean RMS it returns a term
and a scale with ``y = x + scale · term``. Both execution paths of the noise module use it:

- eager (``apply``): σ and the RMS are Python floats, ``term`` is built in place in the draw
  (``IN_PLACE`` ops; the draw is a scratch buffer consumed there) and added with
  ``torch.add(x, term, alpha=scale, out=...)`` (in place in the module's own input where it
  may be: one pass for additive noise);
- compiled (``apply_tensor``): σ and the RMS are tensors (σ possibly one value per batch
  group, broadcast), nothing in place (``FUNCTIONAL`` ops), ``x + scale * term``.

A model that is not of the form ``x + scale · term`` (stuck-at faults) overrides both with one
shared formula. Adding a model: one class with ``@register`` (here, or in a module of its own
that imports this one) and one row in the parametrized tests that feed the
same ε to both paths (``tests/core/test_noise_formulas.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Dict, FrozenSet, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor

from ..checks import check_param

__all__ = ["Role", "SigmaUnits", "Draw", "NoiseModel", "Additive", "Relative", "Multiplicative", "LogNormal",
           "StuckAt", "MODELS", "register", "noise_model", "IN_PLACE", "FUNCTIONAL"]

Scale = Union[float, Tensor, None]


class Role(str, Enum):
    """What a noise model may act on."""

    ACTIVATIONS = "activations"
    WEIGHTS = "weights"


class SigmaUnits(str, Enum):
    """The units of a model's σ."""

    ABSOLUTE = "absolute"
    """In the units of the tensor (additive noise)."""
    SITE_RMS = "site_rms"
    """Relative to the site's clean signal RMS (measured by ``calibrate_noise``)."""
    MAX_ABS = "max_abs"
    """Relative to ``max|x|`` of the tensor the noise is added to (weights)."""
    DIMENSIONLESS = "dimensionless"
    """A factor on each element (multiplicative, log-normal)."""
    PROBABILITY = "probability"
    """A probability per element, in [0, 1] (stuck-at faults)."""
    DEVICE_SCALE = "device_scale"
    """A scale on a measured device's noise and drift (1: the published device, 0: ideal
    weights; device models over time, ``fxharden.core.noise.device``)."""
    OUT_SCALE = "out_scale"
    """Relative to the layer's input range times its ``max|W|`` (output noise of an analog
    matrix-vector product, aihwkit's ``out_noise``)."""


class Draw(str, Enum):
    """The random numbers one application of a model consumes."""

    NORMAL = "normal"
    """One standard normal per element."""
    UNIFORM3 = "uniform3"
    """Three independent uniform numbers in ``[0, 1)`` per element."""
    NORMAL3 = "normal3"
    """Three independent standard normals per element, ``eps[0]`` to ``eps[2]``."""
    NORMAL6 = "normal6"
    """Six independent standard normals per element, ``eps[0]`` to ``eps[5]``."""

    @property
    def count(self) -> int:
        """How many numbers per element."""
        return {"normal": 1, "uniform3": 3, "normal3": 3, "normal6": 6}[self.value]

    @property
    def normals(self) -> bool:
        """Whether the numbers are standard normals."""
        return self is not Draw.UNIFORM3


class _InPlace:
    """Elementwise ops of the eager path: they write into their first operand (a draw that
    is consumed there)."""

    @staticmethod
    def mul(a: Tensor, b: Any) -> Tensor:
        return a.mul_(b)

    @staticmethod
    def expm1(a: Tensor) -> Tensor:
        return a.exp_().sub_(1)  # exp - 1, as eager results have always been computed


class _Functional:
    """Elementwise ops of the compiled path: new tensors, nothing in place."""

    @staticmethod
    def mul(a: Tensor, b: Any) -> Tensor:
        return a * b

    @staticmethod
    def expm1(a: Tensor) -> Tensor:
        return torch.expm1(a)


IN_PLACE, FUNCTIONAL = _InPlace(), _Functional()


@dataclass(frozen=True)
class NoiseModel:
    """A noise model: what one noise module does to the tensor ``x`` that passes through it
    at strength σ (class doc of each model for its formula; module doc for the contract)."""

    name: ClassVar[str]
    """The model's name: its key in ``MODELS`` and in configuration files."""
    acts_on: ClassVar[FrozenSet[Role]] = frozenset({Role.ACTIVATIONS, Role.WEIGHTS})
    units: ClassVar[SigmaUnits] = SigmaUnits.ABSOLUTE
    sigma_max: ClassVar[float] = math.inf
    sigma_means: ClassVar[str] = "a sigma"
    """What σ is, for messages."""
    draw: ClassVar[Draw] = Draw.NORMAL
    needs_rms: ClassVar[bool] = False
    """The formula reads the site's clean RMS (``calibrate_noise`` must have run)."""
    consumes_draw: ClassVar[bool] = False
    """The eager formula changes the draw in place (a shared draw is copied first)."""
    channelwise: ClassVar[bool] = False
    """The formula reads the output-channel axis of the weight it perturbs: the noise module
    passes its ``channel_dim`` as ``group_dim`` (weights only; their slices along that axis are
    the output channels, one row of the crossbar each)."""
    needs_out_scale: ClassVar[bool] = False
    """The formula reads the site's output scale (``Noise.set_out_scale``) in place of ``rms``."""

    def term(self, x: Tensor, eps: Tensor, sigma: Any, rms: Any, ops, group_dim: Optional[int] = None
             ) -> Tuple[Tensor, Scale]:
        """``(term, scale)`` with ``y = x + scale · term`` (``scale=None``: 1). ``sigma`` and
        ``rms`` are floats (eager) or tensors (compiled, ``sigma`` maybe one value per group
        along ``group_dim``, whose slices are separate tensors: ``peak``); ``ops`` is
        ``IN_PLACE`` (may change ``eps``) or ``FUNCTIONAL``. Forward only: terms are built
        from ``x.detach()``, so the gradient passes through unchanged. A ``channelwise``
        model gets the weight's output-channel axis as ``group_dim``."""
        raise NotImplementedError

    def apply(self, x: Tensor, eps: Tensor, sigma: float, rms: float = -1.0,
              out: Optional[Tensor] = None, group_dim: Optional[int] = None) -> Tensor:
        """Eager: ``x`` with noise of strength ``sigma`` from the draw ``eps`` (which may be
        changed), written into ``out`` if given (no autograd then; ``out`` may be ``x``);
        ``group_dim``: a ``channelwise`` model's channel axis."""
        term, scale = self.term(x, eps, sigma, rms, IN_PLACE, group_dim)
        if scale is None:
            return torch.add(x, term, out=out) if out is not None else x + term
        return torch.add(x, term, alpha=scale, out=out) if out is not None else torch.add(x, term, alpha=scale)

    def apply_tensor(self, x: Tensor, eps: Any, sigma: Tensor, rms: Tensor, group_dim: Optional[int] = None) -> Tensor:
        """Compiled: ``x`` with noise, ``sigma`` and ``rms`` tensors, nothing in place; with
        ``group_dim``, ``x`` holds one batch group per index of that dimension."""
        term, scale = self.term(x, eps, sigma, rms, FUNCTIONAL, group_dim)
        return x + term if scale is None else x + scale * term

    def check_sigma(self, values: Sequence[float], site: str) -> None:
        """Refuse σ values outside ``[0, sigma_max]`` (each is already finite and >= 0)."""
        if any(v > self.sigma_max for v in values):
            raise ValueError(f"site {site!r}: {self.name} noise takes {self.sigma_means} in "
                             f"[0, {self.sigma_max:g}], got {max(values)!r}")


def peak(x: Tensor, group_dim: Optional[int] = None) -> Tensor:
    """``max|x|`` of the tensor, or with ``group_dim`` of each of its slices along that
    dimension (kept for broadcasting): each batch group is a tensor of its own."""
    a = x.detach().abs()
    if group_dim is None:
        return a.amax()
    return a.amax(dim=[d for d in range(x.dim()) if d != group_dim], keepdim=True)


MODELS: Dict[str, Type[NoiseModel]] = {}
"""The registry: model class by name (the names of ``NoiseKind`` for the first five)."""


def register(cls: Type[NoiseModel]) -> Type[NoiseModel]:
    """Class decorator: add a model to ``MODELS`` under its name."""
    if not isinstance(cls.__dict__.get("name"), str) or not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute name = '<its name>' to be registered")
    if cls.name in MODELS and MODELS[cls.name] is not cls:
        raise ValueError(f"a noise model named {cls.name!r} is already registered ({MODELS[cls.name].__name__})")
    MODELS[cls.name] = cls
    return cls


@register
@dataclass(frozen=True)
class Additive(NoiseModel):
    """``y = x + σ ε``: absolute noise, σ in the units of ``x`` (the paper, Eq. 2); with
    ``of_max``, ``y = x + σ · max|x| · ε`` (Noisy Machines' convention for weights; aihwkit's
    ``WeightNoiseInjectionType.ADD_NORMAL``); with ``per_channel`` as well, on a weight,
    ``w_ij + σ · max_k |w_ik| · ε_ij``: the max of each output channel ``i`` (aihwkit's
    ``ADD_NORMAL_PER_CHANNEL``, whose columnwise mapping gives each crossbar column, one
    output channel, its own weight range; ``aihwkit_lightning`` ``TorchLinear.modify_weight``)."""

    name: ClassVar[str] = "additive"
    of_max: bool = False
    """σ relative to ``max|x|`` of the tensor (``WeightNoiseConfig.relative``)."""
    per_channel: bool = False
    """With ``of_max``: relative to the max of each output channel of the weight (a row of a
    linear weight, a filter of a convolution; the axis is the layer's: ``Noise.channel_dim``),
    not of the whole tensor. Weights only."""

    def __post_init__(self) -> None:
        if self.per_channel and not self.of_max:
            raise ValueError("Additive(per_channel=True) scales the noise by the max|w| of each output channel: "
                             "it needs of_max=True (Additive(of_max=True, per_channel=True))")

    @property
    def units(self) -> SigmaUnits:  # type: ignore[override]
        return SigmaUnits.MAX_ABS if self.of_max else SigmaUnits.ABSOLUTE

    @property
    def consumes_draw(self) -> bool:  # type: ignore[override]
        return self.of_max

    @property
    def channelwise(self) -> bool:  # type: ignore[override]
        return self.per_channel

    def term(self, x, eps, sigma, rms, ops, group_dim=None):
        if self.per_channel and group_dim is None:
            raise ValueError("per-channel additive noise (Additive(of_max=True, per_channel=True)) scales each "
                             "output channel of a weight by its own max|w|: it acts on conv/linear weights (as "
                             "weight noise), whose channel axis the layer gives (Noise.set_channel_dim), not on "
                             "activations; use Additive(of_max=True) for one max per tensor")
        if self.of_max:
            eps = ops.mul(eps, peak(x, group_dim))
        return eps, sigma


@register
@dataclass(frozen=True)
class Relative(NoiseModel):
    """``y = x + σ · rms · ε``: σ relative to the site's clean signal, ``rms =
    sqrt(mean(x²))`` over calibration data with no noise anywhere (``calibrate_noise``), in
    the module's ``rms`` buffer. Dimensionless."""

    name: ClassVar[str] = "relative"
    acts_on: ClassVar[FrozenSet[Role]] = frozenset({Role.ACTIVATIONS})
    units: ClassVar[SigmaUnits] = SigmaUnits.SITE_RMS
    needs_rms: ClassVar[bool] = True

    def term(self, x, eps, sigma, rms, ops, group_dim=None):
        return eps, sigma * rms


@register
@dataclass(frozen=True)
class Multiplicative(NoiseModel):
    """``y = x · (1 + σ ε) = x + σ · (ε x)``: noise proportional to each element."""

    name: ClassVar[str] = "multiplicative"
    units: ClassVar[SigmaUnits] = SigmaUnits.DIMENSIONLESS
    consumes_draw: ClassVar[bool] = True

    def term(self, x, eps, sigma, rms, ops, group_dim=None):
        return ops.mul(eps, x.detach()), sigma


@register
@dataclass(frozen=True)
class LogNormal(NoiseModel):
    """``y = x · exp(σ ε) = x + x · (exp(σ ε) - 1)``: log-normal drift (BayesFT; weights,
    and conductance drift over time, ``WeightDriftConfig``)."""

    name: ClassVar[str] = "lognormal"
    acts_on: ClassVar[FrozenSet[Role]] = frozenset({Role.WEIGHTS})
    units: ClassVar[SigmaUnits] = SigmaUnits.DIMENSIONLESS
    consumes_draw: ClassVar[bool] = True

    def term(self, x, eps, sigma, rms, ops, group_dim=None):
        return ops.mul(ops.expm1(ops.mul(eps, sigma)), x.detach()), None


@register
@dataclass(frozen=True)
class StuckAt(NoiseModel):
    """Stuck-at faults: each element independently with probability ``p = σ`` is replaced
    by 0 (with probability ``zero_fraction``) or by ``±max|x|`` (random sign), ``max|x|``
    over the tensor. Exact values, gradient 1 (forward only). Draws three uniforms per
    element: fault, sign, stuck-at-zero."""

    name: ClassVar[str] = "stuck"
    acts_on: ClassVar[FrozenSet[Role]] = frozenset({Role.WEIGHTS})
    units: ClassVar[SigmaUnits] = SigmaUnits.PROBABILITY
    sigma_max: ClassVar[float] = 1.0
    sigma_means: ClassVar[str] = "a fault probability"
    draw: ClassVar[Draw] = Draw.UNIFORM3
    zero_fraction: float = 0.5
    """Share of the faulty elements stuck at 0 (the rest at ±max|x|, equal odds of sign)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "zero_fraction", check_param("zero_fraction", self.zero_fraction, high=1.0))

    def faults(self, x: Tensor, u: Sequence[Tensor], p: Any, group_dim: Optional[int] = None) -> Tensor:
        """The formula: ``x`` with the faults that the uniforms ``u`` and probability ``p``
        (a float, or a tensor broadcast against ``x``) give."""
        top = peak(x, group_dim)
        value = torch.where(u[2] < self.zero_fraction, torch.zeros_like(x), torch.where(u[1] < 0.5, top, -top))
        return torch.where(u[0] < p, value + (x - x.detach()), x)

    def apply(self, x, eps, sigma, rms=-1.0, out=None, group_dim=None):
        res = self.faults(x, eps, sigma)
        return out.copy_(res) if out is not None else res

    def apply_tensor(self, x, eps, sigma, rms, group_dim=None):
        return self.faults(x, eps, sigma, group_dim)


def noise_model(spec: Any, role: Optional[Role] = None, **params: Any) -> NoiseModel:
    """The model value for ``spec``: a ``NoiseModel`` (returned as is), or a name (a
    ``NoiseKind``, a ``WeightNoiseKind`` or their string) with the model's ``params``
    (``of_max`` for additive noise, ``zero_fraction`` for stuck-at faults; parameters a model
    does not have are refused). ``role``: the model must act on it.

    Raises:
        ValueError: an unknown name (the message lists the registered ones), a model that
            does not act on ``role``, or a parameter the model does not take."""
    if isinstance(spec, NoiseModel):
        model = spec
        if params:
            raise ValueError(f"noise_model got a model value {model!r} and also parameters {sorted(params)}")
    else:
        name = getattr(spec, "value", spec)
        cls = MODELS.get(name) if isinstance(name, str) else None
        if cls is None:
            names = ", ".join(sorted(m for m in MODELS if role is None or role in MODELS[m].acts_on))
            raise ValueError(f"unknown noise model {spec!r}; choose one of: {names}")
        fields = {f.name for f in dataclasses.fields(cls)}
        wrong = sorted(k for k in params if k not in fields)
        if wrong:
            takes = ", ".join(sorted(fields)) or "no parameters"
            raise ValueError(f"{cls.__name__} noise model takes {takes}, not {', '.join(wrong)}")
        model = cls(**params)
    if role is not None and role not in model.acts_on:
        names = ", ".join(sorted(m for m in MODELS if role in MODELS[m].acts_on))
        raise ValueError(f"the {model.name} noise model does not act on {role.value}; choose one of: {names}")
    return model
