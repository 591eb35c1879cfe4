"""Typed configuration: what to quantize, where to inject noise, which layers to touch.

Everything here is a frozen dataclass or an enum (the noise-model parts, ``WeightNoise`` and
its shorthands, are in ``noise_models`` and imported here). Strings are accepted only at the edges
(CLI, TOML files) and turned into these types at once by the ``parse`` helpers below.
No torch.fx in this module.
"""

from __future__ import annotations

import re
from dataclasses import InitVar, dataclass, field, replace
from enum import Enum
from typing import Any, Callable, Mapping, Optional, Union

from .checks import _check_finite_nonneg, check_sigma
from .noise_models import (ConverterConfig, WeightDriftConfig, WeightFaultConfig, WeightNoise, WeightNoiseConfig,
                           WeightNoiseKind, _model_value, _weight_chain, _weight_noise_from_dict,
                           _with_link, dataclass_from_dict, model_from_dict, model_to_dict)

__all__ = [
    "Scaling",
    "Frontend",
    "SiteKind",
    "AutocastOutput",
    "WeightNoiseKind",
    "QuantConfig",
    "NoiseConfig",
    "WeightNoiseConfig",
    "WeightNoise",
    "LayerConfig",
    "SiteRules",
    "HardenConfig",
    "check_sigma",
    "DEFAULT_NOISE_KINDS",
    "config_to_dict",
    "config_from_dict",
]

MIN_BITS, MAX_BITS = 2, 16


class Scaling(str, Enum):
    """How the step ``s`` of an activation quantizer is chosen (paper Sec. III-B)."""

    CONSTANT = "constant"
    """One fixed step ``s`` for every quantizer that follows an activation function."""
    DYNAMIC = "dynamic"
    """Each quantizer has its own step, initialised from statistics and then learned."""


class Frontend(str, Enum):
    """How ``harden`` captures the model's graph (``fxharden.core.trace``, ``fxharden.core.export``)."""

    FX = "fx"
    """torch.fx symbolic tracing; parts it cannot trace are opaque, their layers reached by the
    module route."""
    EXPORT = "export"
    """torch.export (needs ``example_inputs``): an ATen-level graph of the whole model, for
    models torch.fx cannot trace (Hugging Face transformers)."""
    AUTO = "auto"
    """torch.fx; when it leaves parts of the model opaque and ``example_inputs`` are given,
    torch.export of the whole model instead (if that fails, torch.fx with the module route)."""


class SiteKind(str, Enum):
    """The kind of graph node a site sits on; rules select sites by kind."""

    INPUT = "input"
    CONV = "conv"
    LINEAR = "linear"
    MATMUL = "matmul"
    ACTIVATION = "activation"
    POOL = "pool"
    NORM = "norm"
    ADD = "add"
    RECURRENT = "recurrent"
    """An LSTM, GRU or RNN layer or cell: noise after each of its matrix-vector products and at
    its output (``fxharden.core.recurrent``)."""
    OPAQUE = "opaque"
    """A submodule that could not be traced and is treated as one layer."""
    OTHER = "other"


DEFAULT_NOISE_KINDS = frozenset(
    {SiteKind.INPUT, SiteKind.CONV, SiteKind.LINEAR, SiteKind.ACTIVATION, SiteKind.POOL, SiteKind.OPAQUE,
     SiteKind.RECURRENT}
)
"""The paper's placement: the output of every input, conv, linear, activation and pooling layer,
and each matrix-vector product and the output of a recurrent layer (pooling includes a global
average spelled as a ``mean`` over the spatial dims, see ``fxharden.core.sites._global_mean``)."""


def check_bits(bits: Optional[int]) -> Optional[int]:
    """Validate a bit width: ``None`` (no quantization) or an int in 2..16."""
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int in {MIN_BITS}..{MAX_BITS} or None, got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"bits must be between {MIN_BITS} and {MAX_BITS} (or None for no quantization), got {bits}"
        )
    return bits


def check_scale(scale: Optional[float], name: str = "scale") -> Optional[float]:
    """Validate a quantization step: ``None`` or a finite float > 0."""
    if scale is None:
        return None
    value = _check_finite_nonneg(name, scale)
    if value == 0:
        raise ValueError(f"{name} must be > 0 (it is the quantization step s), got {scale!r}")
    return value


