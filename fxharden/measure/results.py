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

The fits use ``fxharden.measure.metrics.fit_midpoint`` and can be redone from ``results.json`` alone
(``load_result(path).refit()``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._files import atomic_write_bytes
from .metrics import FitStatus, MidpointFit, fit_midpoint

__all__ = ["SweepMode", "FORMAT", "RESULTS_JSON", "RESULTS_CSV", "POINTS_FILE", "HEADER_FILE", "SweepPoint", "SweepResult",
           "SweepMismatchError", "PointStore", "fingerprint", "load_result", "versions"]

FORMAT = "fxharden-sweep-v1"
RESULTS_JSON, RESULTS_CSV = "results.json", "results.csv"
POINTS_FILE, HEADER_FILE = "points.jsonl", "sweep.json"

PathLike = Union[str, os.PathLike]


class SweepMode(str, Enum):
    """Where the noise goes."""

    GLOBAL = "global"
    """The same sigma at every (selected) noise site at once; one μ for the network."""
    PER_LAYER = "per_layer"
    """Sigma at one site, 0 elsewhere ("walking noise"); one μ per site."""


def versions() -> Dict[str, str]:
    """Versions of fxharden, torch, numpy and Python (stored with every result)."""
    import torch

    from .. import __version__

    return {"fxharden": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


@dataclass(frozen=True)
class SweepPoint:
    """One noise setting, measured on every network and repeat.

    ``correct[n][r]`` is the number of correctly classified images (out of ``total``) of
    network ``n`` in repeat ``r``.
    """

    site: Optional[str]
    """The noise site (per-layer mode), or ``None`` for global injection."""
    sigma: float
    correct: Tuple[Tuple[int, ...], ...]
    total: int

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracies, shape (networks, repeats)."""
        return np.asarray(self.correct, dtype=np.float64) / max(self.total, 1)

    @property
    def samples(self) -> np.ndarray:
        """The values the uncertainty is taken over: one per network (its mean over
        repeats) when there are several networks, else one per repeat."""
        acc = self.accuracy
        return acc.mean(axis=1) if acc.shape[0] > 1 else acc[0]

    @property
    def mean(self) -> float:
        """Mean accuracy over networks and repeats."""
        return float(self.accuracy.mean())

    @property
    def std(self) -> float:
        """Standard deviation of ``samples`` (0 for a single sample)."""
        s = self.samples
        return float(s.std(ddof=1)) if len(s) > 1 else 0.0

    @property
    def err(self) -> float:
        """Standard error of the mean over ``samples``, floored at the binomial standard
        error of that mean, so points whose repeats agree exactly keep a finite weight."""
        n = len(self.samples)
        a = min(max(self.mean, 0.0), 1.0)
        floor = math.sqrt(max(a * (1 - a), 1.0 / max(self.total, 1)) / max(self.total, 1) / n)
        return max(self.std / math.sqrt(n), floor)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict, with the derived mean/std/err for readers of the file."""
        return {"site": self.site, "sigma": self.sigma, "correct": [list(c) for c in self.correct],
                "total": self.total, "mean": self.mean, "std": self.std, "err": self.err}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepPoint":
        """Inverse of ``to_dict`` (the derived fields are recomputed)."""
        return cls(data["site"], float(data["sigma"]), tuple(tuple(int(v) for v in c) for c in data["correct"]),
                   int(data["total"]))


def _fit_points(points: Sequence[SweepPoint], chance: float, column: Optional[int] = None) -> MidpointFit:
    """Midpoint fit of points (one site, or global), optionally of one network only."""
    pts = sorted((p for p in points if p.sigma > 0), key=lambda p: p.sigma)
    sigmas = np.array([p.sigma for p in pts])
    if column is None:
        acc = np.array([p.mean for p in pts])
        err = np.array([p.err for p in pts])
    else:
        acc = np.array([p.accuracy[column].mean() for p in pts])
        err = np.array([SweepPoint(p.site, p.sigma, (p.correct[column],), p.total).err for p in pts])
    return fit_midpoint(sigmas, acc, err, chance=chance)


@dataclass
class SweepResult:
    """What ``fxharden.sweep`` returns (and ``load_result`` reads back)."""

    mode: SweepMode
    points: List[SweepPoint]
    sites: List[str]
    """Noise sites that received noise (global mode: all of them at once)."""
    clean_accuracy: float
    """Accuracy at sigma 0, mean over networks."""
    clean_accuracies: List[float]
    """Accuracy at sigma 0 of each network."""
    chance: float
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
    """seconds, forwards, images, points_measured, points_reused, images_per_second."""
    versions: Dict[str, str] = field(default_factory=versions)
    fit: Optional[MidpointFit] = None
    """Global mode: the midpoint fit of the mean accuracy curve."""
    network_fits: List[MidpointFit] = field(default_factory=list)
    """Global mode with several networks: one fit per network (their spread is ``mu_spread``)."""
    per_site: Dict[str, MidpointFit] = field(default_factory=dict)
    """Per-layer mode: the midpoint fit of each site."""

    @property
    def sigmas(self) -> List[float]:
        """All measured noise levels, ascending."""
        return sorted({p.sigma for p in self.points})

    def site_points(self, site: Optional[str] = None) -> List[SweepPoint]:
        """The points of one site (``None``: the global points), ascending in sigma."""
        return sorted((p for p in self.points if p.site == site), key=lambda p: p.sigma)

    def curve(self, site: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sigmas, mean accuracy, standard error)`` of one site (``None``: global)."""
        pts = self.site_points(site)
        return (np.array([p.sigma for p in pts]), np.array([p.mean for p in pts]), np.array([p.err for p in pts]))

    @property
    def mu_spread(self) -> Optional[Tuple[float, float]]:
        """Mean and standard deviation of μ across networks (global mode, several networks)."""
        mus = [f.mu for f in self.network_fits if f.ok]
        if len(mus) < 2:
            return None
        return float(np.mean(mus)), float(np.std(mus, ddof=1))

    def ranking(self) -> List[Tuple[str, MidpointFit]]:
        """Per-layer fits, most sensitive first: by fitted μ where there is one, else by the
        crossing estimate; sites whose accuracy never falls half way come last."""
        def key(item: Tuple[str, MidpointFit]) -> float:
            fit = item[1]
            if math.isfinite(fit.mu):
                return fit.mu
            falls = fit.status not in (FitStatus.BEYOND_GRID, FitStatus.AT_CHANCE)
            return fit.mu_crossing if falls and math.isfinite(fit.mu_crossing) else math.inf

        return sorted(self.per_site.items(), key=key)

    def refit(self) -> "SweepResult":
        """(Re)compute the fits from the points; returns ``self``."""
        if self.mode is SweepMode.GLOBAL:
            pts = self.site_points(None)
            self.fit = _fit_points(pts, self.chance) if any(p.sigma > 0 for p in pts) else None
            n_nets = len(pts[0].correct) if pts else 0
            self.network_fits = [_fit_points(pts, self.chance, n) for n in range(n_nets)] if n_nets > 1 else []
            self.per_site = {}
        else:
            self.fit, self.network_fits = None, []
            self.per_site = {s: _fit_points(self.site_points(s), self.chance) for s in self.sites
                             if any(p.sigma > 0 for p in self.site_points(s))}
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
            "timing": self.timing,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepResult":
        """Rebuild a result from ``to_dict`` output (e.g. a ``results.json``).

        Raises:
            ValueError: the dict is not an fxharden sweep result.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError(f"not an fxharden sweep result (expected format {FORMAT!r})")
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
        )

    def to_csv(self) -> str:
        """One row per point: site, sigma, mean/std/err accuracy, then every raw accuracy
        (``net<n>_rep<r>``). The first row is the clean accuracy (sigma 0)."""
        n_nets = len(self.clean_accuracies)
        reps = max((len(p.correct[0]) for p in self.points), default=0)
        raw = [f"net{n}_rep{r}" for n in range(n_nets) for r in range(reps)]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["site", "sigma", "n", "accuracy_mean", "accuracy_std", "accuracy_err", *raw])
        w.writerow(["", 0.0, n_nets, self.clean_accuracy, float(np.std(self.clean_accuracies, ddof=1))
                    if n_nets > 1 else 0.0, "", *[a for a in self.clean_accuracies for _ in range(reps)]])
        for p in sorted(self.points, key=lambda p: (p.site or "", p.sigma)):
            w.writerow([p.site or "", p.sigma, len(p.samples), p.mean, p.std, p.err, *p.accuracy.ravel().tolist()])
        return buf.getvalue()

    def save(self, out: PathLike) -> Dict[str, Path]:
        """Write ``results.json`` and ``results.csv`` into directory ``out`` (atomically)."""
        out = Path(out)
        paths = {"json": out / RESULTS_JSON, "csv": out / RESULTS_CSV}
        text, table = json.dumps(self.to_dict(), indent=1).encode(), self.to_csv().encode()
        atomic_write_bytes(paths["json"], lambda f: f.write(text))
        atomic_write_bytes(paths["csv"], lambda f: f.write(table))
        return paths


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
    return SweepResult.from_dict(data)


