"""Robustness sweeps: accuracy versus noise strength sigma, and the midpoint noise level μ.

``sweep`` measures the accuracy of one or several hardened networks at many noise levels,
globally (the same sigma at every noise site) or per layer ("walking noise": sigma at one
site, 0 elsewhere), and fits the midpoint noise level μ (``fxharden.measure.midpoint``).

How it is fast:

* points are batched: each data batch (or a slice of it, so that a forward pass holds at most
  ``SweepConfig.forward_images`` images) is replicated ``R`` times and group ``r`` of the
  replicated batch gets its own sigma (``set_noise`` with one value per group), so one
  forward pass measures ``R`` (site, sigma, repeat) items; items of one repeat share their
  standard-normal draw at every site (``SweepConfig.shared_noise``), and a site draws
  nothing for the items whose sigma there is 0 (per-layer mode); weight noise is drawn in
  the first forward pass of a chunk and held for all its batches and slices (a repeat is one
  programmed chip, ``SweepConfig.weight_draws``), so the batching never changes what a point
  measures;
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
results as an uninterrupted one. The clean pass uses ``seed_noise(model, 0)``. Weight noise
is drawn once per chunk from those streams (the first forward pass of the chunk), not once per
forward pass, unless ``weight_draws="forward"``.
"""

from __future__ import annotations

import difflib
import os
import re
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch


from ..core.config import HardenConfig, config_to_dict
from ..core.exactness import ExactnessCheck
from ..core.harden import HardenedModule, noise_sites
from .._files import check_writable
from ..zoo.models import ModelLike, resolve_networks
from .engine import Engine, EvalData, networks_held, weights_sha256
from .grid import run_grid
from .options import FitOptions, SweepMode
from .results import FORMAT, PointStore, SweepPoint, SweepResult
from .scores import Metric, resolve_metric
from .sweep_config import CHUNK_LEVELS, FORWARD_IMAGES, SweepConfig, WeightDraws

__all__ = ["SweepMode", "SweepConfig", "WeightDraws", "sweep", "resolve_networks", "CHUNK_LEVELS", "FORWARD_IMAGES"]


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


def _plain_models(model: Any) -> List[Optional[torch.nn.Module]]:
    """Per network of ``resolve_networks(model)``, the plain module it was hardened from
    (``None`` for hardened models, checkpoints and model sources)."""
    entries = list(model.values()) if isinstance(model, Mapping) else \
        list(model) if isinstance(model, (list, tuple)) else [model]
    return [e if isinstance(e, torch.nn.Module) and not isinstance(e, HardenedModule) else None for e in entries]


def _check_map(cfg: SweepConfig, all_sites: List[str]) -> None:
    unknown = [s for s, _ in cfg.sigma_map or () if s not in all_sites]
    if unknown:
        close = difflib.get_close_matches(unknown[0], all_sites, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"sigma_map names {len(unknown)} site(s) this model does not have: "
                         f"{', '.join(map(repr, unknown[:5]))}{hint}; the map must come from a budget of this model")


FLOOR_FACTOR = 100.0
"""A metric's unknown floor is measured at ``FLOOR_FACTOR`` times the largest σ of the grid
(at least ``extend_to``), global noise at every swept site, in per-layer sweeps too (one
floor for every site's curve)."""


