"""The ``fxharden`` command line: parse -> build config -> call the public API -> print/save.

Commands: ``sweep`` (accuracy versus noise, μ, results files and plots), ``inspect``
(what ``harden`` does to a model), ``train`` (QAT / noisy training with checkpoints) and
``reproduce`` (a paper experiment from a recipe file). The helpers below (model, device,
data and harden-config resolution, ``user_errors``) are shared by every command.
"""

from __future__ import annotations

import contextlib
import math
from enum import Enum
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .experiments.executors import ExecutorKind
from .experiments.experiment import Budget
from .measure.midpoint_models import MidpointModel
from .zoo.recipes import Optimizer

app = typer.Typer(
    name="fxharden",
    help="Harden PyTorch models against noisy computation and measure their robustness "
         "(midpoint noise level μ).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# markup off: user text (file names, recipe sections such as [[grid]] or [budget.paper], model
# names) is printed as it is; styles are applied with Text objects only
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)

PIPE_WIDTH = 250
"""Width of tables written to a file or pipe (a terminal's own width is used otherwise)."""


def show(renderable, stderr: bool = False) -> None:
    """Print a table or text without markup; to a file or pipe at ``PIPE_WIDTH`` columns
    instead of rich's 80 (a terminal keeps its own width)."""
    target = err_console if stderr else console
    if not target.is_terminal:
        target = Console(stderr=stderr, markup=False, highlight=False, width=PIPE_WIDTH)
    target.print(renderable, soft_wrap=isinstance(renderable, str))


def styled(label: str, style: str, text: str) -> Text:
    """``label`` in ``style``, then ``text`` exactly as given (no markup)."""
    return Text.assemble((label, style), " ", text)


class Device(str, Enum):
    """Where to run."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Split(str, Enum):
    """Which CIFAR-10 split to evaluate on."""

    TEST = "test"
    TRAIN = "train"


# ---------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the API's user-facing errors into a one-paragraph message and exit code 2."""
    from .zoo.data import DataNotFoundError
    from .core.trace import UntraceableModelError

    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, TimeoutError, ConnectionError,
            DataNotFoundError, UntraceableModelError) as err:
        show(styled("Error:", "bold red", str(err)), stderr=True)
        raise typer.Exit(2) from None


def harden_options(bits: Optional[int], scale: Optional[float], dynamic: bool):
    """The ``HardenConfig`` of ``--bits/--scale/--dynamic`` (``None``: noise sites only)."""
    from .core.config import HardenConfig

    if bits is None:
        if dynamic or scale is not None:
            raise typer.BadParameter("--scale and --dynamic need --bits (they set the quantization step)")
        return None
    if dynamic and scale is not None:
        raise typer.BadParameter("give either --scale (constant step) or --dynamic (learned steps), not both")
    return HardenConfig.from_shorthand(bits=bits, scale=None if dynamic else (1.0 if scale is None else scale))


def resolve_device(device: Device) -> str:
    """``"cpu"`` or ``"cuda"``; ``auto`` picks CUDA when available."""
    from .devices import resolve_device as pick

    return str(pick(None if device is Device.AUTO else device.value))


def resolve_models(names: List[str], harden_config, seed: int = 0, num_classes: int = 10) -> List[Tuple[str, object]]:
    """``(label, hardened model)`` per MODEL argument: a checkpoint path (``is_checkpoint``)
    is loaded with its own harden config, anything else is a model name (recipe, timm or
    torchvision) built with seeded random weights and hardened with ``harden_config``."""
    import torch

    from .zoo.checkpoint import is_checkpoint, load_checkpoint
    from .core.config import HardenConfig
    from .core.harden import harden
    from .zoo.models import build_model

    out = []
    for name in names:
        if is_checkpoint(name):
            if harden_config is not None:
                raise typer.BadParameter(f"{name} is a checkpoint: it carries its own harden config, so "
                                         "--bits/--scale/--dynamic do not apply")
            out.append((name, load_checkpoint(name).model))
            continue
        if any(ch in name for ch in "/\\") or name.endswith((".pt", ".pth")):
            raise typer.BadParameter(f"no checkpoint file at {name!r}; give an existing checkpoint path or a "
                                     "model name (lenet5, vgg11, resnet18, or a timm/torchvision name)")
        torch.manual_seed(seed)
        model = build_model(name, num_classes=num_classes)
        out.append((name, harden(model, config=harden_config or HardenConfig(quant=None))))
    return out


