"""Sweeps along a hardware axis other than the activation σ: the time after programming, the σ
of one weight-noise link, the output-noise σ at conv/linear outputs (``Axis``).

``sweep_axis`` measures top-1 accuracy at every value of the axis, ``repeats`` chips per value
and network, and fits μ along the axis (``AxisResult.refit``). At each value:

* ``time``: every weight-noise link whose model has a field ``t`` gets
  ``dataclasses.replace(model, t=value)`` (``Noise.set_model``); the other links, and the
  activation noise, keep their setting;
* ``weight-sigma``: the link ``link`` gets σ = value (``set_weight_noise``), the rest keep theirs;
* ``output-sigma``: the activation noise sites at conv/linear outputs get σ = value, the rest
  keep theirs.

A repeat is one chip: every weight-noise link draws once per repeat for the whole data set
(``weight_draws_held``, as ``SweepConfig.weight_draws="repeat"``); the repeats of a chunk run
in one forward pass, one batch group each. Chip ``r`` of network ``n`` uses the same random
streams at every value (``seed_noise(model, chunk_seed(seed, n, ...))`` with a key that leaves
the value out): the same programmed chip read at every time, or scaled to every σ, so the
curve's points differ by the axis alone. Models, σ, modes and devices are restored afterwards.
Every finished chunk goes to ``out/points.jsonl`` (``PointStore``): a rerun in the same
directory measures only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .._files import check_writable
from ..core.config import HardenConfig, SiteKind, config_to_dict
from ..core.hardware import HardwareConfig, resolve_hardware
from ..core.harden import HardenedModule, seed_noise, weight_noise_modules
from ..core.calibrate import calibrate_noise, calibrate_quantizers, call_model
from ..core.layers import weight_draws_held
from ..core.noise.verbs import link_modules, noise_modules
from ..zoo.models import ModelLike, resolve_networks
from .axis_result import AXIS_PNG, STANDARD_TIMES, Axis, AxisResult, plot_axis
from .engine import (CALIBRATION_BATCHES, EvalData, chunk_seed, networks_held, replicate, weight_strength,
                     weights_sha256)
from .results import FitOptions, PointStore
from .sweep_points import SweepPoint

__all__ = ["Axis", "AxisConfig", "AxisResult", "sweep_axis", "plot_axis", "STANDARD_TIMES", "DEFAULT_SIGMAS"]

DEFAULT_SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""The default values of the σ axes (the reference σ = 0 is always measured)."""


