"""``reproduce``: run an experiment's cells, assemble its curves, write tables and plots.

Output directory layout (the same for every executor)::

    experiment.json            the experiment, budget and data as run
    cells/<cell key>/          checkpoint.pt, train_log.json, sweep/ (resumable progress; its
                               results.json holds the cell's points), result.json (the cell's
                               summary, written atomically by the driver: the cell is done)
    curves/<curve key>/        results.json / results.csv / accuracy_vs_sigma.png of a curve
    results.md, results.csv    one row per curve, side by side with the paper's numbers
    architectures.md           Table II columns (when the experiment asks for them)
    plots/                     accuracy vs sigma per model, peak accuracy vs μ (Pareto)
    failures.json              cells that failed after their retries, with tracebacks

A cell whose ``result.json`` exists is never run again; a cell interrupted mid-training
resumes from its last epoch checkpoint, mid-sweep from its recorded points. A warm-started
cell (``Cell.init_from``) is submitted only once its predecessor is done, and starts from the
predecessor's ``checkpoint.pt``; when the predecessor fails, so does the cell (not run).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .._files import atomic_write_bytes, atomic_write_json, run_lock
from ..measure.results import RESULTS_JSON, load_result
from .curves import Curve, matched_crossings, merge_curve
from .executors import Executor, ExecutorKind, make_executor
from .progress import LiveProgress
from .experiment import Budget, Cell, DataSpec, DatasetKind, Experiment
from .recipe_file import load_experiment
from .report import write_figures, write_tables

__all__ = ["reproduce", "run_cell", "ReproduceResult", "Curve", "RESULT"]

RESULT = "result.json"
SWEEP_DIR = "sweep"
CELL_FORMAT = "fxharden-cell-v1"
INIT_CHECKPOINT = "init_checkpoint.pt"
"""A warm-started cell's copy of its predecessor's checkpoint (workers without the driver's files)."""
PathLike = Union[str, os.PathLike]


def run_cell(cell: Cell, workdir: str, ship_checkpoint: bool = False,
             init: Union[str, bytes, None] = None) -> Dict[str, Any]:
    """Train one cell's network (resuming from ``workdir`` if a checkpoint is there), sweep it
    at ``cell.eval_sigmas`` and return the result record (the driver writes it).

    The record holds the cell's summary; its swept points live once, in the sweep's
    ``results.json`` (``record["sweep"]``, relative to the cell directory). With
    ``ship_checkpoint`` the bytes of the checkpoint and of that file travel back in
    ``record["files"]`` (for workers that do not share the driver's file system).

    ``init`` (warm start, ``cell.init_from``): the predecessor's checkpoint, as a path or its
    bytes; its weights replace the fresh initialisation before training (a checkpoint of this
    cell itself, when resuming, takes precedence).
    """
    import torch

    from ..core.config import config_to_dict
    from ..core.harden import harden
    from ..zoo.models import build_model
    from ..measure.sweep import SweepConfig, sweep
    from ..training.train import CHECKPOINT, train

    out = Path(workdir)
    train_data, test_data = cell.data.load()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cell.seed)
        model = harden(build_model(cell.variant.model, num_classes=train_data.num_classes), config=cell.harden)
    if (init is None) != (cell.init_from is None):
        raise ValueError(f"cell {cell.key}: " + ("starts from cell " + str(cell.init_from) + " but no checkpoint of it "
                         "was given" if init is None else "is not warm-started but was given a checkpoint to start from"))
    if init is not None:
        from .._files import atomic_write_bytes
        from ..zoo.checkpoint import read_payload

        if isinstance(init, bytes):  # shipped by the driver: kept beside the cell's own files
            atomic_write_bytes(out / INIT_CHECKPOINT, lambda f: f.write(init))
            init = str(out / INIT_CHECKPOINT)
        model.load_state_dict(read_payload(init)["model"])
    trained = train(model, train_data, test_data, cell.train, out, resume=True, arch=cell.variant.model,
                    arch_kwargs={"num_classes": train_data.num_classes})
    swept = sweep(trained.model, test_data, out=out / SWEEP_DIR,
                  config=SweepConfig(sigmas=cell.eval_sigmas, repeats=cell.repeats, seed=cell.seed,
                                     batch_size=cell.sweep_batch_size, device=cell.train.device))
    record = {
        "format": CELL_FORMAT, "key": cell.key, "identity": cell.identity(), "variant": asdict(cell.variant),
        "seed": cell.seed, "train_sigma": cell.train_sigma, "test_accuracy": trained.test_accuracy,
        "clean_accuracy": swept.clean_accuracy, "chance": swept.chance, "num_images": swept.num_images,
        "sites": swept.sites, "harden": config_to_dict(cell.harden),
        "sweep": f"{SWEEP_DIR}/{RESULTS_JSON}",
        "fit": swept.fit.to_dict() if swept.fit is not None else None,
        "train": {"seconds": trained.seconds, "steps": trained.steps, "epochs": len(trained.history),
                  "loss": trained.history[-1].loss if trained.history else None},
        "sweep_seconds": swept.timing.get("seconds"), "checkpoint": CHECKPOINT,
    }
    if ship_checkpoint:
        record["files"] = {name: (out / name).read_bytes() for name in (CHECKPOINT, record["sweep"])}
    return record