@dataclass(frozen=True)
class QuantConfig:
    """Uniform fake quantization of weights and activations (paper Eq. 3-5).

    Weights: symmetric signed grid, one step per output channel for convolutions and one
    per tensor for linear layers, computed from the current weights' range.
    Activations: one step per tensor, at the model input and after each activation function,
    on an unsigned grid after ReLU-like functions and a signed grid elsewhere.
    """

    bits: int = 8
    """Bit width of weights and activations (2..16)."""
    scaling: Scaling = Scaling.CONSTANT
    """Constant step for every post-activation quantizer, or learned (dynamic) steps."""
    scale: Optional[float] = 1.0
    """The constant step ``s`` (only with ``Scaling.CONSTANT``). Not a range: an 8-bit
    unsigned grid covers ``[0, 255 s]``, a 4-bit one ``[0, 15 s]``."""
    input_scale: Optional[float] = None
    """Step of the model-input quantizer; ``None`` takes it from input statistics."""
    weight_bits: Optional[int] = None
    """Bit width of weights if it differs from ``bits``; ``None`` means ``bits``."""
    calibration_steps: int = 30
    """Statistics-initialised steps use the running max of this many first batches (training,
    or eval mode for a model that has seen no training data; degenerate batches do not count;
    ``fxharden.calibrate_quantizers`` fixes them on real data)."""
    quantize_weights: bool = True
    """Quantize conv/linear weights (per-channel / per-tensor, symmetric)."""

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.bits is None:
            raise ValueError("QuantConfig.bits cannot be None; pass quant=None to disable quantization")
        if self.weight_bits is not None:
            check_bits(self.weight_bits)
        object.__setattr__(self, "scaling", Scaling(self.scaling))
        if self.scaling is Scaling.CONSTANT:
            if self.scale is None:
                raise ValueError("constant scaling needs a step: set scale=<float>, or use Scaling.DYNAMIC")
            check_scale(self.scale)
        elif self.scale is not None:
            raise ValueError(
                f"scale={self.scale} is only used with constant scaling; use scale=None for dynamic scaling"
            )
        check_scale(self.input_scale, "input_scale")
        if self.calibration_steps < 1:
            raise ValueError(f"calibration_steps must be >= 1, got {self.calibration_steps}")

    @property
    def w_bits(self) -> int:
        return self.weight_bits if self.weight_bits is not None else self.bits


class AutocastOutput(str, Enum):
    """The dtype of a noise site's output under bf16/fp16 autocast (the noise is drawn and
    added in float32 either way; without autocast a site returns its input's dtype)."""

    FLOAT32 = "float32"
    """float32: noise far below the low precision's spacing of an activation is kept (bf16
    keeps 8 significant bits: at 100 its spacing is 0.5), and the layers after the site read
    float32 until the next matmul casts to bf16."""
    INPUT = "input"
    """The input's dtype (bf16 where autocast computed the layer in bf16): rounded once, so the
    activations stay bf16 as in the plain model under autocast (half the memory traffic), and
    noise much smaller than the spacing of an activation is rounded away: the realised noise
    has variance ``σ² + Δ²/12`` for ``σ ≳ Δ`` (spacing ``Δ``) and vanishes for ``σ ≪ Δ``."""


@dataclass(frozen=True)
class NoiseConfig:
    """Noise on layer outputs, by default additive Gaussian ``N(0, sigma^2)`` (paper Fig. 1).

    Noise is forward-only: the gradient passes through unchanged.
    """

    sigma: float = 0.0
    """Initial noise strength at every site (change it later with ``set_noise``)."""
    kinds: frozenset = DEFAULT_NOISE_KINDS
    """Which site kinds get a noise node; add ``SiteKind.ADD`` for residual adds."""
    seed: int = 0
    """Base seed of the per-site ``torch.Generator`` streams; each site's stream is seeded
    with a hash of (seed, site name), so streams never overlap (``fxharden.noise.stream_seed``)."""
    model: Any = "additive"
    """The noise model at every site, a model value (``fxharden.core.noise.models``) or the
    name of a registered one that acts on activations: ``"additive"`` ``x + σε`` (the paper),
    ``"relative"`` ``x + σ·rms·ε``, ``"multiplicative"`` ``x(1 + σε)``. Always a value once
    the config is built."""
    autocast_output: AutocastOutput = AutocastOutput.FLOAT32
    """The dtype a site hands on under bf16/fp16 autocast (``AutocastOutput``)."""

    def __post_init__(self) -> None:
        check_sigma(self.sigma)
        object.__setattr__(self, "autocast_output", AutocastOutput(self.autocast_output))
        object.__setattr__(self, "kinds", frozenset(SiteKind(k) for k in self.kinds))
        object.__setattr__(self, "model", _model_value(self.model, "activations"))