# ---------------------------------------------------------------------- resume


class SweepMismatchError(ValueError):
    """The output directory holds a sweep with other settings; it is never mixed in."""


def fingerprint(identity: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``identity``."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _flat(data: Any, prefix: str = "") -> Dict[str, Any]:
    items = data.items() if isinstance(data, Mapping) else enumerate(data) if isinstance(data, list) else None
    if items is None:
        return {prefix.rstrip("."): data}
    out: Dict[str, Any] = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}{k}."))
    return out


class PointStore:
    """The append-only record of finished chunks in a sweep directory.

    Args:
        out: the sweep directory (created if missing).
        identity: everything that determines the measured values; its fingerprint is
            stored in ``sweep.json`` on first use and compared on every later use.

    Raises:
        SweepMismatchError: ``out`` holds a sweep with a different identity (the message
            names what changed).
    """

    def __init__(self, out: PathLike, identity: Mapping[str, Any]) -> None:
        self.dir = Path(out)
        self.path = self.dir / POINTS_FILE
        self.fingerprint = fingerprint(identity)
        header = self.dir / HEADER_FILE
        if header.is_file():
            try:
                stored = json.loads(header.read_text())
            except json.JSONDecodeError:
                stored = {}
            if stored.get("fingerprint") != self.fingerprint:
                old = _flat(stored.get("identity", {}))
                new = _flat(json.loads(json.dumps(identity, sort_keys=True, default=str)))
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["(unreadable)"]
                shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
                raise SweepMismatchError(
                    f"{self.dir} already holds a sweep with different settings (changed: {shown}). "
                    "Its points are never mixed with another configuration: rerun with the original "
                    "settings to resume it, or choose another output directory (or delete this one).")
        else:
            payload = json.dumps({"format": FORMAT, "fingerprint": self.fingerprint, "identity": identity},
                                 indent=1, sort_keys=True, default=str).encode()
            atomic_write_bytes(header, lambda f: f.write(payload))

    def load(self) -> Dict[str, Dict[str, Any]]:
        """The finished chunk records by key. A torn last line is cut off the file."""
        if not self.path.is_file():
            return {}
        raw = self.path.read_bytes()
        records: Dict[str, Dict[str, Any]] = {}
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            records[rec["key"]] = rec
            good += len(line)
        if good != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record (a single write, then fsync)."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
