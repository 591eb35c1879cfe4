"""``fxharden reproduce``: a paper experiment from a recipe file (train and sweep every cell,
tables and plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..experiments.executors import ExecutorKind
from ..experiments.options import Budget
from ..training.options import Precision
from ._app import Device, app, show, styled, user_errors


@app.command("reproduce")
def reproduce_command(
    recipe: Path = typer.Argument(..., help="Experiment file, e.g. recipes/quickstart.toml."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: runs/<experiment name>). Rerun "
                                       "with the same directory to resume: finished cells are never recomputed."),
    jobs: int = typer.Option(1, min=1, help="Cells in parallel (processes, or Ray tasks filling this machine)."),
    executor: ExecutorKind = typer.Option(ExecutorKind.LOCAL, help="Where cells run: local processes or Ray."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to connect to (default: a local Ray instance)."),
    num_gpus: float = typer.Option(0.0, min=0.0, help="GPUs per Ray task (a fraction shares one GPU)."),
    retries: Optional[int] = typer.Option(None, min=0, help="Extra attempts per failing cell (default: 0 local, "
                                          "2 Ray)."),
    budget: Optional[Budget] = typer.Option(None, help="paper: the paper's schedule (500 epochs, 10 networks per "
                                            "point); cpu: a CPU-sized one; gpu: one sized for a GPU. Default: the "
                                            "file's."),
    connect_timeout: float = typer.Option(30.0, min=0.1, help="Seconds to wait for the Ray cluster at --address "
                                          "to answer."),
    data: Optional[Path] = typer.Option(None, help="CIFAR-10 folder (default: $FXHARDEN_DATA)."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download CIFAR-10 if it is missing."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Generated images instead of CIFAR-10 (smoke runs)."),
    device: Device = typer.Option(Device.AUTO, help="Where each cell trains and sweeps."),
    precision: Precision = typer.Option(Precision.AUTO, help="Training arithmetic: auto = bf16 autocast on CUDA, "
                                        "fp32 elsewhere (not part of a cell's identity)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show live progress (cells, epochs, "
                                  "sweep points)."),
) -> None:
    """Reproduce a paper experiment: train and sweep every cell, write tables and plots."""
    from ..experiments.recipe_file import load_experiment
    from ..experiments.reproduce import reproduce
    from ..zoo.data import load_cifar10

    with user_errors():
        if synthetic and (data is not None or download):
            raise typer.BadParameter("--synthetic generates its own data; leave out --data/--download")
        exp = load_experiment(recipe)
        if download:
            for split in ("train", "test"):
                load_cifar10(split, data, download=True)
        target = out or Path("runs") / exp.name
        try:
            res = reproduce(exp, target, jobs=jobs, executor=executor, budget=budget,
                            data=data, synthetic=synthetic, device=None if device is Device.AUTO else device.value,
                            precision=precision.value,
                            address=address, retries=retries, num_gpus=num_gpus, progress=progress,
                            connect_timeout=connect_timeout)
        except ImportError as err:
            raise ValueError(str(err)) from None
        except KeyboardInterrupt:
            show(styled("Interrupted.", "yellow", f"Finished cells are kept in {target}; run the same command "
                                                  "again to resume (finished cells are not recomputed)."),
                 stderr=True)
            raise typer.Exit(130) from None
    table = Table(title=f"{exp.name}: {len(res.curves)} curves")
    table.add_column("curve", no_wrap=True, min_width=max((len(c.variant.key) for c in res.curves), default=5))
    for col in ("networks", "peak acc %", "μ", "fit", "paper acc %", "paper μ"):
        table.add_column(col)
    for c in res.curves:
        fit, paper = c.result.fit, c.paper
        mu = c.quote().text()
        table.add_row(c.variant.key, str(len(c.result.clean_accuracies)), f"{100 * c.peak_accuracy:.1f}", mu,
                      fit.status.value if fit else "-",
                      f"{paper.accuracy:g}" if paper and paper.accuracy is not None else "",
                      f"{paper.mu:g}" if paper and paper.mu is not None else "")
    show(table)
    for path in res.files.values():
        show(f"wrote {path}")
    if res.failed:
        show(styled(f"{len(res.failed)} cell(s) failed", "bold red",
                    f"after their retries: {', '.join(sorted(res.failed))}; tracebacks in "
                    f"{res.out / 'failures.json'}. Rerun the same command to retry only those."), stderr=True)
        raise typer.Exit(1)
