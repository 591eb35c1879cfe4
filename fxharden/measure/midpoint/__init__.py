"""The midpoint noise level μ of an accuracy-versus-σ curve: numpy/scipy only, no torch and
nothing else of ``fxharden``.

* :mod:`.models`  the two midpoint curves (log-σ logistic, the paper's Eq. 1) and their
  constrained least-squares fit;
* :mod:`.screen`  input checks and the verdicts reached before any model is fitted;
* :mod:`.errors`  the model-free crossing estimate and the bootstrap errors;
* :mod:`.result`  :class:`MidpointFit`, its :class:`FitStatus`, the quoted value and the thresholds;
* :mod:`.fit`     :func:`fit_midpoint`, which puts them together.

The names below load on first use, so that ``MidpointModel`` (a command-line choice) costs
no scipy import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "fit": ("fit_midpoint",),
    "models": ("MidpointModel",),
    "result": ("AT_CHANCE_TOL", "A_MIN_TOL", "CONST_P_VALUE", "ERR_FLOOR", "MIN_PLATEAU_POINTS", "MIN_POINTS",
               "MIN_UNWEIGHTED_DOF", "POOR_FIT_CHI2_RED", "SIGNIFICANCE", "FitStatus", "MidpointFit", "Quote",
               "QuoteKind", "format_quote", "midpoint_model"),
    "errors": ("BOOTSTRAP_SIZE", "INTERVAL", "crossing", "image_sampling_shifts", "percentile_interval"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
