"""The hardware a network runs on, as one typed value: ``HardwareConfig`` (the weight-noise
chain of its devices, the noise at its layer outputs, its converters, where the noise goes)
and the named presets the CLI and recipe files take (``hardware_preset``).

A ``HardwareConfig`` maps onto a ``HardenConfig`` (``HardwareConfig.harden_config``): it sets
the weight-noise chain, the activation noise model and strength, the placement of the noise
sites, the ADC and the DAC, and keeps everything else of the base config (quantization,
rules, frontend). Strings (preset names, TOML tables) are read at the edges only
(``hardware_preset``, ``hardware_from_dict``, ``load_hardware``). No torch here: the noise
models load when a preset is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from .config import DEFAULT_NOISE_KINDS, HardenConfig, SiteKind
from .noise_models import (ConverterConfig, WeightNoise, _model_value, _weight_chain, _weight_noise_from_dict,
                           check_sigma, model_from_dict, model_to_dict)

__all__ = ["Placement", "HardwareConfig", "PRESETS", "SECONDS", "hardware_preset", "hardware_from_dict",
           "hardware_to_dict", "load_hardware", "resolve_hardware"]

SECONDS = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 month": 30 * 86400.0, "1 yr": 365.25 * 86400.0}
"""The standard times after programming (seconds) and their labels: 1 second, 1 hour, 1 day,
1 month (30 days), 1 year (365.25 days)."""


class Placement(str, Enum):
    """Where activation noise sites go (``NoiseConfig.kinds``)."""

    PAPER = "paper"
    """The paper's placement (``DEFAULT_NOISE_KINDS``): inputs, conv, linear, activation,
    pooling and recurrent outputs."""
    ANALOG_TILE = "analog-tile"
    """Only where an analog tile computes: the outputs of conv and linear layers (the
    matrix-vector products); inputs, activations and pooling stay digital and noise-free."""

    @property
    def kinds(self) -> frozenset:
        """The site kinds that get a noise node."""
        return DEFAULT_NOISE_KINDS if self is Placement.PAPER else frozenset({SiteKind.CONV, SiteKind.LINEAR})


@dataclass(frozen=True)
class HardwareConfig:
    """The hardware a network is hardened for; ``None`` fields keep the base config's setting.

    Build one from a preset (``hardware_preset("pcm")``), a TOML table (``hardware_from_dict``)
    or directly: ``HardwareConfig(weight_noise=(WeightNoise(PCM(t=86400.0), 1.0, "pcm"),))``.
    """

    weight_noise: Any = ()
    """The ordered weight-noise chain (``WeightNoise`` links) of the devices holding the
    weights; ``()``: the base config's chain."""
    noise_model: Any = None
    """The activation noise model at every noise site (a model value or a registered name),
    e.g. the output noise of an analog matrix-vector product; ``None``: the base config's."""
    noise_sigma: Optional[float] = None
    """The activation noise strength (in the model's units); ``None``: the base config's."""
    placement: Optional[Placement] = None
    """Which sites get activation noise; ``None``: the base config's kinds."""
    adc: Optional[ConverterConfig] = None
    """The ADC at conv/linear outputs; ``None``: the base config's."""
    dac: Optional[ConverterConfig] = None
    """The DAC at conv/linear inputs; ``None``: the base config's."""
    name: str = field(default="", compare=False)
    """The preset it came from, ``""`` for a custom one (a label: it changes nothing, and
    equality ignores it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_noise", _weight_chain(self.weight_noise))
        if self.noise_model is not None:
            object.__setattr__(self, "noise_model", _model_value(self.noise_model, "activations"))
        if self.noise_sigma is not None:
            object.__setattr__(self, "noise_sigma", check_sigma(self.noise_sigma))
            if self.noise_model is not None:
                self.noise_model.check_sigma([self.noise_sigma], "hardware output noise")
        if self.placement is not None:
            try:
                object.__setattr__(self, "placement", Placement(self.placement))
            except ValueError:
                raise ValueError(f"placement must be one of {[p.value for p in Placement]}, "
                                 f"got {self.placement!r}") from None
        for field_name in ("adc", "dac"):
            value = getattr(self, field_name)
            if value is not None and not isinstance(value, ConverterConfig):
                raise TypeError(f"HardwareConfig.{field_name} must be a ConverterConfig or None, got {value!r}")

    def harden_config(self, base: Optional[HardenConfig] = None) -> HardenConfig:
        """``base`` (default: ``HardenConfig(quant=None)``, noise sites only) with this hardware.

        Returns:
            A new ``HardenConfig``: the weight-noise chain, the activation noise model, its
            strength and kinds, the ADC and DAC replaced where this config sets them.
        """
        base = base if base is not None else HardenConfig(quant=None)
        noise = base.noise
        changes: Dict[str, Any] = {}
        if self.noise_model is not None:
            changes["model"] = self.noise_model
        if self.noise_sigma is not None:
            changes["sigma"] = self.noise_sigma
        if self.placement is not None:
            changes["kinds"] = self.placement.kinds
        if changes:
            noise = replace(noise, **changes)
        return replace(base, noise=noise, weight_noise=self.weight_noise or base.weight_noise,
                       adc=self.adc if self.adc is not None else base.adc,
                       dac=self.dac if self.dac is not None else base.dac)


def _converter_to_dict(c: ConverterConfig) -> Dict[str, Any]:
    return {k: v for k, v in c.to_dict().items() if v is not None}


def hardware_to_dict(hw: HardwareConfig) -> Dict[str, Any]:
    """A TOML/JSON-ready dict of ``hw`` (no ``None``: unset fields are left out; inverse:
    ``hardware_from_dict``)."""
    out: Dict[str, Any] = {}
    if hw.name:
        out["name"] = hw.name
    if hw.weight_noise:
        out["weight_noise"] = [{"model": model_to_dict(x.model), "sigma": x.sigma, "name": x.name}
                               for x in hw.weight_noise]
    if hw.noise_model is not None:
        out["noise_model"] = model_to_dict(hw.noise_model)
    if hw.noise_sigma is not None:
        out["noise_sigma"] = hw.noise_sigma
    if hw.placement is not None:
        out["placement"] = hw.placement.value
    for key in ("adc", "dac"):
        if getattr(hw, key) is not None:
            out[key] = _converter_to_dict(getattr(hw, key))
    return out


_KEYS = ("preset", "name", "weight_noise", "noise_model", "noise_sigma", "placement", "adc", "dac")


def hardware_from_dict(data: Mapping[str, Any], where: str = "[hardware]") -> HardwareConfig:
    """A ``HardwareConfig`` from a table: ``preset = "<name>"`` and/or the fields of
    ``hardware_to_dict`` (which override the preset's).

    Raises:
        ValueError: an unknown key, preset or model, or a bad value (the message names ``where``).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a table, got {data!r}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {list(_KEYS)}")
    try:
        hw = hardware_preset(data["preset"]) if "preset" in data else HardwareConfig()
        changes: Dict[str, Any] = {}
        if "weight_noise" in data:
            changes["weight_noise"] = _weight_noise_from_dict(list(data["weight_noise"]))
        if "noise_model" in data:
            changes["noise_model"] = model_from_dict(data["noise_model"], "activations")
        for key in ("noise_sigma", "placement", "name"):
            if key in data:
                changes[key] = data[key]
        for key in ("adc", "dac"):
            if key in data:
                changes[key] = ConverterConfig(**data[key])
        return replace(hw, **changes)
    except (TypeError, KeyError) as err:
        raise ValueError(f"{where}: {type(err).__name__}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


DAY = SECONDS["1 day"]


def _needs(preset: str, model: str, role: str, **params: Any) -> Any:
    """The model ``model`` with ``params`` that a preset is built from; refused with the preset's
    name when this fxharden does not have the model or its parameters (a preset never drops a
    part of the hardware silently)."""
    from .noise.models import MODELS

    if model not in MODELS:
        raise ValueError(f"hardware preset {preset!r} needs the noise model {model!r}, which this fxharden does not "
                         f"have (its models: {', '.join(sorted(MODELS))}); build a HardwareConfig from the models "
                         "it has, or use another preset")
    missing = sorted(set(params) - set(MODELS[model].__dataclass_fields__))
    if missing:
        raise ValueError(f"hardware preset {preset!r} needs the {model!r} noise model with {', '.join(missing)}, "
                         "which this fxharden's model does not take; build a HardwareConfig from what it has, or use "
                         "another preset")
    return _model_value(model, role, **params)


def _converter(preset: str, **params: Any) -> ConverterConfig:
    """A converter a preset needs, refused with the preset's name when ``ConverterConfig`` lacks an option."""
    missing = sorted(set(params) - set(ConverterConfig.__dataclass_fields__))
    if missing:
        raise ValueError(f"hardware preset {preset!r} needs converters with {', '.join(missing)}, which this "
                         "fxharden's ConverterConfig does not have; build a HardwareConfig from what it has")
    return ConverterConfig(**params)


def _pcm() -> HardwareConfig:
    return HardwareConfig(weight_noise=(WeightNoise(_needs("pcm", "pcm", "weights", t=DAY), 1.0, "pcm"),), name="pcm")


AIHWKIT_INPUT_RANGE = 3.0
"""The DAC bound (input range) of the ``aihwkit-inference`` preset: aihwkit-lightning's initial
input range (``InputRangeParameter.init_value``); the output noise scales with it."""


def _aihwkit_inference() -> HardwareConfig:
    p = "aihwkit-inference"
    return HardwareConfig(
        weight_noise=(WeightNoise(_needs(p, "pcm", "weights", t=DAY), 1.0, "pcm"),),
        noise_model=_needs(p, "out_noise", "activations", per_channel=True), noise_sigma=0.04,
        placement=Placement.ANALOG_TILE,
        dac=_converter(p, bits=8, symmetric=True, bound=AIHWKIT_INPUT_RANGE),
        adc=_converter(p, bits=8, symmetric=True, before_bias=True), name=p)


def _analog_tile() -> HardwareConfig:
    return HardwareConfig(placement=Placement.ANALOG_TILE, name="analog-tile")


PRESETS: Dict[str, Tuple[Callable[[], HardwareConfig], str]] = {
    "aihwkit-inference": (_aihwkit_inference, "aihwkit's inference setting: PCM weights at t = 1 day (each "
                                              "layer mapped by its max|w|), output noise 0.04 per channel at "
                                              "conv/linear outputs, 8-bit DAC (input range 3) and ADC"),
    "pcm": (_pcm, "PCM device noise on the weights at t = 1 day (sigma 1: the published device), nothing else"),
    "analog-tile": (_analog_tile, "activation noise only where an analog tile computes: conv/linear outputs"),
}
"""Preset name -> (builder, one-line description). Built on use, so a preset whose model is
missing fails when it is asked for, naming the model."""


def hardware_preset(name: str) -> HardwareConfig:
    """The ``HardwareConfig`` of preset ``name`` (``PRESETS``).

    Raises:
        ValueError: an unknown preset (the message lists them), or a preset whose noise model
            this fxharden does not have.
    """
    entry = PRESETS.get(str(getattr(name, "value", name)))
    if entry is None:
        listed = "; ".join(f"{k}: {d}" for k, (_, d) in PRESETS.items())
        raise ValueError(f"unknown hardware preset {name!r}; the presets are {listed} (or give a TOML file with a "
                         "[hardware] table)")
    return entry[0]()


PathLike = Union[str, os.PathLike]


def load_hardware(path: PathLike) -> HardwareConfig:
    """A ``HardwareConfig`` from a TOML file: its ``[hardware]`` table, or its top level.

    Raises:
        FileNotFoundError: no such file. ValueError: invalid TOML or an invalid table.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no hardware file at {path}; give a preset ({', '.join(PRESETS)}) or a TOML file "
                                "with a [hardware] table")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    return hardware_from_dict(data.get("hardware", data), f"{path} [hardware]")


def resolve_hardware(spec: Union[str, PathLike, HardwareConfig]) -> HardwareConfig:
    """A ``HardwareConfig`` from a value, a preset name or a path to a ``.toml`` file (the CLI's
    ``--hardware``)."""
    if isinstance(spec, HardwareConfig):
        return spec
    text = os.fspath(spec)
    if text in PRESETS or not (text.endswith(".toml") or os.sep in text or Path(text).is_file()):
        return hardware_preset(text)
    return load_hardware(text)

