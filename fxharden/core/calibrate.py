"""``calibrate_noise``: measure every noise site's clean signal RMS, the reference of
relative noise (``NoiseKind.RELATIVE``) and of sweeps in relative units."""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional

import torch
from torch import nn

from .harden import _noise_modules
from .noise import Noise

__all__ = ["calibrate_noise", "site_rms"]


def _inputs(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def calibrate_noise(model: nn.Module, data: Iterable[Any], max_batches: Optional[int] = 8,
                    force: bool = True) -> Dict[str, float]:
    """Measure ``rms = sqrt(mean(x²))`` of the clean signal at every activation noise site
    and store it in the module's ``rms`` buffer (it travels in checkpoints).

    The model runs in eval mode without gradients and with every noise set to 0, so each
    site sees the clean signal; mode and noise are restored afterwards.

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
        ValueError: ``data`` held no batch, or a site saw no floating-point values.
    """
    weights = {id(x) for m in model.modules() if isinstance(getattr(m, "weight_noise", None), nn.Module)
               for x in m.weight_noise.modules()}  # a layer's weight noise never sees activations
    mods = [m for m in model.modules() if isinstance(m, Noise) and id(m) not in weights
            and (force or not m.calibrated)]
    if not mods:
        return {}
    saved = {m: (m.sigma.clone(), m._active) for m in model.modules() if isinstance(m, Noise)}
    training = model.training
    try:
        for m in saved:
            m.set_sigma(0.0)
        for m in mods:
            m._calibration = [0.0, 0]
        model.eval()
        batches = 0
        with torch.no_grad():
            for batch in data:
                if max_batches is not None and batches >= max_batches:
                    break
                model(_inputs(batch))
                batches += 1
        if batches == 0:
            raise ValueError("calibrate_noise got no data; pass a DataLoader or a list of input batches")
        out = {}
        for m in mods:
            total, count = m._calibration
            if count == 0:
                raise ValueError(f"noise site {m.site!r} saw no floating-point values while calibrating")
            m.rms.fill_(math.sqrt(total / count))
            out[m.site] = float(m.rms)
        return out
    finally:
        for m in mods:
            m._calibration = None
        for m, (sigma, active) in saved.items():
            m.sigma, m._active = sigma, active
        model.train(training)


def site_rms(model: nn.Module) -> Dict[str, float]:
    """``{site: rms}`` of the activation noise modules (NaN where uncalibrated)."""
    return {site: float(m.rms) if m.calibrated else math.nan for site, m in _noise_modules(model).items()}
