"""The sweep engine: evaluation data kept on the device, and chunks of (site, σ, repeat)
items measured together (every forward pass holds a replica of its images per item),
reused from the point store on resume.

Seeding: before a chunk runs on network ``n`` every noise stream is restarted with
``seed_noise(model, chunk_seed(seed, n, chunk_key(items)))``, so a point's accuracies depend
only on the seed, the network, the data and its chunk, never on what ran before.

Weight noise (``SweepConfig.weight_draws``): by default every layer draws its weights (one
per item, or per repeat with shared noise) in the chunk's first forward pass and keeps them
for the rest of the data (``weight_draws_held``): an item is one programmed chip evaluated on
every image, however the data are cut into batches and slices.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..core.calibrate import calibrate_noise, calibrate_quantizers, call_model
from ..core.exactness import input_signature
from ..core.harden import HardenedModule, noise_sites, seed_noise, weight_noise_modules
from ..core.groups import ensure_batch_dims
from ..core.layers import weight_draws_held
from ..core.quant import frozen_weights
from ..core.noise import Noise, SigmaUnits
from .options import Units
from .resume import PointStore
from ..zoo.data import is_batch_list as _is_batch_list, map_tensors as _map
from .scores import Metric, output_logits, resolve_metric
from .sweep_config import SweepConfig, WeightDraws

__all__ = ["EvalData", "Engine", "Level", "Item", "chunk_key", "chunk_seed", "weights_sha256", "CACHE_BYTES"]

CALIBRATION_BATCHES = 4
"""Batches of the evaluation data that calibrate the clean RMS of sites that have none."""
CACHE_BYTES = 2 << 30
"""Evaluation data up to this size stay on the device as normalised batches between passes."""

MAX_SIGNATURES = 16
"""Input signatures of the evaluation data whose first batch the exactness check sees."""

Level = Tuple[Optional[str], float]  # (site, or None for global noise; sigma)
Item = Tuple[Optional[str], float, int]  # (site, sigma, repeat)


def _tensors(x: Any) -> List[Tensor]:
    out: List[Tensor] = []
    _map(x, out.append)
    return out


def replicate(x: Any, copies: int) -> Any:
    """Every tensor of the inputs ``x`` repeated ``copies`` times along dim 0 (one batch group each)."""
    return _map(x, lambda t: t.repeat(copies, *([1] * (t.dim() - 1))) if t.dim() else t) if copies > 1 else x


def _split(x: Any, size: int, n: int) -> List[Any]:
    """The inputs ``x`` (``n`` samples) cut into slices of ``size`` samples."""
    if isinstance(x, Tensor):
        return list(x.split(size))
    return [_map(x, lambda t, a=a: t[a:a + size] if t.dim() and len(t) == n else t) for a in range(0, n, size)]


class EvalData:
    """The evaluation batches on the device.

    A ``TensorImageDataset`` (decoded images) stays uint8: on the device when it fits in
    ``CACHE_BYTES`` (a quarter of the float size), otherwise on the host (RAM or a memory-mapped
    file) and moved per batch; every batch is normalised on the fly, so no pass decodes images
    again. Other data are read once and kept as float batches on the device when they fit in
    ``CACHE_BYTES``, otherwise read from the source again on every pass."""

    def __init__(self, data: Any, batch_size: int, max_images: Optional[int], device: torch.device) -> None:
        from ..zoo.data import TensorImageDataset, as_batches

        self.num_classes: Optional[int] = None
        self.cache: Optional[List[Tuple[Tensor, Tensor]]] = []
        batch_list = _is_batch_list(data)
        if batch_list:
            batches = list(data)
            source = lambda: ((_map(x, lambda t: t.to(device)), y.to(device)) for x, y in batches)  # noqa: E731
        elif isinstance(data, TensorImageDataset):
            if max_images is not None and max_images < len(data):
                data = data.subset(max_images)
            max_images, self.cache, self.num_classes = None, None, data.num_classes
            if data.images.numel() <= CACHE_BYTES:
                data = data.to(device)
        self._source = source if batch_list else (lambda: as_batches(data, batch_size, device))
        self.max_images, self.device = max_images, device
        self.firsts: Dict[tuple, Any] = {}
        """The inputs of the first batch of each input signature (``exactness.input_signature``),
        at most ``MAX_SIGNATURES``: what the exactness check runs on."""
        self.num_images, size, labels = 0, 0, hashlib.sha256()
        self.target_dtypes: Dict[torch.dtype, int] = {}
        """The dtype of the targets, each with the index of the first batch that has it."""
        total = torch.zeros((), dtype=torch.float64, device=device)
        for b, (x, y) in enumerate(self._read()):
            self.num_images += len(y)
            self.target_dtypes.setdefault(y.dtype, b)
            if len(self.firsts) < MAX_SIGNATURES:
                self.firsts.setdefault(input_signature(x), x)
            labels.update(y.detach().cpu().numpy().tobytes())
            for t in _tensors(x):
                total += t.double().sum()
                size += t.numel() * t.element_size()
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
                x, y = _split(x, self.max_images - seen, len(y))[0], y[:self.max_images - seen]
            if len(y):
                yield x, y
            seen += len(y)
            if self.max_images is not None and seen >= self.max_images:
                return

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        return iter(self.cache) if self.cache is not None else self._read()

    def example(self) -> Any:
        """The inputs of the first batch (``harden``'s ``example_inputs`` for models that torch.fx
        cannot trace): a tensor, or the dict/tuple of tensors a batch holds."""
        return next(iter(self))[0]


def weights_sha256(hm: HardenedModule) -> str:
    skip = {f"{name}.{buf}" for name, m in hm.named_modules() if isinstance(m, Noise) for buf in ("sigma", "rms")}
    h = hashlib.sha256()
    for key, t in sorted(hm.state_dict().items()):
        if key not in skip:
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def networks_held(nets: Sequence[HardenedModule], device: torch.device) -> Iterator[None]:
    """The networks of a sweep for its duration: weights frozen (a sweep never changes one),
    eval mode, on ``device``; afterwards each network's mode, device, noise settings and noise
    seeds are as they were, however the sweep ends."""
    saved = [(hm.training, next(iter(hm.parameters()), torch.empty(0)).device,
              {m: (m.setting(), m.seed) for m in hm.modules() if isinstance(m, Noise)}) for hm in nets]
    frozen = contextlib.ExitStack()
    try:
        for hm in nets:
            frozen.enter_context(frozen_weights(hm))
            hm.eval().to(device)
        yield
    finally:
        frozen.close()
        for hm, (training, dev, noise) in zip(nets, saved):
            hm.train(training).to(dev)
            for m, (setting, seed) in noise.items():
                m.restore(setting)
                m.reseed(seed)


def weight_strength(hm: HardenedModule, mod: Noise) -> float:
    """The strength a sweep gives the weight-noise module ``mod`` where it draws: its current
    setting when that is one value, else the strength ``harden`` gave it (its chain link's sigma)."""
    if mod.groups == 1:
        return float(mod.sigma)
    link = hm.harden_config.weight_link(mod.site)
    return float(link.sigma) if link is not None else 0.0


def chunk_key(items: Sequence[Item]) -> str:
    return hashlib.sha256(json.dumps([[s, repr(float(g)), r] for s, g, r in items]).encode()).hexdigest()[:32]


def chunk_seed(seed: int, network: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}/{network}/{key}".encode()).hexdigest()[:15], 16)


class Engine:
    """Measures chunks of items on every network; chunks already in the store are reused."""

    def __init__(self, nets: List[HardenedModule], data: EvalData, sites: List[str], cfg: SweepConfig, per_forward: int,
                 forward_images: int, progress: Optional[Callable[[int, int], None]],
                 metric: Optional[Metric] = None) -> None:
        self.nets, self.data, self.sites, self.cfg, self.R, self.progress = nets, data, sites, cfg, per_forward, progress
        self.metric = metric if metric is not None else resolve_metric("top1")
        self.classic = True
        """Top-1 of (batch, classes) logits: correct counts, exactly as before other metrics existed.
        Otherwise the metric's mean value per item (``scores``), fitted as ``to_fit(value)``."""
        self.to_fit: Callable[[float], float] = lambda v: v
        self.forward_images = forward_images
        self.mods = [{m.site: m for m in hm.modules() if isinstance(m, Noise) and m.site in names}
                     for hm, names in ((hm, set(noise_sites(hm))) for hm in nets)]
        # weight noise: each network's own strength (its current setting), on at points with sigma > 0
        self.weight_mods = [[(m, weight_strength(hm, m)) for m in weight_noise_modules(hm).values()] for hm in nets]
        self.weights = dict(cfg.sigma_map) if cfg.sigma_map is not None else {s: 1.0 for s in sites}
        self.runners = [self._runner(hm, cfg.compile_backend) for hm in nets]
        """What runs each network's forward passes: the network, or ``torch.compile`` of it."""
        self.store: Optional[PointStore] = None
        self.done: Dict[str, Dict[str, Any]] = {}
        self.counts: Dict[Level, List[List[int]]] = {}
        self.images_done = self.images_total = 0
        self.stats = {"forwards": 0, "images": 0, "points_measured": 0, "points_reused": 0, "eval_seconds": 0.0,
                      "points_seconds": 0.0}

    def _runner(self, hm: HardenedModule, backend: Optional[str]) -> Callable[..., Any]:
        if backend is None:
            return hm
        if any(True for _ in weight_noise_modules(hm)):
            raise ValueError("a compiled sweep measures activation noise only; this network has weight noise "
                             "(or drift, or faults): sweep it without compile_backend")

        compiled = torch.compile(hm, backend=backend)

        def run(*args: Any, **kwargs: Any) -> Any:
            ensure_batch_dims(hm, args, kwargs)  # eagerly, where the groups' batch dims are located
            return compiled(*args, **kwargs)

        return run

    def attach(self, store: PointStore) -> None:
        self.store, self.done = store, store.load()

    def _factor(self, mod: Noise) -> float:
        """Sweep σ -> the module's own σ, by the model's units: relative units scale a σ in
        absolute units by the site's RMS, absolute units scale a σ relative to the site's RMS
        by 1/RMS; dimensionless models take the sweep's σ as it is."""
        relative_units = self.cfg.units is Units.RELATIVE
        if mod.model.units is SigmaUnits.ABSOLUTE and relative_units:
            return float(mod.rms)
        if mod.model.units is SigmaUnits.SITE_RMS and not relative_units:
            return 1.0 / float(mod.rms)
        return 1.0

    def _set_sigmas(self, n: int, items: Sequence[Item]) -> None:
        # with shared noise, groups of one repeat share a draw at every site (their sigmas differ)
        draws = [r for _, _, r in items] if self.cfg.shared_noise else None
        for site, mod in self.mods[n].items():
            k = self._factor(mod) if any(g for _, g, _ in items) else 1.0
            w = self.weights.get(site, 0.0)
            # an item's site None is global noise (every swept site): global points, the clean
            # pass and the floor of both modes; otherwise noise at that one site
            vec = [g * k * w if (site in self.sites if s is None else s == site) else 0.0 for s, g, _ in items]
            if len(set(vec)) == 1 and self.cfg.compile_backend is None:
                mod.set_sigma(vec[0])
            else:  # compiled: one sigma per group at every site, so every chunk runs the same graph
                mod.set_sigma(vec, draws)
        for mod, strength in self.weight_mods[n]:  # one weight draw per item (per repeat if shared), none at sigma 0
            vec = [strength if g > 0 or self.cfg.weight_noise_at_zero else 0.0 for _, g, _ in items]
            if len(vec) == 1:
                mod.set_sigma(vec[0])
            else:
                mod.set_sigma(vec, draws)

    def check_targets(self) -> None:
        """Refuse targets that are not class indices for a metric that compares the outputs with them.

        Raises:
            ValueError: a batch holds floating-point (or complex) targets and the metric is a
                built-in one (``Metric.class_targets``).
        """
        if not self.metric.class_targets:
            return
        for dtype, batch in self.data.target_dtypes.items():
            if dtype.is_floating_point or dtype.is_complex:
                raise ValueError(
                    f"metric {self.metric.name!r} compares the outputs with class indices, but the targets of batch "
                    f"{batch} are {dtype} (regression targets?), and none would ever match: pass metric= a callable "
                    "(outputs, targets) -> per-sample scores (higher is better), or a fxharden.Metric with "
                    "higher_is_better, ideal and an explicit floor (e.g. the error of predicting the mean); "
                    "class indices stored as floats: convert the targets with .long()")

    def warm_up(self) -> int:
        """Per network: the statistics-based steps that never saw training data, calibrated and
        fixed on the first batches (``calibrate_quantizers``: the same in every run, and no
        point of the sweep moves them), the clean RMS of every site never calibrated, on the
        first ``CALIBRATION_BATCHES`` batches, and one clean forward of the first batch;
        returns the class count.

        Raises:
            ValueError: targets that are not class indices for a metric that needs them.
        """
        self.check_targets()
        x, out = next(iter(self.data))[0], None
        for n, hm in enumerate(self.nets):
            calibrate_quantizers(hm, self.data)
            calibrate_noise(hm, self.data, max_batches=CALIBRATION_BATCHES, force=False)
            self._set_sigmas(n, [(None, 0.0, 0)])
            with torch.inference_mode():
                out = call_model(hm, x)
            self.classic = self.metric.name == "top1" and isinstance(out, Tensor) and out.dim() == 2
            if not self.classic:
                try:
                    return output_logits(out).shape[-1]
                except (TypeError, IndexError):
                    return None  # a callable metric that reads the outputs itself
            if not isinstance(out, Tensor) or out.dim() != 2:
                raise TypeError(f"the model must return logits (batch, classes) to be swept, got {type(out).__name__}"
                                f"{tuple(out.shape) if isinstance(out, Tensor) else ''}")
        if self.data.num_classes is not None and self.data.num_classes != out.shape[1]:
            raise ValueError(f"the data have {self.data.num_classes} classes but the model outputs {out.shape[1]} "
                             f"logits; build it with --num-classes {self.data.num_classes} (num_classes=...) and "
                             "train or load a head for those classes, or evaluate on data with the model's classes")
        return out.shape[1]

    def _run_metric(self, n: int, items: Sequence[Item], floor: bool = False) -> List[float]:
        """The metric's mean value per item: per-sample sums and counts added up on the device.

        Raises:
            ValueError: the metric returned a NaN or infinite value for a sample (``_refuse_nonfinite``).
        """
        R = len(items)
        sums = torch.zeros(R, dtype=torch.float64, device=self.data.device)
        counts = torch.zeros(R, dtype=torch.float64, device=self.data.device)
        bad: List[Tuple[int, Tensor]] = []  # per slice: its batch, and NaN and infinite counts per item (2, R)
        step = max(1, self.forward_images // R)
        for b, (batch, labels) in enumerate(self.data):
            for x, y in zip(_split(batch, step, len(labels)), labels.split(step)):
                out = call_model(self.runners[n], replicate(x, R))
                s, c = self.metric.sums(out, replicate(y, R))
                s, c = s.view(R, -1), c.view(R, -1)
                sums += s.sum(1)
                counts += c.sum(1)
                bad.append((b, torch.stack([(s.isnan() | c.isnan()).sum(1), (s.isinf() | c.isinf()).sum(1)])))
                self.stats["forwards"] += 1
                self.stats["images"] += R * len(y)
        flags = torch.stack([t for _, t in bad]).cpu()  # read with the values: no host sync per batch
        if bool(flags.any()):
            self._refuse_nonfinite(items, [b for b, _ in bad], flags, floor)
        return (sums / counts.clamp_min(1e-300)).tolist()

    def _refuse_nonfinite(self, items: Sequence[Item], batches: List[int], flags: Tensor, floor: bool) -> None:
        """Raise the error for the first slice whose metric values hold a NaN or an infinity."""
        i = int(flags.flatten(1).any(1).nonzero()[0])
        r = int(flags[i].any(0).nonzero()[0])
        nans, infs = (int(v) for v in flags[i, :, r])
        s, g, rep = items[r]
        where = ("the clean pass (sigma 0)" if g == 0 else f"site {s!r}, sigma {g:g}, repeat {rep}" if s is not None
                 else f"{'the floor: ' if floor else ''}global sigma {g:g}, repeat {rep}")
        what = " and ".join(t for t in (f"{nans} NaN" if nans else "", f"{infs} infinite" if infs else "") if t)
        raise ValueError(
            f"metric {self.metric.name!r} returned {what} per-sample value(s) in batch {batches[i]} of the "
            f"evaluation data ({where}): a sweep averages and fits the values, and a non-finite one makes every "
            "number after it meaningless; make the metric return a finite score for every sample (one it cannot "
            "score: return (sums, counts) with count 0 for it; outputs that overflow under noise: clamp them, e.g. "
            "torch.nan_to_num)")

    def _run(self, n: int, items: Sequence[Item], seed: int, floor: bool = False) -> List[Any]:
        hm, R, t0 = self.nets[n], len(items), time.perf_counter()
        self._set_sigmas(n, items)
        seed_noise(hm, seed)
        correct = torch.zeros(R, dtype=torch.long, device=self.data.device)
        step = max(1, self.forward_images // R)  # data images per forward pass
        held = weight_draws_held(hm) if self.cfg.weight_draws is WeightDraws.REPEAT else contextlib.nullcontext()
        with torch.inference_mode(), held:  # held: the first forward's weight draws serve every slice
            if not self.classic:
                values = self._run_metric(n, items, floor)
                self.stats["eval_seconds"] += time.perf_counter() - t0
                return values
            for batch, labels in self.data:
                for x, y in zip(batch.split(step), labels.split(step)):
                    out = self.runners[n](x.repeat(R, *([1] * (x.dim() - 1))) if R > 1 else x)
                    correct += (out.argmax(1).view(R, -1) == y).sum(1)
                    self.stats["forwards"] += 1
                    self.stats["images"] += R * len(y)
        counts = correct.tolist()  # the one host sync of the chunk
        self.stats["eval_seconds"] += time.perf_counter() - t0
        return counts

    def _chunk(self, key: str, n: int, items: Sequence[Item], seed: int) -> List[Any]:
        rec = self.done.get(f"{key}/{n}")
        tally = not (key == "clean" or key.startswith("floor/"))  # the clean pass and the floor are no points
        field = "correct" if self.classic else "values"
        if rec is not None and rec["total"] == self.data.num_images and field in rec \
                and all(np.isfinite(rec[field])):  # a non-finite value is measured again, and refused
            self.stats["points_reused"] += len(items) * tally
            return rec[field]
        t0 = time.perf_counter()
        correct = self._run(n, items, seed, floor=key.startswith("floor/"))
        self.stats["points_measured"] += len(items) * tally
        self.stats["points_seconds"] += (time.perf_counter() - t0) * tally  # the clean pass is not a point
        if self.store is not None:  # "seconds": for watchers of the store (images/s), never read back
            self.store.append({"key": f"{key}/{n}", "items": [list(i) for i in items], field: correct,
                               "total": self.data.num_images, "seconds": round(time.perf_counter() - t0, 6)})
        return correct

    def clean(self) -> List[float]:
        """The accuracy at sigma 0 of every network, unreplicated (other metrics: the raw value)."""
        scale = self.data.num_images if self.classic else 1
        return [self._chunk("clean", n, [(None, 0.0, 0)], 0)[0] / scale for n in range(len(self.nets))]

    def floor(self, sigma: float) -> float:
        """The metric's mean value under global noise ``sigma`` at every site (a model that
        knows nothing any more): over networks and repeats."""
        items = [(None, sigma, r) for r in range(self.cfg.repeats)]
        # "floor/": stores of earlier versions hold per-layer floors measured without noise ("floor-")
        values = [v for n in range(len(self.nets))
                  for start in range(0, len(items), self.R)
                  for v in self._chunk(f"floor/{sigma!r}/{start}", n, items[start:start + self.R],
                                       chunk_seed(self.cfg.seed, n, f"floor/{start}"))]
        return float(np.mean(values))

    def measure(self, levels: Sequence[Level]) -> None:
        """Measure ``levels`` (each with every repeat) on every network, in chunks of ``R`` items."""
        items = [(s, g, r) for s, g in levels if (s, g) not in self.counts for r in range(self.cfg.repeats)]
        for start in range(0, len(items), self.R):
            chunk = items[start:start + self.R]
            key = chunk_key(chunk)
            for n in range(len(self.nets)):
                correct = self._chunk(key, n, chunk, chunk_seed(self.cfg.seed, n, key))
                for (s, g, r), c in zip(chunk, correct):
                    self.counts.setdefault((s, g), [[0] * self.cfg.repeats for _ in self.nets])[n][r] = \
                        int(c) if self.classic else float(c)
                self.images_done += len(chunk) * self.data.num_images
                self.images_total = max(self.images_total, self.images_done)
                if self.progress is not None:
                    self.progress(self.images_done, self.images_total)

    def expect(self, levels: int) -> None:
        """Progress estimate: the images done plus ``levels`` more levels."""
        self.images_total = self.images_done + levels * self.cfg.repeats * len(self.nets) * self.data.num_images

    def mean(self, level: Level) -> float:
        """The mean score of a level as the fit sees it (accuracy; other metrics: ``to_fit``)."""
        if not self.classic:
            return float(np.mean([self.to_fit(v) for row in self.counts[level] for v in row]))
        return float(np.mean(self.counts[level])) / self.data.num_images
