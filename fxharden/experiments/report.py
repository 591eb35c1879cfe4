"""What ``reproduce`` writes for people: results.md / results.csv (one row per curve, beside
the paper's numbers), architectures.md (Table II columns) and the figures (accuracy vs σ per
model, peak accuracy vs μ)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

from .._files import atomic_write_text
from ..measure.midpoint import QuoteKind
from ..measure.plots import new_figure, save_figure, save_plots
from .curves import AMax, Curve
from .experiment import Budget, Experiment, PaperValue

__all__ = ["write_tables", "write_architectures", "write_figures"]


def _fmt_mu(curve: Curve) -> str:
    """The quoted value (``Curve.quote``): μ, ``~crossing (status)``, ``> σ_max`` or nothing."""
    return curve.quote().text(3)


def _fmt_other(curve: Curve) -> str:
    """The comparison model's μ and reduced χ² (never quoted as μ)."""
    f = curve.result.other_fit
    if f is None or not math.isfinite(f.mu):
        return f"({f.status.value})" if f is not None else ""
    return f"{f.mu:.3g} ± {f.mu_err:.2g}, χ²ᵣ {f.chi2_red:.2g} ({f.status.value})"


def _fmt_crossing(curve: Curve, conv: AMax) -> str:
    """A matched curve's crossing μ under one a_max convention, with that a_max."""
    x = curve.crossings.get(conv)
    if x is None:
        return ""
    if not math.isfinite(x.mu):
        return f"none (a_max {100 * x.a_max:.1f} %)"
    err = f" ± {x.mu_err:.2g}" if math.isfinite(x.mu_err) else ""
    return f"{x.mu:.3g}{err} (a_max {100 * x.a_max:.1f} %)"


_COLUMNS = ["curve", "model", "bits", "scaling", "noisy training", "networks", "peak acc %", "μ", "fit",
            "Eq. 1 fit", "matched μ×, a_max clean", "matched μ×, a_max best", "paper acc %", "paper μ"]


def _rows(curves: List[Curve]) -> List[List[Any]]:
    rows = []
    for c in curves:
        v, fit, p = c.variant, c.result.fit, c.paper
        mu = "" if p is None or p.mu is None else f"{p.mu:g}" + (f" (±{p.mu_err_pct:g}%)" if p.mu_err_pct else "")
        rows.append([v.key, v.model, "fp32" if v.bits is None else v.bits, v.scaling, v.training,
                     len(c.result.clean_accuracies), f"{100 * c.peak_accuracy:.1f}", _fmt_mu(c),
                     fit.status.value if fit is not None else "", _fmt_other(c), _fmt_crossing(c, AMax.CLEAN),
                     _fmt_crossing(c, AMax.BEST), "" if p is None or p.accuracy is None
                     else f"{p.accuracy:g}", mu])
    return rows


def write_tables(exp: Experiment, curves: List[Curve], out: Path, budget: Budget, failed: Dict[str, str]) -> Dict[str, Path]:
    import csv
    import io

    rows = _rows(curves)
    md = [f"# {exp.name} ({budget.value} budget)", "", exp.description.strip(), "",
          "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    md += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    md += ["", "μ: midpoint noise level from the log-σ logistic fit (a_max tied to the clean accuracy); "
           "`~x (status)` = model-free crossing estimate, shown instead when the fit is not OK (a matched curve quotes its matched crossing, a_max clean if there is one, else best); `> x` = the "
           "accuracy never falls half way below σ = x. Eq. 1 fit: the paper's linear-σ logistic on the same "
           "points, for comparison. Matched curves: every point is its own network, trained and evaluated at that σ "
           "(warm-started curves: each network starts from the trained one at the next lower σ of the same seed; "
           "the paper trains each σ from scratch). matched μ×: the σ where the matched curve's mean accuracy first "
           "falls through (a_max + chance) / 2, linear in ln σ, ± half its 68 % bootstrap interval, with a_max = "
           "the clean accuracy of the σ_train = 0 networks (when the experiment trains them) or the curve's best "
           "point; `none`: it never falls through."]
    if failed:
        md += ["", f"**{len(failed)} cell(s) failed** (see failures.json): " + ", ".join(sorted(failed))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["curve", "model", "bits", "scaling", "noisy_training", "networks", "peak_accuracy", "mu", "mu_err",
                "quoted", "quoted_value", "quoted_err", "mu_crossing", "mu_crossing_err", "fit_status", "fit_model",
                "chi2_red", "eq1_mu", "eq1_mu_err", "eq1_chi2_red", "eq1_status", "status_reason",
                "matched_a_max_clean", "matched_mu_crossing_clean", "matched_mu_crossing_clean_err",
                "matched_a_max_best", "matched_mu_crossing_best", "matched_mu_crossing_best_err",
                "paper_accuracy", "paper_mu", "paper_mu_err_pct"])

    def num(x: float) -> Any:
        return x if math.isfinite(x) else ""

    for c in curves:
        f, o, p = c.result.fit, c.result.other_fit, c.paper or PaperValue()
        q = c.quote()
        w.writerow([c.variant.key, c.variant.model, "fp32" if c.variant.bits is None else c.variant.bits,
                    c.variant.scaling, c.variant.training, len(c.result.clean_accuracies), c.peak_accuracy,
                    # mu / mu_err only when trustworthy; otherwise what is quoted instead, and why
                    q.value if q.is_mu else "", q.err if q.is_mu else "", q.kind.value, num(q.value), num(q.err),
                    num(f.mu_crossing) if f and f.has_crossing else "",
                    num(f.mu_crossing_err) if f and f.has_crossing else "", f.status.value if f else "",
                    f.model.value if f else "", num(f.chi2_red) if f else "",
                    num(o.mu) if o else "", num(o.mu_err) if o else "", num(o.chi2_red) if o else "",
                    o.status.value if o else "", q.reason,
                    *[num(getattr(c.crossings[conv], a)) if conv in c.crossings else ""
                      for conv in (AMax.CLEAN, AMax.BEST) for a in ("a_max", "mu", "mu_err")],
                    p.accuracy if p.accuracy is not None else "", p.mu if p.mu is not None else "",
                    p.mu_err_pct if p.mu_err_pct is not None else ""])
    files = {"markdown": out / "results.md", "csv": out / "results.csv"}
    text, table = "\n".join(md) + "\n", buf.getvalue()
    atomic_write_text(files["markdown"], text)
    atomic_write_text(files["csv"], table)
    if exp.architectures:
        files["architectures"] = write_architectures(exp, out)
    return files


