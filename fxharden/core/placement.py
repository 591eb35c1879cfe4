"""Where the modules ``harden`` creates live: on the model's device, in its precision.

A hardened model's quantizers and noise modules hold buffers (steps, sigma, clean RMS,
calibration counts). They are created on the device of the model's own parameters and
buffers, so ``harden(model.cuda())`` runs on CUDA at once, and a model on the ``meta``
device hardens to a model entirely on ``meta``. Their floating buffers take the model's
floating dtype when it is wider than float32 (a float64 model stays float64) and float32
otherwise: quantization and noise are computed in float32 for half and bfloat16 models
(see ``fake_quantize`` and ``Noise``), whose buffers ``hm.half()`` may still convert.

A model whose tensors sit on several devices (a model split by hand over GPUs) is refused
with a message naming two of them: the sweep, the trainer and the noise streams move one
model to one device. Harden it on one device and split the hardened model afterwards.
"""

from __future__ import annotations

from typing import Iterable, Tuple

import torch
from torch import nn

__all__ = ["ModelPlacementError", "model_placement", "place_modules"]


class ModelPlacementError(ValueError):
    """The model's tensors are on several devices."""


def model_placement(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """The device of ``model``'s parameters and buffers and the dtype of the buffers
    ``harden`` creates for it: the model's floating dtype promoted with float32.

    A model without tensors gives torch's default device and float32.

    Raises:
        ModelPlacementError: the model's tensors are on more than one device.
    """
    devices = {}
    floating = None
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        devices.setdefault(t.device, name)
        if floating is None and t.is_floating_point():
            floating = t.dtype
    if len(devices) > 1:
        (d1, n1), (d2, n2) = list(devices.items())[:2]
        raise ModelPlacementError(
            f"the model's tensors are on several devices ({n1!r} on {d1}, {n2!r} on {d2}); fxharden "
            "hardens, trains and sweeps a model on one device: move it there first (model.to(device)) "
            "and split the hardened model afterwards if you need to")
    device = next(iter(devices)) if devices else _default_device()
    dtype = torch.promote_types(floating, torch.float32) if floating is not None else torch.float32
    return device, dtype


def _default_device() -> torch.device:
    get = getattr(torch, "get_default_device", None)  # torch >= 2.3
    return get() if get is not None else torch.device("cpu")


def place_modules(modules: Iterable[nn.Module], device: torch.device, dtype: torch.dtype) -> None:
    """Move ``modules`` (created by ``harden``) to ``device``; their floating parameters and
    buffers to ``dtype`` (integer buffers such as calibration counts keep theirs)."""
    for module in modules:
        module.to(device=device, dtype=dtype)
