"""``fxharden sweep``: accuracy versus noise, μ, results files and plots (and the summary printed)."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..measure.midpoint import MidpointModel
from ..measure.axis_options import Axis
from ..measure.scores import MetricName
from ..zoo.options import OnCorrupt
from ._app import (_D, _M, _Q, HARDWARE_HELP, Device, Split, app, check_data, data_options, err_console, harden_options,
                   hardware_options, inputs_rows, model_options, parse_sigmas, resolve_device, resolve_models, show,
                   styled, text_inputs, user_errors)


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
    return "-" if fit is None else fit.crossing_text()


def _raw_text(result, site=None) -> str:
    """The metric's own mean value at every σ of a curve, ``σ: value``, for sweeps of other metrics."""
    sigmas, values = result.raw_curve(site)
    return ", ".join(f"{s:.3g}: {v:.4g}" for s, v in zip(sigmas, values)) or "-"


def _print_result(result, files: dict) -> None:
    summary = Table(title="Robustness sweep", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("mode", result.mode.value)
    summary.add_row("networks", str(len(result.networks)))
    unit = result.provenance.get("unit", "images")  # text: sequences
    summary.add_row(unit, str(result.num_images))
    for key, value in inputs_rows(result.provenance):
        summary.add_row(key, value)
    if result.metric != "top1":
        info = result.metric_info
        clean = ", ".join(f"{v:.4g}" for v in info.get("clean_values", []))
        summary.add_row("metric", f"{result.metric}: clean {clean}, floor {info.get('floor', float('nan')):.4g}"
                                  f"{' (measured)' if info.get('floor_measured') else ''}")
        summary.add_row("clean score (fitted scale)", f"{result.clean_fit:.4f}")
        if result.fit is not None:
            summary.add_row(f"{result.metric} (raw) at σ", _raw_text(result))
    else:
        summary.add_row("clean accuracy", f"{result.clean_accuracy:.4f}")
    if result.metric in ("top1", "top5"):  # other metrics: the floor (0 in the fitted scale), shown above
        summary.add_row("chance", f"{result.chance:.4g}")
    if result.fit is not None:
        q = result.fit.quote()
        summary.add_row(f"μ (midpoint noise level, {result.units.value})" if q.is_mu
                        else "μ: not quotable; shown instead", q.text())
        mu, err = result.mu_equal_power
        if q.is_mu and math.isfinite(mu):
            name = ("absolute σ at equal noise power (μ · rms_ref; a rescaling, not a measured μ_abs)"
                    if result.equal_power_units.value == "absolute" else
                    "relative σ at equal noise power (μ / rms_ref; a rescaling, not a measured μ_rel)")
            summary.add_row(name, f"{mu:.4g} ± {err:.2g} (rms_ref {result.rms_ref:.4g})")
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
                            f"{t.get('images_per_second', 0):,.0f} {unit}/s")
    show(summary)
    if result.per_site:
        table = Table(title="Per-layer μ (most sensitive first)")
        raw = result.metric != "top1"
        for col in ("rank", "site", "μ", "status", "crossing") + ((f"{result.metric} (raw) at σ",) if raw else ()):
            table.add_column(col)
        for i, (site, fit) in enumerate(result.ranking(), 1):
            table.add_row(str(i), site, _mu_text(fit), fit.status.value, _crossing_text(fit),
                          *((_raw_text(result, site),) if raw else ()))
        show(table)
    for path in files.values():
        show(f"wrote {path}")


