"""``fxharden inspect``: the sites ``harden`` puts quantizers and noise at, what it left out,
measured per-layer μ beside them, and, calibrated on data, the quantization steps that do not
fit the signal."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ._app import _M, _Q, Split, app, data_options, harden_options, inputs_rows, model_options, resolve_models, \
    show, user_errors
from ..zoo.options import OnCorrupt

CALIBRATION_BATCH = 64
"""Images per batch when ``--data``/``--synthetic`` calibrate the model."""


@app.command("inspect")
def inspect_command(
    model: str = typer.Argument(..., help="Model source (lenet5, timm:NAME, torchvision:NAME, "
                                "package.module:factory, hf:FOLDER) or checkpoint path."),
    weights: Optional[str] = _M["weights"],
    num_classes: Optional[int] = _M["num_classes"],
    model_arg: Optional[List[str]] = _M["model_arg"],
    bits: Optional[int] = typer.Option(None, min=2, max=16, help="Quantize to this many bits (model names only)."),
    scale: Optional[float] = _Q["scale"],
    dynamic: bool = _Q["dynamic"],
    results: Optional[Path] = typer.Option(None, help="A per-layer sweep's output directory (or results.json): "
                                           "show each site's measured μ next to it."),
    data: Optional[Path] = typer.Option(None, "--data", help="Calibrate the quantizers on these images (a CIFAR-10 "
                                        "folder, or an image folder decoded with the model's preprocessing) and "
                                        "list the steps that erase or clip the signal."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Calibrate on generated images instead (demos, tests)."),
    max_images: int = typer.Option(256, min=1, help="Images to calibrate on (with --data or --synthetic)."),
) -> None:
    """List the sites harden puts quantizers and noise at, and what it left out and why; with
    --data or --synthetic, also the quantization steps that do not fit the calibration data."""
    import warnings

    import torch

    from ..core.calibrate import calibrate_quantizers
    from ..core.harden import harden_report
    from ..core.quant import GridWarning
    from ..measure.engine import EvalData
    from ..measure.results import load_result
    from ..measure.sensitivity import sensitivity_by_site

    if data is not None and synthetic:
        raise typer.BadParameter("give --data or --synthetic, not both")
    with user_errors():
        options = model_options(False, weights, num_classes, model_arg)
        images = data_options(data, Split.TEST, False, max_images, None, None, None, None, OnCorrupt.STOP, None) \
            if data is not None else None
        ((label, hm),), dataset, provenance = resolve_models([model], harden_options(bits, scale, dynamic), 0,
                                                             options, images, model_preprocess=True)
        if synthetic:
            from ..zoo.data import synthetic_dataset

            dataset = synthetic_dataset(n=max_images, num_classes=10, image_size=32, channels=3, seed=0)
            provenance["data"] = "synthetic images (32x32)"
        if dataset is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GridWarning)  # the table below shows them
                calibrate_quantizers(hm, EvalData(dataset, CALIBRATION_BATCH, max_images, torch.device("cpu")))
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
    frontend = {"fx": "torch.fx", "export": "torch.export"}[report.frontend]
    show(f"graph: {frontend}" + (f" ({report.note})" if report.note else ""))
    for key, value in inputs_rows(provenance):
        show(f"{key}: {value}")
    for title, items in (("Opaque modules (not traced; one layer each)", report.opaque),
                         ("Layers and parameters left as they are", report.skipped)):
        if items:
            left = Table(title=title)
            left.add_column("module or parameter")
            left.add_column("reason")
            for name, reason in items.items():
                left.add_row(name, reason)
            show(left)
    if dataset is not None and report.quant_warnings:
        grid = Table(title="Quantization steps that do not fit the calibration data")
        grid.add_column("site", no_wrap=True)
        grid.add_column("problem")
        for name, problem in report.quant_warnings.items():
            grid.add_row(name, problem)
        show(grid)
        show("Give a step that fits the data (a smaller --scale where few levels are used, a larger one where values "
             "are clipped), --dynamic, or more --bits.")
    elif dataset is not None:
        show("quantization steps: every one fits the calibration data")


# ---------------------------------------------------------------------- train
