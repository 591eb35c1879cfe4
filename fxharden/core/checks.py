"""Checks of configuration numbers (torch-free): each returns the value or says what was wrong."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_param", "check_sigma"]


def check_param(name: str, value: Any, low: float = 0.0, high: float = math.inf, open_low: bool = False) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``open_low``), else a message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or v > high or (open_low and v == low):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return v


def _check_finite_nonneg(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_sigma(sigma: float) -> float:
    """Validate a noise strength: a finite float >= 0."""
    return _check_finite_nonneg("sigma", sigma)
