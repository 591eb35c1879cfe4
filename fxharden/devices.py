"""Which device a run uses: the one place that turns ``--device`` / ``device=`` into a
``torch.device``."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["resolve_device"]


def resolve_device(device: Optional[str]) -> torch.device:
    """``None``/``"auto"`` means CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev
