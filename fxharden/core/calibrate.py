"""Calibration on clean data: ``calibrate_quantizers`` fixes the statistics-based steps of a
model that has not seen training data, ``calibrate_noise`` measures every noise site's clean
signal RMS, the reference of relative noise (``NoiseKind.RELATIVE``) and of sweeps in relative
units. Both run the model in eval mode, without gradients and with all noise off."""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict, Iterable, Optional

import torch
from torch import nn

from .noise import Noise, Role, noise_off
from .noise.verbs import noise_modules
from .quant import ActQuant

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


def _run_clean(model: nn.Module, data: Iterable[Any], max_batches: Optional[int], what: str) -> int:
    """Run ``model`` on at most ``max_batches`` batches of ``data`` in eval mode, without
    gradients and with every noise off; mode and noise are restored. Returns the batch count."""
    training, batches = model.training, 0
    try:
        with noise_off(model), torch.no_grad():
            model.eval()
            for batch in data:
                if max_batches is not None and batches >= max_batches:
                    break
                call_model(model, _inputs(batch))
                batches += 1
    finally:
        model.train(training)
    if batches == 0:
        raise ValueError(f"{what} got no data; pass a DataLoader or a list of input batches")
    return batches


def calibrate_quantizers(model: nn.Module, data: Iterable[Any], max_batches: Optional[int] = None) -> Dict[str, float]:
    """Calibrate, on clean data, the statistics-based activation steps (the input quantizer,
    activation quantizers without a constant step, ADC/DAC without a bound) that have seen no
    training data, and fix them: later forwards, in either mode, do not change them.

    Each step is the running maximum of ``peak / levels`` over the batches (``ActQuant``),
    degenerate batches (peak 0 or constant) not counted. A quantizer that saw only degenerate
    batches is fixed with a warning. Quantizers that already saw training data, constant
    steps and fixed steps are left alone. ``fxharden.sweep`` and ``evaluate`` call this on
    their own first batches; call it yourself before using a fresh model in eval mode.

    Args:
        model: a hardened model.
        data: an iterable of input batches or ``(inputs, labels)`` pairs, on the model's device.
        max_batches: use at most this many batches (``None``: the quantizers'
            ``calibration_steps``).

    Returns:
        ``{quantizer name: step}`` of the quantizers that were calibrated.

    Raises:
        ValueError: ``data`` held no batch.
    """
    quants = {name: m for name, m in model.named_modules() if isinstance(m, ActQuant) and m.needs_data}
    if not quants:
        return {}
    if max_batches is None:
        max_batches = max(m.calibration_steps - m._observed for m in quants.values())
    _run_clean(model, data, max_batches, "calibrate_quantizers")
    for name, m in quants.items():
        m.finish_calibration(name)
    return {name: float(m.scale.detach()) for name, m in quants.items()}


def calibrate_noise(model: nn.Module, data: Iterable[Any], max_batches: Optional[int] = 8,
                    force: bool = True) -> Dict[str, float]:
    """Measure ``rms = sqrt(mean(x²))`` of the clean signal at every activation noise site
    and store it in the module's ``rms`` buffer (it travels in checkpoints).

    The model runs in eval mode without gradients and with every noise set to 0, so each
    site sees the clean signal; mode and noise (every module's full setting) are restored
    afterwards. Quantizers that still wait for data (``calibrate_quantizers``) are calibrated
    on the same batches first, so the RMS is measured with their final steps.

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
        ValueError: ``data`` held no batch.

    A site that saw only integer tensors (token ids at an input site) is left uncalibrated:
    noise never applies there.
    """
    weights = set(map(id, noise_modules(model, Role.WEIGHTS).values()))  # they never see activations
    mods = [m for m in model.modules() if isinstance(m, Noise) and id(m) not in weights
            and (force or not m.calibrated)]  # every mode's sites, also those of the other mode's graph
    if not mods:
        return {}
    if any(isinstance(m, ActQuant) and m.needs_data for m in model.modules()):
        if iter(data) is data:  # a one-shot iterator: keep the batches for the second pass
            data = list(itertools.islice(data, max_batches))
        calibrate_quantizers(model, data, max_batches)
    finished = False
    try:
        for m in mods:
            m.begin_rms()
        _run_clean(model, data, max_batches, "calibrate_noise")
        finished = True
    finally:
        # None: only integer tensors (token ids) passed there: noise never applies, no RMS
        rms = {m.site: m.end_rms(keep=finished) for m in mods}
    return {site: r for site, r in rms.items() if r is not None}


def site_rms(model: nn.Module) -> Dict[str, float]:
    """``{site: rms}`` of the activation noise modules (NaN where uncalibrated)."""
    return {site: float(m.rms) if m.calibrated else math.nan for site, m in noise_modules(model).items()}
