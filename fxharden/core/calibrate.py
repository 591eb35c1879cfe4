"""Calibration on clean data: ``calibrate_quantizers`` fixes the statistics-based steps of a
model that has not seen training data, ``calibrate_noise`` measures every noise site's clean
signal RMS, the reference of relative noise (``NoiseKind.RELATIVE``) and of sweeps in relative
units. Both run the model in eval mode, without gradients and with all noise off, and skip
empty batches (batch size 0) with a warning. ``calibrate_quantizers`` also checks once how
every activation quantizer uses its grid on the data, and warns when a step erases the signal
or clips it (``fxharden.core.quant.GridUsage``; ``HardenReport.quant_warnings``). An input
quantizer with a statistics-based step takes the unsigned grid when every calibration value is
>= 0 (its report row says so)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import warnings
from typing import Any, Dict, Iterable, Optional

import torch
from torch import Tensor, nn

from .hardened import HardenedModule
from .module_route import LayerSite
from .noise import Noise, Role
from .noise.verbs import noise_modules, noise_off
from .passes import CONTAINER, key_for
from .quant import CLIP_FRACTION, FEW_LEVELS, ActQuant, GridWarning

GRID_CHECK_BATCHES = 8
"""Batches ``calibrate_quantizers`` checks the grid use on when no step waits for data
(constant or already calibrated steps) and ``max_batches`` is not given."""

_ROLES = {"quant": "quantizer", "adc": "ADC", "dac": "DAC"}
"""The roles of a site's activation quantizers (container key suffix: word in messages)."""

__all__ = ["calibrate_noise", "calibrate_quantizers", "site_rms", "call_model"]


def _inputs(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``; a dict of inputs (``input_ids``, ``attention_mask``) is passed by
    keyword, a tuple or list positionally."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _empty(inputs: Any) -> bool:
    """Whether a batch's inputs have batch size 0: every tensor among them (the inputs, or
    the values of a tuple, list or dict of inputs) has a first dimension of 0."""
    values = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (tuple, list)) else [inputs]
    tensors = [v for v in values if isinstance(v, Tensor)]
    return bool(tensors) and all(t.dim() > 0 and t.shape[0] == 0 for t in tensors)


def _run_clean(model: nn.Module, data: Iterable[Any], max_batches: Optional[int], what: str,
               warn_empty: bool = True) -> int:
    """Run ``model`` on at most ``max_batches`` non-empty batches of ``data`` in eval mode,
    without gradients and with every noise off; mode and noise are restored. Empty batches
    (batch size 0) are skipped, with one warning (``warn_empty``). Returns the batch count."""
    training, batches, empty = model.training, 0, 0
    try:
        with noise_off(model), torch.no_grad():
            model.eval()
            for batch in data:
                if max_batches is not None and batches >= max_batches:
                    break
                inputs = _inputs(batch)
                if _empty(inputs):
                    empty += 1
                    continue
                call_model(model, inputs)
                batches += 1
    finally:
        model.train(training)
    if batches == 0 and empty:
        raise ValueError(f"{what} saw no data: all {empty} of its batches were empty (batch size 0); pass "
                         "batches with at least one sample (a DataLoader or a list of input batches)")
    if batches == 0:
        raise ValueError(f"{what} got no data; pass a DataLoader or a list of input batches")
    if empty and warn_empty:
        warnings.warn(f"{what} skipped {empty} empty batch{'es' if empty > 1 else ''} (batch size 0) and "
                      f"calibrated on the other {batches}", stacklevel=3)
    return batches


