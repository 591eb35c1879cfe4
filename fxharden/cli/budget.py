"""``fxharden budget``: a per-site noise allocation within an accuracy drop, verified by sweeps."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from ..zoo.options import OnCorrupt
from ..measure.scores import MetricName
from ._app import (_D, _M, _Q, Device, Split, app, check_data, console, data_options, err_console, harden_options,
                   inputs_rows, model_options, resolve_device, resolve_models, text_inputs, user_errors)


@app.command("budget")
def budget_command(
    model: str = typer.Argument(..., help="Checkpoint path or model source (lenet5, timm:NAME, torchvision:NAME, "
                                "package.module:factory, hf:FOLDER; random weights unless --pretrained/--weights)."),
    max_drop: float = typer.Option(..., help="Allowed drop from clean, a fraction: of accuracy (0.01 = one "
                                   "point), or of another --metric's fit scale (1 ideal, 0 floor)."),
    pretrained: bool = _M["pretrained"],
    weights: Optional[str] = _M["weights"],
    num_classes: Optional[int] = _M["num_classes"],
    model_arg: Optional[List[str]] = _M["model_arg"],
    bits: Optional[int] = typer.Option(None, min=2, max=16, help="Quantize (model names only), as for sweep."),
    scale: Optional[float] = _Q["scale"],
    dynamic: bool = _Q["dynamic"],
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
    batch_size: int = typer.Option(256, min=1, help="Data images (text: sequences) per batch."),
    points_per_forward: Optional[int] = typer.Option(None, min=1, help="(sigma, repeat) points batched into one "
                                                     "forward pass, as for sweep (default: 4 noise levels × "
                                                     "repeats on a CPU, 16 × repeats on CUDA)."),
    seed: int = typer.Option(0, help="Seeds the noise (and the random weights of model names)."),
    out: Path = typer.Option(Path("runs/budget"), help="Output folder: budget.md, budget.json, budget.png, "
                             "sigma_map.json (for `fxharden sweep MODEL --sigma-map`)."),
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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (phase and images of "
                                  "the sweep running)."),
    metric: MetricName = typer.Option(MetricName.TOP1, help="What the drop is measured on: top1 (accuracy), or "
                                      "top5, loss, perplexity, token_accuracy in their fit scale (1 ideal, 0 floor)."),
    tokenizer: Optional[str] = _D["tokenizer"],
    seq_len: int = _D["seq_len"],
) -> None:
    """Find a per-site noise allocation within an accuracy drop at the least cost (E ∝ Σ ops/σ²), verified by
    sweeps, and the sites to keep digital."""
    from ..measure.budget import budget
    from ..measure.noise_cost import CostModel
    from ..measure.results import load_result
    from ..measure.sweep import SweepConfig

    with user_errors():
        config = SweepConfig(sigma_min=sigma_min, sigma_max=sigma_max, repeats=repeats, batch_size=batch_size,
                             seed=seed, device=resolve_device(device), max_images=max_images, units=units,
                             points_per_forward=points_per_forward)
        cost = CostModel(digital_sigma=digital_sigma)
        prof = load_result(profile) if profile is not None else None
        check_data([model], None if synthetic else data, tokenizer, download)
        options = model_options(pretrained, weights, num_classes, model_arg)
        if tokenizer is not None:
            ((_, hm),), dataset, provenance = text_inputs([model], options, data, tokenizer, seq_len, batch_size,
                                                          max_images, seed)
            harden_config = harden_options(bits, scale, dynamic)
            if harden_config is not None:
                from ..core.harden import HardenedModule, harden

                if isinstance(hm, HardenedModule):
                    raise typer.BadParameter(f"{model} is a checkpoint: it carries its own harden config, so "
                                             "--bits/--scale/--dynamic do not apply")
                hm = harden(hm, config=harden_config, example_inputs={"input_ids": dataset[0][0]})
        elif synthetic:
            if data is not None or download:
                raise typer.BadParameter("--synthetic generates its own data; leave out --data/--download")
            from ..zoo.data import synthetic_dataset

            ((_, hm),), _, provenance = resolve_models([model], harden_options(bits, scale, dynamic), seed, options)
            dataset = synthetic_dataset(n=max_images or 1000, num_classes=10, image_size=32, channels=3, seed=seed)
            provenance["data"] = "synthetic images (32x32)"
        else:
            ((_, hm),), dataset, provenance = resolve_models(
                [model], harden_options(bits, scale, dynamic), seed, options,
                data_options(data, split, download, max_images, input_size, mean, std, crop_pct, on_corrupt, workers))
        bar = _progress_bar() if progress else None
        with bar or contextlib.nullcontext():
            task = bar.add_task("budget", total=None, phase="") if bar else None

            def report(phase: str, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, phase=phase)

            result = budget(hm, dataset, max_drop, config=config, profile=prof, cost=cost, protect=protect,
                            progress=report if bar else None, metric=metric.value)
        files = result.save(out)
    for key, value in inputs_rows(provenance):
        console.print(f"{key}: {value}", soft_wrap=True)
    console.print(result.markdown(), soft_wrap=True)  # a markdown table: lines are not wrapped
    for path in files.values():
        console.print(f"wrote {path}")
    source = " --synthetic" if synthetic else (f" --data {data}" if data is not None else "")
    if tokenizer is not None:
        source += f" --tokenizer {tokenizer} --seq-len {seq_len}"
    if metric is not MetricName.TOP1:
        source += f" --metric {metric.value}"
    console.print(f"verify: fxharden sweep {model}{source} --sigma-map {files['sigma_map']} --sigmas 1", soft_wrap=True)


# ---------------------------------------------------------------------- inspect


def _progress_bar():
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]budget"), TextColumn("{task.fields[phase]}"), BarColumn(), TaskProgressColumn(),
                    TimeElapsedColumn(), console=err_console, transient=True)
