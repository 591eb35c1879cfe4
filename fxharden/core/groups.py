"""Batch groups: where the batch lies at every noise site, found by shape propagation.

A forward pass with one sigma value per batch group (``Noise``) needs, at every site, the
dimension that holds the batch. It is dim 0 at the model input (that is where the sweep
replicates the data) but not everywhere: a sequence-first layer sees ``(L, N, E)``, attention
reshapes to ``(L, N * heads, d)``. ``locate_batch_dims`` runs the model on batches of 2 and
of 3 copies of one input and records the shape at every site: the batch dimension is the one
dimension whose size goes from ``2k`` to ``3k``. A site with no such dimension (or several)
gets ``batch_dim = None`` and refuses per-group sigma with a clear error instead of
splitting the wrong dimension.

``HardenedModule`` calls ``ensure_batch_dims`` before a forward in which some site has more
than one group, so users never call it themselves.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .noise import Noise

__all__ = ["locate_batch_dims", "ensure_batch_dims", "batch_dim_from_shapes"]

_PROBE_SIZES = (2, 3)


def batch_dim_from_shapes(shapes: Sequence[Sequence[tuple]]) -> Optional[int]:
    """The batch dimension given the shapes a site saw at the two probe sizes (one list per
    size, one shape per call); ``None`` unless every call shows one dimension growing from
    ``2k`` to ``3k`` and all calls agree on it."""
    small, large = shapes
    if not small or len(small) != len(large):
        return None
    found = set()
    for a, b in zip(small, large):
        if len(a) != len(b):
            return None
        dims = [d for d in range(len(a)) if a[d] != b[d] and a[d] * _PROBE_SIZES[1] == b[d] * _PROBE_SIZES[0]]
        if len(dims) != 1:
            return None
        found.add(dims[0])
    return found.pop() if len(found) == 1 else None


def _probe_args(args: tuple, kwargs: Dict[str, Any], n: int, batch: int) -> Tuple[tuple, Dict[str, Any]]:
    """Every tensor argument with ``batch`` rows, replaced by ``n`` copies of its first row."""
    def cut(v: Any) -> Any:
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == batch:
            return v[:1].repeat(n, *([1] * (v.dim() - 1)))
        return v
    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


@torch.no_grad()
def locate_batch_dims(model: nn.Module, args: tuple, kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Optional[int]]:
    """Set ``batch_dim`` on every ``Noise`` module of ``model`` and return them by site.

    ``args``/``kwargs`` are a forward's inputs whose first tensor has the batch in dim 0.
    The model's state (buffers such as BatchNorm statistics, quantizer calibration, noise
    streams, train/eval mode, the global random state) is left as it was.

    Raises:
        ValueError: the model fails on the small probe batches (the message names the cause).
    """
    kwargs = kwargs or {}
    first = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor) and a.dim() > 0), None)
    if first is None:
        raise ValueError("per-group sigma needs a batched tensor input (batch in dim 0)")
    mods = [m for m in model.modules() if isinstance(m, Noise)]
    seen: Dict[Noise, List[List[tuple]]] = {m: [] for m in mods}
    # buffers a forward may change (statistics, calibration); noise settings are left alone, so
    # a per-group setting (sigmas and their shared draws, ``Noise.set_sigma``) survives locating
    noise_bufs = {f"{n}.{b}" if n else b for n, m in model.named_modules() if isinstance(m, Noise)
                  for b, _ in m.named_buffers(recurse=False)}
    names = {n for n, _ in model.named_buffers()} - noise_bufs
    saved = {k: v.clone() for k, v in model.state_dict().items() if k in names}
    was_training = model.training
    devices = [first.device] if first.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.eval()
            for n in _PROBE_SIZES:
                for m in mods:
                    m._record = []
                a, k = _probe_args(tuple(args), kwargs, n, first.shape[0])
                try:
                    _plain_call(model, a, k)
                except Exception as err:
                    raise ValueError(f"cannot locate the batch dimension at the noise sites: the model fails on "
                                     f"a batch of {n} ({type(err).__name__}: {err}); measure one sigma value per "
                                     "forward pass (sweep: points_per_forward=1)") from err
                for m in mods:
                    seen[m].append(m._record)
    finally:
        for m in mods:
            m._record = None
        model.load_state_dict(saved, strict=False)  # also refreshes the modules' host-side mirrors
        model.train(was_training)
    out = {}
    for m in mods:
        m.batch_dim = None if m.unbatched else batch_dim_from_shapes(seen[m])
        m.batch_dim_known = True
        out[m.site] = m.batch_dim
    return out


def _plain_call(model: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> Any:
    """Call ``model`` without triggering ``ensure_batch_dims`` again."""
    model._fxharden_locating = True
    try:
        return model(*args, **kwargs)
    finally:
        model._fxharden_locating = False


def ensure_batch_dims(model: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> None:
    """Locate batch dims if some noise site has several groups and they were not located for
    inputs of this shape yet (called by ``HardenedModule`` before each forward)."""
    if getattr(model, "_fxharden_locating", False):
        return
    mods = getattr(model, "_fxharden_noise", None)
    if mods is None:
        mods = model._fxharden_noise = [m for m in model.modules() if isinstance(m, Noise)]
    if not any(m.groups > 1 for m in mods):
        return
    key = tuple((tuple(a.shape[1:]), a.dtype) for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor))
    if getattr(model, "_fxharden_located", None) != key:
        locate_batch_dims(model, args, kwargs)
        model._fxharden_located = key
