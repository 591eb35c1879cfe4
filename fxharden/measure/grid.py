"""Grid policy of a sweep: a fixed grid, or the adaptive one (a coarse log pass in ascending
σ that stops at chance and extends past the grid while accuracy is above it, then refinement
rounds where accuracy crosses half way)."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

from .engine import Engine
from .sweep_config import SweepConfig, round_sigma

__all__ = ["run_grid"]


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
    new = {round_sigma(s) for s in np.geomspace(sig[left], sig[right], n + 2)[1:-1]}
    return sorted(s for s in new if all(abs(s - t) > 1e-9 * t for t in sig))


def run_grid(engine: Engine, cfg: SweepConfig, keys: List[Optional[str]], top: float, chance: float) -> None:
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
                pending[s] = [round_sigma(g * ratio)]  # past the grid, still above chance
    for rnd in range(cfg.refine_rounds):
        new = []
        for s in keys:
            levels = sorted(lv for lv in engine.counts if lv[0] == s and lv[1] > 0)
            new += [(s, g) for g in _refine([g for _, g in levels], [engine.mean(lv) for lv in levels], top, chance,
                                            rnd, cfg.refine_points)]
        engine.expect(len(new) + (cfg.refine_rounds - rnd - 1) * cfg.refine_points * len(keys))
        engine.measure(new)
