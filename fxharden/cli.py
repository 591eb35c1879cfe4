"""The ``fxharden`` command line: parse -> build config -> call the public API -> print/save.

Commands: ``sweep`` (accuracy versus noise, μ, results files and plots), ``budget`` (a per-site noise
allocation), ``inspect``
(what ``harden`` does to a model), ``train`` (QAT / noisy training with checkpoints) and
``reproduce`` (a paper experiment from a recipe file). The helpers below (model, device,
data and harden-config resolution, ``user_errors``) are shared by every command.
"""

from __future__ import annotations

import contextlib
import math
import time
from enum import Enum
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .experiments.executors import ExecutorKind
from .experiments.options import Budget
from .measure.midpoint_models import MidpointModel
from .zoo.options import OnCorrupt, Optimizer

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


# ---------------------------------------------------------------------- shared options

def _model_opts():
    return dict(
        pretrained=typer.Option(False, "--pretrained", help="Load the library's pretrained weights (timm: hub or "
                                "its cache, the tag of timm:NAME.TAG; torchvision: DEFAULT)."),
        weights=typer.Option(None, help="Weights file (state_dict or .safetensors) for any model source; for "
                             "torchvision also DEFAULT or a weights name such as IMAGENET1K_V1."),
        num_classes=typer.Option(None, min=1, help="Classifier head size; differs from the weights' head: a new "
                                 "head (fine-tune it). Default: the weights' head, or the data's classes."),
        model_arg=typer.Option(None, help="key=value argument for the model builder (repeatable), e.g. "
                               "--model-arg depth=4 for package.module:factory."),
    )


def _data_opts():
    return dict(
        input_size=typer.Option(None, min=1, help="Override the model's input size (square, pixels)."),
        mean=typer.Option(None, help="Override the normalisation mean, e.g. 0.485,0.456,0.406."),
        std=typer.Option(None, help="Override the normalisation std, e.g. 0.229,0.224,0.225."),
        crop_pct=typer.Option(None, min=0.01, max=1.0, help="Override the centre-crop fraction (resize to "
                              "size / crop-pct, then crop)."),
        on_corrupt=typer.Option(OnCorrupt.STOP, help="An image that cannot be decoded: stop, or skip it with a "
                                "warning."),
        workers=typer.Option(None, min=0, help="Processes decoding images (default: up to 4)."),
    )


_M, _D = _model_opts(), _data_opts()

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


def model_options(pretrained: bool, weights: Optional[str], num_classes: Optional[int],
                  model_arg: Optional[List[str]]):
    """The ``ModelOptions`` of ``--pretrained/--weights/--num-classes/--model-arg``."""
    from .zoo.inputs import ModelOptions
    from .zoo.sources import parse_model_args

    return ModelOptions(pretrained=pretrained, weights=weights, num_classes=num_classes,
                        model_args=parse_model_args(model_arg))


def _floats(text: Optional[str], option: str) -> Optional[Tuple[float, ...]]:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated numbers, e.g. 0.485,0.456,0.406; got {text!r}") \
            from None


def data_options(data: Optional[Path], split: "Split", download: bool, max_images: Optional[int],
                 input_size: Optional[int], mean: Optional[str], std: Optional[str], crop_pct: Optional[float],
                 on_corrupt: "OnCorrupt", workers: Optional[int]):
    """The ``DataOptions`` of ``--data`` and the preprocessing overrides."""
    from .zoo.inputs import DataOptions

    return DataOptions(path=data, split=split.value, max_images=max_images, on_corrupt=on_corrupt.value,
                       workers=workers, download=download, input_size=input_size, mean=_floats(mean, "--mean"),
                       std=_floats(std, "--std"), crop_pct=crop_pct)