def _done_text(record: Dict[str, Any]) -> str:
    """A finished cell in a few words: accuracy, epochs trained, sweep speed. The accuracy is
    the clean one (σ = 0), except for a cell of a matched curve: there, as in the curve's
    table, its accuracy at its own σ (the curve has no σ = 0 point)."""
    acc = record.get("test_accuracy")
    train = record.get("train") or {}
    parts = [f"acc {acc:.3f}" if acc is not None else "acc -"]
    if (record.get("variant") or {}).get("matched"):
        own = [p for p in record.get("points", []) if p["sigma"] > 0]  # swept at its own σ only
        parts = [f"acc {sum(own[0]['correct']) / (len(own[0]['correct']) * own[0]['total']):.3f} at its σ "
                 f"{own[0]['sigma']:g}" if own and own[0]["correct"] else "acc -"]
    if train.get("epochs") is not None:
        parts.append(f"{train['epochs']} epochs in {train.get('seconds') or 0:.0f} s")
    if record.get("sweep_seconds") is not None:
        parts.append(f"sweep {record['sweep_seconds']:.0f} s")
    return ", ".join(parts)


def cell_points(record: Dict[str, Any], cell_dir: Path) -> List[Dict[str, Any]]:
    """The swept points of a finished cell, ``[{"sigma", "correct": [per repeat], "total"}]``:
    read from the cell's sweep results (records written before that change carry them inline)."""
    if "points" in record:
        return record["points"]
    swept = load_result(cell_dir / record["sweep"])
    return [{"sigma": p.sigma, "correct": list(p.correct[0]), "total": p.total} for p in swept.site_points()]


def _submit_ready(ex: Executor, waiting: List[Cell], done: Dict[str, Any], out: Path,
                  display: Optional[LiveProgress]) -> None:
    """Submit every waiting cell that needs nothing (no warm start) or whose predecessor is done."""
    from ..training.train import CHECKPOINT

    ready = [c for c in waiting if c.init_from is None or c.init_from in done]
    for c in ready:
        waiting.remove(c)
        init = None
        if c.init_from is not None:
            ckpt = out / "cells" / c.init_from / CHECKPOINT
            init = str(ckpt) if ex.shared_filesystem else ckpt.read_bytes()
        ex.submit(c.key, run_cell, c, str(out / "cells" / c.key), not ex.shared_filesystem, init)
    if display is not None and ready:
        display.submitted(c.key for c in ready)


def _drop_dependents(waiting: List[Cell], failed: str) -> List[str]:
    """Remove from ``waiting`` every cell that starts (directly or down its chain) from the
    failed cell ``failed``; return their keys."""
    lost, gone = [], {failed}
    for c in list(waiting):  # cells are in sigma order, so a chain's links come after their predecessor
        if c.init_from in gone:
            waiting.remove(c)
            gone.add(c.key)
            lost.append(c.key)
    return lost


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


