"""The result of a sweep along a hardware axis (``fxharden.measure.axes``): its points, the
midpoint fit along the axis, its files (``results.json``, ``results.csv``, atomic) and its plot
(accuracy versus time on a log axis labelled 1 s ... 1 yr, or versus σ), with error bars over
chips (repeats)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .._files import atomic_write_bytes
from ..core.hardware import SECONDS
from .axis_options import Axis
from .results import FitOptions, MidpointFit, fit_midpoint, versions  # the midpoint fit, as sweep results use it
from .sweep_points import SweepPoint, draw_replicas

__all__ = ["Axis", "AxisResult", "load_axis_result", "plot_axis", "AXIS_RESULTS_JSON", "AXIS_RESULTS_CSV", "AXIS_PNG",
           "STANDARD_TIMES"]

AXIS_RESULTS_JSON, AXIS_RESULTS_CSV, AXIS_PNG = "axis_results.json", "axis_results.csv", "accuracy_vs_axis.png"
AXIS_FORMAT = "fxharden-axis-sweep-v1"

STANDARD_TIMES: Tuple[float, ...] = tuple(SECONDS.values())
"""The default points of a time sweep: 1 s, 1 h, 1 day, 1 month, 1 year (seconds)."""

PathLike = Union[str, os.PathLike]


@dataclass
class AxisResult:
    """What ``sweep_axis`` returns (and ``load_axis_result`` reads back)."""

    axis: Axis
    points: List[SweepPoint]
    """One point per axis value (``SweepPoint.sigma`` holds the value: seconds or σ), correct
    counts per network and repeat (chip); σ axes include the reference point at 0."""
    chance: float
    num_images: int
    networks: List[str]
    config: Dict[str, Any]
    """The sweep's settings (``AxisConfig`` as a dict)."""
    harden_configs: List[Dict[str, Any]]
    link: str = ""
    """Weight-sigma sweeps: the link swept."""
    time_links: List[str] = field(default_factory=list)
    """Time sweeps: the weight-noise sites whose model's ``t`` was set."""
    fit: Optional[MidpointFit] = None
    """The midpoint fit along the axis (time: on log t, ``a_max`` tied to the first time's accuracy;
    σ axes: on log σ, tied to the accuracy at σ = 0)."""
    fit_options: FitOptions = field(default_factory=FitOptions)
    identity: Dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    seeding: str = ""
    timing: Dict[str, float] = field(default_factory=dict)
    versions: Dict[str, str] = field(default_factory=versions)

    @property
    def values(self) -> List[float]:
        """The axis values measured, ascending."""
        return [p.sigma for p in self.points]

    @property
    def reference(self) -> SweepPoint:
        """The point the drop is measured from: the first time, or σ = 0."""
        return self.points[0]

    def curve(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, mean accuracy, its error)``: error over chips (and networks)."""
        return (np.array([p.sigma for p in self.points]), np.array([p.mean for p in self.points]),
                np.array([p.dy for p in self.points]))

    def refit(self, options: Optional[FitOptions] = None) -> "AxisResult":
        """Redo the fit (with ``options``, default the stored ones); returns ``self``.

        The time axis fits every point on log t with the plateau tied to the first time's mean
        ± its error; σ axes fit the points with σ > 0 with the plateau tied to σ = 0. The quoted
        value (``fit.quote()``) is μ when the fit is trustworthy, a lower bound (the largest
        value measured) when the accuracy never fell half way, or the marked crossing."""
        self.fit_options = options or self.fit_options
        o, ref = self.fit_options, self.reference
        pts = [p for p in self.points if p.sigma > 0]
        if len(pts) < 2:
            self.fit = None
            return self
        drawn = draw_replicas(pts, o.n_boot, o.seed, images=False)
        self.fit = fit_midpoint(np.array([p.sigma for p in pts]), np.array([p.mean for p in pts]),
                                np.array([p.dy for p in pts]), chance=self.chance, model=o.model,
                                plateau=(ref.mean, ref.err) if o.tie_a_max else None,
                                replicas=drawn[0] if drawn is not None else None, systematic=o.systematic,
                                seed=o.seed)
        return self

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (inverse: ``load_axis_result``)."""
        return {"format": AXIS_FORMAT, "axis": self.axis.value, "points": [p.to_dict() for p in self.points],
                "chance": self.chance, "num_images": self.num_images, "networks": list(self.networks),
                "config": self.config, "harden_configs": self.harden_configs, "link": self.link,
                "time_links": list(self.time_links), "fit": self.fit.to_dict() if self.fit is not None else None,
                "fit_options": self.fit_options.to_dict(), "identity": self.identity,
                "fingerprint": self.fingerprint, "seeding": self.seeding, "timing": self.timing,
                "versions": self.versions}

    def to_csv(self) -> str:
        """One row per point: the value, its label, mean accuracy, error, repeats."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([self.axis.value, "label", "accuracy", "accuracy_err", "repeats"])
        for p in self.points:
            w.writerow([repr(p.sigma), value_label(self.axis, p.sigma), f"{p.mean:.6f}", f"{p.dy:.6f}",
                        p.accuracy.shape[1]])
        return buf.getvalue()

    def save(self, out: PathLike) -> Dict[str, Path]:
        """Write ``axis_results.json`` and ``axis_results.csv`` into directory ``out``, atomically."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False, default=str).encode()
        table = self.to_csv().encode()
        return {"json": atomic_write_bytes(out / AXIS_RESULTS_JSON, lambda f: f.write(text)),
                "csv": atomic_write_bytes(out / AXIS_RESULTS_CSV, lambda f: f.write(table))}