@dataclass(frozen=True)
class LayerConfig:
    """What a rule does to a matched site. A rule whose value is ``None`` leaves the site alone.

    A field left at ``None`` is *not set*: the rule keeps what the less specific rules (or the
    defaults) decided for it, so ``by_type={nn.Linear: LayerConfig(quantize=False)}`` together
    with ``by_name={"fc": LayerConfig(noise=False)}`` gives ``fc`` no noise *and* no quantization.
    """

    noise: Optional[bool] = None
    """Insert a noise node at this site's output; ``None``: not set by this rule."""
    quantize: Optional[bool] = None
    """Quantize this site (its weights for conv/linear, its output for activations/input);
    ``None``: not set by this rule."""

    def __post_init__(self) -> None:
        for name in ("noise", "quantize"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"LayerConfig.{name} must be True, False or None (not set), got {value!r}")

    def over(self, base: "LayerConfig") -> "LayerConfig":
        """This rule applied on top of ``base``: the fields set here win, the others come from ``base``."""
        return LayerConfig(noise=base.noise if self.noise is None else self.noise,
                           quantize=base.quantize if self.quantize is None else self.quantize)


TypeKey = Union[type, Callable[..., Any], str]


@dataclass(frozen=True)
class SiteRules:
    """Per-layer overrides, resolved with this precedence (later wins, field by field):

    1. the defaults: sites whose kind is in ``NoiseConfig.kinds`` get noise, quantizers
       go where the method puts them;
    2. ``by_type``: keyed by module class (matches subclasses) or by function/method
       target (``torch.add``, ``"relu"`` for ``x.relu()``);
    3. ``by_regex``: keyed by a regular expression matched (``re.fullmatch``) against the
       dotted site name;
    4. ``by_name``: keyed by the exact dotted site name.

    Each matching rule overrides only the ``LayerConfig`` fields it sets (not ``None``);
    among several matching rules of one kind, the later one wins. A value of ``None`` means
    "leave this layer alone": no noise, no quantization, no weight noise; a more specific
    ``LayerConfig`` that matches the same site then starts from "no noise, no quantization".

    ``harden`` refuses a ``by_name`` key or a ``by_regex`` pattern that matches no site of
    the model (a typo would otherwise be silently ignored); ``fxharden.harden_report(hm).sites``
    lists the site names. ``by_type`` keys may match nothing (one rule set can serve many models).
    """

    by_type: tuple = ()
    by_regex: tuple = ()
    by_name: tuple = ()

    @staticmethod
    def _items(value: Any) -> tuple:
        if isinstance(value, Mapping):
            return tuple(value.items())
        return tuple(value)

    def __post_init__(self) -> None:
        for attr in ("by_type", "by_regex", "by_name"):
            items = self._items(getattr(self, attr))
            for key, val in items:
                if val is not None and not isinstance(val, LayerConfig):
                    raise TypeError(f"SiteRules.{attr}[{key!r}] must be a LayerConfig or None, got {val!r}")
            object.__setattr__(self, attr, items)
        for pattern, _ in self.by_regex:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"SiteRules.by_regex: invalid regular expression {pattern!r}: {err}") from None