@app.command("sweep")
def sweep_command(
    model: List[str] = typer.Argument(..., help="Model source (lenet5, vgg11, resnet18, timm:NAME[.TAG], "
                                      "torchvision:NAME, package.module:factory, hf:FOLDER) or checkpoint "
                                      "path(s); several checkpoints give the uncertainty across networks."),
    pretrained: bool = _M["pretrained"],
    weights: Optional[str] = _M["weights"],
    num_classes: Optional[int] = _M["num_classes"],
    model_arg: Optional[List[str]] = _M["model_arg"],
    bits: Optional[int] = typer.Option(None, min=2, max=16, help="Quantize weights and activations to this many "
                                       "bits (model names only). Default: no quantization."),
    scale: Optional[float] = _Q["scale"],
    dynamic: bool = _Q["dynamic"],
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
                                        "(to each site's clean RMS, calibrated on the data). Results carry μ as "
                                        "measured and, beside it, its equal-noise-power rescaling to the other "
                                        "unit (global: by rms_ref; per layer: exact). Default with --sigma-map: "
                                        "the map's units."),
    sigma_map: Optional[Path] = typer.Option(None, help="A noise allocation (sigma_map.json from `fxharden "
                                             "budget`, or its folder): site s gets sigma × map[s], so "
                                             "--sigmas 1 measures the allocation itself."),
    sites: Optional[str] = typer.Option(None, help="Comma-separated site names or regular expressions to inject "
                                        "noise at (default: all noise sites)."),
    device: Device = typer.Option(Device.AUTO, help="Where to run."),
    batch_size: int = typer.Option(256, min=1, help="Data images (text: sequences) per batch."),
    points_per_forward: Optional[int] = typer.Option(None, min=1, help="(sigma, repeat) points batched into one "
                                                     "forward pass (default: 4 noise levels × repeats on a CPU, "
                                                     "16 × repeats on CUDA)."),
    forward_images: Optional[int] = typer.Option(None, min=1, help="The most images in one forward pass, "
                                                 "replicas included: batches are measured in slices (default: 512 "
                                                 "on a CPU, 16384 on CUDA)."),
    weight_draws: str = typer.Option("repeat", help="Networks with weight noise: repeat (one weight draw per "
                                     "point and repeat for the whole data set, a programmed chip) or forward (a "
                                     "new draw in every forward pass, so the spread depends on the batching)."),
    seed: int = typer.Option(0, help="Seeds the noise (and the random weights of model names)."),
    chance: Optional[float] = typer.Option(None, help="Chance accuracy (default: 1 / number of classes)."),
    out: Path = typer.Option(Path("runs/sweep"), help="Output directory: results.json, results.csv, PNG plots; "
                             "rerunning with the same directory resumes an interrupted sweep."),
    data: Optional[Path] = _D["eval_data"],
    download: bool = _D["download"],
    split: Split = _D["split"],
    max_images: Optional[int] = _D["max_images"],
    input_size: Optional[int] = _D["input_size"],
    mean: Optional[str] = _D["mean"],
    std: Optional[str] = _D["std"],
    crop_pct: Optional[float] = _D["crop_pct"],
    on_corrupt: OnCorrupt = _D["on_corrupt"],
    workers: Optional[int] = _D["workers"],
    synthetic: bool = _D["synthetic"],
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    fit_model: MidpointModel = typer.Option(MidpointModel.LOG, help="Quoted midpoint model: log (logistic in "
                                            "ln σ) or paper (Eq. 1, logistic in σ); the other is fitted beside it."),
    free_a_max: bool = typer.Option(False, "--free-a-max", help="Fit a_max freely (≤ 1) instead of tying it to "
                                    "the clean accuracy ± its error."),
    systematic: float = typer.Option(0.0, min=0.0, help="Relative systematic error of μ added in quadrature "
                                     "(0.02 = 2 %)."),
    metric: MetricName = typer.Option(MetricName.TOP1, help="What to measure: top1 (the paper), top5, loss, "
                                      "perplexity or token_accuracy; μ is where it has fallen half way from its "
                                      "clean value to its floor (chance, ln V)."),
    compile_backend: Optional[str] = typer.Option(None, "--compile", help="Measure with torch.compile and this "
                                                  "backend (inductor: each site fused into the kernels around it; "
                                                  "activation noise only). Default: eager."),
    tokenizer: Optional[str] = _D["tokenizer"],
    seq_len: int = _D["seq_len"],
    hardware: Optional[str] = typer.Option(None, "--hardware", help=HARDWARE_HELP),
    axis: Axis = typer.Option(Axis.SIGMA, help="What to sweep: sigma (activation noise at every site, the paper), "
                              "time (after programming: every weight model with a time t, e.g. --hardware pcm), "
                              "weight-sigma (one weight-noise link, --link) or output-sigma (activation noise at "
                              "conv/linear outputs only). Repeats are chips: one weight draw each."),
    values: Optional[str] = typer.Option(None, help="Comma-separated axis values for --axis time (seconds; default "
                                         "1 s, 1 h, 1 day, 1 month, 1 yr) or weight-sigma/output-sigma (σ; 0 is "
                                         "always measured)."),
    link: str = typer.Option("", help="--axis weight-sigma: the name of the weight-noise link to sweep (default: "
                             "the unnamed first link)."),
) -> None:
    """Measure accuracy (or another metric) versus noise strength and the midpoint noise level μ."""
    from ..measure.plots import save_plots
    from ..measure.options import FitOptions
    from ..measure.results import RESULTS_CSV, RESULTS_JSON
    from ..measure.sweep import SweepConfig, SweepMode, sweep

    with user_errors():
        harden_config = hardware_options(hardware, harden_options(bits, scale, dynamic))
        if axis is not Axis.SIGMA:
            _check_axis_options(axis, per_layer, metric, tokenizer, sigmas, sigma_map, compile_backend)
        elif values is not None or link:
            raise typer.BadParameter("--values and --link go with --axis time, weight-sigma or output-sigma; the "
                                     "sigma axis takes --sigmas")
        allocation, units = _read_allocation(sigma_map, units)
        config = SweepConfig(
            sigmas=parse_sigmas(sigmas), sigma_min=sigma_min, sigma_max=sigma_max, points=points, repeats=repeats,
            mode=SweepMode.PER_LAYER if per_layer else SweepMode.GLOBAL,
            sites=tuple(s.strip() for s in sites.split(",") if s.strip()) if sites else None,
            batch_size=batch_size, points_per_forward=points_per_forward, forward_images=forward_images,
            weight_draws=weight_draws, seed=seed,
            device=resolve_device(device),
            adaptive=adaptive, chance=chance, max_images=max_images, units=units, sigma_map=allocation,
            compile_backend=compile_backend)
        check_data(model, None if synthetic else data, tokenizer, download)
        options = model_options(pretrained, weights, num_classes, model_arg)
        if tokenizer is not None:
            nets, dataset, provenance = text_inputs(model, options, data, tokenizer, seq_len, batch_size, max_images,
                                                    seed)
        elif synthetic:
            if data is not None or download:
                raise typer.BadParameter("--synthetic generates its own data; leave out --data/--download")
            from ..zoo.data import synthetic_dataset

            nets, _, provenance = resolve_models(model, harden_config, seed, options)
            dataset = synthetic_dataset(n=max_images or 1000, num_classes=10, image_size=32, channels=3, seed=seed)
            provenance["data"] = "synthetic images (32x32)"
        else:
            nets, dataset, provenance = resolve_models(model, harden_config, seed, options, data_options(
                data, split, download, max_images, input_size, mean, std, crop_pct, on_corrupt, workers))
        if axis is not Axis.SIGMA:
            fit = FitOptions(model=fit_model, tie_a_max=not free_a_max, systematic=systematic)
            result, files = _sweep_axis(dict(nets), dataset, axis, values, link, repeats, batch_size, max_images, seed,
                                        resolve_device(device), chance, out, fit, progress)
            _print_axis_result(result, files)
            return
        bar = _progress_bar() if progress else None
        with bar or contextlib.nullcontext():
            task = bar.add_task("sweep", total=None, rate="") if bar else None
            started = time.perf_counter()

            def report(done: int, total: int) -> None:
                rate = done / max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=done, total=total, rate=f"{rate:,.0f} images/s")

            result = sweep(dict(nets), dataset, config=config, out=out, progress=report if bar else None,
                           harden_config=harden_config if tokenizer is not None and not any(
                               _is_checkpoint(name) for name in model) else None,
                           fit_options=FitOptions(model=fit_model, tie_a_max=not free_a_max, systematic=systematic),
                           metric=metric.value, provenance=provenance)
        files = {"json": out / RESULTS_JSON, "csv": out / RESULTS_CSV, **save_plots(result, out)}
    if options.random and any(not _is_checkpoint(name) and not name.startswith("hf:") for name in model):
        show(styled("Note:", "yellow", "model names have random weights; sweep a trained checkpoint "
                                       "(fxharden train) for a meaningful μ."), stderr=True)
    _print_result(result, files)