def load_axis_result(path: PathLike) -> AxisResult:
    """Read ``axis_results.json`` (a file, or the directory holding it).

    Raises:
        FileNotFoundError: no such file. ValueError: not an axis-sweep result.
    """
    path = Path(path)
    if path.is_dir():
        path = path / AXIS_RESULTS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no axis-sweep result at {path}; fxharden.sweep_axis(..., out=DIR) writes "
                                f"DIR/{AXIS_RESULTS_JSON}")
    data = json.loads(path.read_text())
    if data.get("format") != AXIS_FORMAT:
        raise ValueError(f"{path} is not an axis-sweep result (format {data.get('format')!r}, expected "
                         f"{AXIS_FORMAT!r})")
    return AxisResult(
        axis=Axis(data["axis"]), points=[SweepPoint.from_dict(p) for p in data["points"]], chance=data["chance"],
        num_images=data["num_images"], networks=data["networks"], config=data["config"],
        harden_configs=data["harden_configs"], link=data.get("link", ""), time_links=data.get("time_links", []),
        fit=MidpointFit.from_dict(data["fit"]) if data.get("fit") else None,
        fit_options=FitOptions.from_dict(data.get("fit_options")), identity=data.get("identity", {}),
        fingerprint=data.get("fingerprint", ""), seeding=data.get("seeding", ""), timing=data.get("timing", {}),
        versions=data.get("versions", {}))


def value_label(axis: Axis, value: float) -> str:
    """A point's label: a standard time's name (``1 day``), else the number (``3600 s``, ``0.05``)."""
    if axis is Axis.TIME:
        named = {v: k for k, v in SECONDS.items()}
        return named.get(value, f"{value:g} s")
    return f"{value:g}"


def plot_axis(result: AxisResult, path: PathLike) -> Path:
    """Accuracy versus the axis value on a log axis (time: ticks at the standard times 1 s, 1 h,
    1 day, 1 month, 1 yr), error bars over chips, chance and the reference level, the fitted
    curve and μ where μ is trustworthy (a lower bound or a crossing dotted)."""
    from .plots import new_figure, save_figure

    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    x, acc, err = result.curve()
    keep = x > 0
    q = result.fit.quote() if result.fit is not None else None
    label = "accuracy (error bars: over chips)"
    if q is not None:
        label += f"; μ = {q.text(3)}" if q.is_mu else f"; no μ, {q.text(3)}"
    ax.errorbar(x[keep], acc[keep], yerr=err[keep], fmt="o-", ms=4, capsize=2, color="C0", label=label)
    if q is not None and q.is_mu and keep.sum() > 1:
        xs = np.geomspace(x[keep].min(), x[keep].max(), 200)
        ax.plot(xs, result.fit.curve(xs), "-", lw=1.0, color="C1")
        ax.axvline(q.value, ls="--", lw=0.9, color="C1")
    elif q is not None and math.isfinite(q.value):
        ax.axvline(q.value, ls=":", lw=0.9, color="C1")
    if result.axis is not Axis.TIME:
        ax.axhline(result.reference.mean, ls=":", lw=0.9, color="black",
                   label=f"at σ = 0 ({result.reference.mean:.3g})")
    ax.axhline(result.chance, ls=":", lw=0.9, color="gray", label=f"chance ({result.chance:.3g})")
    ax.set_xscale("log")
    if result.axis is Axis.TIME:
        lo, hi = x[keep].min(), x[keep].max()
        ticks = [(v, k) for k, v in SECONDS.items() if lo / 1.5 <= v <= hi * 1.5]
        if ticks:
            ax.set_xticks([v for v, _ in ticks], [k for _, k in ticks])
            ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(result.axis.label + (" (s)" if result.axis is Axis.TIME else ""))
    ax.set_ylabel("accuracy")
    chips = result.points[0].accuracy.shape[1] if result.points else 0
    ax.set_title(f"{result.axis.label}: {result.num_images} images, {chips} chips, "
                 f"{len(result.networks)} network(s)", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="major", alpha=0.3)
    return save_figure(fig, path)
