"""The noise-allocation file: a per-site σ map (JSON) that ``fxharden budget`` writes and
``fxharden sweep --sigma-map`` / ``SweepConfig(sigma_map=...)`` read back to verify it.

Format (``format: fxharden-sigma-map/1``)::

    {"format": "fxharden-sigma-map/1", "units": "absolute",
     "sigma": {"conv1": 0.012, "relu1": 0.4, "fc3": 0.0, ...},   # 0: protected (digital)
     "protected": ["fc3"], ...}                                  # + provenance, ignored here

A sweep with the map gives site ``s`` the noise ``σ · sigma[s]``: σ = 1 is the allocation.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

from .._files import atomic_write_json
from .options import Units

__all__ = ["SIGMA_MAP_FORMAT", "SIGMA_MAP_FILE", "write_sigma_map", "read_sigma_map"]

SIGMA_MAP_FORMAT = "fxharden-sigma-map/1"
SIGMA_MAP_FILE = "sigma_map.json"


def write_sigma_map(path: Union[str, os.PathLike], sigma: Mapping[str, float], units: Units,
                    extra: Mapping[str, Any] = ()) -> Path:
    """Write the allocation ``sigma`` (site -> σ, 0 = protected) in ``units`` atomically."""
    data = {"format": SIGMA_MAP_FORMAT, "units": Units(units).value,
            "sigma": {s: float(v) for s, v in sigma.items()},
            "protected": [s for s, v in sigma.items() if v == 0], **dict(extra)}
    return atomic_write_json(path, data)


def read_sigma_map(path: Union[str, os.PathLike]) -> Tuple[Dict[str, float], Units]:
    """``(site -> σ, units)`` from an allocation file (or a budget output folder holding one).

    Raises:
        ValueError: a missing or unreadable file, another format, or a bad σ value.
    """
    p = Path(path)
    if p.is_dir():
        p = p / SIGMA_MAP_FILE
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"no sigma map at {p}; give the {SIGMA_MAP_FILE} that `fxharden budget` wrote "
                         "(or its output folder)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the sigma map {p}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != SIGMA_MAP_FORMAT or not isinstance(data.get("sigma"), dict):
        raise ValueError(f"{p} is not a sigma map (expected format {SIGMA_MAP_FORMAT!r} with a 'sigma' object "
                         "of site -> noise level, as `fxharden budget` writes)")
    sigma = {}
    for site, value in data["sigma"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{p}: site {site!r} has sigma {value!r}; every sigma must be a finite number >= 0")
        sigma[str(site)] = float(value)
    try:
        units = Units(data.get("units", "absolute"))
    except ValueError:
        raise ValueError(f"{p}: units must be 'absolute' or 'relative', got {data.get('units')!r}") from None
    return sigma, units