def _check_data(spec: DataSpec) -> None:
    """Fail before any cell starts when the data are missing (the error says where to put them)."""
    if spec.kind is DatasetKind.CIFAR10:
        from ..zoo.data import load_cifar10

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
    precision: str = "auto",
    address: Optional[str] = None,
    retries: Optional[int] = None,
    num_gpus: float = 0,
    progress: Union[bool, LiveProgress] = True,
    connect_timeout: float = 30.0,
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
        precision: training arithmetic (``auto``: bf16 autocast on CUDA, fp32 elsewhere;
            ``fp32``, ``bf16``, ``fp16``); like the device, not part of a cell's identity.
        address: Ray cluster address (``executor="ray"``).
        retries: extra attempts per failing cell (default: 0 local, 2 Ray).
        num_gpus: GPUs per Ray task (a fraction packs several cells on one GPU).
        progress: show live progress on stderr: cells done and failed, and for each running
            cell its epoch and step, then its sweep points and images/s (read from the cell's
            folder about once a second; only finished cells when workers do not share this
            file system). Plain lines at most every 30 s when stderr is not a terminal. A
            ``LiveProgress`` instance shows it with other settings (console, intervals).
        connect_timeout: seconds to wait for the Ray cluster at ``address`` to answer.

    Returns:
        A ``ReproduceResult``; failed cells are listed in ``failed`` (and failures.json)
        while the finished ones are in the tables.

    Nothing is written before the whole experiment is checked (budget, model names, device,
    data); while it runs, ``out`` holds a lock file, so a second driver on the same folder is
    refused (a lock left by a killed driver is taken over).

    Raises:
        DataNotFoundError: CIFAR-10 is not where ``data``/``$FXHARDEN_DATA`` point.
        ExperimentError: an invalid experiment file, an unknown model or an unavailable device.
        FileExistsError: another driver is running on ``out``.
        PermissionError: ``out`` cannot be written.
        ImportError: ``executor="ray"`` without Ray installed (names the extra).
    """
    start = time.perf_counter()
    exp = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    budget = Budget(budget or exp.default_budget)
    exp.check(budget, device)  # everything knowable before a cell runs, before anything is written
    kind = DatasetKind.SYNTHETIC if synthetic else exp.dataset
    cells = exp.cells(budget, DataSpec(kind, root=str(data) if data is not None else None), device, precision)
    _check_data(cells[0].data)
    out = Path(out)
    with run_lock(out, "reproduce"):
        return _run(exp, cells, out, budget, start, jobs=jobs, executor=executor, address=address, retries=retries,
                    num_gpus=num_gpus, progress=progress, connect_timeout=connect_timeout)


def _run(exp: Experiment, cells: List[Cell], out: Path, budget: Budget, start: float, *, jobs: int,
         executor: Union[ExecutorKind, str, Executor, None], address: Optional[str], retries: Optional[int],
         num_gpus: float, progress: Union[bool, LiveProgress], connect_timeout: float) -> ReproduceResult:
    """The body of ``reproduce`` once the experiment is checked and ``out`` is locked."""
    done: Dict[str, Dict[str, Any]] = {}
    for c in cells:
        path = out / "cells" / c.key / RESULT
        if path.is_file():
            record = json.loads(path.read_text())
            done[c.key] = {**record, "points": cell_points(record, path.parent)}
    todo = [c for c in cells if c.key not in done]
    res = ReproduceResult(exp, out, [], reused=list(done))
    display = progress if isinstance(progress, LiveProgress) else LiveProgress() if progress else None
    attempts: Dict[str, int] = {}
    own = not isinstance(executor, Executor)
    ex = executor if isinstance(executor, Executor) else None  # a kind: one is made only when a cell is left
    if own and todo:  # before any file is written: an unreachable cluster leaves nothing
        ex = make_executor(ExecutorKind(executor or "local"), jobs, address, retries, num_gpus, connect_timeout)
    if display is not None:
        display.attach(out / "cells", SWEEP_DIR, len(cells), len(done), watch=ex is not None and ex.shared_filesystem)
        display.print(f"{exp.name}: {len(cells)} cells ({len(done)} already done), budget {budget.value}")
    atomic_write_json(out / "experiment.json", {"name": exp.name, "source": exp.source, "budget": budget.value,
                                                "data": cells[0].data.identity(), "cells": [c.key for c in cells]})
    if todo:
        try:
            with display or contextlib.nullcontext():
                waiting = list(todo)  # warm-started cells wait for their predecessor
                _submit_ready(ex, waiting, done, out, display)
                for outcome in ex.as_completed():
                    cell_dir = out / "cells" / outcome.key
                    if outcome.ok:
                        record = outcome.value
                        for name, blob in record.pop("files", {}).items():
                            atomic_write_bytes(cell_dir / name, lambda f, blob=blob: f.write(blob))
                        atomic_write_json(cell_dir / RESULT, record)
                        done[outcome.key] = {**record, "points": cell_points(record, cell_dir)}
                        res.computed.append(outcome.key)
                    else:
                        res.failed[outcome.key] = outcome.error or ""
                        attempts[outcome.key] = outcome.attempts
                    if display is not None:
                        n = len(res.computed) + len(res.failed)
                        what = (_done_text(done[outcome.key]) if outcome.ok else
                                f"FAILED after {outcome.attempts} attempt(s)")
                        display.finished(outcome.key, f"[{n}/{len(todo)}] {outcome.key}: {what}", outcome.ok)
                    if outcome.ok:
                        _submit_ready(ex, waiting, done, out, display)
                    else:
                        for key in _drop_dependents(waiting, outcome.key):
                            res.failed[key] = f"not run: it starts from the network of cell {outcome.key}, which failed"
                            attempts[key] = 0
                            if display is not None:
                                display.finished(key, f"{key}: not run (warm start from a failed cell)", False)
        finally:
            if own:
                ex.close()
    failures = out / "failures.json"
    if res.failed:
        atomic_write_json(failures, {k: {"attempts": attempts[k], "traceback": tb} for k, tb in res.failed.items()})
    elif failures.exists():
        failures.unlink()
    for v in exp.variants:
        curve = merge_curve(v, [c for c in cells if c.variant == v], done)
        if curve is not None:
            curve.paper = exp.paper_value(v)
            curve.result.save(out / "curves" / v.key)
            res.curves.append(curve)
    by_key = {c.variant.key: c for c in res.curves}
    for c in res.curves:
        if c.variant.matched:  # a_max from the same network trained without noise, when there is one
            plain = by_key.get(replace(c.variant, matched=False, warm_start=False, train_sigma=0.0).key)
            c.crossings = matched_crossings(c.result, plain.result.clean_accuracy if plain is not None else None)
    res.files = write_tables(exp, res.curves, out, budget, res.failed)
    if res.curves:
        res.files.update(write_figures(res.curves, out))
    res.seconds = time.perf_counter() - start
    if display is not None:
        display.print(f"wrote {res.files['markdown']} ({len(res.computed)} cells run, {len(res.reused)} reused, "
                      f"{len(res.failed)} failed) in {res.seconds:.0f} s")
    return res