@dataclass(frozen=True)
class HardenConfig:
    """Everything ``harden`` needs. ``harden(model, bits=..., scale=...)`` builds one of these."""

    quant: Optional[QuantConfig] = field(default_factory=QuantConfig)
    """Quantization, or ``None`` for noise sites only."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    weight_noise: Any = ()
    """The noise models on conv/linear weights, an ordered chain of ``WeightNoise`` links (one
    ``WeightNoise`` or a ``WeightNoiseConfig`` is accepted too); always a tuple of links once
    the config is built."""
    rules: SiteRules = field(default_factory=SiteRules)
    leaf_modules: tuple = ()
    """Module classes (or dotted names) the tracer must not enter: they become one layer."""
    strict: bool = False
    """Raise ``UntraceableModelError`` instead of treating untraceable submodules as opaque."""
    adc: Optional[ConverterConfig] = None
    """An ADC at every conv/linear output that has a site (after its noise); ``None``: none."""
    dac: Optional[ConverterConfig] = None
    """A DAC at the (first) input of every conv/linear site; ``None``: none."""
    frontend: Frontend = Frontend.AUTO
    """How the graph is captured: torch.fx, torch.export, or fx first (see ``Frontend``)."""
    weight_faults: InitVar[Optional[WeightFaultConfig]] = None
    """Shorthand for the last link ``WeightNoise(StuckAt(zero_fraction), p, name="faults")``."""
    weight_drift: InitVar[Optional[WeightDriftConfig]] = None
    """Shorthand for the first link ``WeightNoise(LogNormal(), σ(t), name="drift")``."""

    def __post_init__(self, weight_faults: Optional[WeightFaultConfig] = None,
                      weight_drift: Optional[WeightDriftConfig] = None) -> None:
        try:
            object.__setattr__(self, "frontend", Frontend(self.frontend))
        except ValueError:
            raise ValueError(f"frontend must be one of {[f.value for f in Frontend]}, got {self.frontend!r}") from None
        if self.quant is not None and not isinstance(self.quant, QuantConfig):
            raise TypeError(f"quant must be a QuantConfig or None, got {self.quant!r}")
        for name, cls, value in (("adc", ConverterConfig, self.adc), ("dac", ConverterConfig, self.dac),
                                 ("weight_faults", WeightFaultConfig, weight_faults),
                                 ("weight_drift", WeightDriftConfig, weight_drift)):
            if value is not None and not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__} or None, got {value!r}")
        chain = _weight_chain(self.weight_noise)
        if weight_drift is not None:
            chain = _with_link(chain, WeightNoise("lognormal", weight_drift.sigma, "drift"), first=True)
        if weight_faults is not None:
            model = _model_value("stuck", "weights", zero_fraction=weight_faults.zero_fraction)
            chain = _with_link(chain, WeightNoise(model, weight_faults.p, "faults"), first=False)
        object.__setattr__(self, "weight_noise", chain)
        object.__setattr__(self, "leaf_modules", tuple(self.leaf_modules))

    @classmethod
    def from_shorthand(
        cls,
        bits: Optional[int] = None,
        scale: Optional[float] = 1.0,
        sigma: float = 0.0,
        **kwargs: Any,
    ) -> "HardenConfig":
        """The keyword form of ``harden``: ``bits=None`` disables quantization,
        ``scale=None`` selects dynamic scaling, otherwise ``scale`` is the constant step."""
        check_bits(bits)
        quant = None
        if bits is not None:
            scaling = Scaling.DYNAMIC if scale is None else Scaling.CONSTANT
            quant = QuantConfig(bits=bits, scaling=scaling, scale=scale)
        else:
            check_scale(scale)
        return cls(quant=quant, noise=NoiseConfig(sigma=sigma), **kwargs)

    def replace(self, **changes: Any) -> "HardenConfig":
        return replace(self, **changes)

    @property
    def perturbs_weights(self) -> bool:
        """Whether any weight noise model is configured (a link of ``weight_noise``)."""
        return bool(self.weight_noise)

    def weight_link(self, site: str) -> Optional[WeightNoise]:
        """The link of ``weight_noise`` whose site ``site`` is (``<layer>.weight<suffix>``)."""
        return next((x for x in self.weight_noise if site.endswith(f".weight{x.suffix}") or site == f"weight{x.suffix}"),
                    None)


def _ref_to_str(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    return f"{obj.__module__}:{obj.__qualname__}"


_MOVED_MODULES = {
    **{f"fxharden.{m}": f"fxharden.core.{m}" for m in ("config", "quant", "noise", "layers", "trace", "sites",
                                                        "passes", "harden")},
    "fxharden.models": "fxharden.zoo.networks", "fxharden.data": "fxharden.zoo.data",
}
"""Where the modules named in configs saved by fxharden 0.1 (a flat package) live now."""


def _ref_from_str(ref: str) -> Any:
    if ":" not in ref:
        return ref  # a dotted module name or a method name such as "relu"
    import importlib

    module, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(_MOVED_MODULES.get(module, module))
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _layer_to_dict(value: Optional[LayerConfig]) -> Optional[dict]:
    return None if value is None else {"noise": value.noise, "quantize": value.quantize}


def config_to_dict(cfg: HardenConfig) -> dict:
    """A JSON-serialisable dict of ``cfg`` (inverse: ``config_from_dict``). Classes and
    functions in rules are stored as ``"module:qualname"``."""
    q = cfg.quant
    return {
        "quant": None if q is None else {
            "bits": q.bits, "scaling": q.scaling.value, "scale": q.scale, "input_scale": q.input_scale,
            "weight_bits": q.weight_bits, "calibration_steps": q.calibration_steps,
            "quantize_weights": q.quantize_weights,
        },
        "noise": {"sigma": cfg.noise.sigma, "kinds": sorted(k.value for k in cfg.noise.kinds),
                  "seed": cfg.noise.seed, "model": model_to_dict(cfg.noise.model),
                  "autocast_output": cfg.noise.autocast_output.value},
        **{name: None if getattr(cfg, name) is None else getattr(cfg, name).to_dict() for name in ("adc", "dac")},
        "weight_noise": [{"model": model_to_dict(x.model), "sigma": x.sigma, "name": x.name}
                         for x in cfg.weight_noise],
        "rules": {
            attr: [[_ref_to_str(k), _layer_to_dict(v)] for k, v in getattr(cfg.rules, attr)]
            for attr in ("by_type", "by_regex", "by_name")
        },
        "leaf_modules": [_ref_to_str(m) for m in cfg.leaf_modules],
        "strict": cfg.strict,
        "frontend": cfg.frontend.value,
    }


def config_from_dict(data: Mapping[str, Any]) -> HardenConfig:
    """Rebuild a ``HardenConfig`` from ``config_to_dict`` output.

    Raises:
        ValueError: the dict does not describe a valid configuration.
    """
    try:
        q = data.get("quant")
        rules = data.get("rules", {})

        def layer(v: Optional[dict]) -> Optional[LayerConfig]:
            return None if v is None else LayerConfig(**v)

        return HardenConfig(
            quant=None if q is None else QuantConfig(**{**q, "scaling": Scaling(q["scaling"])}),
            noise=NoiseConfig(sigma=data["noise"]["sigma"], kinds=frozenset(data["noise"]["kinds"]),
                              seed=data["noise"].get("seed", 0),
                              model=model_from_dict(data["noise"].get("model", "additive"), "activations"),
                              autocast_output=data["noise"].get("autocast_output", "float32")),
            adc=dataclass_from_dict(ConverterConfig, data.get("adc")),
            dac=dataclass_from_dict(ConverterConfig, data.get("dac")),
            weight_faults=dataclass_from_dict(WeightFaultConfig, data.get("weight_faults")),
            weight_drift=dataclass_from_dict(WeightDriftConfig, data.get("weight_drift")),
            weight_noise=_weight_noise_from_dict(data.get("weight_noise", ())),
            rules=SiteRules(
                by_type=tuple((_ref_from_str(k), layer(v)) for k, v in rules.get("by_type", [])),
                by_regex=tuple((k, layer(v)) for k, v in rules.get("by_regex", [])),
                by_name=tuple((k, layer(v)) for k, v in rules.get("by_name", [])),
            ),
            leaf_modules=tuple(_ref_from_str(m) for m in data.get("leaf_modules", [])),
            strict=bool(data.get("strict", False)),
            frontend=Frontend(data.get("frontend", Frontend.AUTO.value)),
        )
    except (KeyError, TypeError, AttributeError, ImportError) as err:
        raise ValueError(f"not a valid fxharden harden config: {type(err).__name__}: {err}") from None
