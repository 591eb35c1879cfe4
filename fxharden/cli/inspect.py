"""``fxharden inspect``: the sites ``harden`` puts quantizers and noise at, what it left out, and
measured per-layer μ beside them."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ._app import _M, _Q, app, harden_options, inputs_rows, model_options, resolve_models, show, user_errors


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
) -> None:
    """List the sites harden puts quantizers and noise at, and what it left out and why."""
    from ..core.harden import harden_report
    from ..measure.results import load_result
    from ..measure.sensitivity import sensitivity_by_site

    with user_errors():
        ((label, hm),), _, provenance = resolve_models([model], harden_options(bits, scale, dynamic), 0,
                                                       model_options(False, weights, num_classes, model_arg),
                                                       model_preprocess=True)
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
                         ("Layers whose weights were left as they are", report.skipped)):
        if items:
            left = Table(title=title)
            left.add_column("module")
            left.add_column("reason")
            for name, reason in items.items():
                left.add_row(name, reason)
            show(left)


# ---------------------------------------------------------------------- train