def _check_axis_options(axis: Axis, per_layer: bool, metric: MetricName, tokenizer: Optional[str],
                        sigmas: Optional[str], sigma_map: Optional[Path], compile_backend: Optional[str]) -> None:
    """Refuse the options of the activation-σ sweep that an axis sweep does not take."""
    given = [name for name, on in (("--per-layer", per_layer), ("--metric", metric is not MetricName.TOP1),
                                   ("--tokenizer", tokenizer is not None), ("--sigmas", sigmas is not None),
                                   ("--sigma-map", sigma_map is not None), ("--compile", compile_backend is not None))
             if on]
    if given:
        raise typer.BadParameter(f"--axis {axis.value} measures top-1 accuracy at --values on image data; "
                                 f"{', '.join(given)} belong to the sigma axis (leave them out, or use --axis sigma)")


def _sweep_axis(nets, dataset, axis: Axis, values: Optional[str], link: str, repeats: int, batch_size: int,
                max_images: Optional[int], seed: int, device: str, chance: Optional[float], out: Path, fit,
                progress: bool):
    """Run ``sweep_axis`` with a progress bar; returns the result and the files written."""
    from ..measure.axes import AxisConfig, sweep_axis
    from ..measure.axis_result import AXIS_PNG, AXIS_RESULTS_CSV, AXIS_RESULTS_JSON

    parsed = None
    if values is not None:
        try:
            parsed = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise typer.BadParameter(f"--values must be comma-separated numbers, got {values!r}") from None
    config = AxisConfig(axis=axis, values=parsed, repeats=repeats, link=link, batch_size=batch_size,
                        max_images=max_images, seed=seed, device=device, chance=chance)
    bar = _progress_bar() if progress else None
    with bar or contextlib.nullcontext():
        task = bar.add_task("sweep", total=None, rate="") if bar else None

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, rate=f"{done}/{total} chunks")

        result = sweep_axis(nets, dataset, config=config, out=out, progress=report if bar else None, fit_options=fit)
    return result, {"json": out / AXIS_RESULTS_JSON, "csv": out / AXIS_RESULTS_CSV, "plot": out / AXIS_PNG}