def load_data(data: Optional[Path], split: Split, download: bool, synthetic: bool, max_images: Optional[int],
              seed: int):
    """The evaluation data: generated (``--synthetic``) or CIFAR-10 from ``--data`` /
    ``$FXHARDEN_DATA`` (``--download`` lets torchvision fetch it)."""
    from .zoo.data import load_cifar10, synthetic_dataset

    if synthetic:
        if data is not None or download:
            raise typer.BadParameter("--synthetic generates its own data; leave out --data/--download")
        return synthetic_dataset(n=max_images or 1000, num_classes=10, image_size=32, channels=3, seed=seed)
    return load_cifar10(split.value, root=data, download=download)


def parse_sigmas(text: Optional[str]) -> Optional[Tuple[float, ...]]:
    """``"0.1,0.2,0.5"`` -> floats (each > 0)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"--sigmas must be a comma-separated list of numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise typer.BadParameter(f"--sigmas must be noise levels > 0 (sigma 0 is always measured), got {text!r}")
    return values


# ---------------------------------------------------------------------- sweep


def _progress_bar():
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("[bold]sweep"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=err_console, transient=True)


def _mu_text(fit) -> str:
    """The quoted value of a fit (μ, a marked crossing, a lower bound, or nothing)."""
    return "-" if fit is None else fit.quote().text()


def _fit_line(fit) -> str:
    """``μ ± err (χ²_red x, status)`` of a fit of one model, for side-by-side display."""
    if fit is None:
        return "-"
    chi = f", reduced χ² {fit.chi2_red:.3g}" if math.isfinite(fit.chi2_red) else ""
    mu = f"{fit.mu:.4g} ± {fit.mu_err:.2g}" if math.isfinite(fit.mu) else "no fit"
    return f"{mu} ({fit.status.value}{chi})"


def _crossing_text(fit) -> str:
    if fit is None or not math.isfinite(fit.mu_crossing):
        return "-"
    err = f" ± {fit.mu_crossing_err:.2g}" if math.isfinite(fit.mu_crossing_err) else ""
    return f"{fit.mu_crossing:.4g}{err}"


def _print_result(result, files: dict) -> None:
    summary = Table(title="Robustness sweep", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("mode", result.mode.value)
    summary.add_row("networks", str(len(result.networks)))
    summary.add_row("images", str(result.num_images))
    summary.add_row("clean accuracy", f"{result.clean_accuracy:.4f}")
    summary.add_row("chance", f"{result.chance:.4g}")
    if result.fit is not None:
        q = result.fit.quote()
        summary.add_row("μ (midpoint noise level)" if q.is_mu else "μ: not quotable; shown instead", q.text())
        summary.add_row("fit status", f"{result.fit.status.value}: {result.fit.message}")
        summary.add_row(f"{result.fit.model.value} model fit", _fit_line(result.fit))
        if result.other_fit is not None:
            summary.add_row(f"{result.other_fit.model.value} model fit (comparison)", _fit_line(result.other_fit))
        summary.add_row("crossing estimate", _crossing_text(result.fit))
        if result.mu_spread is not None:
            summary.add_row("μ across networks", f"{result.mu_spread[0]:.4g} ± {result.mu_spread[1]:.2g}")
    t = result.timing
    summary.add_row("points", f"{len(result.points)} ({t.get('points_reused', 0)} reused from the output dir)")
    summary.add_row("time", f"{t.get('seconds', 0):.1f} s, {t.get('forwards', 0)} forwards, "
                            f"{t.get('images_per_second', 0):,.0f} images/s")
    show(summary)
    if result.per_site:
        table = Table(title="Per-layer μ (most sensitive first)")
        for col in ("rank", "site", "μ", "status", "crossing"):
            table.add_column(col)
        for i, (site, fit) in enumerate(result.ranking(), 1):
            table.add_row(str(i), site, _mu_text(fit), fit.status.value, _crossing_text(fit))
        show(table)
    for path in files.values():
        show(f"wrote {path}")


@app.command("sweep")
def sweep_command(
    model: List[str] = typer.Argument(..., help="Model name (lenet5, vgg11, resnet18, any timm/torchvision "
                                      "name: random weights) or checkpoint path(s); several checkpoints give "
                                      "the uncertainty across networks."),
    bits: Optional[int] = typer.Option(None, min=2, max=16, help="Quantize weights and activations to this many "
                                       "bits (model names only). Default: no quantization."),
    scale: Optional[float] = typer.Option(None, help="Constant quantization step s of every post-activation "
                                          "quantizer (with --bits; default 1.0)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Learned (dynamic) quantization steps instead of --scale."),
    sigmas: Optional[str] = typer.Option(None, help="Comma-separated noise levels, e.g. 0.01,0.1,1 "
                                         "(default: log grid from --sigma-min to --sigma-max)."),
    sigma_min: float = typer.Option(1e-3, help="Smallest sigma of the default grid."),
    sigma_max: float = typer.Option(10.0, help="Largest sigma of the default grid."),
    points: int = typer.Option(20, help="Points of the fixed default grid (with --fixed-grid)."),
    adaptive: Optional[bool] = typer.Option(None, "--adaptive/--fixed-grid", help="Coarse pass plus refinement "
                                            "around μ, or exactly the grid. Default: adaptive unless --sigmas."),
    repeats: int = typer.Option(5, min=1, help="Noise draws per point and network."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Noise at one site at a time: one μ per site."),
    sites: Optional[str] = typer.Option(None, help="Comma-separated site names or regular expressions to inject "
                                        "noise at (default: all noise sites)."),
    device: Device = typer.Option(Device.AUTO, help="Where to run."),
    batch_size: int = typer.Option(256, min=1, help="Data images per batch."),
    points_per_forward: Optional[int] = typer.Option(None, min=1, help="(sigma, repeat) points batched into one "
                                                     "forward pass (default: automatic)."),
    seed: int = typer.Option(0, help="Seeds the noise (and the random weights of model names)."),
    chance: Optional[float] = typer.Option(None, help="Chance accuracy (default: 1 / number of classes)."),
    out: Path = typer.Option(Path("runs/sweep"), help="Output directory: results.json, results.csv, PNG plots; "
                             "rerunning with the same directory resumes an interrupted sweep."),
    data: Optional[Path] = typer.Option(None, help="CIFAR-10 folder (default: $FXHARDEN_DATA)."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download CIFAR-10 if it is missing."),
    split: Split = typer.Option(Split.TEST, help="Data split to evaluate on."),
    max_images: Optional[int] = typer.Option(None, min=1, help="Use only the first N images."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Generated images instead of CIFAR-10 (demos, tests)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    fit_model: MidpointModel = typer.Option(MidpointModel.LOG, help="Quoted midpoint model: log (logistic in "
                                            "ln σ) or paper (Eq. 1, logistic in σ); the other is fitted beside it."),
    free_a_max: bool = typer.Option(False, "--free-a-max", help="Fit a_max freely (≤ 1) instead of tying it to "
                                    "the clean accuracy ± its error."),
    systematic: float = typer.Option(0.0, min=0.0, help="Relative systematic error of μ added in quadrature "
                                     "(0.02 = 2 %)."),
) -> None:
    """Measure accuracy versus noise strength and the midpoint noise level μ."""
    from .measure.plots import save_plots
    from .measure.results import RESULTS_CSV, RESULTS_JSON, FitOptions
    from .measure.sweep import SweepConfig, SweepMode, sweep

    with user_errors():
        harden_config = harden_options(bits, scale, dynamic)
        config = SweepConfig(
            sigmas=parse_sigmas(sigmas), sigma_min=sigma_min, sigma_max=sigma_max, points=points, repeats=repeats,
            mode=SweepMode.PER_LAYER if per_layer else SweepMode.GLOBAL,
            sites=tuple(s.strip() for s in sites.split(",") if s.strip()) if sites else None,
            batch_size=batch_size, points_per_forward=points_per_forward, seed=seed, device=resolve_device(device),
            adaptive=adaptive, chance=chance, max_images=max_images)
        nets = resolve_models(model, harden_config, seed)
        dataset = load_data(data, split, download, synthetic, max_images, seed)
        bar = _progress_bar() if progress else None
        with bar or contextlib.nullcontext():
            task = bar.add_task("sweep", total=None) if bar else None

            def report(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = sweep(dict(nets), dataset, config=config, out=out, progress=report if bar else None,
                           fit_options=FitOptions(model=fit_model, tie_a_max=not free_a_max, systematic=systematic))
        files = {"json": out / RESULTS_JSON, "csv": out / RESULTS_CSV, **save_plots(result, out)}
    if any(not _is_checkpoint(name) for name in model):
        show(styled("Note:", "yellow", "model names have random weights; sweep a trained checkpoint "
                                       "(fxharden train) for a meaningful μ."), stderr=True)
    _print_result(result, files)


def _is_checkpoint(name: str) -> bool:
    from .zoo.checkpoint import is_checkpoint

    return is_checkpoint(name)


# ---------------------------------------------------------------------- inspect


@app.command("inspect")
def inspect_command(
    model: str = typer.Argument(..., help="Model name (lenet5, vgg11, resnet18, timm/torchvision) or checkpoint path."),
    bits: Optional[int] = typer.Option(None, min=2, max=16, help="Quantize to this many bits (model names only)."),
    scale: Optional[float] = typer.Option(None, help="Constant quantization step s of every post-activation "
                                          "quantizer (with --bits; default 1.0)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Learned (dynamic) quantization steps instead of --scale."),
) -> None:
    """List the sites harden puts quantizers and noise at, and what it left out and why."""
    from .core.harden import harden_report

    with user_errors():
        (label, hm), = resolve_models([model], harden_options(bits, scale, dynamic))
        report = harden_report(hm)
    notes = any(s.note for s in report.sites)
    table = Table(title=f"{label}: {len(report.sites)} sites, {len(report.noise_sites)} with noise")
    for col in ("site", "kind", "op", "quantizer", "noise") + (("note",) if notes else ()):
        table.add_column(col, no_wrap=col in ("site", "kind", "noise"))
    for s in report.sites:
        table.add_row(s.name, s.kind, s.op, s.quantizer or "-", "yes" if s.noise else "no", *((s.note,) if notes else ()))
    show(table)
    for title, items in (("Opaque modules (not traced; one layer each)", report.opaque),
                         ("Layers whose weights were left as they are", report.skipped)):
        if items:
            left = Table(title=title)
            left.add_column("module")
            left.add_column("reason")
            for name, reason in items.items():
                left.add_row(name, reason)
            show(left)


# ---------------------------------------------------------------------- train


@app.command("train")
def train_command(
    model: str = typer.Argument(..., help="Model name: lenet5, vgg11, resnet18, or any timm/torchvision name."),
    bits: Optional[int] = typer.Option(None, min=2, max=16, help="QAT: quantize weights and activations to this "
                                       "many bits. Default: fp32."),
    scale: Optional[float] = typer.Option(None, help="Constant quantization step s of every post-activation "
                                          "quantizer (with --bits; default 1.0)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Learned (dynamic) quantization steps instead of --scale."),
    train_sigma: float = typer.Option(0.0, min=0.0, help="Noisy training: noise strength at every noise site "
                                      "while training (0: off)."),
    ramp_epochs: int = typer.Option(0, min=0, help="Grow the training noise linearly from 0 over this many epochs."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Default: the model recipe's CPU budget (lenet5: 10)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate. Default: the paper's for the model and precision."),
    batch_size: int = typer.Option(128, min=1, help="Training batch size."),
    optimizer: Optional[Optimizer] = typer.Option(None, help="Default: the model recipe's (Adam)."),
    seed: int = typer.Option(0, help="Seeds the initial weights, the shuffling and the training noise."),
    device: Device = typer.Option(Device.AUTO, help="Where to run."),
    data: Optional[Path] = typer.Option(None, help="CIFAR-10 folder (default: $FXHARDEN_DATA)."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download CIFAR-10 if it is missing."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Generated images instead of CIFAR-10 (demos, tests)."),
    train_images: Optional[int] = typer.Option(None, min=1, help="Train on the first N training images only."),
    test_images: Optional[int] = typer.Option(None, min=1, help="Evaluate on the first N test images only."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Stop after this many optimizer steps."),
    out: Path = typer.Option(Path("runs/train"), help="Output directory: checkpoint.pt (every epoch) and "
                             "train_log.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a model with QAT and/or noisy training; checkpoints carry the harden config."""
    import torch

    from .core.config import HardenConfig
    from .zoo.data import DatasetKind, load_cifar10, load_splits
    from .core.harden import harden
    from .zoo.models import build_model
    from .zoo.recipes import training_defaults
    from .training.train import NoiseSchedule, TrainConfig, train

    with user_errors():
        harden_config = harden_options(bits, scale, dynamic) or HardenConfig(quant=None)
        d = training_defaults(model, bits is not None)
        config = TrainConfig(
            epochs=epochs or d.epochs, batch_size=batch_size, lr=d.lr if lr is None else lr, optimizer=optimizer or d.optimizer,
            seed=seed, device=resolve_device(device), train_sigma=NoiseSchedule(train_sigma, ramp_epochs),
            max_steps=max_steps)
        if synthetic and (data is not None or download):
            raise typer.BadParameter("--synthetic generates its own data; leave out --data/--download")
        if download:
            load_cifar10("train", data, download=True)
        train_set, test_set = load_splits(DatasetKind.SYNTHETIC if synthetic else DatasetKind.CIFAR10, data,
                                          train_images=train_images, test_images=test_images)
        torch.manual_seed(seed)
        net = harden(build_model(model, num_classes=train_set.num_classes), config=harden_config)
        result = train(net, train_set, test_set, config, out, resume=resume, arch=model,
                       arch_kwargs={"num_classes": train_set.num_classes}, progress=progress)
    table = Table(title=f"{model}: {'fp32' if bits is None else f'{bits}-bit'} training", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    last = result.history[-1] if result.history else None
    for key, value in (("epochs", f"{len(result.history)} ({result.steps} steps"
                                   + (f", resumed after epoch {result.resumed_from}" if result.resumed_from else "")
                                   + ")"),
                       ("train loss", f"{last.loss:.4f}" if last else "-"),
                       ("clean test accuracy", f"{result.test_accuracy:.4f}" if result.test_accuracy is not None
                        else "-"),
                       ("training noise σ", f"{train_sigma:g}" + (f" (ramp {ramp_epochs} epochs)" if ramp_epochs else "")),
                       ("time", f"{result.seconds:.1f} s"), ("checkpoint", str(result.checkpoint))):
        table.add_row(key, value)
    show(table)
    source = " --synthetic" if synthetic else (f" --data {_quote(data)}" if data is not None else "")
    show(f"next: fxharden sweep {_quote(result.checkpoint)}{source} --out {_quote(out / 'sweep')}")


def _quote(path) -> str:
    import shlex

    return shlex.quote(str(path))


# ---------------------------------------------------------------------- reproduce


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
                                            "point); cpu: a CPU-sized one. Default: the file's."),
    connect_timeout: float = typer.Option(30.0, min=0.1, help="Seconds to wait for the Ray cluster at --address "
                                          "to answer."),
    data: Optional[Path] = typer.Option(None, help="CIFAR-10 folder (default: $FXHARDEN_DATA)."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download CIFAR-10 if it is missing."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Generated images instead of CIFAR-10 (smoke runs)."),
    device: Device = typer.Option(Device.AUTO, help="Where each cell trains and sweeps."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show live progress (cells, epochs, "
                                  "sweep points)."),
) -> None:
    """Reproduce a paper experiment: train and sweep every cell, write tables and plots."""
    from .experiments.experiment import load_experiment
    from .experiments.reproduce import reproduce
    from .zoo.data import load_cifar10

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
        mu = _mu_text(fit)
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
