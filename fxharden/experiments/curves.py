"""Curves of an experiment: the finished cells of one variant merged into one ``SweepResult``
(network n of a point is the n-th seed trained for that point), with its fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..measure.results import SweepMode, SweepPoint, SweepResult
from .experiment import Cell, PaperValue, Variant

__all__ = ["Curve", "merge_curve"]


@dataclass
class Curve:
    """One assembled curve: every finished network of a variant, merged into one result."""

    variant: Variant
    result: SweepResult
    cells: List[str]
    paper: Optional[PaperValue] = None

    @property
    def peak_accuracy(self) -> float:
        """Clean accuracy (ordinary curve) or best point (matched curve: no sigma-0 network)."""
        if self.variant.matched:
            return max(p.mean for p in self.result.site_points())
        return self.result.clean_accuracy


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
