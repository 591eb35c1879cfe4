"""Noise: the models as values (``models``), the random streams (``streams``), the one noise
module (``module``; its batch groups in ``batch``) and its chains (``chain``); the verbs that
act on a hardened model's noise are in ``verbs`` (imported on its own: it reads hardened
models, a layer above these)."""

from .batch import GROUPS_HINT, BatchBroadcast, GroupDimError, expand_batch
from .chain import DRIFT_SUFFIX, FAULTS_SUFFIX, NoiseChain, noise_off, weight_models, weight_noise_for
from .models import (FUNCTIONAL, IN_PLACE, MODELS, Additive, Draw, LogNormal, Multiplicative, NoiseModel, Relative,
                     Role, SigmaUnits, StuckAt, noise_model, register)
from .device import PCM, ReRamCMO
from .module import Noise, NoiseSetting, SigmaLike
from .mvm import OutNoise
from .streams import LANE_MIN, LANES, CounterStream, EagerStream, _normal_, stream_seed  # noqa: F401 (benchmarks)

__all__ = ["Noise", "NoiseChain", "NoiseSetting", "SigmaLike", "stream_seed", "GroupDimError", "noise_off",
           "NoiseModel", "Additive", "Relative", "Multiplicative", "LogNormal", "StuckAt", "PCM", "ReRamCMO", "OutNoise",
           "MODELS", "register",
           "noise_model", "Role", "SigmaUnits", "Draw", "EagerStream", "CounterStream", "LANES", "LANE_MIN",
           "IN_PLACE", "FUNCTIONAL", "weight_models", "weight_noise_for", "DRIFT_SUFFIX", "FAULTS_SUFFIX",
           "GROUPS_HINT", "BatchBroadcast", "expand_batch"]