def calibrate_quantizers(model: nn.Module, data: Iterable[Any], max_batches: Optional[int] = None) -> Dict[str, float]:
    """Calibrate, on clean data, the statistics-based activation steps (the input quantizer,
    activation quantizers without a constant step, ADC/DAC without a bound) that have seen no
    training data, and fix them: later forwards, in either mode, do not change them.

    Each step is the running maximum of ``peak / levels`` over the batches (``ActQuant``),
    degenerate batches (peak 0 or constant) not counted. A quantizer that saw only degenerate
    batches is fixed with a warning. Empty batches (batch size 0) are skipped, with one
    warning. Quantizers that already saw training data, constant steps and fixed steps are
    left alone. ``fxharden.sweep`` and ``evaluate`` call this on their own first batches; call
    it yourself before using a fresh model in eval mode.

    On the same batches, every activation quantizer whose grid use was not checked yet (any
    kind of step) records how the data use its grid (``GridUsage``). When a quantizer's data
    use at most ``FEW_LEVELS`` levels while lying between them (the step erases the signal), or
    more than ``CLIP_FRACTION`` of them are clipped (the step is too small), one
    ``GridWarning`` lists those sites, and ``harden_report(model).quant_warnings`` keeps them.
    With no step waiting for data, the check runs on ``GRID_CHECK_BATCHES`` batches (once per
    model).

    Args:
        model: a hardened model.
        data: an iterable of input batches or ``(inputs, labels)`` pairs, on the model's device.
        max_batches: use at most this many batches (``None``: the quantizers'
            ``calibration_steps``).

    Returns:
        ``{quantizer name: step}`` of the quantizers that were calibrated.

    Raises:
        ValueError: ``data`` held no batch, or only empty ones.
    """
    acts = {name: m for name, m in model.named_modules() if isinstance(m, ActQuant)}
    quants = {name: m for name, m in acts.items() if m.needs_data}
    unchecked = {name: m for name, m in acts.items() if not m.grid_checked}
    if not quants and not unchecked:
        return {}
    if max_batches is None:
        max_batches = max((m.calibration_left for m in quants.values()), default=GRID_CHECK_BATCHES)
    finished = False
    try:
        for m in unchecked.values():
            m.begin_grid_check()
        _run_clean(model, data, max_batches, "calibrate_quantizers")
        finished = True
    finally:
        problems = {name: m.end_grid_check(keep=finished) for name, m in unchecked.items()}
    for name, m in quants.items():
        m.finish_calibration(name)
    _report_grids(model, [m for m in acts.values() if m.sign_from_data])
    _report_grid_problems(model, {name: p for name, p in problems.items() if p})
    return {name: float(m.scale.detach()) for name, m in quants.items()}


def _quantizer_sites(model: nn.Module) -> Dict[int, tuple]:
    """``{id(activation quantizer): (site, role)}``: the quantizers ``harden`` put at each site
    of the report (graph route: container keys ``<site>__<role>``, dots as ``__``; module
    route: the ``LayerSite`` that holds them)."""
    out: Dict[int, tuple] = {}
    for m in model.modules():
        if isinstance(m, LayerSite):
            for role, word in _ROLES.items():
                if isinstance(getattr(m, role), ActQuant):
                    out[id(getattr(m, role))] = (m.site, word)
    container = getattr(model, CONTAINER, None)
    if isinstance(model, HardenedModule) and isinstance(container, nn.Module):
        keys = {key_for(f"{s.name}.{role}", {}): (s.name, word) for s in model.report.sites
                for role, word in _ROLES.items()}
        for key, m in container.named_children():
            site = keys.get(key) or keys.get(re.sub(r"__\d+$", "", key))  # a clash got a numbered key
            if isinstance(m, ActQuant) and site is not None:
                out.setdefault(id(m), site)
    return out


def _report_grids(model: nn.Module, quants: list) -> None:
    """The grid each input quantizer took from the calibration data (unsigned when the data are
    never negative, ``ActQuant.sign_from_data``), in its site's row of the model's report."""
    if not quants or not isinstance(model, HardenedModule):
        return
    sites = _quantizer_sites(model)
    text = {sites[id(m)][0]: m.extra_repr() for m in quants if sites.get(id(m), ("", ""))[1] == "quantizer"}
    report = model.report
    rows = tuple(dataclasses.replace(s, quantizer=text[s.name]) if s.name in text else s for s in report.sites)
    model.meta["fxharden"]["report"] = dataclasses.replace(report, sites=rows)


