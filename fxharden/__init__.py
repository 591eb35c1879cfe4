"""fxharden: make any PyTorch model survive noisy computation.

Rewrites a model's torch.fx graph with fake-quantization and noise-injection nodes, trains
it to be robust, and measures robustness as the midpoint noise level.

The package is layered (each layer imports only the ones before it):
``core`` (the graph transformation) < ``zoo`` (model and data sources) < ``measure``
(sweeps, the midpoint fit, results) < ``training`` < ``experiments`` (TOML experiments,
executors) < ``cli``. This module is the public surface; names load on first use so that
``import fxharden`` and ``fxharden --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "core.config": ("AutocastOutput", "Frontend", "HardenConfig", "LayerConfig", "NoiseConfig", "QuantConfig", "Scaling", "SiteKind", "SiteRules",
                    "WeightNoise", "WeightNoiseConfig", "WeightNoiseKind"),
    "core.noise.models": ("NoiseModel", "Additive", "Relative", "Multiplicative", "LogNormal", "StuckAt"),
    "core.noise.device": ("PCM", "ReRamCMO"),
    "core.harden": ("HardenedModule", "HardenReport", "harden", "harden_report", "noise_sites", "seed_noise",
                    "set_noise", "set_weight_noise"),
    "core.noise_models": ("NoiseKind", "ConverterConfig", "RangeCalibration", "WeightFaultConfig", "WeightDriftConfig"),
    "core.converters": ("ConverterError",),
    "core.hardware": ("HardwareConfig", "Placement", "hardware_preset"),
    "core.calibrate": ("calibrate_noise", "calibrate_quantizers"),
    "core.quant": ("frozen_weights", "quant_off"),
    "core.exactness": ("ExactnessError", "check_exact"),
    "core.signature": ("SpecialisedArgumentError",),
    "core.trace": ("UntraceableModelError",),
    "core.export": ("ExportError",),
    "measure.midpoint": ("FitStatus", "MidpointFit", "MidpointModel", "Quote", "QuoteKind", "fit_midpoint"),
    "measure.options": ("FitOptions", "SweepMode"),
    "measure.results": ("SweepResult", "load_result"),
    "measure.sweep_config": ("SweepConfig", "WeightDraws"),
    "measure.sweep": ("sweep",),
    "measure.axis_options": ("Axis",),
    "measure.axes": ("AxisConfig", "sweep_axis"),
    "measure.axis_result": ("AxisResult", "load_axis_result"),
    "measure.scores": ("Metric",),
    "measure.budget": ("BudgetError", "BudgetResult", "budget"),
    "measure.noise_cost": ("CostModel",),
    "training.train": ("NoiseSchedule", "TrainConfig", "TrainResult", "train"),
    "experiments.reproduce": ("ReproduceResult", "reproduce"),
    "zoo.checkpoint": ("load_checkpoint", "save_checkpoint"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'fxharden' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