def _print_axis_result(result, files: dict) -> None:
    from ..measure.axis_result import value_label

    table = Table(title=f"Sweep along {result.axis.label}")
    for col in (result.axis.value, "accuracy", "± (over chips)"):
        table.add_column(col)
    for p in result.points:
        table.add_row(value_label(result.axis, p.sigma), f"{p.mean:.4f}", f"{p.dy:.2g}")
    show(table)
    if result.fit is not None:
        q = result.fit.quote()
        unit = " in seconds" if result.axis is Axis.TIME else ""
        show(f"μ along {result.axis.value}{unit} ({'fitted' if q.is_mu else 'not quotable; shown instead'}): "
             f"{q.text()}; chance {result.chance:.3g}")
    for path in files.values():
        show(f"wrote {path}")


def _read_allocation(path: Optional[Path], units: Optional[str]):
    """``(sigma map or None, units)`` of ``--sigma-map``/``--units``."""
    if path is None:
        return None, units or "absolute"
    from ..measure.sigma_map import read_sigma_map

    allocation, map_units = read_sigma_map(path)
    if units is not None and units != map_units.value:
        raise ValueError(f"--units {units} but the sigma map {path} is in {map_units.value} units; leave out --units "
                         "or give the same units")
    return allocation, map_units.value


def _is_checkpoint(name: str) -> bool:
    from ..zoo.checkpoint import is_checkpoint

    return is_checkpoint(name)


# ---------------------------------------------------------------------- budget