def _report_grid_problems(model: nn.Module, problems: Dict[str, str]) -> None:
    """One warning for the quantizers (by module name) whose grid does not fit the data, and
    their entries in the model's report (``HardenReport.quant_warnings``, by site)."""
    if not problems:
        return
    sites = _quantizer_sites(model)
    by_site: Dict[str, str] = {}
    converters = False
    for name, problem in problems.items():
        site, word = sites.get(id(model.get_submodule(name)), (name, "quantizer"))
        by_site[site] = "; ".join(filter(None, [by_site.get(site, ""), f"its {word} {problem}"]))
        converters |= word != "quantizer"
    if isinstance(model, HardenedModule):
        report = model.report
        model.meta["fxharden"]["report"] = dataclasses.replace(
            report, quant_warnings={**report.quant_warnings, **by_site})
    listed = "; ".join(f"site {site!r}: {text}" for site, text in by_site.items())
    warnings.warn(
        f"on the calibration data, the quantization step does not fit the signal at {len(by_site)} "
        f"site{'s' if len(by_site) > 1 else ''}: {listed}. {FEW_LEVELS} levels or fewer erase the signal, more "
        f"than {CLIP_FRACTION:.0%} of the values clipped cut it. Give a step that fits the data "
        "(harden(model, bits, scale=...): smaller where few levels are used, larger where values are clipped), "
        "scale=None for statistics-based steps, or more bits"
        f"{' (an ADC/DAC: a ConverterConfig bound that fits the data, or bound=None)' if converters else ''}; "
        "fxharden.harden_report(model).quant_warnings lists these sites", GridWarning, stacklevel=3)


def calibrate_noise(model: nn.Module, data: Iterable[Any], max_batches: Optional[int] = 8,
                    force: bool = True) -> Dict[str, float]:
    """Measure ``rms = sqrt(mean(x²))`` of the clean signal at every activation noise site
    and store it in the module's ``rms`` buffer (it travels in checkpoints).

    The model runs in eval mode without gradients and with every noise set to 0, so each
    site sees the clean signal; mode and noise (every module's full setting) are restored
    afterwards. Quantizers that still wait for data, or whose grid use was not checked yet
    (``calibrate_quantizers``), are calibrated and checked on the same batches first, so the
    RMS is measured with their final steps. Empty batches (batch size 0) are skipped, with one
    warning.

    Args:
        model: a hardened model.
        data: an iterable of input batches or ``(inputs, labels)`` pairs (a ``DataLoader``),
            on the model's device.
        max_batches: use at most this many batches (``None``: all).
        force: recalibrate sites that already have an RMS; ``False`` measures only the
            uncalibrated ones (their RMS is then set, the others are left as they are).

    Returns:
        ``{site: rms}`` of the modules that were (re)calibrated.

    Raises:
        ValueError: ``data`` held no batch, or only empty ones.

    A site that saw only integer tensors (token ids at an input site) is left uncalibrated:
    noise never applies there.
    """
    weights = set(map(id, noise_modules(model, Role.WEIGHTS).values()))  # they never see activations
    mods = [m for m in model.modules() if isinstance(m, Noise) and id(m) not in weights
            and (force or not m.calibrated)]  # every mode's sites, also those of the other mode's graph
    if not mods:
        return {}
    checked = any(isinstance(m, ActQuant) and (m.needs_data or not m.grid_checked) for m in model.modules())
    if checked:
        if iter(data) is data:  # a one-shot iterator: keep the batches for the second pass
            data = list(itertools.islice(data, max_batches))
        calibrate_quantizers(model, data, max_batches)
    finished = False
    try:
        for m in mods:
            m.begin_rms()
        _run_clean(model, data, max_batches, "calibrate_noise", warn_empty=not checked)
        finished = True
    finally:
        # None: only integer tensors (token ids) passed there: noise never applies, no RMS
        rms = {m.site: m.end_rms(keep=finished) for m in mods}
    return {site: r for site, r in rms.items() if r is not None}


def site_rms(model: nn.Module) -> Dict[str, float]:
    """``{site: rms}`` of the activation noise modules (NaN where uncalibrated)."""
    return {site: float(m.rms) if m.calibrated else math.nan for site, m in noise_modules(model).items()}
