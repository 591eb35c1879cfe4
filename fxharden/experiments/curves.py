"""Curves of an experiment: the finished cells of one variant merged into one ``SweepResult``
(network n of a point is the n-th seed trained for that point), with its fit.

A matched (noisy-training) curve has no σ = 0 point of its own, so its upper plateau is a
convention. Its μ is also given model-free, as the σ where the mean accuracy first falls
through ``(a_max + chance) / 2`` (linear interpolation in ln σ), under both conventions
(``matched_crossings``):

* ``AMax.CLEAN``: a_max = the clean accuracy of the σ_train = 0 networks of the same model and
  quantization (the experiment's ordinary curve), when the experiment has that curve;
* ``AMax.BEST``: a_max = the best point of the matched curve itself.

Their error is half the central 68 % interval of the crossing over bootstrap curves
(networks, then repeats, resampled); under ``BEST`` each bootstrap curve takes its own best
point.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ..measure.midpoint import FitStatus, Quote, QuoteKind, crossing, percentile_interval
from ..measure.options import SweepMode
from ..measure.results import SweepPoint, SweepResult, bootstrap_curves
from .experiment import Cell, PaperValue, Variant

__all__ = ["AMax", "MatchedCrossing", "Curve", "merge_curve", "matched_crossings"]

CROSSING_BOOTSTRAP = 400
"""Bootstrap curves behind a matched crossing's error."""


class AMax(str, enum.Enum):
    """Where the upper plateau of a matched curve is taken from."""

    CLEAN = "clean"
    """The clean accuracy of the networks trained without noise (σ_train = 0)."""
    BEST = "best"
    """The best point of the matched curve."""


@dataclass(frozen=True)
class MatchedCrossing:
    """μ of a matched curve from the crossing of ``(a_max + chance) / 2`` under one convention."""

    convention: AMax
    a_max: float
    mu: float
    """NaN when the curve never falls through the level (or starts below it)."""
    mu_err: float
    """Half the 68 % bootstrap interval (NaN with too few finite replicas)."""


def matched_crossings(result: SweepResult, clean_accuracy: Optional[float] = None,
                      n_boot: int = CROSSING_BOOTSTRAP, seed: int = 0) -> Dict[AMax, MatchedCrossing]:
    """The crossing μ of a matched curve under each a_max convention that applies: ``BEST``
    always, ``CLEAN`` when ``clean_accuracy`` (of the σ_train = 0 networks) is given."""
    pts = sorted((p for p in result.site_points() if p.sigma > 0), key=lambda p: p.sigma)
    if not pts:
        return {}
    s = np.array([p.sigma for p in pts])
    acc = np.array([p.mean for p in pts])
    reps = bootstrap_curves(pts, n_boot, seed)
    chance = result.chance
    out: Dict[AMax, MatchedCrossing] = {}
    for conv, a_max in ((AMax.CLEAN, clean_accuracy), (AMax.BEST, float(acc.max()))):
        if a_max is None:
            continue
        boot = np.array([crossing(s, r, 0.5 * ((r.max() if conv is AMax.BEST else a_max) + chance))
                         for r in (reps if reps is not None else [])])
        lo, hi = percentile_interval(boot) if boot.size else (math.nan, math.nan)
        out[conv] = MatchedCrossing(conv, float(a_max), _falls_through(s, acc, 0.5 * (a_max + chance)),
                                    0.5 * (hi - lo))
    return out


def _falls_through(s: np.ndarray, acc: np.ndarray, level: float) -> float:
    """``crossing`` at ``level``, NaN when the first point is already below it."""
    return crossing(s, acc, level) if acc[0] >= level else math.nan


@dataclass
class Curve:
    """One assembled curve: every finished network of a variant, merged into one result."""

    variant: Variant
    result: SweepResult
    cells: List[str]
    paper: Optional[PaperValue] = None
    crossings: Dict[AMax, MatchedCrossing] = field(default_factory=dict)
    """Matched curves: the crossing μ under each a_max convention (``matched_crossings``)."""

    @property
    def peak_accuracy(self) -> float:
        """Clean accuracy (ordinary curve) or best point (matched curve: no sigma-0 network)."""
        if self.variant.matched:
            return max(p.mean for p in self.result.site_points())
        return self.result.clean_accuracy

    def quote(self) -> Quote:
        """The value every table shows as this curve's μ: the fit's quote (``MidpointFit.quote``),
        except for a matched curve whose fit is not OK. That curve usually ends above chance on
        its grid, so the fit's generic crossing (half way between its best and its lowest point)
        is not a midpoint; it quotes its matched crossing instead, a_max from the clean networks
        if the experiment has them, else from its best point, marked with that convention."""
        fit = self.result.fit
        q = fit.quote() if fit is not None else Quote(QuoteKind.NONE, math.nan, math.nan, FitStatus.FIT_FAILED,
                                                         "no fit")
        if not self.variant.matched or q.is_mu:
            return q
        for conv in (AMax.CLEAN, AMax.BEST):
            x = self.crossings.get(conv)
            if x is not None and math.isfinite(x.mu):
                return Quote(QuoteKind.CROSSING, x.mu, x.mu_err, q.status,
                             f"matched curve, fit {q.status.value}: the σ where the accuracy falls through "
                             f"(a_max + chance) / 2 with a_max = {100 * x.a_max:.1f} % ({conv.value})",
                             label=f"matched crossing, a_max {conv.value}")
        return Quote(QuoteKind.NONE, math.nan, math.nan, q.status,
                     f"matched curve, fit {q.status.value}, and it never falls through (a_max + chance) / 2")


def merge_curve(variant: Variant, cells: List[Cell], done: Dict[str, Dict[str, Any]]) -> Optional[Curve]:
    """Merge the finished cells of one curve into one ``SweepResult`` (network n of a point is
    the n-th seed trained for that point) and fit it."""
    groups: Dict[float, List[Dict[str, Any]]] = {}
    for c in cells:
        if c.key in done:
            groups.setdefault(c.train_sigma, []).append(done[c.key])
    if not groups:
        return None
    points: List[SweepPoint] = []
    if variant.matched:
        n = min(len(g) for g in groups.values())  # equal networks per point for the per-seed fits
        for sigma, recs in sorted(groups.items()):
            points.append(SweepPoint(None, sigma, tuple(tuple(r["points"][0]["correct"]) for r in recs[:n]),
                                     recs[0]["points"][0]["total"]))
        recs = [r for g in groups.values() for r in g[:n]]
        clean = [r["clean_accuracy"] for r in groups[min(groups)][:n]]
    else:
        recs = groups[variant.train_sigma]
        for i, p in enumerate(recs[0]["points"]):
            points.append(SweepPoint(None, p["sigma"], tuple(tuple(r["points"][i]["correct"]) for r in recs), p["total"]))
        clean = [r["clean_accuracy"] for r in recs]
    first = recs[0]
    result = SweepResult(
        mode=SweepMode.GLOBAL, points=points, sites=first["sites"], clean_accuracy=sum(clean) / len(clean),
        clean_accuracies=clean, chance=first["chance"], num_images=first["num_images"],
        networks=[r["key"] for r in recs], config={"cells": [r["key"] for r in recs], "matched": variant.matched},
        harden_configs=[first["harden"]], seed=0, seeding="each network swept in its own cell (cells/<key>/sweep)")
    return Curve(variant, result.refit(), [r["key"] for r in recs])