def resolve_models(names: List[str], harden_config, seed: int = 0, options=None, data=None):
    """``([(label, hardened model)], data)``: per MODEL argument, a checkpoint path
    (``is_checkpoint``) loaded with its own harden config, or a model source
    (``fxharden.zoo.sources``) loaded with ``options`` (seeded random weights without weights)
    and hardened with ``harden_config``; the evaluation data (when ``data``, ``DataOptions``,
    is given) decoded with the first source's preprocessing (CIFAR-10's for checkpoints)."""
    import torch

    from .core.config import HardenConfig
    from .core.harden import harden
    from .zoo.checkpoint import is_checkpoint, load_checkpoint
    from .zoo.folders import resolve_data
    from .zoo.inputs import ModelOptions, load_with_data
    from .zoo.models import CIFAR_PREPROCESS, load_model

    options = options or ModelOptions()
    out, dataset, preprocess = [], None, None
    for name in names:
        if is_checkpoint(name):
            if harden_config is not None:
                raise typer.BadParameter(f"{name} is a checkpoint: it carries its own harden config, so "
                                         "--bits/--scale/--dynamic do not apply")
            ck = load_checkpoint(name)
            out.append((name, ck.model))
            if preprocess is None and data is not None and ck.arch:  # the preprocessing of the trained architecture
                kwargs = dict(ck.arch_kwargs)
                preprocess = load_model(ck.arch, num_classes=kwargs.pop("num_classes", None),
                                        model_args=kwargs).preprocess
            continue
        if any(ch in name for ch in "/\\") or name.endswith((".pt", ".pth")):
            raise typer.BadParameter(f"no checkpoint file at {name!r}; give an existing checkpoint path or a "
                                     "model source (lenet5, timm:NAME, torchvision:NAME, package.module:factory)")
        torch.manual_seed(seed)
        if data is not None and dataset is None:
            lm, dataset = load_with_data(name, options, data)
        else:
            lm = load_model(name, pretrained=options.pretrained, weights=options.weights,
                            num_classes=options.num_classes, model_args=options.model_args)
        out.append((name, harden(lm.model, config=harden_config or HardenConfig(quant=None))))
    if data is not None and dataset is None:
        dataset = resolve_data(data.path, preprocess=data.preprocess(preprocess or CIFAR_PREPROCESS), split=data.split,
                               max_images=data.max_images, on_corrupt=data.on_corrupt, workers=data.workers,
                               download=data.download)
    return out, dataset


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

    return Progress(TextColumn("[bold]sweep"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err_console, transient=True)


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
        summary.add_row(f"μ (midpoint noise level, {result.units.value})" if q.is_mu
                        else "μ: not quotable; shown instead", q.text())
        for name, (mu, err) in (("μ_abs", result.mu_abs), ("μ_rel (to the sites' clean RMS)", result.mu_rel)):
            if q.is_mu and math.isfinite(mu):
                summary.add_row(name, f"{mu:.4g} ± {err:.2g}")
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
    model: List[str] = typer.Argument(..., help="Model source (lenet5, vgg11, resnet18, timm:NAME[.TAG], "
                                      "torchvision:NAME, package.module:factory) or checkpoint path(s); several "
                                      "checkpoints give the uncertainty across networks."),
    pretrained: bool = _M["pretrained"],
    weights: Optional[str] = _M["weights"],
    num_classes: Optional[int] = _M["num_classes"],
    model_arg: Optional[List[str]] = _M["model_arg"],
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
    units: Optional[str] = typer.Option(None, help="Unit of sigma: absolute (the paper, the default) or relative "
                                        "(to each site's clean RMS, calibrated on the data). Results carry μ in "
                                        "both. Default with --sigma-map: the map's units."),
    sigma_map: Optional[Path] = typer.Option(None, help="A noise allocation (sigma_map.json from `fxharden "
                                             "budget`, or its folder): site s gets sigma × map[s], so "
                                             "--sigmas 1 measures the allocation itself."),
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
    data: Optional[Path] = typer.Option(None, help="CIFAR-10 folder, or an image folder (one subfolder per class; "
                                        "decoded once with the model's preprocessing). Default: $FXHARDEN_DATA."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download CIFAR-10 if it is missing."),
    split: Split = typer.Option(Split.TEST, help="CIFAR-10 split to evaluate on."),
    max_images: Optional[int] = typer.Option(None, min=1, help="Use N images: CIFAR-10's first N, a stratified "
                                             "selection of an image folder."),
    input_size: Optional[int] = _D["input_size"],
    mean: Optional[str] = _D["mean"],
    std: Optional[str] = _D["std"],
    crop_pct: Optional[float] = _D["crop_pct"],
    on_corrupt: OnCorrupt = _D["on_corrupt"],
    workers: Optional[int] = _D["workers"],
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
        allocation, units = _read_allocation(sigma_map, units)
        config = SweepConfig(
            sigmas=parse_sigmas(sigmas), sigma_min=sigma_min, sigma_max=sigma_max, points=points, repeats=repeats,
            mode=SweepMode.PER_LAYER if per_layer else SweepMode.GLOBAL,
            sites=tuple(s.strip() for s in sites.split(",") if s.strip()) if sites else None,
            batch_size=batch_size, points_per_forward=points_per_forward, seed=seed, device=resolve_device(device),
            adaptive=adaptive, chance=chance, max_images=max_images, units=units, sigma_map=allocation)
        options = model_options(pretrained, weights, num_classes, model_arg)
        if synthetic:
            if data is not None or download:
                raise typer.BadParameter("--synthetic generates its own data; leave out --data/--download")
            from .zoo.data import synthetic_dataset

            nets, _ = resolve_models(model, harden_config, seed, options)
            dataset = synthetic_dataset(n=max_images or 1000, num_classes=10, image_size=32, channels=3, seed=seed)
        else:
            nets, dataset = resolve_models(model, harden_config, seed, options, data_options(
                data, split, download, max_images, input_size, mean, std, crop_pct, on_corrupt, workers))
        bar = _progress_bar() if progress else None
        with bar or contextlib.nullcontext():
            task = bar.add_task("sweep", total=None, rate="") if bar else None
            started = time.perf_counter()

            def report(done: int, total: int) -> None:
                rate = done / max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=done, total=total, rate=f"{rate:,.0f} images/s")

            result = sweep(dict(nets), dataset, config=config, out=out, progress=report if bar else None,
                           fit_options=FitOptions(model=fit_model, tie_a_max=not free_a_max, systematic=systematic))
        files = {"json": out / RESULTS_JSON, "csv": out / RESULTS_CSV, **save_plots(result, out)}
    if options.random and any(not _is_checkpoint(name) for name in model):
        show(styled("Note:", "yellow", "model names have random weights; sweep a trained checkpoint "
                                       "(fxharden train) for a meaningful μ."), stderr=True)
    _print_result(result, files)


def _read_allocation(path: Optional[Path], units: Optional[str]):
    """``(sigma map or None, units)`` of ``--sigma-map``/``--units``."""
    if path is None:
        return None, units or "absolute"
    from .measure.sigma_map import read_sigma_map

    allocation, map_units = read_sigma_map(path)
    if units is not None and units != map_units.value:
        raise ValueError(f"--units {units} but the sigma map {path} is in {map_units.value} units; leave out --units "
                         "or give the same units")
    return allocation, map_units.value


def _is_checkpoint(name: str) -> bool:
    from .zoo.checkpoint import is_checkpoint

    return is_checkpoint(name)


# ---------------------------------------------------------------------- budget


@app.command("budget")
def budget_command(
    model: str = typer.Argument(..., help="Checkpoint path or model name (model names have random weights)."),
    max_drop: float = typer.Option(..., help="Allowed accuracy drop from clean, a fraction (0.01 = one point)."),
    bits: Optional[int] = typer.Option(None, min=2, max=16, help="Quantize (model names only), as for sweep."),
    scale: Optional[float] = typer.Option(None, help="Constant quantization step (with --bits; default 1.0)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Learned quantization steps instead of --scale."),
    profile: Optional[Path] = typer.Option(None, help="A per-layer sweep of this model on the same data (its output "
                                           "folder or results.json); default: run one."),
    protect: bool = typer.Option(True, "--protect/--no-protect", help="Keep sites digital (sigma 0) that alone "
                                 "exceed the drop at the smallest sigma; --no-protect: such sites are an error."),
    digital_sigma: Optional[float] = typer.Option(None, help="Cost of a protected site: as if analog at this sigma "
                                                  "(default: the smallest sigma of the profile)."),
    units: str = typer.Option("absolute", help="Unit of sigma: absolute or relative (to each site's clean RMS)."),
    sigma_min: float = typer.Option(1e-3, help="Smallest sigma searched."),
    sigma_max: float = typer.Option(10.0, help="Largest sigma searched."),
    repeats: int = typer.Option(5, min=1, help="Noise draws per point."),
    device: Device = typer.Option(Device.AUTO, help="Where to run."),
    batch_size: int = typer.Option(256, min=1, help="Data images per batch."),
    seed: int = typer.Option(0, help="Seeds the noise (and the random weights of model names)."),
    out: Path = typer.Option(Path("runs/budget"), help="Output folder: budget.md, budget.json, budget.png, "
                             "sigma_map.json (for `fxharden sweep MODEL --sigma-map`)."),
    data: Optional[Path] = typer.Option(None, help="CIFAR-10 folder (default: $FXHARDEN_DATA)."),
    split: Split = typer.Option(Split.TEST, help="Data split to evaluate on."),
    max_images: Optional[int] = typer.Option(None, min=1, help="Use only the first N images."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Generated images instead of CIFAR-10 (demos, tests)."),
) -> None:
    """Find a per-site noise allocation within an accuracy drop at the least cost (E ∝ Σ ops/σ²), verified by
    sweeps, and the sites to keep digital."""
    from .measure.budget import budget
    from .measure.noise_cost import CostModel
    from .measure.results import load_result
    from .measure.sweep import SweepConfig

    with user_errors():
        config = SweepConfig(sigma_min=sigma_min, sigma_max=sigma_max, repeats=repeats, batch_size=batch_size,
                             seed=seed, device=resolve_device(device), max_images=max_images, units=units)
        cost = CostModel(digital_sigma=digital_sigma)
        prof = load_result(profile) if profile is not None else None
        options = model_options(False, None, None, None)
        if synthetic:
            if data is not None:
                raise typer.BadParameter("--synthetic generates its own data; leave out --data")
            from .zoo.data import synthetic_dataset

            ((_, hm),), _ = resolve_models([model], harden_options(bits, scale, dynamic), seed, options)
            dataset = synthetic_dataset(n=max_images or 1000, num_classes=10, image_size=32, channels=3, seed=seed)
        else:
            ((_, hm),), dataset = resolve_models([model], harden_options(bits, scale, dynamic), seed, options,
                                                data_options(data, split, False, max_images, None, None, None, None,
                                                             OnCorrupt.STOP, None))
        result = budget(hm, dataset, max_drop, config=config, profile=prof, cost=cost, protect=protect)
        files = result.save(out)
    console.print(result.markdown(), soft_wrap=True)  # a markdown table: lines are not wrapped
    for path in files.values():
        console.print(f"wrote {path}")
    console.print(f"verify: fxharden sweep {model} --sigma-map {files['sigma_map']} --sigmas 1")


# ---------------------------------------------------------------------- inspect


@app.command("inspect")
def inspect_command(
    model: str = typer.Argument(..., help="Model source (lenet5, timm:NAME, torchvision:NAME, "
                                "package.module:factory) or checkpoint path."),
    weights: Optional[str] = _M["weights"],
    num_classes: Optional[int] = _M["num_classes"],
    model_arg: Optional[List[str]] = _M["model_arg"],
    bits: Optional[int] = typer.Option(None, min=2, max=16, help="Quantize to this many bits (model names only)."),
    scale: Optional[float] = typer.Option(None, help="Constant quantization step s of every post-activation "
                                          "quantizer (with --bits; default 1.0)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Learned (dynamic) quantization steps instead of --scale."),
    results: Optional[Path] = typer.Option(None, help="A per-layer sweep's output directory (or results.json): "
                                           "show each site's measured μ next to it."),
) -> None:
    """List the sites harden puts quantizers and noise at, and what it left out and why."""
    from .core.harden import harden_report
    from .measure.results import load_result
    from .measure.sensitivity import sensitivity_by_site

    with user_errors():
        ((label, hm),), _ = resolve_models([model], harden_options(bits, scale, dynamic), 0,
                                           model_options(False, weights, num_classes, model_arg))
        report = harden_report(hm)
        measured = sensitivity_by_site(load_result(results)) if results is not None else None
        foreign = sorted(set(measured or ()) - set(report.noise_sites))
        if foreign:
            raise ValueError(f"{results} measured sites this model does not have ({', '.join(foreign[:4])}"
                             f"{', ...' if len(foreign) > 4 else ''}); give a per-layer sweep of this model")
    notes = any(s.note for s in report.sites)
    table = Table(title=f"{label}: {len(report.sites)} sites, {len(report.noise_sites)} with noise")
    mu_cols = ("μ (per layer)", "fit") if measured is not None else ()
    for col in ("site", "kind", "op", "quantizer", "noise") + mu_cols + (("note",) if notes else ()):
        table.add_column(col, no_wrap=col in ("site", "kind", "noise"))
    for s in report.sites:
        row = measured.get(s.name) if measured is not None else None
        mu = ((row.text(), row.status) if row is not None else ("-", "")) if measured is not None else ()
        table.add_row(s.name, s.kind, s.op, s.quantizer or "-", "yes" if s.noise else "no", *mu,
                      *((s.note,) if notes else ()))
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
    model: str = typer.Argument(..., help="Model source: lenet5, vgg11, resnet18, timm:NAME[.TAG], "
                                "torchvision:NAME, package.module:factory."),
    pretrained: bool = _M["pretrained"],
    weights: Optional[str] = _M["weights"],
    num_classes: Optional[int] = _M["num_classes"],
    model_arg: Optional[List[str]] = _M["model_arg"],
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
    data: Optional[Path] = typer.Option(None, help="CIFAR-10 folder, or an image folder (with train/ and val/ "
                                        "subfolders, or one folder of classes: 20% held out). Default: $FXHARDEN_DATA."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download CIFAR-10 if it is missing."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Generated images instead of CIFAR-10 (demos, tests)."),
    input_size: Optional[int] = _D["input_size"],
    mean: Optional[str] = _D["mean"],
    std: Optional[str] = _D["std"],
    crop_pct: Optional[float] = _D["crop_pct"],
    on_corrupt: OnCorrupt = _D["on_corrupt"],
    workers: Optional[int] = _D["workers"],
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
    from .core.harden import harden
    from .zoo.data import DatasetKind, load_cifar10, load_splits
    from .zoo.inputs import load_with_data, resolve_splits
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
        dopts = data_options(data, Split.TEST, False, None, input_size, mean, std, crop_pct, on_corrupt, workers)

        def splits(preprocess):
            if synthetic:
                return load_splits(DatasetKind.SYNTHETIC, train_images=train_images, test_images=test_images)
            return resolve_splits(dopts, preprocess, train_images=train_images, test_images=test_images)

        torch.manual_seed(seed)
        lm, (train_set, test_set) = load_with_data(model, model_options(pretrained, weights, num_classes, model_arg),
                                                   dopts, loader=splits)
        net = harden(lm.model, config=harden_config)
        result = train(net, train_set, test_set, config, out, resume=resume, arch=lm.source.text,
                       arch_kwargs=lm.arch_kwargs, progress=progress)
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