@dataclass(frozen=True)
class AxisConfig:
    """Everything ``sweep_axis`` needs besides the networks and the data."""

    axis: Axis = Axis.TIME
    values: Optional[Tuple[float, ...]] = None
    """The axis values: seconds after programming (> 0) or σ (>= 0). ``None``:
    ``STANDARD_TIMES`` for time, ``DEFAULT_SIGMAS`` for the σ axes (σ = 0 is always added)."""
    repeats: int = 5
    """Chips per value and network: one weight draw each, for the whole data set."""
    link: str = ""
    """``weight-sigma``: the name of the weight-noise link to sweep (``WeightNoise.name``)."""
    batch_size: int = 256
    max_images: Optional[int] = None
    """Use only the first ``max_images`` images of the data."""
    seed: int = 0
    device: Optional[str] = None
    """``"cpu"``, ``"cuda"``; ``None``: CUDA when available."""
    chance: Optional[float] = None
    """Accuracy of guessing; ``None``: ``1 / number of classes``."""
    forward_images: int = 512
    """The most images in one forward pass, chips included (each chip is a batch group)."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "axis", Axis(self.axis))
        except ValueError:
            raise ValueError(f"axis must be one of {[a.value for a in Axis]}, got {self.axis!r}") from None
        if self.axis is Axis.SIGMA:
            raise ValueError("the activation-σ axis is fxharden.sweep (SweepConfig); sweep_axis takes "
                             f"{[a.value for a in Axis if a is not Axis.SIGMA]}")
        values = self.values
        if values is None:
            values = STANDARD_TIMES if self.axis is Axis.TIME else DEFAULT_SIGMAS
        try:
            values = tuple(sorted({float(v) for v in values}))
        except (TypeError, ValueError):
            raise ValueError(f"values must be numbers, got {self.values!r}") from None
        low = 0.0 if self.axis is not Axis.TIME else None
        if not values or any(v != v or v in (float("inf"),) for v in values) or \
                (low is None and values[0] <= 0) or (low is not None and values[0] < 0):
            what = "times after programming > 0 s" if self.axis is Axis.TIME else "σ values >= 0"
            raise ValueError(f"values must be a non-empty list of finite {what}, got {self.values!r}")
        if self.axis is not Axis.TIME:
            values = tuple(sorted({0.0, *values}))
        if len(values) < 2:
            raise ValueError(f"a sweep along {self.axis.value} needs at least 2 values, got {list(values)}")
        object.__setattr__(self, "values", values)
        for name, low_int in (("repeats", 1), ("batch_size", 1), ("forward_images", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low_int:
                raise ValueError(f"{name} must be an integer >= {low_int}, got {v!r}")
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 1):
            raise ValueError(f"max_images must be an integer >= 1, got {self.max_images!r}")
        if self.chance is not None and not 0 <= self.chance < 1:
            raise ValueError(f"chance must be in [0, 1), got {self.chance}")
        if self.link and self.axis is not Axis.WEIGHT_SIGMA:
            raise ValueError(f"link= names the weight-noise link of a weight-sigma sweep; the {self.axis.value} "
                             "axis takes none")

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "axis": self.axis.value, "values": list(self.values)}


def _has_time(model: Any) -> bool:
    return dataclasses.is_dataclass(model) and any(f.name == "t" for f in dataclasses.fields(model))


class _Axis:
    """Sets one network to a value of the axis and back."""

    def __init__(self, hm: HardenedModule, cfg: AxisConfig) -> None:
        self.cfg, self.hm = cfg, hm
        self.weights = weight_noise_modules(hm)
        self.models = {site: m.model for site, m in self.weights.items()}
        # each weight link's own strength: its current setting (one value), or the configured one
        self.strength = {site: weight_strength(hm, m) for site, m in self.weights.items()}
        self.activations = noise_modules(hm)
        kinds = {s.name: s.kind for s in hm.report.sites}
        self.outputs = [s for s in self.activations if kinds.get(s) in (SiteKind.CONV.value, SiteKind.LINEAR.value)]
        self.timed = [site for site, model in self.models.items() if _has_time(model)]
        self.swept = self._swept()

    def _swept(self) -> List[str]:
        axis = self.cfg.axis
        if axis is Axis.TIME:
            if not self.timed:
                models = sorted({m.name for m in self.models.values()}) or ["none"]
                raise ValueError(f"a time sweep needs weight noise whose model has a time field t (e.g. PCM); this "
                                 f"network's weight-noise models are {', '.join(models)}: harden it with "
                                 "HardenConfig(weight_noise=(WeightNoise(PCM(), 1.0),)) or hardware='pcm'")
            return self.timed
        if axis is Axis.WEIGHT_SIGMA:
            return list(link_modules(self.hm, self.cfg.link, "a weight-sigma sweep"))
        if not self.outputs:
            raise ValueError("an output-sigma sweep needs noise sites at conv/linear outputs; this network has none "
                             "(its noise kinds leave them out): harden it with NoiseConfig(kinds=...) holding "
                             "conv and linear, or hardware='analog-tile'")
        return self.outputs

    def set(self, value: float, chips: int) -> None:
        """The network at axis value ``value``, one batch group per chip (one weight draw each)."""
        axis = self.cfg.axis
        for site, mod in self.weights.items():
            if axis is Axis.TIME and site in self.swept:
                mod.set_model(dataclasses.replace(self.models[site], t=value))
            s = value if axis is Axis.WEIGHT_SIGMA and site in self.swept else self.strength[site]
            mod.set_sigma([s] * chips if s > 0 and chips > 1 else s)
        if axis is Axis.OUTPUT_SIGMA:
            for site in self.swept:
                self.activations[site].set_sigma(value)

    def restore(self) -> None:
        for site, mod in self.weights.items():
            mod.set_model(self.models[site])


def _key(axis: Axis, value: float, start: int, chips: int) -> str:
    return hashlib.sha256(json.dumps([axis.value, repr(float(value)), start, chips]).encode()).hexdigest()[:32]


def _count(hm: HardenedModule, data: EvalData, chips: int, forward_images: int) -> List[int]:
    """Correct top-1 counts of each chip (batch group) over the whole data set."""
    correct = torch.zeros(chips, dtype=torch.long, device=data.device)
    step = max(1, forward_images // chips)
    for batch, labels in data:
        for x, y in zip(batch.split(step), labels.split(step)):
            out = call_model(hm, replicate(x, chips))
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise TypeError("sweep_axis measures top-1 accuracy: the model must return logits (batch, classes), "
                                f"got {type(out).__name__}{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}")
            correct += (out.argmax(1).view(chips, -1) == y).sum(1)
    return correct.tolist()


def sweep_axis(
    model: Union[ModelLike, Sequence[ModelLike], Mapping[str, ModelLike]],
    data: Any,
    axis: Union[Axis, str] = Axis.TIME,
    values: Optional[Sequence[float]] = None,
    repeats: int = 5,
    *,
    config: Optional[AxisConfig] = None,
    harden_config: Optional[HardenConfig] = None,
    hardware: Union[HardwareConfig, str, os.PathLike, None] = None,
    out: Union[str, os.PathLike, None] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    fit_options: Optional[FitOptions] = None,
    **config_kwargs: Any,
) -> AxisResult:
    """Measure top-1 accuracy along a hardware axis and fit μ along it (module doc).

    Args:
        model: a plain model (hardened here with ``harden_config`` and ``hardware``), a
            ``HardenedModule``, a checkpoint path, or a list or ``{label: model}`` dict of them.
        data: evaluation data, as for ``fxharden.sweep`` (images and class-index targets).
        axis: ``"time"`` (default), ``"weight-sigma"`` or ``"output-sigma"``.
        values: the axis values (default: 1 s, 1 h, 1 day, 1 month, 1 yr for time; a σ grid
            for the σ axes, which always measure σ = 0 too).
        repeats: chips per value and network.
        config: a full ``AxisConfig``; excludes ``axis``, ``values``, ``repeats`` and ``config_kwargs``.
        harden_config: how a plain model is hardened (default: noise sites only).
        hardware: a ``HardwareConfig``, a preset name (``"pcm"``, ``"aihwkit-inference"``,
            ``"analog-tile"``) or a TOML file, applied on top of ``harden_config`` (plain models only).
        out: directory for ``points.jsonl`` (resumable), ``axis_results.json``/``.csv`` and the plot.
        progress: called as ``progress(done, total)`` after every chunk (points measured).
        fit_options: how μ is fitted (``FitOptions``).
        **config_kwargs: other ``AxisConfig`` fields (``link``, ``seed``, ``max_images``, ...).

    Returns:
        An ``AxisResult``: one point per value, the fit along the axis.

    Raises:
        ValueError: a bad setting; a time sweep of a network without a time-dependent weight
            model; a weight-sigma sweep of a link the network does not have; an output-sigma
            sweep of a network without noise at conv/linear outputs; ``out`` holding another sweep.
    """
    if config is None:
        config = AxisConfig(axis=axis, values=tuple(values) if values is not None else None, repeats=repeats,
                            **config_kwargs)
    elif values is not None or repeats != 5 or config_kwargs or Axis(axis) is not Axis.TIME:
        raise ValueError("pass either config=AxisConfig(...) or the keyword form (axis, values, repeats, ...), "
                         "not both")
    if hardware is not None:
        harden_config = resolve_hardware(hardware).harden_config(harden_config)
    from ..devices import resolve_device

    cfg, dev, t0 = config, resolve_device(config.device), time.perf_counter()
    data = EvalData(data, cfg.batch_size, cfg.max_images, dev)
    labelled = resolve_networks(model, harden_config, example_inputs=data.example())
    nets = [hm for _, hm in labelled]
    axes: List[_Axis] = []
    measured = reused = 0
    with networks_held(nets, dev), contextlib.ExitStack() as put_back:
        put_back.callback(lambda: [ax.restore() for ax in axes])  # the models each axis replaced
        axes = [_Axis(hm, cfg) for hm in nets]
        classes, first = 0, data.example()
        for hm in nets:  # the steps and RMS never calibrated, on the first batches (as fxharden.sweep does)
            calibrate_quantizers(hm, data)
            calibrate_noise(hm, data, max_batches=CALIBRATION_BATCHES, force=False)
            with torch.inference_mode():
                classes = call_model(hm, first).shape[-1]
        chance = cfg.chance if cfg.chance is not None else 1.0 / classes
        identity = {"format": "fxharden-axis-sweep-v1", "settings": {**cfg.to_dict(), "device": dev.type},
                    "data": data.identity, "networks": [{"harden": config_to_dict(hm.harden_config),
                                                         "weights_sha256": weights_sha256(hm)} for hm in nets]}
        store, done = None, {}
        if out is not None:
            check_writable(out)
            store = PointStore(out, identity)
            done = store.load()
        chunk = max(1, min(cfg.repeats, cfg.forward_images))
        starts = list(range(0, cfg.repeats, chunk))
        counts = {v: [[0] * cfg.repeats for _ in nets] for v in cfg.values}
        total, finished = len(cfg.values) * len(nets) * len(starts), 0
        for value in cfg.values:
            for n, (hm, ax) in enumerate(zip(nets, axes)):
                for start in starts:
                    chips = min(chunk, cfg.repeats - start)
                    key = f"{_key(cfg.axis, value, start, chips)}/{n}"
                    rec = done.get(key)
                    if rec is not None and rec.get("total") == data.num_images:
                        got, reused = rec["correct"], reused + 1
                    else:
                        ax.set(value, chips)
                        # the same streams at every value: chip r is one programmed chip along the axis
                        seed_noise(hm, chunk_seed(cfg.seed, n, f"{cfg.axis.value}/chips/{start}/{chips}"))
                        with torch.inference_mode(), weight_draws_held(hm):
                            got = _count(hm, data, chips, cfg.forward_images)
                        measured += 1
                        if store is not None:
                            store.append({"key": key, "value": value, "chips": [start, chips], "correct": got,
                                          "total": data.num_images})
                    counts[value][n][start:start + chips] = [int(c) for c in got]
                    finished += 1
                    if progress is not None:
                        progress(finished, total)
    points = [SweepPoint(None, v, tuple(tuple(c) for c in counts[v]), data.num_images) for v in cfg.values]
    result = AxisResult(
        axis=cfg.axis, points=points, chance=chance, num_images=data.num_images, networks=[lb for lb, _ in labelled],
        config={**cfg.to_dict(), "device": dev.type}, harden_configs=[n["harden"] for n in identity["networks"]],
        link=cfg.link if cfg.axis is Axis.WEIGHT_SIGMA else "",
        time_links=list(axes[0].timed) if cfg.axis is Axis.TIME else [],
        identity={"data": data.identity, "weights_sha256": [n["weights_sha256"] for n in identity["networks"]]},
        fingerprint=store.fingerprint if store is not None else "",
        seeding="seed_noise(model, chunk_seed(seed, network, axis/chips/start/count)) before every chunk, the same "
                "at every value: chip r is one programmed chip along the axis; weight noise drawn once per chip",
        timing={"seconds": time.perf_counter() - t0, "chunks_measured": measured, "chunks_reused": reused},
    ).refit(fit_options)
    if out is not None:
        result.save(out)
        plot_axis(result, os.path.join(out, AXIS_PNG))
    return result