def _metric_scale(engine: Engine, scorer: Metric, cfg: SweepConfig, classes: Optional[int],
                  clean_values: List[float]) -> Tuple[List[float], float, dict]:
    """Map the metric's values to fit scores (``engine.to_fit``): accuracies keep their scale
    (chance = floor); other metrics go to ``[0, 1]``, 0 at the floor and 1 at the ideal (the
    clean value when the metric has none). Returns the clean scores, chance and the metric info."""
    floor = scorer.floor_value(classes)
    measured = floor is None
    if measured:
        floor = engine.floor(max(FLOOR_FACTOR * cfg.grid()[-1], cfg.extend_to or 0.0))
    ideal = scorer.ideal if scorer.ideal is not None else float(np.mean(clean_values))
    if scorer.higher_is_better and scorer.ideal == 1.0 and not measured:
        engine.to_fit, chance = (lambda v: v), (cfg.chance if cfg.chance is not None else floor)
    else:
        engine.to_fit, chance = (lambda v: scorer.fit_score(v, ideal, floor)), 0.0
    info = {"ideal": scorer.report(ideal), "floor": scorer.report(floor), "floor_measured": measured,
            "higher_is_better": scorer.higher_is_better, "log_scale": scorer.log_scale, "classes": classes,
            "clean_values": [scorer.report(v) for v in clean_values]}
    return [engine.to_fit(v) for v in clean_values], chance, info


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
    fit_options: Optional[FitOptions] = None,
    metric: Union[str, Metric, Callable[..., Any]] = "top1",
    provenance: Optional[Mapping[str, Any]] = None,
    **config_kwargs: Any,
) -> SweepResult:
    """Measure accuracy (or another metric) versus noise strength and fit the midpoint noise level μ.

    Args:
        model: a plain model (hardened here with ``bits``/``scale`` or ``harden_config``;
            noise sites only by default), a ``HardenedModule``, a checkpoint path, or a list
            (or ``{label: model}`` dict) of them, e.g. one network per training seed: the
            uncertainty is then taken across networks. Runs in eval mode under
            ``torch.inference_mode``; hardened models get their mode, device and noise back.
        data: a ``fxharden.zoo.data`` dataset, a torch ``Dataset``/``DataLoader`` of ``(x, y)``,
            an ``(x, y)`` pair of tensors, or a list of ``(inputs, targets)`` batches whose
            inputs are a tensor, a dict (passed by keyword: ``input_ids``, ``attention_mask``)
            or a tuple of tensors; evaluated in order, without shuffling. Every tensor of a
            batch is replicated per batch group. For a causal LM pass the input ids as
            targets: token metrics score position ``t`` against target ``t + 1`` (``-100``
            ignored), as Hugging Face does with ``labels``.
        sigmas, repeats, mode: shorthand for the ``SweepConfig`` fields of those names.
        config: a full ``SweepConfig``; excludes the shorthand and ``config_kwargs``.
        bits, scale, harden_config: how a plain model is hardened (see ``harden``).
        out: directory for resumable progress: every finished chunk is appended to
            ``out/points.jsonl``; rerunning with the same directory measures only what is
            missing. At the end ``results.json`` and ``results.csv`` are written there.
        progress: called as ``progress(done, total)`` after every chunk: images processed
            (replicas and reused chunks included) and the current estimate of the total.
        fit_options: how μ is fitted (quoted model, a_max tie, systematic error, bootstrap
            size); default ``FitOptions()``: the log-σ model with a_max tied to the clean accuracy.
        metric: ``"top1"`` (default: correct counts, the paper's accuracy), ``"top5"``,
            ``"loss"``, ``"perplexity"``, ``"token_accuracy"`` (these need class-index
            targets), a ``fxharden.Metric`` (its own direction, ideal and floor), a torchmetrics
            metric, or a callable ``(outputs, targets) -> per-sample scores`` (higher is
            better). μ is the σ at which the score has fallen half way from its clean value to
            its floor (chance; ``ln V`` for the loss, perplexity on the log scale; when not
            known, measured under global noise at ``FLOOR_FACTOR`` times the largest σ, in
            both modes): see ``fxharden.measure.scores``. Other metrics than top-1 are fitted
            on a ``[0, 1]`` scale (``SweepResult.clean_fit``); their own values are
            ``SweepResult.clean_raw``, ``floor_raw`` and ``raw_curve``.
        provenance: where the inputs came from (the preprocessing used and its origin, the
            weights files), recorded as it is in ``SweepResult.provenance``; not part of the
            sweep's identity.
        **config_kwargs: other ``SweepConfig`` fields.

    Returns:
        A ``SweepResult``: every point, the clean accuracy, the fits.

    Raises:
        ValueError: a bad setting, unknown sites, empty data, an unknown metric, a metric
            that does not return one score per sample or returns a NaN or infinite one,
            floating-point targets for a metric that needs class indices, or ``out`` holding a
            sweep with other settings (``SweepMismatchError``).
    """
    scorer = resolve_metric(metric)
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
    from ..devices import resolve_device

    cfg, dev, t0 = config, resolve_device(config.device), time.perf_counter()
    data = EvalData(data, cfg.batch_size, cfg.max_images, dev)
    labelled = resolve_networks(model, harden_config, example_inputs=data.example())
    nets = [hm for _, hm in labelled]
    with networks_held(nets, dev):
        sites = _select_sites(noise_sites(nets[0]), cfg.sites)
        _check_map(cfg, noise_sites(nets[0]))
        for hm, plain in zip(nets, _plain_models(model)):
            check = ExactnessCheck(hm, plain, cfg.check_exact, where="sweep")
            for inputs in data.firsts.values():
                check(inputs)
        per_forward = cfg.points_per_forward or CHUNK_LEVELS.get(dev.type, 4) * cfg.repeats
        forward_images = cfg.forward_images or FORWARD_IMAGES.get(dev.type, 512)
        engine = Engine(nets, data, sites, cfg, per_forward, forward_images, progress, scorer)
        classes = engine.warm_up()
        settings = {**cfg.to_dict(), "device": dev.type, "points_per_forward": per_forward,
                    "forward_images": forward_images}
        if not engine.classic:
            settings["metric"] = scorer.name
        identity = {"format": FORMAT, "settings": settings, "data": data.identity, "networks": [
            {"harden": config_to_dict(hm.harden_config), "weights_sha256": weights_sha256(hm)} for hm in nets]}
        if out is not None:
            check_writable(out)
            engine.attach(PointStore(out, identity))
        clean = engine.clean()
        info: dict = {}
        if engine.classic:
            chance = cfg.chance if cfg.chance is not None else 1.0 / classes
        else:
            clean, chance, info = _metric_scale(engine, scorer, cfg, classes, clean)
        keys: List[Optional[str]] = [None] if cfg.mode is SweepMode.GLOBAL else list(sites)
        run_grid(engine, cfg, keys, float(np.mean(clean)), chance)
    stats, seconds = engine.stats, time.perf_counter() - t0
    ordered = sorted(engine.counts.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
    if engine.classic:
        points = [SweepPoint(s, g, tuple(tuple(c) for c in counts), data.num_images) for (s, g), counts in ordered]
    else:
        points = [SweepPoint(s, g, (), data.num_images, tuple(tuple(engine.to_fit(v) for v in c) for c in counts),
                             tuple(tuple(scorer.report(v) for v in c) for c in counts)) for (s, g), counts in ordered]
    result = SweepResult(
        mode=cfg.mode, points=points, sites=sites, clean_accuracy=float(np.mean(clean)),
        clean_accuracies=clean, chance=chance, num_images=data.num_images, networks=[lb for lb, _ in labelled],
        site_kinds={s.name: s.kind for s in nets[0].report.sites if s.name in set(sites)},
        provenance=dict(provenance or {}),
        identity={"data": data.identity, "weights_sha256": [n["weights_sha256"] for n in identity["networks"]]},
        units=cfg.units, site_rms={s: float(np.mean([float(m[s].rms) for m in engine.mods])) for s in sites},
        config=settings, harden_configs=[n["harden"] for n in identity["networks"]], seed=cfg.seed,
        seeding="seed_noise(model, sha256(seed/network/chunk)) before each chunk (see fxharden.sweep); weight noise "
                f"drawn once per {'chunk' if cfg.weight_draws is WeightDraws.REPEAT else 'forward pass'}",
        fingerprint=engine.store.fingerprint if engine.store is not None else "",
        timing={**stats, "seconds": seconds, "images_per_second": stats["images"] / max(stats["eval_seconds"], 1e-9)},
        metric="top1" if engine.classic else scorer.name, metric_info=info,
    ).refit(fit_options)
    if out is not None:
        result.save(out)
    return result
