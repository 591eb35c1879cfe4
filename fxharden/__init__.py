"""fxharden: make any PyTorch model survive noisy computation.

Rewrites a model's torch.fx graph with fake-quantization and noise-injection nodes, trains
it to be robust, and measures robustness as the midpoint noise level.
"""

from .config import (
    HardenConfig,
    LayerConfig,
    NoiseConfig,
    QuantConfig,
    Scaling,
    SiteKind,
    SiteRules,
    WeightNoiseConfig,
    WeightNoiseKind,
)
from .harden import HardenedModule, HardenReport, harden, harden_report, noise_sites, seed_noise, set_noise
from .trace import UntraceableModelError
from .metrics import FitStatus, MidpointFit, fit_midpoint
from .results import SweepResult, load_result
from .sweep import SweepConfig, SweepMode, sweep
from .train import NoiseSchedule, TrainConfig, TrainResult, train
from .reproduce import ReproduceResult, reproduce
from .checkpoint import load_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "FitStatus",
    "MidpointFit",
    "NoiseSchedule",
    "ReproduceResult",
    "SweepConfig",
    "SweepMode",
    "SweepResult",
    "TrainConfig",
    "TrainResult",
    "fit_midpoint",
    "load_checkpoint",
    "load_result",
    "reproduce",
    "save_checkpoint",
    "sweep",
    "train",
    "HardenConfig",
    "HardenReport",
    "HardenedModule",
    "LayerConfig",
    "NoiseConfig",
    "QuantConfig",
    "Scaling",
    "SiteKind",
    "SiteRules",
    "UntraceableModelError",
    "WeightNoiseConfig",
    "WeightNoiseKind",
    "harden",
    "harden_report",
    "noise_sites",
    "seed_noise",
    "set_noise",
]
