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

__version__ = "0.1.0"

__all__ = [
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
