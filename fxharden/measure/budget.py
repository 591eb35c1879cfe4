"""Noise budget: a per-site σ allocation that keeps accuracy within ``max_drop`` of clean at
the lowest cost ``E = Σ ops_s/σ_s²`` (``noise_cost``), verified by sweeps.

How (``budget``):

1. **Profile.** A per-layer sweep gives each site's sensitivity μ_s (noise at that site
   only). A site whose accuracy alone already falls more than ``max_drop`` at the smallest
   σ measured cannot run analog: it is protected (kept digital, σ = 0).
2. **Shape.** With the noise of the sites adding up as ``drop ≈ f(Σ_s σ_s²/μ_s²)``, the
   allocation of least cost for a given drop is ``σ_s ∝ ops_s^(1/4) · μ_s^(1/2)`` (Lagrange:
   minimise Σ ops_s/σ_s² at fixed Σ σ_s²/μ_s²). The shape ``w_s`` is normalised so that
   ``Σ_analog ops_s/w_s² = Σ_analog ops_s``: at scale ``t`` the analog sites cost exactly as
   much as a uniform σ = t over the same sites (``t`` is an *equivalent uniform σ*).
3. **Verify.** Global sweeps with the map ``σ_s = t·w_s`` (``SweepConfig.sigma_map``) find
   the largest measured ``t`` whose drop plus two standard errors (of the repeats) stays
   within ``max_drop`` (a log grid, then two refinements of the bracket where it first
   fails); the scale chosen is measured again with fresh draws and ``VERIFY_REPEATS`` times
   the repeats, and kept only when that mean drop is within ``max_drop`` (else the next
   lower passing scale is tried): picking the largest of noisy points favours lucky ones. The same search with
   ``w_s = 1`` gives the best uniform σ. The allocation returned is the cheaper of the two
   verified ones (so it is never worse than uniform), and every number in the result is a
   measured point.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .._files import atomic_write_json, atomic_write_text
from ..core.exactness import ExactnessCheck
from ..core.harden import HardenedModule, noise_sites
from ..zoo.models import ModelLike, resolve_networks
from ..zoo.data import map_tensors
from .engine import EvalData
from .noise_cost import CostModel, allocation_cost, site_ops
from .options import SweepMode, Units
from .results import SweepResult
from .sigma_map import SIGMA_MAP_FILE, write_sigma_map
from .sensitivity import Estimate, estimate_text, sensitivity
from .sweep import sweep
from .sweep_config import SweepConfig

__all__ = ["BudgetError", "BudgetResult", "SiteBudget", "budget"]


VERIFY_REPEATS = 4
"""The chosen scale is measured again with this many times the sweep's repeats and fresh
draws; it passes when its mean drop stays within ``max_drop``."""


class BudgetError(ValueError):
    """The target cannot be met; ``sites`` names the sites that fail it."""

    def __init__(self, message: str, sites: List[str]) -> None:
        super().__init__(message)
        self.sites = sites


@dataclass(frozen=True)
class SiteBudget:
    """One site of an allocation."""

    site: str
    kind: str
    ops: int
    """Operations per input image (``noise_cost.site_ops``)."""
    mu: float
    """Per-layer sensitivity used for the shape: the profile's quoted μ (``estimate`` says
    which kind); for a site beyond the grid its lower bound, for a site without an estimate
    the largest σ of the profile."""
    sigma: float
    """Allocated noise (sweep units); 0: protected (digital)."""
    protected: bool
    reason: str = ""
    """Why a site is protected."""
    estimate: str = Estimate.FIT
    """What the profile quotes for the site (``sensitivity.Estimate``): ``fit``, ``crossing``,
    ``lower bound`` (μ > ``mu``, printed ``> mu``) or ``none`` (printed ``-``)."""
    mu_err: float = math.nan
    """The 1-σ error of ``mu`` (NaN for a bound or no estimate)."""

    def mu_text(self) -> str:
        """The per-layer μ as printed (``sensitivity.estimate_text``)."""
        return estimate_text(self.estimate, self.mu, self.mu_err)


@dataclass
class BudgetResult:
    """A verified allocation and the best uniform σ it is compared with."""

    max_drop: float
    units: Units
    clean_accuracy: float
    sites: List[SiteBudget]
    scale: float
    """Equivalent uniform σ t of the allocation (``σ_s = t·w_s``)."""
    accuracy: float
    """Measured mean accuracy with the allocation."""
    uniform_sigma: float
    """Largest measured uniform σ within the drop; NaN when none is."""
    uniform_accuracy: float
    cost: float
    uniform_cost: float
    digital_sigma: float
    shape: str
    """``sensitivity`` (step 2) or ``uniform`` (the uniform allocation was cheaper)."""
    curves: Dict[str, List[Tuple[float, float, float]]] = field(default_factory=dict)
    """``{"allocation"|"uniform": [(t, mean accuracy, std error), ...]}`` of the verifying sweeps."""
    metric: str = "top1"
    """What was measured; other than top-1 the accuracies are fit scores (``budget``'s ``metric``)."""

    @property
    def drop(self) -> float:
        return self.clean_accuracy - self.accuracy

    @property
    def cost_ratio(self) -> float:
        """Cost of the allocation / cost of the best uniform σ (< 1: cheaper)."""
        return self.cost / self.uniform_cost if math.isfinite(self.uniform_cost) else 0.0

    @property
    def sigma_map(self) -> Dict[str, float]:
        return {s.site: s.sigma for s in self.sites}

    @property
    def protected(self) -> List[str]:
        return [s.site for s in self.sites if s.protected]

    @property
    def unit(self) -> str:
        """What one input is, by the metric: an image (accuracies), a sequence (token metrics)."""
        return {"top1": "image", "top5": "image", "perplexity": "sequence", "token_accuracy": "sequence"}.get(
            self.metric, "input")

    def markdown(self) -> str:
        """The allocation as a markdown table with the verification and cost summary."""
        total = sum(s.ops for s in self.sites) or 1
        u = self.units.value
        what = "accuracy" if self.metric == "top1" else f"{self.metric} score (fit scale: 1 ideal, 0 floor)"
        noun = "accuracy" if self.metric == "top1" else "score"
        lines = [f"Noise budget: {what} drop ≤ {self.max_drop:g} from clean {self.clean_accuracy:.4f}; σ in "
                 f"{u} units; cost E = Σ ops/σ² (protected sites at σ_d = {self.digital_sigma:.4g}).", "",
                 f"- allocation ({self.shape} shape): measured {noun} {self.accuracy:.4f} (drop {self.drop:.4f}), "
                 f"equivalent uniform σ {self.scale:.4g}, cost {self.cost:.4g}",
                 f"- best uniform σ {self.uniform_sigma:.4g}: measured {noun} {self.uniform_accuracy:.4f}, "
                 f"cost {self.uniform_cost:.4g}",
                 f"- cost ratio (allocation / uniform): {self.cost_ratio:.3g}",
                 f"- protected (digital): {', '.join(self.protected) or 'none'}", "",
                 f"| # | site | kind | ops/{self.unit} | share | per-layer μ | σ | cost share |",
                 "|---:|---|---|---:|---:|---|---:|---:|"]
        for i, s in enumerate(self.sites, 1):
            share = allocation_cost({s.site: s.ops}, {s.site: s.sigma}, self.digital_sigma) / self.cost
            sigma = "protected" + (f" ({s.reason})" if s.reason else "") if s.protected else f"{s.sigma:.4g}"
            lines.append(f"| {i} | `{s.site}` | {s.kind or '-'} | {s.ops:,} | {s.ops / total:.1%} | {s.mu_text()} | "
                         f"{sigma} | {share:.1%} |")
        return "\n".join(lines) + "\n"

    def save(self, out: Union[str, os.PathLike]) -> Dict[str, Path]:
        """Write ``budget.md`` (the table), ``budget.json`` (everything), ``budget.png`` and
        the allocation file ``sigma_map.json`` that ``fxharden sweep --sigma-map`` reads."""
        from .plots import plot_budget

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        return {"table": atomic_write_text(out / "budget.md", self.markdown()),
                "json": atomic_write_json(out / "budget.json", self.to_dict()),
                "plot": plot_budget(self, out / "budget.png"),
                "sigma_map": write_sigma_map(out / SIGMA_MAP_FILE, self.sigma_map, self.units, {
                    "max_drop": self.max_drop, "clean_accuracy": self.clean_accuracy, "accuracy": self.accuracy,
                    "cost_ratio": self.cost_ratio})}

    def to_dict(self) -> Dict[str, Any]:
        return {"max_drop": self.max_drop, "metric": self.metric, "units": self.units.value,
                "clean_accuracy": self.clean_accuracy,
                "scale": self.scale, "accuracy": self.accuracy, "drop": self.drop,
                "uniform_sigma": self.uniform_sigma, "uniform_accuracy": self.uniform_accuracy, "cost": self.cost,
                "uniform_cost": self.uniform_cost, "cost_ratio": self.cost_ratio,
                "digital_sigma": self.digital_sigma, "shape": self.shape,
                "cost_model": "E = sum_analog ops/sigma^2 + sum_digital ops/digital_sigma^2",
                "sites": [vars(s) for s in self.sites]}


def budget(model: ModelLike, data: Any, max_drop: float, *, config: Optional[SweepConfig] = None,
           profile: Optional[SweepResult] = None, cost: CostModel = CostModel(), protect: bool = True,
           grid_points: int = 9, progress: Optional[Callable[[str, int, int], None]] = None,
           metric: Any = "top1") -> BudgetResult:
    """Find and verify a per-site noise allocation (module doc).

    Args:
        model: one model (plain, hardened, or a checkpoint path).
        data: evaluation data, as for ``sweep``.
        max_drop: allowed accuracy drop from clean, a fraction in [0, 1) (0.01 = one point).
        config: sweep settings (repeats, batch size, units, seed, device, max_images, the σ
            range sigma_min..sigma_max searched); mode, sigmas and sigma_map are set here.
        profile: a per-layer sweep of this model on the same data (else one is run); refused
            (``ValueError``) when its weights hash, harden config or data identity differ
            from this model's and data. Only its sensitivities are used: the reference clean
            accuracy is always measured on ``model``.
        cost: the cost model (``noise_cost``).
        protect: keep sites digital that fail alone at the smallest σ; ``False``: such
            sites make the target impossible (``BudgetError``).
        grid_points: points of the first log grid of each scale search.
        progress: called as ``progress(phase, done, total)`` while each sweep runs (images of
            that sweep); phases ``"per-layer profile"``, ``"allocation search"``, ``"uniform search"``.
        metric: what every sweep measures (``sweep``'s ``metric``); other than top-1 the
            accuracies and ``max_drop`` are in its fit scale (1 at the ideal value, 0 at the
            floor: for perplexity, on the log scale between 1 and the vocabulary size).

    Raises:
        ValueError: a bad ``max_drop`` or a profile that is not a per-layer sweep of the model.
        BudgetError: the target cannot be met; the message and ``.sites`` name the sites.
    """
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop < 1:
        raise ValueError(f"max_drop is the allowed accuracy drop from clean as a fraction in [0, 1) (0.01 = one "
                         f"percentage point), got {max_drop!r}")
    base = replace(config or SweepConfig(), sigmas=None, sigma_map=None, sites=None, mode=SweepMode.GLOBAL)
    example = EvalData(data, 1, 1, torch.device("cpu")).example()  # one image: the example and the op count's input
    (_, hm), = resolve_networks(model, example_inputs=example)  # torch.export for models fx cannot trace
    if isinstance(model, nn.Module) and not isinstance(model, HardenedModule):
        ExactnessCheck(hm, model, base.check_exact, where="budget, its example image")(example)
    sites = noise_sites(hm)
    given = profile is not None
    if not given:
        profile = sweep(hm, data, config=replace(base, mode=SweepMode.PER_LAYER, adaptive=True), metric=metric,
                        progress=_phase(progress, "per-layer profile"))
    else:
        _check_profile(profile, hm, data, base)
    rows = {r.site: r for r in sensitivity(profile)}
    missing = [s for s in sites if s not in rows]
    if missing or profile.units is not base.units:
        raise ValueError(f"the profile does not fit: {'it lacks sites ' + ', '.join(missing[:5]) if missing else ''}"
                         f"{'' if profile.units is base.units else f'its units are {profile.units.value}'}; give a "
                         f"per-layer sweep of this model in {base.units.value} units")
    floor = min(p.sigma for p in profile.points if p.sigma > 0)
    failing = {s: _alone_at_floor(profile, s, profile.clean_accuracy, max_drop) for s in sites}
    failing = {s: why for s, why in failing.items() if why}
    if failing and not protect:
        raise BudgetError(_fail_message(failing, max_drop, "protect=True keeps them digital"), sorted(failing))
    param = next(iter(hm.parameters()), None)
    ops = site_ops(hm, map_tensors(example, lambda t: t.to(param.device) if param is not None else t))
    analog = [s for s in sites if s not in failing]
    if not analog:
        raise BudgetError(_fail_message(failing, max_drop, "no site can run analog; allow a larger drop"),
                          sorted(failing))
    mu = {s: rows[s].mu if math.isfinite(rows[s].mu) else max(p.sigma for p in profile.points) for s in sites}
    raw = {s: (max(ops[s], 1) ** 0.25) * math.sqrt(mu[s]) for s in analog}
    norm = math.sqrt(sum(ops[s] / raw[s] ** 2 for s in analog) / max(sum(ops[s] for s in analog), 1))
    shape = {s: raw.get(s, 0.0) * norm for s in sites}
    d_sigma = cost.digital_sigma or floor
    # the reference: this model on these data (a given profile's own clean accuracy is not used)
    clean = _clean_accuracy(hm, data, base, metric) if given else profile.clean_accuracy
    t, acc, curve = _search(hm, data, base, shape, clean, max_drop, grid_points,
                            _phase(progress, "allocation search"), metric)
    tu, accu, ucurve = _search(hm, data, base, None, clean, max_drop, grid_points, _phase(progress, "uniform search"),
                               metric)
    uniform_cost = allocation_cost(ops, {s: tu for s in sites}, d_sigma) if math.isfinite(tu) else math.inf
    if not math.isfinite(t) and not math.isfinite(tu):
        raise BudgetError(f"no allocation keeps the accuracy drop within {max_drop:g} at the smallest scale "
                          f"{base.sigma_min:g}; sites that fail alone: "
                          f"{', '.join(s for s in failing) or 'none (the drop comes from all sites together)'}; "
                          "allow a larger drop or a smaller sigma_min", sorted(failing) or sites) from None
    alloc = {s: t * shape[s] for s in sites} if math.isfinite(t) else None
    alloc_cost = allocation_cost(ops, alloc, d_sigma) if alloc else math.inf
    kind = "sensitivity"
    if alloc_cost > uniform_cost:
        alloc, alloc_cost, t, acc, kind = {s: tu for s in sites}, uniform_cost, tu, accu, "uniform"
    table = [SiteBudget(s, profile.site_kinds.get(s, ""), ops[s], mu[s], alloc[s], alloc[s] == 0,
                        f"fails alone {failing[s]}" if s in failing and alloc[s] == 0 else "", rows[s].estimate,
                        rows[s].mu_err if math.isfinite(rows[s].mu) else math.nan) for s in sites]
    return BudgetResult(max_drop, base.units, clean, table, t, acc, tu, accu, alloc_cost, uniform_cost, d_sigma, kind,
                        {"allocation": curve, "uniform": ucurve}, metric=profile.metric)


def _clean_accuracy(hm, data, base: SweepConfig, metric: Any = "top1") -> float:
    """Accuracy of ``hm`` on ``data`` without noise (a sweep's clean pass; its one point at
    the smallest σ is a by-product)."""
    return sweep(hm, data, config=replace(base, sigmas=(base.sigma_min,), adaptive=False, repeats=1),
                 metric=metric).clean_accuracy


def _check_profile(profile: SweepResult, hm, data: Any, base: SweepConfig) -> None:
    """Refuse a profile measured on other weights, another harden config or other data (its
    sensitivities would describe another network)."""
    from ..core.calibrate import calibrate_quantizers
    from ..core.config import config_to_dict
    from .engine import EvalData, weights_sha256

    redo = "run the budget without a profile (leave out --profile) to measure one on this model"
    if profile.mode is not SweepMode.PER_LAYER:
        raise ValueError(f"the profile is a {profile.mode.value} sweep; a budget needs a per-layer sweep of this "
                         f"model; {redo}")
    ident = profile.identity
    if not ident.get("weights_sha256") or not ident.get("data"):
        raise ValueError("the profile does not record which weights and data it measured (a results.json written "
                         f"before fxharden recorded them, without its sweep.json beside it); {redo}")
    param = next(iter(hm.parameters()), None)
    evaluated = EvalData(data, base.batch_size, base.max_images, param.device if param is not None else "cpu")
    calibrate_quantizers(hm, evaluated)  # as the profile's sweep did (and the budget's sweeps will) before hashing
    diffs = []
    mine = weights_sha256(hm)
    if ident["weights_sha256"] != [mine]:
        theirs = ", ".join(h[:12] for h in ident["weights_sha256"])
        diffs.append(f"its weights (sha256 {theirs}) are not this model's ({mine[:12]}): a profile of other "
                     "weights (e.g. from before a fine-tune) measures another network (the hash includes "
                     "quantizer steps calibrated on the first batches: --batch-size must match too)")
    if [_canonical(c) for c in profile.harden_configs] != [_canonical(config_to_dict(hm.harden_config))]:
        diffs.append("its harden config (bits, scale, noise model, rules) differs from this model's")
    here = evaluated.identity
    there = ident["data"]
    if (here["images"] != there.get("images") or here["labels_sha256"] != there.get("labels_sha256")
            or not math.isclose(here["inputs_sum"], float(there.get("inputs_sum", math.nan)), rel_tol=1e-6,
                                abs_tol=1e-6)):
        diffs.append(f"its data differ ({there.get('images')} images, input sum {there.get('inputs_sum')!r}; "
                     f"here {here['images']} images, input sum {here['inputs_sum']!r}): other images, labels, "
                     "preprocessing or --max-images")
    if diffs:
        raise ValueError("the profile does not fit this model: " + "; ".join(diffs) + f"; {redo}")


def _canonical(value: Any) -> Any:
    """JSON round trip: a config as a stored results.json holds it."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _alone_at_floor(profile: SweepResult, site: str, clean: float, max_drop: float) -> str:
    """Why ``site`` fails alone at the profile's smallest σ ('' when it does not)."""
    pts = [p for p in profile.site_points(site) if p.sigma > 0]
    if not pts:
        return ""
    acc = float(np.mean(pts[0].samples))
    return f"at σ={pts[0].sigma:.3g}: accuracy {acc:.4f}, drop {clean - acc:.4f}" if clean - acc > max_drop else ""


def _fail_message(failing: Dict[str, str], max_drop: float, hint: str) -> str:
    listed = "; ".join(f"{s} ({why})" for s, why in list(failing.items())[:8])
    return (f"{len(failing)} site(s) alone drop the accuracy by more than {max_drop:g} even at the smallest σ "
            f"measured: {listed}{', ...' if len(failing) > 8 else ''}; {hint}")


def _noise_se(point) -> float:
    """Standard error of a point's mean accuracy from the noise draws alone: the spread of its
    repeats (the evaluation images are the same at every point, so their sampling error is
    common to the clean accuracy and cancels in the drop)."""
    acc = np.asarray(point.accuracy, dtype=float).ravel()
    return float(acc.std(ddof=1) / math.sqrt(acc.size)) if acc.size > 1 else 0.0


def _phase(progress: Optional[Callable[[str, int, int], None]], name: str) -> Optional[Callable[[int, int], None]]:
    """A sweep's ``progress(done, total)`` reporting as ``progress(name, done, total)``."""
    return None if progress is None else (lambda done, total: progress(name, done, total))


def _search(hm, data, base: SweepConfig, shape: Optional[Dict[str, float]], clean: float, max_drop: float,
            points: int, progress: Optional[Callable[[int, int], None]] = None, metric: Any = "top1"
            ) -> Tuple[float, float, List[Tuple[float, float, float]]]:
    """The largest measured scale whose drop (+2 standard errors) stays within ``max_drop``
    (below the first that does not), verified with fresh draws: a log grid over sigma_min..sigma_max (extended down to
    sigma_min/1000 while every point fails), then two refinements of the bracket.
    ``(nan, nan, curve)`` when even the smallest fails."""
    measured: Dict[float, Tuple[float, float]] = {}

    def fails(t: float) -> bool:  # conservative: the drop plus two standard errors of the noise draws
        return clean - measured[t][0] + 2 * measured[t][1] > max_drop

    grid = list(np.geomspace(base.sigma_min, base.sigma_max, points))
    refinements = 0
    while refinements < 2:
        cfg = replace(base, sigmas=tuple(grid), adaptive=False, sigma_map=shape)
        res = sweep(hm, data, config=cfg, progress=progress, metric=metric)
        for p in res.site_points(None):
            measured[p.sigma] = (p.mean, _noise_se(p))
        ts = sorted(measured)
        fail = next((i for i, s in enumerate(ts) if fails(s)), None)
        if fail is None:
            break
        if fail == 0:  # fails everywhere: look up to three decades lower before giving up
            if ts[0] <= base.sigma_min * 1.001e-3:
                break
            grid = list(np.geomspace(ts[0] / 1000, ts[0], 4)[:-1])
            continue
        grid, refinements = list(np.geomspace(ts[fail - 1], ts[fail], 5)[1:-1]), refinements + 1
    ts = sorted(measured)
    fail = next((i for i, s in enumerate(ts) if fails(s)), len(ts))
    curve = [(s, *measured[s]) for s in ts]
    for best in reversed(ts[:fail]):  # verify with fresh draws: the search picked a lucky point as often as not
        cfg = replace(base, sigmas=(best,), adaptive=False, sigma_map=shape, repeats=VERIFY_REPEATS * base.repeats,
                      seed=base.seed + 1)
        point = sweep(hm, data, config=cfg, progress=progress, metric=metric).site_points(None)[0]
        if clean - point.mean <= max_drop:
            return best, point.mean, curve
    return math.nan, math.nan, curve