def write_architectures(exp: Experiment, out: Path) -> Path:
    from ..zoo.recipes import find_recipe
    from ..zoo.summary import architecture_summary

    lines = ["| model | MFLOPs | paper | M params | paper | noisy layers | paper |", "|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(v.model for v in exp.variants):
        s = architecture_summary(model)
        recipe = find_recipe(model)
        paper = recipe.paper if recipe is not None else {}
        lines.append(f"| {model} | {s['mflops']:.2f} | {paper.get('mflops', '')} | {s['mparams']:.2f} | "
                     f"{paper.get('mparams', '')} | {s['noisy_layers']} | {paper.get('noisy_layers', '')} |")
    text = "\n".join(lines + ["", "FLOPs of one 3x32x32 input with the 10-class head (the paper's VGG-11 and "
                               "ResNet-18 numbers match the 1000-class head)."]) + "\n"
    atomic_write_text(out / "architectures.md", text)
    return out / "architectures.md"


def write_figures(curves: List[Curve], out: Path) -> Dict[str, Path]:
    import numpy as np


    files: Dict[str, Path] = {}
    for c in curves:
        save_plots(c.result, out / "curves" / c.variant.key)
    models = list(dict.fromkeys(c.variant.model for c in curves))
    for model in models:
        fig = new_figure(7.0, 4.4)
        ax = fig.add_subplot()
        for i, c in enumerate(x for x in curves if x.variant.model == model):
            sig, acc, err = c.result.curve()
            color, style = f"C{i % 10}", "--" if c.variant.matched or c.variant.train_sigma else "-"
            ax.errorbar(sig, acc, yerr=err, fmt="o", ms=3, capsize=2, color=color, label=c.variant.label)
            fit = c.result.fit
            if fit is not None and fit.ok:  # the fitted curve only where μ is trustworthy
                xs = np.geomspace(sig.min(), sig.max(), 200)
                ax.plot(xs, fit.curve(xs), style, lw=1.1, color=color)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("noise strength σ (σ_train = σ for noisy training)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{model}: accuracy vs σ", fontsize=10)
        ax.legend(fontsize=6, loc="lower left")
        ax.grid(True, alpha=0.3)
        files[f"curves_{model}"] = save_figure(fig, out / "plots" / f"accuracy_vs_sigma_{model}.png")
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    crossing_drawn = paper_drawn = False
    for i, model in enumerate(models):
        model_drawn = False
        for c in (x for x in curves if x.variant.model == model):
            q = c.quote()  # the value the tables quote (a matched curve: its matched crossing)
            if q.kind in (QuoteKind.MU, QuoteKind.CROSSING) and math.isfinite(q.value):
                err = q.err if math.isfinite(q.err) else None
                ax.errorbar(q.value, 100 * c.peak_accuracy, xerr=err, fmt="o" if q.is_mu else "x", color=f"C{i}",
                            ms=4)
                ax.annotate(c.variant.key.removeprefix(model + "-"), (q.value, 100 * c.peak_accuracy), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
                model_drawn, crossing_drawn = True, crossing_drawn or not q.is_mu
            p = c.paper
            if p is not None and p.mu is not None and p.accuracy is not None:
                ax.plot(p.mu, p.accuracy, "s", mfc="none", color=f"C{i}", ms=5)
                paper_drawn = True
        if model_drawn:  # legend entries only for what is drawn
            ax.plot([], [], "o", color=f"C{i}", label=f"{model} (measured)")
    if crossing_drawn:
        ax.plot([], [], "x", color="gray", label="crossing estimate (fit not OK)")
    if paper_drawn:
        ax.plot([], [], "s", mfc="none", color="gray", label="paper")
    ax.set_xscale("log")
    ax.set_xlabel("midpoint noise level μ")
    ax.set_ylabel("peak accuracy (%)")
    ax.set_title("accuracy vs robustness (Pareto)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    files["pareto"] = save_figure(fig, out / "plots" / "pareto.png")
    return files
