"""``distributed_sweep``: one (large) network's sweep spread over an executor's workers."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Union

from ..measure.results import SweepResult
from .executors import Executor
from .experiment import DataSpec

__all__ = ["distributed_sweep"]

PathLike = Union[str, os.PathLike]


def _sweep_part(checkpoint: str, data: DataSpec, site: Optional[str], settings: Dict[str, Any]) -> Dict[str, Any]:
    """One task of ``distributed_sweep``: some sigma points (or one site) of one network."""
    from ..measure.sweep import SweepConfig, SweepMode, sweep

    _, test = data.load()
    mode = SweepMode.GLOBAL if site is None else SweepMode.PER_LAYER
    result = sweep(checkpoint, test, config=SweepConfig(mode=mode, sites=None if site is None else (site,),
                                                        **settings))
    return result.to_dict()


def distributed_sweep(checkpoint: PathLike, data: DataSpec, sigmas: List[float], executor: Executor, *,
                      parts: Optional[int] = None, per_layer: bool = False, **settings: Any) -> SweepResult:
    """Sweep one (large) network with its points spread over an executor's workers, merged
    into one ``SweepResult`` with one fit (global) or one fit per site (per layer).

    Global mode splits ``sigmas`` into ``parts`` chunks (default: one task per sigma); per-layer
    mode runs one task per noise site. Every task loads ``checkpoint`` and ``data`` itself, so
    the workers must see the checkpoint file. The noise of a point is seeded by its contents
    (see ``fxharden.sweep``): with ``points_per_forward=repeats`` a split sweep reproduces the
    single-process sweep exactly.

    Args:
        settings: other ``SweepConfig`` fields (``repeats``, ``seed``, ``batch_size``,
            ``points_per_forward``, ``device``...).
    """
    from ..zoo.checkpoint import load_checkpoint
    from ..core.harden import noise_sites

    sigmas = sorted(float(s) for s in sigmas)
    settings = {**settings, "sigmas": None}
    if per_layer:
        tasks = [(site, sigmas) for site in noise_sites(load_checkpoint(checkpoint).model)]
    else:
        n = max(1, min(parts or len(sigmas), len(sigmas)))
        tasks = [(None, sigmas[i::n]) for i in range(n)]
    for i, (site, chunk) in enumerate(tasks):
        executor.submit(f"part{i}", _sweep_part, str(checkpoint), data, site, {**settings, "sigmas": tuple(chunk)})
    parts_done: Dict[str, Dict[str, Any]] = {}
    for outcome in executor.as_completed():
        if not outcome.ok:
            executor.cancel()
            raise RuntimeError(f"sweep task {outcome.key} failed after {outcome.attempts} attempt(s):\n{outcome.error}")
        parts_done[outcome.key] = outcome.value
    results = [SweepResult.from_dict(parts_done[f"part{i}"]) for i in range(len(tasks))]
    merged = results[0]
    merged.points = sorted((p for r in results for p in r.points), key=lambda p: (p.site or "", p.sigma))
    merged.sites = list(dict.fromkeys(s for r in results for s in r.sites))
    merged.config = {**merged.config, "sigmas": sigmas, "sites": None, "split": len(tasks)}
    merged.timing = {"seconds": sum(r.timing.get("seconds", 0.0) for r in results)}
    return merged.refit()
