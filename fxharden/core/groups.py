"""Batch groups: where the batch lies at every noise site, found by shape propagation.

A forward pass with one sigma value per batch group (``Noise``) needs, at every site, the
dimension that holds the batch. It is dim 0 at the model input (that is where the sweep
replicates the data) but not everywhere: a sequence-first layer sees ``(L, N, E)``, attention
reshapes to ``(L, N * heads, d)``. ``locate_batch_dims`` runs the model on batches of 2 and
of 3 copies of one input and records the shape at every site: the batch dimension is the one
dimension whose size goes from ``2k`` to ``3k``.

A site whose tensors keep one shape whatever the batch (a position embedding looked up on
position ids the batch shares: ``(1, L, E)``, or ``(L, E)`` without a batch dimension) is a
*broadcast* site when its tensor broadcasts against the batch later: one more forward of the
probe batch, with that tensor expanded to the batch and its last row set to NaN, must leave
every other row of the model's output as it was. With one sigma per batch group such a site
gets one copy of its tensor per group, each with the group's sigma and its own draw (shared by
the group's rows, as when the group runs alone), repeated for the group's rows
(``Noise.broadcast``). Any other site (or one with several growing dimensions) gets
``batch_dim = None`` and refuses per-group sigma with a clear error instead of splitting the
wrong dimension or mixing the groups.

``HardenedModule`` calls ``ensure_batch_dims`` before a forward in which some site has more
than one group, so users never call it themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .noise import GROUPS_HINT, BatchBroadcast, Noise, expand_batch

__all__ = ["locate_batch_dims", "ensure_batch_dims", "batch_dim_from_shapes", "broadcast_from_shapes"]

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


def broadcast_from_shapes(shapes: Sequence[Sequence[tuple]]) -> Optional[BatchBroadcast]:
    """How a site might broadcast against the batch, given the shapes it saw at the two probe
    sizes: ``None`` unless every call saw one and the same shape; ``LEADING_ONE`` when its dim
    0 has size 1, else ``NO_BATCH_DIM`` (a candidate only: ``locate_batch_dims`` checks it)."""
    small, large = shapes
    calls = list(small) + list(large)
    if not small or len(small) != len(large) or any(c != calls[0] for c in calls):
        return None
    return BatchBroadcast.LEADING_ONE if len(calls[0]) > 1 and calls[0][0] == 1 else BatchBroadcast.NO_BATCH_DIM


def _tensors(out: Any) -> List[Tensor]:
    """The tensors of a model output (a tensor, or dicts, lists and tuples of them)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


def _rows_kept(out: Any, ref: Any, n: int) -> bool:
    """Whether ``out`` has the shapes of ``ref`` and equals it in all but the last of ``n``
    batch rows (dim 0); a tensor without the batch must equal it throughout."""
    a, b = _tensors(out), _tensors(ref)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return False
    for x, y in zip(a, b):
        if x.dim() > 0 and x.shape[0] == n:
            x, y = x[:n - 1], y[:n - 1]
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return False
        elif not torch.allclose(x.double(), y.double(), rtol=1e-4, atol=1e-5, equal_nan=True):
            return False
    return True


def _broadcasts(model: nn.Module, args: tuple, kwargs: Dict[str, Any], ref: Any, n: int,
                sites: Dict[Noise, BatchBroadcast]) -> bool:
    """Whether the model's output on the probe batch of ``n`` (``ref``) keeps its first ``n - 1``
    rows when the tensors of ``sites`` are expanded to the batch with the last row NaN: then
    row ``r`` of each expanded tensor reaches batch row ``r`` of the output and nothing else."""
    def poisoned(how: BatchBroadcast):
        def hook(module: nn.Module, inputs: tuple, out: Any) -> Any:
            y = expand_batch(out, how, n).clone()
            y[n - 1] = float("nan")
            return y
        return hook

    handles = [m.register_forward_hook(poisoned(how)) for m, how in sites.items()]
    try:
        return _rows_kept(_plain_call(model, args, kwargs), ref, n)
    except Exception:  # noqa: BLE001 - a model that cannot take the expanded tensor: not a broadcast site
        return False
    finally:
        for h in handles:
            h.remove()


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
                    ref = _plain_call(model, a, k)
                except Exception as err:
                    raise ValueError(f"cannot locate the batch dimension at the noise sites: the model fails on "
                                     f"a batch of {n} ({type(err).__name__}: {err}); {GROUPS_HINT}") from err
                for m in mods:
                    seen[m].append(m._record)
            dims = {m: batch_dim_from_shapes(seen[m]) for m in mods}
            candidates = {m: how for m in mods
                          if dims[m] is None and not m.unbatched and (how := broadcast_from_shapes(seen[m])) is not None}
            for m in mods:
                m._record = []  # the checks below record nothing into ``seen``
            if candidates and not _broadcasts(model, a, k, ref, n, candidates):
                candidates = {m: how for m, how in candidates.items() if _broadcasts(model, a, k, ref, n, {m: how})}
    finally:
        for m in mods:
            m._record = None
        model.load_state_dict(saved, strict=False)  # also refreshes the modules' host-side mirrors
        model.train(was_training)
    out = {}
    for m in mods:
        m.batch_dim = None if m.unbatched else dims[m]
        m.broadcast = None if m.unbatched else candidates.get(m)
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
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor)]
    key = tuple((tuple(a.shape[1:]), a.dtype) for a in tensors)
    if getattr(model, "_fxharden_located", None) != key:
        locate_batch_dims(model, args, kwargs)
        model._fxharden_located = key
    batch = next((a.shape[0] for a in tensors if a.dim() > 0), 0)
    for m in mods:
        if m.broadcast is not None:
            m.broadcast_batch = batch
