"""Random streams of the noise sites, apart from the noise models.

Two generators stand behind one small interface (``normal``, ``uniform``, ``draw``):

- ``EagerStream``: a site's ``torch.Generator``, seeded with ``stream_seed(seed, site)``. On
  the CPU a draw of at least ``LANE_MIN`` numbers is split into ``LANES`` equal parts, each
  from its own generator, drawn on several threads (torch's CPU generator is serial and is
  the largest cost of noise). Draws consumed within one call go into scratch buffers reused
  from call to call (``slot``), draws that outlive it are new tensors.
- ``CounterStream``: the counter-based generator of ``counter_rng`` for compiled graphs,
  keyed by the site's ``stream_key`` and ``calls`` buffers (tensors, so a new seed or the
  next call recompiles nothing).

Both give standard normals (``Draw.NORMAL``), three uniform numbers in ``[0, 1)`` per
element (``Draw.UNIFORM3``), indexable as ``u[0]``, ``u[1]``, ``u[2]``, or several
independent standard normals per element (``Draw.NORMAL3``, ``Draw.NORMAL6``), indexable
the same way. They are different streams, each reproducible for a given seed.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..counter_rng import counter_normal, counter_uniform
from .models import Draw

__all__ = ["stream_seed", "EagerStream", "CounterStream", "LANES", "LANE_MIN"]

_scratch = threading.local()  # per thread: {(device, dtype, slot): flat buffer} for draws consumed at once

LANES = 4
"""A CPU draw of at least ``LANE_MIN`` numbers is split into ``LANES`` equal parts, each from
its own stream (lane 0 is the site's stream, lane k seeded by ``stream_seed(seed, site#k)``),
drawn on up to ``torch.get_num_threads()`` threads: torch's CPU generator is serial and is
the largest cost of noise. The split depends only on the size, so the numbers do not depend on
the thread count."""
LANE_MIN = 1 << 16

_pool: Tuple[int, Optional[ThreadPoolExecutor]] = (-1, None)  # (pid, pool): a forked child makes its own


def _lane_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool[0] != os.getpid() or _pool[1] is None:
        _pool = (os.getpid(), ThreadPoolExecutor(LANES - 1, thread_name_prefix="fxharden-noise"))
    return _pool[1]


def _fill_lanes(flat: Tensor, gens: Sequence[torch.Generator], inference: bool) -> None:
    """Fill ``LANES`` equal parts of the 1-d ``flat`` with standard normals, part ``k`` from
    ``gens[k]``; the parts are shared among ``torch.get_num_threads()`` threads."""
    n = flat.numel()
    parts = [flat[n * k // LANES:n * (k + 1) // LANES] for k in range(LANES)]
    workers = max(1, min(LANES, torch.get_num_threads()))

    def run(share: int) -> None:
        with torch.inference_mode(inference):  # thread-local, like the caller's mode
            for k in range(share, LANES, workers):
                parts[k].normal_(generator=gens[k])

    futures = [_lane_pool().submit(run, j) for j in range(1, workers)]
    run(0)
    for f in futures:
        f.result()


def stream_seed(seed: int, site: str) -> int:
    """The seed of site ``site``'s generator under base seed ``seed``: a hash of both, so the
    streams of different sites (and of one site under different base seeds) never coincide."""
    return int(hashlib.sha256(f"{int(seed)}/{site}".encode()).hexdigest()[:15], 16)


def _normal_(t: Tensor, gens: Sequence[torch.Generator]) -> Tensor:
    """Fill the contiguous ``t`` with standard normals from the site's streams ``gens`` (one,
    or ``LANES`` on the CPU: see there)."""
    if len(gens) == 1 or t.numel() < LANE_MIN or t.device.type != "cpu":
        return t.normal_(generator=gens[0])
    _fill_lanes(t.view(-1), gens, torch.is_inference_mode_enabled())
    return t


def _scratch_normal(shape: Sequence[int], device: torch.device, dtype: torch.dtype, gens: Sequence[torch.Generator],
                    slot: int = 0) -> Tensor:
    """Standard normals of ``shape`` in a buffer reused from call to call (one per thread,
    device, dtype and ``slot``, grown to the largest size asked). Valid until the next call
    for the same slot: the caller consumes it at once and never returns it or lets autograd
    keep it. (Reuse matters on a CPU: a new large tensor costs a page fault per 4 KiB.)"""
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    n, key = math.prod(shape), (device, dtype, slot)
    buf = bufs.get(key)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            buf = bufs[key] = torch.empty(n, device=device, dtype=dtype)
    return _normal_(buf[:n].view(tuple(shape)), gens)


class EagerStream:
    """The eager stream of one site: its ``torch.Generator`` (made on first use, on the
    device of the draw) and on the CPU the ``LANES - 1`` lane generators; restarted from the
    seed when pickled or reseeded."""

    def __init__(self, site: str, seed: int) -> None:
        self.site, self.seed = site, int(seed)
        self._generator: Optional[torch.Generator] = None
        self._lanes: Optional[List[torch.Generator]] = None

    def __getstate__(self):
        return {"site": self.site, "seed": self.seed}

    def __setstate__(self, state):
        self.__init__(state["site"], state["seed"])

    def reseed(self, seed: int) -> None:
        """Restart from base seed ``seed``."""
        self.__init__(self.site, seed)

    def generator(self, device: torch.device) -> torch.Generator:
        """The site's own generator on ``device`` (a new one, from the seed, on a new device)."""
        gen = self._generator
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(stream_seed(self.seed, self.site))
            self._generator, self._lanes = gen, None
        return gen

    def generators(self, device: torch.device) -> List[torch.Generator]:
        """The site's streams for normals: its own, and on the CPU the other ``LANES - 1``."""
        first = self.generator(device)
        if device.type != "cpu":
            return [first]
        if self._lanes is None:
            rest = [torch.Generator().manual_seed(stream_seed(self.seed, f"{self.site}#{k}")) for k in range(1, LANES)]
            self._lanes = [first] + rest
        return self._lanes

    def normal(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype,
               slot: Optional[int] = None) -> Tensor:
        """Standard normals of ``shape``: in scratch buffer ``slot`` (consumed at once, see
        ``_scratch_normal``), or with ``slot=None`` in a new tensor."""
        if slot is not None:
            return _scratch_normal(shape, device, dtype, self.generators(device), slot)
        return _normal_(torch.empty(tuple(shape), device=device, dtype=dtype), self.generators(device))

    def uniform(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype, count: int = 3) -> Tensor:
        """``count`` uniform numbers in ``[0, 1)`` per element of ``shape``: a new
        ``(count, *shape)`` tensor from the site's own generator."""
        return torch.rand((count,) + tuple(shape), generator=self.generator(device), device=device, dtype=dtype)

    def draw(self, kind: Draw, shape: Sequence[int], device: torch.device, dtype: torch.dtype,
             slot: Optional[int] = None):
        """The numbers a model of draw ``kind`` consumes for a tensor of ``shape``."""
        if kind is Draw.UNIFORM3:
            return self.uniform(shape, device, dtype)
        if kind.count > 1:  # one (count, *shape) draw: the lanes split it like any other
            return self.normal((kind.count,) + tuple(shape), device, dtype, slot)
        return self.normal(shape, device, dtype, slot)


class CounterStream(NamedTuple):
    """The compiled stream of one site at one call: numbers as a function of (``key``,
    ``calls``, element index), see ``counter_rng``; made afresh at every call from the
    site's buffers (which move with the module)."""

    key: Tensor
    calls: Tensor

    def normal(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype, stream: int = 0) -> Tensor:
        """Standard normals of ``shape`` (``stream``: one of several independent ones)."""
        return counter_normal(self.key, self.calls, shape, dtype, device, stream)

    def uniform(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype, count: int = 3) -> List[Tensor]:
        """``count`` independent uniforms in ``[0, 1)`` per element of ``shape`` (a list)."""
        return [counter_uniform(self.key, self.calls, shape, k, dtype, device) for k in range(count)]

    def draw(self, kind: Draw, shape: Sequence[int], device: torch.device, dtype: torch.dtype):
        """The numbers a model of draw ``kind`` consumes for a tensor of ``shape``."""
        if kind is Draw.UNIFORM3:
            return self.uniform(shape, device, dtype)
        if kind.count > 1:
            return [self.normal(shape, device, dtype, k) for k in range(kind.count)]
        return self.normal(shape, device, dtype)
