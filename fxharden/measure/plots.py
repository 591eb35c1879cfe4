"""PNG plots of a sweep: accuracy versus sigma with the fitted curve, and per-layer μ.

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot, no global
backend switch, safe in headless runs and in notebooks alike.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from .._files import atomic_write_bytes
from .midpoint import QuoteKind
from .options import SweepMode
from .results import SweepResult

__all__ = ["plot_accuracy", "plot_per_layer", "plot_budget", "save_plots", "new_figure", "save_figure", "ACCURACY_PNG", "PER_LAYER_PNG"]

ACCURACY_PNG, PER_LAYER_PNG = "accuracy_vs_sigma.png", "per_layer_mu.png"

PathLike = Union[str, os.PathLike]


def new_figure(width: float, height: float):
    """A matplotlib figure that never touches a display (Agg canvas), sized in inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_accuracy(result: SweepResult, path: PathLike, site: Optional[str] = None) -> Path:
    """Accuracy versus sigma (log axis) with error bars, the fitted curve and μ marked.

    Args:
        result: a sweep result.
        path: the PNG to write.
        site: per-layer mode: the site to plot; ``None`` plots the global curve, or in
            per-layer mode the curves of the (at most 8) most sensitive sites.

    Returns:
        ``path`` as a ``Path``.
    """
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    if result.mode is SweepMode.GLOBAL or site is not None:
        curves = [(site, result.fit if site is None else result.per_site.get(site))]
    else:
        curves = [(s, f) for s, f in result.ranking()[:8]]
    for i, (name, fit) in enumerate(curves):
        sig, acc, err = result.curve(name)
        keep = sig > 0  # a log axis has no sigma 0; the clean accuracy is drawn as a line
        sig, acc, err = sig[keep], acc[keep], err[keep]
        if not len(sig):
            continue
        color = f"C{i % 10}"
        label = "global noise" if name is None else name
        q = fit.quote() if fit is not None else None
        if q is not None:
            label += f": μ = {q.text(3)}" if q.is_mu else f": no μ, {q.text(3)}"
        ax.errorbar(sig, acc, yerr=err, fmt="o", ms=3.5, capsize=2, color=color, label=label)
        if q is not None and q.is_mu:  # the fitted curve and μ line only where μ is trustworthy
            xs = np.geomspace(sig.min(), sig.max(), 200)
            ax.plot(xs, fit.curve(xs), "-", lw=1.2, color=color)
            ax.axvline(q.value, ls="--", lw=0.9, color=color)
        elif q is not None and q.kind is QuoteKind.CROSSING:  # marked as a crossing, not as μ
            ax.axvline(q.value, ls=":", lw=0.9, color=color)
    ax.axhline(result.chance, ls=":", lw=0.9, color="gray", label=f"chance ({result.chance:.3g})")
    if result.has_clean_point:  # a matched curve has no σ = 0 point
        ax.axhline(result.clean_accuracy, ls=":", lw=0.9, color="black",
                   label=f"clean ({result.clean_accuracy:.3g})")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("noise strength σ")
    ax.set_ylabel("accuracy")
    title = "global noise" if result.mode is SweepMode.GLOBAL else (site or "per-layer noise (most sensitive sites)")
    ax.set_title(f"{title}: {result.num_images} images, {len(result.networks)} network(s)", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(True, which="major", alpha=0.3)
    return save_figure(fig, path)


def plot_per_layer(result: SweepResult, path: PathLike) -> Path:
    """The sensitivity map: μ per site with error bars, in network order, coloured by site
    kind. A μ from the crossing estimate is drawn lighter; a site whose accuracy never fell
    half way is a hatched bar up to its lower bound (μ lies above it).

    Raises:
        ValueError: ``result`` is not a per-layer sweep.
    """
    from .sensitivity import Estimate, sensitivity

    rows = sensitivity(result)
    top = max(result.sigmas) if result.points else 1.0
    kinds = list(dict.fromkeys(r.kind or "?" for r in rows))
    colour = {k: f"C{i % 10}" for i, k in enumerate(kinds)}
    fig = new_figure(max(6.4, 0.3 * len(rows) + 2), 4.4)
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        c = colour[r.kind or "?"]
        if r.estimate in (Estimate.FIT, Estimate.CROSSING):
            err = r.mu_err if math.isfinite(r.mu_err) else None
            ax.bar(i, r.mu, yerr=err, color=c, alpha=1.0 if r.estimate == Estimate.FIT else 0.45, capsize=2)
        else:
            height = r.mu if math.isfinite(r.mu) else top
            ax.bar(i, height, color="none", edgecolor=c, hatch="//")
            ax.annotate(">" if r.estimate == Estimate.LOWER_BOUND else "?", (i, height), ha="center", va="bottom",
                        fontsize=7)
    for k in kinds:
        ax.bar(0, 0, color=colour[k], label=k)
    ax.set_xticks(range(len(rows)), [r.site for r in rows], rotation=70, ha="right", fontsize=7)
    heights = [r.mu for r in rows if math.isfinite(r.mu)] or [top]
    if max(heights) > 30 * min(heights):  # μ spans decades: log axis
        ax.set_yscale("log")
    ax.set_xlabel("site (network order)")
    ax.set_ylabel("midpoint noise level μ")
    ax.set_title("per-layer μ (lower = more sensitive); light: crossing estimate, hatched: > bound", fontsize=9)
    ax.legend(fontsize=7, title="site kind", title_fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, path)


def save_plots(result: SweepResult, out: PathLike) -> Dict[str, Path]:
    """Write every plot that applies to ``result`` into directory ``out`` (per-layer sweeps:
    also the sensitivity table ``per_layer_mu.md``)."""
    out = Path(out)
    paths = {"accuracy": plot_accuracy(result, out / ACCURACY_PNG)}
    if result.mode is SweepMode.PER_LAYER:
        from .sensitivity import PER_LAYER_MD, sensitivity_markdown

        paths["per_layer"] = plot_per_layer(result, out / PER_LAYER_PNG)
        text = sensitivity_markdown(result).encode()
        paths["per_layer_table"] = atomic_write_bytes(out / PER_LAYER_MD, lambda f: f.write(text))
    return paths


def save_figure(fig, path: PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically."""
    return atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))


def plot_budget(result, path: PathLike) -> Path:
    """A noise budget (``fxharden.measure.budget.BudgetResult``): left, σ per site in network
    order (protected sites marked at the bottom) against the best uniform σ; right, the
    verifying sweeps, accuracy versus equivalent uniform σ, with the allowed drop."""
    fig = new_figure(11, 4.2)
    ax, bx = fig.subplots(1, 2)
    sites = result.sites
    x = np.arange(len(sites))
    analog = [s.sigma for s in sites if s.sigma > 0]
    low = min(analog + [result.uniform_sigma if math.isfinite(result.uniform_sigma) else 1.0]) / 3
    ax.bar(x, [s.sigma if s.sigma > 0 else np.nan for s in sites], color="C0", label="allocation")
    for i, s in enumerate(sites):
        if s.protected:
            ax.plot(i, low, "x", color="C3", ms=9, label="protected (digital)" if i == min(
                j for j, t in enumerate(sites) if t.protected) else None)
    if math.isfinite(result.uniform_sigma):
        ax.axhline(result.uniform_sigma, color="C1", ls="--", label=f"best uniform σ {result.uniform_sigma:.3g}")
    ax.set_yscale("log")
    ax.set_xticks(x, [s.site for s in sites], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"σ ({result.units.value})")
    ax.set_title(f"Allocation, cost ratio vs uniform {result.cost_ratio:.3g}")
    ax.legend(fontsize=8)
    for i, (name, label) in enumerate((("allocation", "allocation (equivalent uniform σ)"),
                                       ("uniform", "uniform σ"))):
        pts = result.curves.get(name) or []
        if pts:
            t, acc, err = (np.array(v) for v in zip(*pts))
            bx.errorbar(t, acc, yerr=err, fmt="o-", ms=3, color=f"C{i}", label=label)
    bx.axhline(result.clean_accuracy - result.max_drop, color="k", ls=":", label=f"clean − {result.max_drop:g}")
    bx.axvline(result.scale, color="C0", lw=0.8)
    bx.set_xscale("log")
    bx.set_xlabel(f"σ ({result.units.value})")
    bx.set_ylabel("accuracy")
    bx.set_title("Verifying sweeps")
    bx.legend(fontsize=8)
    return save_figure(fig, path)
