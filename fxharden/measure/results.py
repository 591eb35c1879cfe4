"""Sweep results: the measured points, their fits, the files they are kept in, and resume.

A sweep directory holds:

* ``sweep.json``   the identity of the sweep (settings, harden configs, a hash of each
  network's weights and of the data) and its fingerprint, written once, atomically;
* ``points.jsonl`` one line per finished chunk of points (correct counts per group, and the
  seconds its forward passes took), appended
  and fsynced as the sweep goes; a sweep that is run again in the same directory reads it and
  measures only what is missing, a torn last line (a kill mid-write) is dropped;
* ``results.json`` everything needed to redo the fits and plots, ``results.csv`` one row per
  point (both written atomically at the end).

The fits use ``fxharden.measure.midpoint.fit_midpoint`` and can be redone from ``results.json`` alone
(``load_result(path).refit()``). The points and μ's bootstrap (networks, repeats and images
redrawn) live in ``fxharden.measure.sweep_points``; both are re-exported here. The sweep's
mode, units and fit options are ``fxharden.measure.options``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._files import atomic_write_bytes
from .midpoint import MidpointFit, MidpointModel, fit_midpoint
from .options import FitOptions, SweepMode, Units
from .resume import FORMAT, HEADER_FILE, POINTS_FILE, PointStore, SweepMismatchError, fingerprint
from .sweep_points import SweepPoint, bootstrap_curves, draw_replicas, image_share

__all__ = ["bootstrap_curves", "image_share", "FORMAT", "RESULTS_JSON", "RESULTS_CSV", "POINTS_FILE", "HEADER_FILE",
           "SweepPoint", "SweepResult", "SweepMismatchError", "PointStore", "fingerprint", "load_result", "versions"]

RESULTS_JSON, RESULTS_CSV = "results.json", "results.csv"

PathLike = Union[str, os.PathLike]


def versions() -> Dict[str, str]:
    """Versions of fxharden, torch, numpy and Python (stored with every result)."""
    import torch

    from .. import __version__

    return {"fxharden": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _fit_points(points: Sequence[SweepPoint], chance: float, plateau: Optional[Tuple[float, float]],
                options: FitOptions, model: MidpointModel, column: Optional[int] = None,
                bootstrap: bool = True, num_images: Optional[int] = None) -> MidpointFit:
    """Midpoint fit of points (one site, or global), optionally of one network only; the
    bootstrap redraws networks, repeats and images (``sweep_points.draw_replicas``)."""
    pts = sorted((p for p in points if p.sigma > 0), key=lambda p: p.sigma)
    if column is not None:
        pts = [SweepPoint(p.site, p.sigma, (p.correct[column],), p.total) if p.scores is None else
               SweepPoint(p.site, p.sigma, (), p.total, (p.scores[column],), (p.values[column],)) for p in pts]
    sigmas = np.array([p.sigma for p in pts])
    acc = np.array([p.mean for p in pts])
    dy = np.array([p.dy for p in pts])
    tie = plateau if options.tie_a_max else None
    clean = (tie[0], num_images) if tie is not None and num_images == (pts[0].total if pts else None) else None
    drawn = draw_replicas(pts, options.n_boot, options.seed, images=options.images, clean=clean) if bootstrap else None
    reps, plateaus = drawn if drawn is not None else (None, None)
    return fit_midpoint(sigmas, acc, dy, chance=chance, model=model, plateau=tie, replicas=reps,
                        plateau_replicas=plateaus, systematic=options.systematic, seed=options.seed)


@dataclass
class SweepResult:
    """What ``fxharden.sweep`` returns (and ``load_result`` reads back)."""

    mode: SweepMode
    points: List[SweepPoint]
    sites: List[str]
    """Noise sites that received noise (global mode: all of them at once)."""
    clean_accuracy: float
    """Top-1: the accuracy at sigma 0, mean over networks. Other metrics: the clean *fit score*
    (``[0, 1]``, 0 at the floor), not the metric's value; the name is kept for top-1 and for
    the files, and is deprecated for other metrics: read ``clean_fit`` (the fit scale) or
    ``clean_raw`` (the metric's own value)."""
    clean_accuracies: List[float]
    """``clean_accuracy`` of each network (fit scale; raw: ``clean_raw_values``)."""
    chance: float
    """The floor on the fit scale: chance for accuracies, 0 for other metrics (raw: ``floor_raw``)."""
    num_images: int
    networks: List[str]
    """A label per network (its checkpoint path or model class)."""
    config: Dict[str, Any]
    """The sweep settings (``SweepConfig`` as a dict)."""
    harden_configs: List[Dict[str, Any]]
    """``config_to_dict`` of each network's harden config."""
    seed: int
    seeding: str
    """How the noise of every point was seeded (see ``fxharden.sweep``)."""
    fingerprint: str = ""
    timing: Dict[str, float] = field(default_factory=dict)
    """seconds, forwards, images, points_measured, points_reused, images_per_second;
    eval_seconds (every measured chunk, the clean pass included), points_seconds (the chunks
    of sweep points only: ``points_seconds / points_measured`` is the cost of one point)."""
    versions: Dict[str, str] = field(default_factory=versions)
    fit: Optional[MidpointFit] = None
    """Global mode: the midpoint fit of the mean accuracy curve."""
    network_fits: List[MidpointFit] = field(default_factory=list)
    """Global mode with several networks: one fit per network (their spread is ``mu_spread``)."""
    per_site: Dict[str, MidpointFit] = field(default_factory=dict)
    """Per-layer mode: the midpoint fit of each site."""
    fit_options: FitOptions = field(default_factory=FitOptions)
    """How ``fit``, ``network_fits`` and ``per_site`` were made (their model is the quoted one)."""
    other_fit: Optional[MidpointFit] = None
    """Global mode: the same curve fitted with the other model (Eq. 1 beside the log one), for comparison."""
    other_per_site: Dict[str, MidpointFit] = field(default_factory=dict)
    """Per-layer mode: each site fitted with the other model, for comparison."""
    site_kinds: Dict[str, str] = field(default_factory=dict)
    """The kind (``SiteKind`` value) of every swept site, in network order."""
    units: Units = Units.ABSOLUTE
    """The unit of the sweep's σ grid and of its fits."""
    site_rms: Dict[str, float] = field(default_factory=dict)
    """Clean RMS of the signal at every swept site (mean over networks), the conversion
    between the units: σ_abs = σ_rel · rms_site."""
    metric: str = "top1"
    """What was measured (``fxharden.measure.scores``). Other than top-1, ``clean_accuracy``,
    ``chance`` and the points' ``accuracy`` are fit scores in ``[0, 1]`` (0 at the floor):
    ``clean_fit``, ``curve`` and ``SweepPoint.fit_scores`` name them so; the metric's own
    values are ``clean_raw``, ``floor_raw``, ``raw_curve`` and ``SweepPoint.raw_values``
    (stored in the points' ``values`` and in ``metric_info``)."""
    metric_info: Dict[str, Any] = field(default_factory=dict)
    """Other metrics: ``ideal``, ``floor`` (and whether it was measured), ``higher_is_better``,
    ``clean_values`` (per network, the metric's own scale), ``log_scale``."""
    provenance: Dict[str, Any] = field(default_factory=dict)
    """Where the inputs came from, as the caller stated it (the CLI: ``{"preprocess": {input_size,
    mean, std, crop_pct, interpolation, origin}, "weights": [one per network], "data": note}``);
    empty when not given and in older results."""
    identity: Dict[str, Any] = field(default_factory=dict)
    """What the values were measured on: ``{"data": {images, labels_sha256, inputs_sum},
    "weights_sha256": [one per network]}`` (``engine.EvalData.identity``,
    ``engine.weights_sha256``); empty in results written before it was recorded (``load_result``
    then reads it from the sweep's ``sweep.json`` when that is beside the file)."""

    @property
    def clean_fit(self) -> float:
        """The clean score on the fit scale (``clean_accuracy``): the accuracy for top-1, top-5 and
        token accuracy, otherwise the metric mapped to ``[0, 1]`` (0 at the floor, 1 at the ideal)."""
        return self.clean_accuracy

    @property
    def clean_raw_values(self) -> List[float]:
        """The metric's own clean value of each network (top-1: the accuracy)."""
        if self.metric == "top1":
            return list(self.clean_accuracies)
        return [float(v) for v in self.metric_info.get("clean_values", [math.nan])]

    @property
    def clean_raw(self) -> float:
        """The metric's own clean value (loss, perplexity, a callable's mean score; top-1: the
        accuracy), mean over networks."""
        return float(np.mean(self.clean_raw_values))

    @property
    def floor_raw(self) -> float:
        """The metric's floor in its own scale (top-1: ``chance``; measured or stated for others)."""
        if self.metric == "top1":
            return self.chance
        return float(self.metric_info.get("floor", math.nan))

    @property
    def rms_ref(self) -> float:
        """Reference RMS of global noise: ``sqrt(mean over swept sites of rms²)`` (NaN without
        RMS values). A global σ converts as σ_abs = σ_rel · rms_ref: the same total noise
        power relative to the total clean signal power of the sites."""
        values = [self.site_rms[s] for s in self.sites if s in self.site_rms]
        return math.sqrt(float(np.mean(np.square(values)))) if values else math.nan

    def mu_in(self, units: Units, site: Optional[str] = None) -> Tuple[float, float]:
        """``(μ, error)`` of the global fit (``site=None``) or of a site's fit, in ``units``.

        A site's μ converts exactly with its RMS (noise at one site has std σ_rel · rms_site =
        σ_abs either way). The global μ in the sweep's own units is the measured one; in the
        other units it is the equal-noise-power rescaling :attr:`mu_equal_power` (by
        ``rms_ref``), not a μ measured in those units: a relative sweep gives each site noise in
        proportion to its own RMS, an absolute sweep the same σ at every site. NaN without RMS.
        """
        fit = self.fit if site is None else self.per_site.get(site)
        if fit is None:
            return math.nan, math.nan
        rms = self.rms_ref if site is None else self.site_rms.get(site, math.nan)
        factor = 1.0 if Units(units) is self.units else (rms if self.units is Units.RELATIVE else 1.0 / rms)
        return fit.mu * factor, fit.mu_err * factor

    @property
    def mu_abs(self) -> Tuple[float, float]:
        """Global μ and its error as measured in absolute units; NaN for a relative sweep (its
        absolute-unit value is the rescaling :attr:`mu_equal_power`, not a measured μ_abs)."""
        return self.mu_in(Units.ABSOLUTE) if self.units is Units.ABSOLUTE else (math.nan, math.nan)

    @property
    def mu_rel(self) -> Tuple[float, float]:
        """Global μ and its error as measured relative to each site's clean RMS; NaN for an
        absolute sweep (see :attr:`mu_equal_power`)."""
        return self.mu_in(Units.RELATIVE) if self.units is Units.RELATIVE else (math.nan, math.nan)

    @property
    def equal_power_units(self) -> Units:
        """The units :attr:`mu_equal_power` is in: the other one than the sweep's."""
        return Units.ABSOLUTE if self.units is Units.RELATIVE else Units.RELATIVE

    @property
    def mu_equal_power(self) -> Tuple[float, float]:
        """Global μ rescaled to :attr:`equal_power_units` at equal total noise power: the
        uniform σ whose noise power, relative to the sites' total clean power, equals that of
        the measured μ (σ_abs = σ_rel · ``rms_ref``). A rescaling of the measured μ, not a
        measurement: an absolute sweep of the same network gives a different μ whenever the
        sites' RMS differ (NaN without RMS values or a global fit)."""
        return self.mu_in(self.equal_power_units)

    @property
    def sigmas(self) -> List[float]:
        """All measured noise levels, ascending."""
        return sorted({p.sigma for p in self.points})

    def site_points(self, site: Optional[str] = None) -> List[SweepPoint]:
        """The points of one site (``None``: the global points), ascending in sigma."""
        return sorted((p for p in self.points if p.site == site), key=lambda p: p.sigma)

    def curve(self, site: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sigmas, mean accuracy, Δy)`` of one site (``None``: global), on the fit scale; Δy
        is the error the fits use (``SweepPoint.dy``). The metric's own values: ``raw_curve``."""
        pts = self.site_points(site)
        return (np.array([p.sigma for p in pts]), np.array([p.mean for p in pts]), np.array([p.dy for p in pts]))

    def raw_curve(self, site: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
        """``(sigmas, mean value)`` of one site (``None``: global) in the metric's own scale."""
        pts = self.site_points(site)
        return np.array([p.sigma for p in pts]), np.array([p.raw_mean for p in pts])

    @property
    def has_clean_point(self) -> bool:
        """False for a matched (noisy-training) curve (``config["matched"]``): every point is its
        own network, trained and measured at that σ, so the curve has no σ = 0 point (its
        ``clean_accuracy`` only anchors the fit's upper plateau) and none is written or drawn."""
        return not self.config.get("matched", False)

    @property
    def clean_err(self) -> float:
        """Error of ``clean_accuracy`` as the fits use it: the spread across networks (several),
        floored at the binomial error of one network's accuracy on ``num_images`` images."""
        a = min(max(self.clean_accuracy, 0.0), 1.0)
        floor = math.sqrt(max(a * (1 - a), 1.0 / max(self.num_images, 1)) / max(self.num_images, 1))
        n = len(self.clean_accuracies)
        return max(float(np.std(self.clean_accuracies, ddof=1)) if n > 1 else 0.0, floor)

    @property
    def mu_spread(self) -> Optional[Tuple[float, float]]:
        """Mean and standard deviation of μ across networks (global mode, several networks)."""
        mus = [f.mu for f in self.network_fits if f.ok]
        if len(mus) < 2:
            return None
        return float(np.mean(mus)), float(np.std(mus, ddof=1))

    def ranking(self) -> List[Tuple[str, MidpointFit]]:
        """Per-layer fits, most sensitive first, by the value each quotes (``MidpointFit.quote``:
        μ, else the marked crossing); sites beyond the grid or with nothing to quote come last."""
        return sorted(self.per_site.items(), key=lambda item: item[1].quote().sort_key)

    def refit(self, options: Optional[FitOptions] = None) -> "SweepResult":
        """(Re)compute the fits from the points (with ``options``, which are then kept);
        returns ``self``."""
        if options is not None:
            self.fit_options = options
        opt = self.fit_options
        other = MidpointModel.PAPER if opt.model is MidpointModel.LOG else MidpointModel.LOG
        plateau = (self.clean_accuracy, self.clean_err)

        def fit(site: Optional[str], model: MidpointModel, boot: bool) -> Optional[MidpointFit]:
            pts = self.site_points(site)
            if not any(p.sigma > 0 for p in pts):
                return None
            return _fit_points(pts, self.chance, plateau, opt, model, bootstrap=boot, num_images=self.num_images)

        if self.mode is SweepMode.GLOBAL:
            pts = self.site_points(None)
            self.fit, self.other_fit = fit(None, opt.model, True), fit(None, other, False)
            n_nets = len(pts[0].correct) if pts else 0
            self.network_fits = [
                _fit_points(pts, self.chance, (a, self.clean_err), opt, opt.model, column=n, bootstrap=False)
                for n, a in enumerate(self.clean_accuracies)] if n_nets > 1 else []
            self.per_site, self.other_per_site = {}, {}
        else:
            self.fit, self.other_fit, self.network_fits = None, None, []
            sites = [s for s in self.sites if any(p.sigma > 0 for p in self.site_points(s))]
            self.per_site = {s: fit(s, opt.model, True) for s in sites}
            self.other_per_site = {s: fit(s, other, False) for s in sites}
        return self

    # ------------------------------------------------------------------ files

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict (inverse: ``SweepResult.from_dict``)."""
        return {
            "format": FORMAT, "versions": self.versions, "mode": self.mode.value, "config": self.config,
            "harden_configs": self.harden_configs, "networks": self.networks, "seed": self.seed,
            "seeding": self.seeding, "fingerprint": self.fingerprint, "chance": self.chance,
            "num_images": self.num_images, "clean_accuracy": self.clean_accuracy,
            "clean_accuracies": self.clean_accuracies, "sites": self.sites,
            "points": [p.to_dict() for p in self.points],
            "fit": self.fit.to_dict() if self.fit is not None else None,
            "network_fits": [f.to_dict() for f in self.network_fits],
            "per_site": {s: f.to_dict() for s, f in self.per_site.items()},
            "fit_options": self.fit_options.to_dict(),
            "other_fit": self.other_fit.to_dict() if self.other_fit is not None else None,
            "other_per_site": {s: f.to_dict() for s, f in self.other_per_site.items()},
            "site_kinds": self.site_kinds, "units": self.units.value, "site_rms": self.site_rms,
            **self._mu_fields(), "timing": self.timing,
            **({"metric": self.metric, "metric_info": self.metric_info} if self.metric != "top1" else {}),
            "identity": self.identity, "provenance": self.provenance,
        }

    def _mu_fields(self) -> Dict[str, Any]:
        """The derived μ entries of ``results.json``: the measured global μ under its own unit's
        key (``mu_abs`` or ``mu_rel``; the other is None) and the equal-power rescaling. Files
        of earlier versions hold a converted value under the other key; it is never read back."""
        if self.fit is None:
            return {"mu_abs": None, "mu_rel": None, "mu_equal_power": None}
        measured = [_num(x) for x in self.mu_in(self.units)]
        return {"mu_abs": measured if self.units is Units.ABSOLUTE else None,
                "mu_rel": measured if self.units is Units.RELATIVE else None,
                "mu_equal_power": {"units": self.equal_power_units.value,
                                   "mu": [_num(x) for x in self.mu_equal_power], "rms_ref": _num(self.rms_ref)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepResult":
        """Rebuild a result from ``to_dict`` output (e.g. a ``results.json``).

        Raises:
            ValueError: the dict is not an fxharden sweep result.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError(f"not an fxharden sweep result (expected format {FORMAT!r})")
        stored = [data.get("fit")] + list(data.get("per_site", {}).values())
        if any(f is not None and "model" not in f for f in stored):
            # written before the log-sigma model existed: its points are all there, so the
            # fits are redone with today's defaults rather than shown as they were
            data = {k: v for k, v in data.items() if k not in ("fit", "network_fits", "per_site")}
            return cls.from_dict(data).refit()
        return cls(
            mode=SweepMode(data["mode"]), points=[SweepPoint.from_dict(p) for p in data["points"]], sites=list(data["sites"]),
            clean_accuracy=float(data["clean_accuracy"]), clean_accuracies=list(data["clean_accuracies"]),
            chance=float(data["chance"]), num_images=int(data["num_images"]), networks=list(data["networks"]),
            config=dict(data["config"]), harden_configs=list(data["harden_configs"]), seed=int(data["seed"]),
            seeding=data["seeding"], fingerprint=data.get("fingerprint", ""), timing=dict(data.get("timing", {})),
            versions=dict(data.get("versions", {})),
            fit=MidpointFit.from_dict(data["fit"]) if data.get("fit") else None,
            network_fits=[MidpointFit.from_dict(f) for f in data.get("network_fits", [])],
            per_site={s: MidpointFit.from_dict(f) for s, f in data.get("per_site", {}).items()},
            fit_options=FitOptions.from_dict(data.get("fit_options")),
            other_fit=MidpointFit.from_dict(data["other_fit"]) if data.get("other_fit") else None,
            other_per_site={s: MidpointFit.from_dict(f) for s, f in data.get("other_per_site", {}).items()},
            site_kinds=dict(data.get("site_kinds", {})), units=Units(data.get("units", "absolute")),
            site_rms={k: float(v) for k, v in data.get("site_rms", {}).items()},
            metric=data.get("metric", "top1"), metric_info=dict(data.get("metric_info", {})),
            identity=dict(data.get("identity") or {}), provenance=dict(data.get("provenance") or {}),
        )

    def to_csv(self) -> str:
        """One row per point: site, sigma, mean/std/err accuracy, then every raw accuracy
        (``net<n>_rep<r>``). The first row is the clean accuracy (sigma 0), except for a
        curve without one (``has_clean_point``). Other metrics: the same columns hold the fit
        scores, and a last column the metric's mean value."""
        n_nets = len(self.clean_accuracies)
        reps = max((p.accuracy.shape[1] for p in self.points), default=0)
        raw = [f"net{n}_rep{r}" for n in range(n_nets) for r in range(reps)]
        extra = self.metric != "top1"
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["site", "sigma", "n", "accuracy_mean", "accuracy_std", "accuracy_err", *raw]
                   + ([f"{self.metric}_mean"] if extra else []))
        if self.has_clean_point:
            w.writerow(["", 0.0, n_nets, self.clean_accuracy, float(np.std(self.clean_accuracies, ddof=1))
                        if n_nets > 1 else 0.0, "", *[a for a in self.clean_accuracies for _ in range(reps)]]
                       + ([float(np.mean(self.metric_info.get("clean_values", [math.nan])))] if extra else []))
        for p in sorted(self.points, key=lambda p: (p.site or "", p.sigma)):
            w.writerow([p.site or "", p.sigma, len(p.samples), p.mean, p.std, p.err, *p.accuracy.ravel().tolist()]
                       + ([float(np.mean(p.values))] if extra and p.values else []))
        return buf.getvalue()

    def save(self, out: PathLike) -> Dict[str, Path]:
        """Write ``results.json`` and ``results.csv`` into directory ``out`` (atomically)."""
        out = Path(out)
        paths = {"json": out / RESULTS_JSON, "csv": out / RESULTS_CSV}
        text, table = json.dumps(self.to_dict(), indent=1).encode(), self.to_csv().encode()
        atomic_write_bytes(paths["json"], lambda f: f.write(text))
        atomic_write_bytes(paths["csv"], lambda f: f.write(table))
        return paths


def _num(x: float) -> Optional[float]:
    return None if math.isnan(x) else float(x)


def load_result(path: PathLike) -> SweepResult:
    """Read a ``results.json`` (or the directory holding one).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an fxharden sweep result.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no sweep result at {path}; run `fxharden sweep ... --out DIR` first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); was it written by fxharden sweep?") from None
    result = SweepResult.from_dict(data)
    if not result.identity:
        result.identity = _header_identity(path.parent / HEADER_FILE, result.fingerprint)
    return result


def _header_identity(header: Path, fp: str) -> Dict[str, Any]:
    """``SweepResult.identity`` from the ``sweep.json`` of the same sweep (older results lack
    it); empty when there is none or it belongs to another sweep."""
    try:
        stored = json.loads(header.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    ident = stored.get("identity") or {}
    if not fp or stored.get("fingerprint") != fp or "data" not in ident:
        return {}
    return {"data": ident["data"], "weights_sha256": [n.get("weights_sha256", "") for n in ident.get("networks", [])]}
