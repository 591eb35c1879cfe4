"""Robustness sweeps: accuracy versus noise strength sigma, and the midpoint noise level μ.

``sweep`` measures the accuracy of one or several hardened networks at many noise levels,
globally (the same sigma at every noise site) or per layer ("walking noise": sigma at one
site, 0 elsewhere), and fits the midpoint noise level μ (``fxharden.metrics``).

How it is fast:

* points are batched: each data batch is replicated ``R`` times and group ``r`` of the
  replicated batch gets its own sigma (``set_noise`` with one value per group), so one
  forward pass measures ``R`` (site, sigma, repeat) items;
* no host sync per batch: correct counts accumulate on the device and are read once per
  chunk of items; the data are normalised and moved to the device once;
* adaptive grid: a coarse log-spaced pass in ascending sigma that stops raising sigma once
  accuracy is at chance (and continues past ``sigma_max`` while it is not, up to
  ``extend_to``), then refinement rounds that add points where accuracy crosses half way
  (first the 90%..10% part of the drop, then the bracket of the crossing).

Seeding scheme: the items to measure are cut into chunks of at most ``R`` in a deterministic
order. Before a chunk runs on network ``n``, every noise stream is restarted with
``seed_noise(model, h(seed, n, chunk))``, ``h`` a hash of the chunk's items (site, sigma,
repeat). A point's accuracies depend only on the seed, the network, the data and its chunk,
never on what ran before, so a sweep resumed from its output directory gives the same
results as an uninterrupted one. The clean pass uses ``seed_noise(model, 0)``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .config import HardenConfig, check_sigma, config_to_dict
from .harden import HardenedModule, harden, noise_sites, seed_noise
from .noise import Noise
from .results import FORMAT, PointStore, SweepMode, SweepPoint, SweepResult

__all__ = ["SweepMode", "SweepConfig", "sweep", "resolve_networks", "FORWARD_IMAGES"]

FORWARD_IMAGES = {"cpu": 2048, "cuda": 16384}
"""Images per forward pass (replicas included) when ``points_per_forward`` is automatic."""
CACHE_BYTES = 2 << 30
"""Evaluation data up to this size stay on the device as normalised batches between passes."""

Level = Tuple[Optional[str], float]  # (site, or None for global noise; sigma)
Item = Tuple[Optional[str], float, int]  # (site, sigma, repeat)
ModelLike = Union[nn.Module, str, os.PathLike]


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
    """Data images per batch (one forward pass holds ``points_per_forward`` replicas of it)."""
    points_per_forward: Optional[int] = None
    """Items (site, sigma, repeat) per forward pass; ``None``: ``FORWARD_IMAGES // batch_size``."""
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

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("mode", SweepMode(self.mode))
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
                          ("refine_points", 1), ("refine_rounds", 0), ("points_per_forward", 1), ("max_images", 1)):
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
        return tuple(_round_sigma(s) for s in np.geomspace(self.sigma_min, self.sigma_max, n))

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict (enums as values)."""
        out = asdict(self)
        out.update(mode=self.mode.value, sigmas=list(self.sigmas) if self.sigmas is not None else None,
                   sites=list(self.sites) if self.sites is not None else None)
        return out


def _round_sigma(s: float) -> float:
    return float(f"{s:.4g}")


# ---------------------------------------------------------------------- networks and data


def resolve_networks(model: Union[ModelLike, Sequence[ModelLike], Mapping[str, ModelLike]],
                     harden_config: Optional[HardenConfig] = None) -> List[Tuple[str, HardenedModule]]:
    """``(label, hardened model)`` for a model, a checkpoint path, a list of them, or a
    ``{label: model}`` dict. Plain modules are hardened with ``harden_config`` (default:
    noise sites only); hardened models and checkpoints are used as they are.

    Raises:
        TypeError: an entry is neither a module nor a path.
        ValueError: ``harden_config`` given for a hardened model or a checkpoint, or
            networks that do not share their noise sites.
    """
    from .checkpoint import load_checkpoint

    if isinstance(model, Mapping):
        entries = [(str(k), v) for k, v in model.items()]
    else:
        entries = [(None, m) for m in (model if isinstance(model, (list, tuple)) else [model])]
    if not entries:
        raise ValueError("no model given: pass a model, a checkpoint path, or a non-empty list of them")
    nets: List[Tuple[str, HardenedModule]] = []
    for label, entry in entries:
        if isinstance(entry, (str, os.PathLike)) or isinstance(entry, HardenedModule):
            if harden_config is not None:
                name = label or (type(entry).__name__ if isinstance(entry, nn.Module) else str(entry))
                raise ValueError(f"{name}: a checkpoint or hardened model keeps its own harden config; pass "
                                 "bits/scale/harden_config only with plain models")
            hm = entry if isinstance(entry, HardenedModule) else load_checkpoint(entry).model
            nets.append((label or (type(entry).__name__ if hm is entry else str(entry)), hm))
        elif isinstance(entry, nn.Module):
            nets.append((label or type(entry).__name__,
                         harden(entry, config=harden_config or HardenConfig(quant=None))))
        else:
            raise TypeError(f"expected an nn.Module, a HardenedModule or a checkpoint path, got {type(entry).__name__}")
    for label, hm in nets[1:]:
        if noise_sites(hm) != noise_sites(nets[0][1]):
            raise ValueError(f"network {label!r} has other noise sites than {nets[0][0]!r}; the networks of one "
                             "sweep must share an architecture and harden config")
    return nets


class _Data:
    """The evaluation batches on the device: kept after the first pass when they fit in
    ``CACHE_BYTES``, otherwise read from the source again on every pass."""

    def __init__(self, data: Any, batch_size: int, max_images: Optional[int], device: torch.device) -> None:
        from .data import TensorImageDataset, as_batches

        if isinstance(data, TensorImageDataset) and max_images is not None and max_images < len(data):
            data, max_images = data.subset(max_images), None
        self._source = lambda: as_batches(data, batch_size, device)
        self.max_images, self.device = max_images, device
        self.cache: Optional[List[Tuple[Tensor, Tensor]]] = []
        self.num_images, size, labels = 0, 0, hashlib.sha256()
        total = torch.zeros((), dtype=torch.float64, device=device)
        for x, y in self._read():
            self.num_images += len(y)
            labels.update(y.detach().cpu().numpy().tobytes())
            total += x.double().sum()
            size += x.numel() * x.element_size()
            if self.cache is not None:
                self.cache.append((x, y))
                self.cache = self.cache if size <= CACHE_BYTES else None
        if self.num_images == 0:
            raise ValueError("the evaluation data are empty; pass a dataset with at least one image")
        self.identity = {"images": self.num_images, "labels_sha256": labels.hexdigest(), "inputs_sum": float(total)}

    def _read(self) -> Iterator[Tuple[Tensor, Tensor]]:
        seen = 0
        for x, y in self._source():
            if self.max_images is not None and seen + len(y) > self.max_images:
                x, y = x[:self.max_images - seen], y[:self.max_images - seen]
            if len(y):
                yield x, y
            seen += len(y)
            if self.max_images is not None and seen >= self.max_images:
                return

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        return iter(self.cache) if self.cache is not None else self._read()


def _weights_sha256(hm: HardenedModule) -> str:
    skip = {f"{name}.sigma" for name, m in hm.named_modules() if isinstance(m, Noise)}
    h = hashlib.sha256()
    for key, t in sorted(hm.state_dict().items()):
        if key not in skip:
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _select_sites(all_sites: List[str], patterns: Optional[Tuple[str, ...]]) -> List[str]:
    chosen = set(all_sites if patterns is None else ())
    for p in patterns or ():
        hits = [s for s in all_sites if s == p or re.fullmatch(p, s)]
        if not hits:
            close = difflib.get_close_matches(p, all_sites, n=5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"sites: {p!r} matches no noise site{hint} (the model has {len(all_sites)}: "
                             f"{', '.join(all_sites[:8])}{', ...' if len(all_sites) > 8 else ''})")
        chosen.update(hits)
    if not chosen:
        raise ValueError("the model has no noise sites to sweep; check the harden config's noise kinds and rules")
    return [s for s in all_sites if s in chosen]


# ---------------------------------------------------------------------- the engine


def _chunk_key(items: Sequence[Item]) -> str:
    return hashlib.sha256(json.dumps([[s, repr(float(g)), r] for s, g, r in items]).encode()).hexdigest()[:32]


def _chunk_seed(seed: int, network: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}/{network}/{key}".encode()).hexdigest()[:15], 16)


class _Engine:
    """Measures chunks of items on every network; chunks already in the store are reused."""

    def __init__(self, nets: List[HardenedModule], data: _Data, sites: List[str], cfg: SweepConfig, per_forward: int,
                 progress: Optional[Callable[[int, int], None]]) -> None:
        self.nets, self.data, self.sites, self.cfg, self.R, self.progress = nets, data, sites, cfg, per_forward, progress
        self.mods = [{m.site: m for m in hm.modules() if isinstance(m, Noise) and m.site in names}
                     for hm, names in ((hm, set(noise_sites(hm))) for hm in nets)]
        self.store: Optional[PointStore] = None
        self.done: Dict[str, Dict[str, Any]] = {}
        self.counts: Dict[Level, List[List[int]]] = {}
        self.images_done = self.images_total = 0
        self.stats = {"forwards": 0, "images": 0, "points_measured": 0, "points_reused": 0, "eval_seconds": 0.0}

    def attach(self, store: PointStore) -> None:
        self.store, self.done = store, store.load()

    def _set_sigmas(self, n: int, items: Sequence[Item]) -> None:
        for site, mod in self.mods[n].items():
            if self.cfg.mode is SweepMode.GLOBAL:
                vec = [g if site in self.sites else 0.0 for _, g, _ in items]
            else:
                vec = [g if s == site else 0.0 for s, g, _ in items]
            mod.set_sigma(vec[0] if len(set(vec)) == 1 else vec)

    def warm_up(self) -> int:
        """One clean forward of the first batch per network (a statistics-based quantizer that
        never saw data calibrates on it, the same in every run); returns the class count."""
        x, out = next(iter(self.data))[0], None
        for n, hm in enumerate(self.nets):
            self._set_sigmas(n, [(None, 0.0, 0)])
            with torch.inference_mode():
                out = hm(x)
            if not isinstance(out, Tensor) or out.dim() != 2:
                raise TypeError(f"the model must return logits (batch, classes) to be swept, got {type(out).__name__}"
                                f"{tuple(out.shape) if isinstance(out, Tensor) else ''}")
        return out.shape[1]

    def _run(self, n: int, items: Sequence[Item], seed: int) -> List[int]:
        hm, R, t0 = self.nets[n], len(items), time.perf_counter()
        self._set_sigmas(n, items)
        seed_noise(hm, seed)
        correct = torch.zeros(R, dtype=torch.long, device=self.data.device)
        with torch.inference_mode():
            for x, y in self.data:
                out = hm(x.repeat(R, *([1] * (x.dim() - 1))) if R > 1 else x)
                correct += (out.argmax(1).view(R, -1) == y).sum(1)
                self.stats["forwards"] += 1
                self.stats["images"] += R * len(y)
        counts = correct.tolist()  # the one host sync of the chunk
        self.stats["eval_seconds"] += time.perf_counter() - t0
        return counts

    def _chunk(self, key: str, n: int, items: Sequence[Item], seed: int) -> List[int]:
        rec, tally = self.done.get(f"{key}/{n}"), key != "clean"  # the clean pass is not a sweep point
        if rec is not None and rec["total"] == self.data.num_images:
            self.stats["points_reused"] += len(items) * tally
            return rec["correct"]
        correct = self._run(n, items, seed)
        self.stats["points_measured"] += len(items) * tally
        if self.store is not None:
            self.store.append({"key": f"{key}/{n}", "items": [list(i) for i in items], "correct": correct,
                               "total": self.data.num_images})
        return correct

    def clean(self) -> List[float]:
        """The accuracy at sigma 0 of every network, unreplicated."""
        return [self._chunk("clean", n, [(None, 0.0, 0)], 0)[0] / self.data.num_images for n in range(len(self.nets))]

    def measure(self, levels: Sequence[Level]) -> None:
        """Measure ``levels`` (each with every repeat) on every network, in chunks of ``R`` items."""
        items = [(s, g, r) for s, g in levels if (s, g) not in self.counts for r in range(self.cfg.repeats)]
        for start in range(0, len(items), self.R):
            chunk = items[start:start + self.R]
            key = _chunk_key(chunk)
            for n in range(len(self.nets)):
                correct = self._chunk(key, n, chunk, _chunk_seed(self.cfg.seed, n, key))
                for (s, g, r), c in zip(chunk, correct):
                    self.counts.setdefault((s, g), [[0] * self.cfg.repeats for _ in self.nets])[n][r] = int(c)
                self.images_done += len(chunk) * self.data.num_images
                self.images_total = max(self.images_total, self.images_done)
                if self.progress is not None:
                    self.progress(self.images_done, self.images_total)

    def expect(self, levels: int) -> None:
        """Progress estimate: the images done plus ``levels`` more levels."""
        self.images_total = self.images_done + levels * self.cfg.repeats * len(self.nets) * self.data.num_images

    def mean(self, level: Level) -> float:
        return float(np.mean(self.counts[level])) / self.data.num_images


# ---------------------------------------------------------------------- the grid


def _refine(sig: Sequence[float], acc: Sequence[float], top: float, chance: float, rnd: int, n: int) -> List[float]:
    """New sigmas inside the drop (round 0: from 90% to 10% of it) or the bracket of the
    half-way crossing (later rounds) of a measured curve; none if it never crosses."""
    below = [i for i, a in enumerate(acc) if a < chance + 0.5 * (top - chance)]
    if not below or below[0] == 0:
        return []
    k = below[0]
    left, right = k - 1, k
    if rnd == 0:
        left = max((i for i in range(k) if acc[i] >= chance + 0.9 * (top - chance)), default=0)
        right = min((i for i in range(k, len(acc)) if acc[i] <= chance + 0.1 * (top - chance)), default=len(acc) - 1)
    new = {_round_sigma(s) for s in np.geomspace(sig[left], sig[right], n + 2)[1:-1]}
    return sorted(s for s in new if all(abs(s - t) > 1e-9 * t for t in sig))


def _run_grid(engine: _Engine, cfg: SweepConfig, keys: List[Optional[str]], top: float, chance: float) -> None:
    grid = cfg.grid()
    if not cfg.adaptive:
        engine.expect(len(grid) * len(keys))
        engine.measure([(s, g) for g in grid for s in keys])
        return
    refine = cfg.refine_rounds * cfg.refine_points * len(keys)
    tol = max(0.05 * (top - chance),
              2 * math.sqrt(chance * (1 - chance) / (cfg.repeats * len(engine.nets) * engine.data.num_images)))
    ratio = max(grid[-1] / grid[-2], 1.5) if len(grid) > 1 and grid[-2] > 0 else 10.0
    pending, stopped = {s: list(grid) for s in keys}, set()
    while any(pending.values()):
        engine.expect(sum(map(len, pending.values())) + refine)
        wave = sorted((g, i, s) for i, s in enumerate(keys) for g in pending[s])[:max(1, engine.R // cfg.repeats)]
        engine.measure([(s, g) for g, _, s in wave])
        for g, _, s in wave:
            pending[s] = [p for p in pending[s] if p != g]
            levels = [lv for lv in engine.counts if lv[0] == s]
            if s in stopped:
                continue
            if engine.mean((s, g)) <= chance + tol and len(levels) >= 2:  # at chance: stop raising sigma
                pending[s] = []
                stopped.add(s)
            elif not pending[s] and cfg.extend_to is not None and g * ratio <= cfg.extend_to * (1 + 1e-9):
                pending[s] = [_round_sigma(g * ratio)]  # past the grid, still above chance
    for rnd in range(cfg.refine_rounds):
        new = []
        for s in keys:
            levels = sorted(lv for lv in engine.counts if lv[0] == s and lv[1] > 0)
            new += [(s, g) for g in _refine([g for _, g in levels], [engine.mean(lv) for lv in levels], top, chance,
                                            rnd, cfg.refine_points)]
        engine.expect(len(new) + (cfg.refine_rounds - rnd - 1) * cfg.refine_points * len(keys))
        engine.measure(new)


# ---------------------------------------------------------------------- the verb


def sweep(
    model: Union[ModelLike, Sequence[ModelLike], Mapping[str, ModelLike]],
    data: Any,
    sigmas: Optional[Sequence[float]] = None,
    repeats: int = 5,
    mode: SweepMode = SweepMode.GLOBAL,
    *,
    config: Optional[SweepConfig] = None,
    bits: Optional[int] = None,
    scale: Optional[float] = 1.0,
    harden_config: Optional[HardenConfig] = None,
    out: Union[str, os.PathLike, None] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    **config_kwargs: Any,
) -> SweepResult:
    """Measure accuracy versus noise strength and fit the midpoint noise level μ.

    Args:
        model: a plain model (hardened here with ``bits``/``scale`` or ``harden_config``;
            noise sites only by default), a ``HardenedModule``, a checkpoint path, or a list
            (or ``{label: model}`` dict) of them, e.g. one network per training seed: the
            uncertainty is then taken across networks. Runs in eval mode under
            ``torch.inference_mode``; hardened models get their mode, device and noise back.
        data: a ``fxharden.data`` dataset, a torch ``Dataset``/``DataLoader`` of ``(x, y)``,
            or an ``(x, y)`` pair of tensors; evaluated in order, without shuffling.
        sigmas, repeats, mode: shorthand for the ``SweepConfig`` fields of those names.
        config: a full ``SweepConfig``; excludes the shorthand and ``config_kwargs``.
        bits, scale, harden_config: how a plain model is hardened (see ``harden``).
        out: directory for resumable progress: every finished chunk is appended to
            ``out/points.jsonl``; rerunning with the same directory measures only what is
            missing. At the end ``results.json`` and ``results.csv`` are written there.
        progress: called as ``progress(done, total)`` after every chunk: images processed
            (replicas and reused chunks included) and the current estimate of the total.
        **config_kwargs: other ``SweepConfig`` fields.

    Returns:
        A ``SweepResult``: every point, the clean accuracy, the fits.

    Raises:
        ValueError: a bad setting, unknown sites, empty data, or ``out`` holding a sweep
            with other settings (``SweepMismatchError``).
    """
    if config is None:
        config = SweepConfig(sigmas=tuple(sigmas) if sigmas is not None else None, repeats=repeats, mode=mode,
                             **config_kwargs)
    elif sigmas is not None or repeats != 5 or mode != SweepMode.GLOBAL or config_kwargs:
        raise ValueError("pass either config=SweepConfig(...) or the keyword form (sigmas, repeats, mode, ...), "
                         "not both")
    if bits is not None:
        if harden_config is not None:
            raise ValueError("pass either harden_config=HardenConfig(...) or bits/scale, not both")
        harden_config = HardenConfig.from_shorthand(bits=bits, scale=scale)
    from .train import resolve_device

    cfg, dev, t0 = config, resolve_device(config.device), time.perf_counter()
    labelled = resolve_networks(model, harden_config)
    nets = [hm for _, hm in labelled]
    saved = [(hm.training, next(iter(hm.parameters()), torch.empty(0)).device,
              {m: (m.sigma.clone(), m.seed) for m in hm.modules() if isinstance(m, Noise)}) for hm in nets]
    try:
        sites = _select_sites(noise_sites(nets[0]), cfg.sites)
        for hm in nets:
            hm.eval().to(dev)
        data = _Data(data, cfg.batch_size, cfg.max_images, dev)
        per_forward = cfg.points_per_forward or max(1, FORWARD_IMAGES.get(dev.type, 2048) // cfg.batch_size)
        engine = _Engine(nets, data, sites, cfg, per_forward, progress)
        classes = engine.warm_up()
        settings = {**cfg.to_dict(), "device": dev.type, "points_per_forward": per_forward}
        identity = {"format": FORMAT, "settings": settings, "data": data.identity, "networks": [
            {"harden": config_to_dict(hm.harden_config), "weights_sha256": _weights_sha256(hm)} for hm in nets]}
        if out is not None:
            engine.attach(PointStore(out, identity))
        clean = engine.clean()
        chance = cfg.chance if cfg.chance is not None else 1.0 / classes
        keys: List[Optional[str]] = [None] if cfg.mode is SweepMode.GLOBAL else list(sites)
        _run_grid(engine, cfg, keys, float(np.mean(clean)), chance)
    finally:
        for hm, (training, device, noise) in zip(nets, saved):
            hm.train(training).to(device)
            for m, (sigma, seed) in noise.items():
                m.set_sigma(sigma.cpu() if sigma.dim() else float(sigma))
                m.reseed(seed)
    stats, seconds = engine.stats, time.perf_counter() - t0
    points = [SweepPoint(s, g, tuple(tuple(c) for c in counts), data.num_images)
              for (s, g), counts in sorted(engine.counts.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))]
    result = SweepResult(
        mode=cfg.mode, points=points, sites=sites, clean_accuracy=float(np.mean(clean)),
        clean_accuracies=clean, chance=chance, num_images=data.num_images, networks=[lb for lb, _ in labelled],
        config=settings, harden_configs=[n["harden"] for n in identity["networks"]], seed=cfg.seed,
        seeding="seed_noise(model, sha256(seed/network/chunk)) before each chunk (see fxharden.sweep)",
        fingerprint=engine.store.fingerprint if engine.store is not None else "",
        timing={**stats, "seconds": seconds, "images_per_second": stats["images"] / max(stats["eval_seconds"], 1e-9)},
    ).refit()
    if out is not None:
        result.save(out)
    return result
