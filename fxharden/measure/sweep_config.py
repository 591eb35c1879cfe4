"""``SweepConfig``: what a sweep measures (grid, repeats, mode, sites) and how (batching,
seed, device)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ..core.config import check_sigma
from .options import SweepMode, Units

__all__ = ["SweepConfig", "WeightDraws", "CHUNK_LEVELS", "FORWARD_IMAGES", "round_sigma"]

CHUNK_LEVELS = {"cpu": 4, "cuda": 16}
"""Noise levels measured together when ``points_per_forward`` is automatic:
``points_per_forward = CHUNK_LEVELS × repeats`` (the adaptive coarse pass measures that many
levels per wave, and the levels of one repeat share their draws)."""
FORWARD_IMAGES = {"cpu": 512, "cuda": 16384}
"""The most images (replicas included) in one forward pass when ``forward_images`` is
automatic. On a CPU a replicated forward of 2,048 images costs more per image than one of
512 (larger activations, more memory traffic): ``benchmarks/sweep_speed.py --cost-only
--forward-images 2048,1024,512,256``."""



class WeightDraws(str, Enum):
    """How often a sweep draws the weight noise (additive, drift, faults) of a network."""

    REPEAT = "repeat"
    """One draw per repeat, for the whole data set: a repeat is one programmed chip, and every
    batch and slice of the data is evaluated on the same weights, so the spread over repeats is
    the chip-to-chip spread whatever ``points_per_forward``, ``forward_images`` or the device."""
    FORWARD = "forward"
    """A new draw in every forward pass (the slice of ``forward_images // points_per_forward``
    images it holds): the spread over repeats shrinks with the number of slices, so it depends
    on the batching and the device. For training-like noise that is fresh per evaluation."""


@dataclass(frozen=True)
class SweepConfig:
    """Everything ``sweep`` needs besides the networks and the data."""

    sigmas: Optional[Tuple[float, ...]] = None
    """Explicit noise levels (>= 0; fits use those > 0). ``None``: a log grid from
    ``sigma_min`` to ``sigma_max``. The clean accuracy (sigma 0) is always measured."""
    sigma_min: float = 1e-3
    sigma_max: float = 10.0
    points: int = 20
    """Size of the default grid of a fixed-grid (non-adaptive) sweep."""
    repeats: int = 5
    """Noise draws per point and network."""
    mode: SweepMode = SweepMode.GLOBAL
    sites: Optional[Tuple[str, ...]] = None
    """Only these noise sites (exact names or ``re.fullmatch`` patterns); ``None``: all."""
    batch_size: int = 256
    """Data images per batch (a forward pass holds ``points_per_forward`` replicas of the
    batch, or of a slice of it: see ``forward_images``)."""
    points_per_forward: Optional[int] = None
    """Items (site, sigma, repeat) per forward pass; ``None``: ``CHUNK_LEVELS × repeats``."""
    forward_images: Optional[int] = None
    """The most images in one forward pass, replicas included: each batch is measured in
    slices of ``max(1, forward_images // points_per_forward)`` images. ``None``:
    ``FORWARD_IMAGES`` of the device (CPU 512, CUDA 16,384). What a point measures does not
    depend on it, only the random numbers do (weight noise: see ``weight_draws``)."""
    shared_noise: bool = True
    """Common random numbers: within one forward pass, the (sigma, repeat) items that differ
    only in sigma share one standard-normal draw per noise site, each scaled by its own sigma
    (per point the noise is still i.i.d. N(0, sigma^2); different repeats stay independent).
    Cheaper, and neighbouring sigma points are compared on the same draw. Weight noise
    likewise: the sigma points measured together (one chunk of ``points_per_forward`` items)
    share one weight draw per repeat (adjacent items with one weight run as one call).
    ``False``: every item draws its own noise."""
    seed: int = 0
    device: Optional[str] = None
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``None``/``"auto"``: CUDA when available."""
    adaptive: Optional[bool] = None
    """Coarse pass, then refinement around μ; ``None``: adaptive unless ``sigmas`` is given."""
    coarse_points: int = 7
    """Adaptive: points of the coarse log grid (an explicit ``sigmas`` replaces it)."""
    refine_points: int = 4
    """Adaptive: points added per site and refinement round."""
    refine_rounds: int = 2
    extend_to: Optional[float] = 1000.0
    """Adaptive: keep raising sigma past the grid (same log step) while accuracy is above
    chance, up to this sigma; ``None``: never."""
    chance: Optional[float] = None
    """Accuracy of guessing; ``None``: ``1 / number of classes`` (from the model output)."""
    max_images: Optional[int] = None
    """Use only the first ``max_images`` images of the data."""
    weight_noise_at_zero: bool = False
    """Networks with weight noise: keep it at sigma-0 points and in the clean accuracy too.
    By default the clean pass and sigma-0 points are noise-free; every point with sigma > 0
    gets the network's weight noise (drawn as ``weight_draws`` says)."""
    weight_draws: WeightDraws = WeightDraws.REPEAT
    """Networks with weight noise: one weight draw per (point, repeat) for the whole data set,
    a programmed chip (``"repeat"``, default), or a new one in every forward pass
    (``"forward"``). With ``shared_noise`` the points of one chunk share a repeat's draw."""
    units: Units = Units.ABSOLUTE
    """The unit of the σ grid: absolute (the paper) or relative to each site's clean RMS
    (noise std = σ · rms_site; multiplicative noise is dimensionless and ignores it)."""
    sigma_map: Optional[Tuple[Tuple[str, float], ...]] = None
    """A per-site noise allocation (e.g. from ``fxharden.budget``): site ``s`` gets ``σ ·
    sigma_map[s]`` and sites not in the map get no noise (kept digital), so σ = 1 measures
    the allocation itself. A ``{site: factor}`` mapping is accepted. ``None``: every site
    gets σ."""
    check_exact: Optional[bool] = None
    """Before measuring, check on the first batch of every input signature of the data that each
    network hardened here from a plain model reproduces it without noise and quantization
    (``fxharden.core.exactness``: one plain forward per signature); a mismatch stops the sweep
    naming the site. ``None``: on unless the environment sets ``FXHARDEN_CHECK_EXACT=0``.
    Not part of the sweep's identity."""
    compile_backend: Optional[Any] = None
    """Measure with ``torch.compile(model, backend=...)`` (a backend name or callable) (``"inductor"``: each site's quantizer
    and noise fused into the kernels around it, ``benchmarks/fusion_check.py``); ``None``:
    eagerly. The compiled noise is another random stream than the eager one (the same
    statistics), so results record the backend. Activation noise only: a network with weight
    noise, drift or faults is measured eagerly (a ``ValueError`` says so)."""

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("mode", SweepMode(self.mode))
        try:
            set_("weight_draws", WeightDraws(self.weight_draws))
        except ValueError:
            raise ValueError(f"weight_draws must be one of {[w.value for w in WeightDraws]}, "
                             f"got {self.weight_draws!r}") from None
        try:
            set_("units", Units(self.units))
        except ValueError:
            raise ValueError(f"units must be 'absolute' or 'relative', got {self.units!r}") from None
        if self.sigma_map is not None:
            items = self.sigma_map.items() if isinstance(self.sigma_map, Mapping) else self.sigma_map
            set_("sigma_map", tuple(sorted((str(k), check_sigma(float(v))) for k, v in items)))
            if not any(v > 0 for _, v in self.sigma_map):
                raise ValueError("sigma_map gives every site a factor of 0: nothing to sweep")
        set_("adaptive", self.sigmas is None if self.adaptive is None else bool(self.adaptive))
        if self.sigmas is not None:
            set_("sigmas", tuple(sorted({check_sigma(float(s)) for s in self.sigmas})))
            if not self.sigmas or self.sigmas[-1] <= 0:
                raise ValueError(f"sigmas must hold at least one noise level > 0, got {list(self.sigmas)}")
        for name in ("sigma_min", "sigma_max") + (("extend_to",) if self.extend_to is not None else ()):
            if check_sigma(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0 (the grid is logarithmic), got {getattr(self, name)}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")
        for name, low in (("points", 2), ("repeats", 1), ("batch_size", 1), ("coarse_points", 2),
                          ("refine_points", 1), ("refine_rounds", 0), ("points_per_forward", 1), ("forward_images", 1),
                          ("max_images", 1)):
            value = getattr(self, name)
            if (value is not None or name in ("points", "repeats", "batch_size")) and \
                    (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.chance is not None and not 0 <= self.chance < 1:
            raise ValueError(f"chance must be in [0, 1), got {self.chance}")
        if self.sites is not None:
            set_("sites", (self.sites,) if isinstance(self.sites, str) else tuple(self.sites))
            for pattern in self.sites:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"sites: {pattern!r} is neither a site name nor a regular expression "
                                     f"({err})") from None

    def grid(self) -> Tuple[float, ...]:
        """The fixed grid, or the coarse grid of an adaptive sweep."""
        if self.sigmas is not None:
            return self.sigmas
        n = self.coarse_points if self.adaptive else self.points
        return tuple(round_sigma(s) for s in np.geomspace(self.sigma_min, self.sigma_max, n))

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict (enums as values)."""
        out = asdict(self)
        del out["check_exact"]  # how the run is checked, not what it measures
        if self.compile_backend is None:
            del out["compile_backend"]  # an eager sweep's identity stays what it was before the option
        elif not isinstance(self.compile_backend, str):  # a backend callable: recorded by name
            out["compile_backend"] = getattr(self.compile_backend, "__name__", None) or repr(self.compile_backend)
        out.update(mode=self.mode.value, units=self.units.value, weight_draws=self.weight_draws.value,
                   sigmas=list(self.sigmas) if self.sigmas is not None else None,
                   sites=list(self.sites) if self.sites is not None else None,
                   sigma_map=dict(self.sigma_map) if self.sigma_map is not None else None)
        return out


def round_sigma(s: float) -> float:
    """``s`` to 4 significant digits (grid points print and store exactly)."""
    return float(f"{s:.4g}")
