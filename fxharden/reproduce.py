"""``reproduce``: run an experiment's cells, assemble its curves, write tables and plots.

Output directory layout (the same for every executor)::

    experiment.json            the experiment, budget and data as run
    cells/<cell key>/          checkpoint.pt, train_log.json, sweep/ (resumable progress),
                               result.json (written atomically by the driver: the cell is done)
    curves/<curve key>/        results.json / results.csv / accuracy_vs_sigma.png of a curve
    results.md, results.csv    one row per curve, side by side with the paper's numbers
    architectures.md           Table II columns (when the experiment asks for them)
    plots/                     accuracy vs sigma per model, peak accuracy vs μ (Pareto)
    failures.json              cells that failed after their retries, with tracebacks

A cell whose ``result.json`` exists is never run again; a cell interrupted mid-training
resumes from its last epoch checkpoint, mid-sweep from its recorded points.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .checkpoint import atomic_write_bytes, atomic_write_json
from .executors import Executor, ExecutorKind, make_executor
from .experiment import Budget, Cell, DataSpec, DatasetKind, Experiment, PaperValue, Variant, load_experiment
from .results import SweepMode, SweepPoint, SweepResult

__all__ = ["reproduce", "run_cell", "distributed_sweep", "ReproduceResult", "Curve", "RESULT"]

RESULT = "result.json"
CELL_FORMAT = "fxharden-cell-v1"
PathLike = Union[str, os.PathLike]


def run_cell(cell: Cell, workdir: str, ship_checkpoint: bool = False) -> Dict[str, Any]:
    """Train one cell's network (resuming from ``workdir`` if a checkpoint is there), sweep it
    at ``cell.eval_sigmas`` and return the result record (the driver writes it).

    With ``ship_checkpoint`` the final checkpoint's bytes travel back in the record (for
    workers that do not share the driver's file system).
    """
    import torch

    from .config import config_to_dict
    from .harden import harden
    from .models import build_model
    from .sweep import SweepConfig, sweep
    from .train import CHECKPOINT, train

    out = Path(workdir)
    train_data, test_data = cell.data.load()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cell.seed)
        model = harden(build_model(cell.variant.model, num_classes=train_data.num_classes), config=cell.harden)
    trained = train(model, train_data, test_data, cell.train, out, resume=True, arch=cell.variant.model,
                    arch_kwargs={"num_classes": train_data.num_classes})
    swept = sweep(trained.model, test_data, out=out / "sweep",
                  config=SweepConfig(sigmas=cell.eval_sigmas, repeats=cell.repeats, seed=cell.seed,
                                     batch_size=cell.sweep_batch_size, device=cell.train.device))
    record = {
        "format": CELL_FORMAT, "key": cell.key, "identity": cell.identity(), "variant": asdict(cell.variant),
        "seed": cell.seed, "train_sigma": cell.train_sigma, "test_accuracy": trained.test_accuracy,
        "clean_accuracy": swept.clean_accuracy, "chance": swept.chance, "num_images": swept.num_images,
        "sites": swept.sites, "harden": config_to_dict(cell.harden),
        "points": [{"sigma": p.sigma, "correct": list(p.correct[0]), "total": p.total} for p in swept.site_points()],
        "fit": swept.fit.to_dict() if swept.fit is not None else None,
        "train": {"seconds": trained.seconds, "steps": trained.steps, "epochs": len(trained.history),
                  "loss": trained.history[-1].loss if trained.history else None},
        "sweep_seconds": swept.timing.get("seconds"), "checkpoint": CHECKPOINT,
    }
    if ship_checkpoint:
        record["checkpoint_bytes"] = (out / CHECKPOINT).read_bytes()
    return record


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


@dataclass
class ReproduceResult:
    """What ``reproduce`` did and where it wrote it."""

    experiment: Experiment
    out: Path
    curves: List[Curve]
    computed: List[str] = field(default_factory=list)
    """Cells run by this call."""
    reused: List[str] = field(default_factory=list)
    """Cells found finished in ``out`` and not run again."""
    failed: Dict[str, str] = field(default_factory=dict)
    """Cells that failed after all their attempts: key -> traceback."""
    files: Dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def _merge(variant: Variant, cells: List[Cell], done: Dict[str, Dict[str, Any]]) -> Optional[Curve]:
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


def _fmt_mu(curve: Curve) -> str:
    fit = curve.result.fit
    if fit is not None and fit.ok:
        return f"{fit.mu:.3g} ± {fit.mu_err:.2g}"
    if fit is not None and math.isfinite(fit.mu_crossing):
        return f"~{fit.mu_crossing:.3g} ({fit.status.value})"
    return f"({fit.status.value if fit is not None else 'no fit'})"


_COLUMNS = ["curve", "model", "bits", "scaling", "noisy training", "networks", "peak acc %", "μ", "fit",
            "paper acc %", "paper μ"]


def _rows(curves: List[Curve]) -> List[List[Any]]:
    rows = []
    for c in curves:
        v, fit, p = c.variant, c.result.fit, c.paper
        mu = "" if p is None or p.mu is None else f"{p.mu:g}" + (f" (±{p.mu_err_pct:g}%)" if p.mu_err_pct else "")
        rows.append([v.key, v.model, "fp32" if v.bits is None else v.bits, v.scaling, v.training,
                     len(c.result.clean_accuracies), f"{100 * c.peak_accuracy:.1f}", _fmt_mu(c),
                     fit.status.value if fit is not None else "", "" if p is None or p.accuracy is None
                     else f"{p.accuracy:g}", mu])
    return rows


def _write_tables(exp: Experiment, curves: List[Curve], out: Path, budget: Budget, failed: Dict[str, str]) -> Dict[str, Path]:
    import csv
    import io

    rows = _rows(curves)
    md = [f"# {exp.name} ({budget.value} budget)", "", exp.description.strip(), "",
          "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    md += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    md += ["", "μ: midpoint noise level (fit of Eq. 1; `~x (status)` = model-free crossing estimate when the "
           "fit is not OK). Matched curves: every point is its own network, trained and evaluated at that σ."]
    if failed:
        md += ["", f"**{len(failed)} cell(s) failed** (see failures.json): " + ", ".join(sorted(failed))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["curve", "model", "bits", "scaling", "noisy_training", "networks", "peak_accuracy", "mu", "mu_err",
                "mu_crossing", "fit_status", "paper_accuracy", "paper_mu", "paper_mu_err_pct"])
    for c in curves:
        f, p = c.result.fit, c.paper or PaperValue()
        w.writerow([c.variant.key, c.variant.model, "fp32" if c.variant.bits is None else c.variant.bits,
                    c.variant.scaling, c.variant.training, len(c.result.clean_accuracies), c.peak_accuracy,
                    f.mu if f else "", f.mu_err if f else "", f.mu_crossing if f else "", f.status.value if f else "",
                    p.accuracy if p.accuracy is not None else "", p.mu if p.mu is not None else "",
                    p.mu_err_pct if p.mu_err_pct is not None else ""])
    files = {"markdown": out / "results.md", "csv": out / "results.csv"}
    text, table = "\n".join(md) + "\n", buf.getvalue()
    atomic_write_bytes(files["markdown"], lambda fh: fh.write(text.encode()))
    atomic_write_bytes(files["csv"], lambda fh: fh.write(table.encode()))
    if exp.architectures:
        files["architectures"] = _write_architectures(exp, out)
    return files


def _write_architectures(exp: Experiment, out: Path) -> Path:
    from .experiment import architecture_summary
    from .models import RECIPES, _recipe_key

    lines = ["| model | MFLOPs | paper | M params | paper | noisy layers | paper |", "|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(v.model for v in exp.variants):
        s = architecture_summary(model)
        recipe = RECIPES.get(_recipe_key(model))
        paper = recipe.paper if recipe is not None else {}
        lines.append(f"| {model} | {s['mflops']:.2f} | {paper.get('mflops', '')} | {s['mparams']:.2f} | "
                     f"{paper.get('mparams', '')} | {s['noisy_layers']} | {paper.get('noisy_layers', '')} |")
    text = "\n".join(lines + ["", "FLOPs of one 3x32x32 input with the 10-class head (the paper's VGG-11 and "
                               "ResNet-18 numbers match the 1000-class head)."]) + "\n"
    atomic_write_bytes(out / "architectures.md", lambda fh: fh.write(text.encode()))
    return out / "architectures.md"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
    return path


def _plots(curves: List[Curve], out: Path) -> Dict[str, Path]:
    import numpy as np

    from .plots import save_plots

    files: Dict[str, Path] = {}
    for c in curves:
        save_plots(c.result, out / "curves" / c.variant.key)
    models = list(dict.fromkeys(c.variant.model for c in curves))
    for model in models:
        fig = _figure(7.0, 4.4)
        ax = fig.add_subplot()
        for i, c in enumerate(x for x in curves if x.variant.model == model):
            sig, acc, err = c.result.curve()
            color, style = f"C{i % 10}", "--" if c.variant.matched or c.variant.train_sigma else "-"
            ax.errorbar(sig, acc, yerr=err, fmt="o", ms=3, capsize=2, color=color, label=c.variant.label)
            fit = c.result.fit
            if fit is not None and math.isfinite(fit.mu):
                xs = np.geomspace(sig.min(), sig.max(), 200)
                ax.plot(xs, fit.curve(xs), style, lw=1.1, color=color)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("noise strength σ (σ_train = σ for noisy training)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{model}: accuracy vs σ", fontsize=10)
        ax.legend(fontsize=6, loc="lower left")
        ax.grid(True, alpha=0.3)
        files[f"curves_{model}"] = _save(fig, out / "plots" / f"accuracy_vs_sigma_{model}.png")
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    for i, model in enumerate(models):
        for c in (x for x in curves if x.variant.model == model):
            fit = c.result.fit
            mu, err, fmt = (fit.mu, fit.mu_err, "o") if fit is not None and fit.ok else \
                (fit.mu_crossing if fit is not None else math.nan, None, "x")
            if math.isfinite(mu):
                ax.errorbar(mu, 100 * c.peak_accuracy, xerr=err, fmt=fmt, color=f"C{i}", ms=4)
                ax.annotate(c.variant.key.removeprefix(model + "-"), (mu, 100 * c.peak_accuracy), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            p = c.paper
            if p is not None and p.mu is not None and p.accuracy is not None:
                ax.plot(p.mu, p.accuracy, "s", mfc="none", color=f"C{i}", ms=5)
        ax.plot([], [], "o", color=f"C{i}", label=f"{model} (measured)")
    ax.plot([], [], "x", color="gray", label="crossing estimate (fit not OK)")
    ax.plot([], [], "s", mfc="none", color="gray", label="paper")
    ax.set_xscale("log")
    ax.set_xlabel("midpoint noise level μ")
    ax.set_ylabel("peak accuracy (%)")
    ax.set_title("accuracy vs robustness (Pareto)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    files["pareto"] = _save(fig, out / "plots" / "pareto.png")
    return files


def _check_data(spec: DataSpec) -> None:
    """Fail before any cell starts when the data are missing (the error says where to put them)."""
    if spec.kind is DatasetKind.CIFAR10:
        from .data import load_cifar10

        load_cifar10("test", spec.root)


def reproduce(
    experiment: Union[PathLike, Experiment],
    out: PathLike,
    *,
    jobs: int = 1,
    executor: Union[ExecutorKind, str, Executor, None] = None,
    budget: Union[Budget, str, None] = None,
    data: Optional[PathLike] = None,
    synthetic: bool = False,
    device: Optional[str] = None,
    address: Optional[str] = None,
    retries: Optional[int] = None,
    num_gpus: float = 0,
    progress: bool = True,
) -> ReproduceResult:
    """Train and sweep every cell of an experiment, then write its tables and plots.

    Args:
        experiment: a TOML file (``recipes/*.toml``) or a parsed ``Experiment``.
        out: output directory; rerunning with the same one skips finished cells.
        jobs: cells in parallel (local processes, or Ray tasks sized to fill this machine).
        executor: ``"local"`` (default), ``"ray"``, or an ``Executor`` instance.
        budget: ``"paper"`` or ``"cpu"``; ``None``: the experiment's default.
        data: CIFAR-10 folder (default ``$FXHARDEN_DATA``).
        synthetic: use generated data instead of CIFAR-10 (smoke runs).
        device: training/sweep device; ``None``: CUDA when available.
        address: Ray cluster address (``executor="ray"``).
        retries: extra attempts per failing cell (default: 0 local, 2 Ray).
        num_gpus: GPUs per Ray task (a fraction packs several cells on one GPU).
        progress: print one line per finished cell.

    Returns:
        A ``ReproduceResult``; failed cells are listed in ``failed`` (and failures.json)
        while the finished ones are in the tables.

    Raises:
        DataNotFoundError: CIFAR-10 is not where ``data``/``$FXHARDEN_DATA`` point.
        ExperimentError: an invalid experiment file.
        ImportError: ``executor="ray"`` without Ray installed (names the extra).
    """
    start = time.perf_counter()
    exp = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    budget = Budget(budget or exp.default_budget)
    kind = DatasetKind.SYNTHETIC if synthetic else exp.dataset
    cells = exp.cells(budget, DataSpec(kind, root=str(data) if data is not None else None), device)
    _check_data(cells[0].data)
    out = Path(out)
    atomic_write_json(out / "experiment.json", {"name": exp.name, "source": exp.source, "budget": budget.value,
                                          "data": cells[0].data.identity(), "cells": [c.key for c in cells]})
    done: Dict[str, Dict[str, Any]] = {}
    for c in cells:
        path = out / "cells" / c.key / RESULT
        if path.is_file():
            done[c.key] = json.loads(path.read_text())
    todo = [c for c in cells if c.key not in done]
    res = ReproduceResult(exp, out, [], reused=list(done))
    console = None
    if progress:
        from rich.console import Console

        console = Console(stderr=True)
        console.print(f"{exp.name}: {len(cells)} cells ({len(done)} already done), budget {budget.value}")
    attempts: Dict[str, int] = {}
    if todo:
        own = not isinstance(executor, Executor)
        ex = make_executor(ExecutorKind(executor or "local"), jobs, address, retries, num_gpus) if own else executor
        try:
            for c in todo:
                ex.submit(c.key, run_cell, c, str(out / "cells" / c.key), not ex.shared_filesystem)
            for outcome in ex.as_completed():
                cell_dir = out / "cells" / outcome.key
                if outcome.ok:
                    record = outcome.value
                    blob = record.pop("checkpoint_bytes", None)
                    if blob is not None:
                        atomic_write_bytes(cell_dir / record["checkpoint"], lambda f: f.write(blob))
                    atomic_write_json(cell_dir / RESULT, record)
                    done[outcome.key] = record
                    res.computed.append(outcome.key)
                else:
                    res.failed[outcome.key] = outcome.error or ""
                    attempts[outcome.key] = outcome.attempts
                if console is not None:
                    n = len(res.computed) + len(res.failed)
                    what = (f"acc {done[outcome.key]['test_accuracy']:.3f}" if outcome.ok else
                            f"[red]FAILED after {outcome.attempts} attempt(s)[/red]")
                    console.print(f"[{n}/{len(todo)}] {outcome.key}: {what}")
        finally:
            if own:
                ex.close()
    failures = out / "failures.json"
    if res.failed:
        atomic_write_json(failures, {k: {"attempts": attempts[k], "traceback": tb} for k, tb in res.failed.items()})
    elif failures.exists():
        failures.unlink()
    for v in exp.variants:
        curve = _merge(v, [c for c in cells if c.variant == v], done)
        if curve is not None:
            curve.paper = exp.paper_value(v)
            curve.result.save(out / "curves" / v.key)
            res.curves.append(curve)
    res.files = _write_tables(exp, res.curves, out, budget, res.failed)
    if res.curves:
        res.files.update(_plots(res.curves, out))
    res.seconds = time.perf_counter() - start
    if console is not None:
        console.print(f"wrote {res.files['markdown']} ({len(res.computed)} cells run, {len(res.reused)} reused, "
                      f"{len(res.failed)} failed) in {res.seconds:.0f} s")
    return res


def _sweep_part(checkpoint: str, data: DataSpec, site: Optional[str], settings: Dict[str, Any]) -> Dict[str, Any]:
    """One task of ``distributed_sweep``: some sigma points (or one site) of one network."""
    from .sweep import SweepConfig, SweepMode, sweep

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
    from .checkpoint import load_checkpoint
    from .harden import noise_sites

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
