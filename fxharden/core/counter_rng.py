"""Counter-based random numbers for compiled graphs: pure torch integer ops, no generator
(and ``compiling()``, which tells the modules to take their compiled path).

Under ``torch.compile`` a ``torch.Generator`` seeded per site cannot be traced (Dynamo breaks
the graph at every draw). Here the numbers are a function of their coordinates instead:

    number = f(stream key, call counter, element index)

with the stream key and the counter 0-dim int64 *tensors* (buffers of the noise module), so
changing them (``seed_noise``, the next call) changes no Python value Dynamo would guard on:
no recompilation. ``f`` is a keyed hash, two rounds of a 32-bit integer mixer (``_fmix``),
each round keyed by 32 bits derived from the stream key, the counter and the stream index
``s`` (several independent uniforms or normals per element, for stuck-at faults and device models); a normal takes the
hash ``h1`` and ``h2``, one more keyed round of ``h1``. Everything is int64 arithmetic on values below ``2**32`` (no product overflows),
then float conversion, ``log``, ``sqrt``, ``cos``: elementwise ops that Inductor fuses with
what consumes the numbers (the quantizer's output and the add of the noise) into one kernel;
the per-call keys are computed once per call, not per element.

Normals come from Box–Muller with the cosine branch only, ``z = sqrt(-2 ln u1) cos(2π u2)``,
``u1 = (h1 + 1/2) 2^-32`` in ``(0, 1]`` (smallest ``2^-33``: the tails reach ``6.7σ``),
``u2 = h2 2^-32``. The same arguments give the same numbers on every backend (eager, Dynamo's
``eager``/``aot_eager``, Inductor) up to the last bits of ``log``/``cos``; the numbers are not
those of ``torch.randn`` under any seed. An element index must stay below ``2**32`` (a site
with more than 4 G elements would repeat its numbers).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["counter_uniform", "counter_normal", "compiling", "refuse"]

_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)  # torch >= 2.3


def compiling() -> bool:
    """Whether Dynamo is tracing the current code (``torch.compile``): the modules then take
    their compiled path. False in eager mode and on a torch without ``torch.compiler.is_compiling``."""
    return _is_compiling()


def _eagerly(fn):
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


@_eagerly
def refuse(error: Exception) -> None:
    """Raise ``error`` for something a compiled model cannot do. A ``raise`` in traced code
    would make Dynamo run the whole frame eagerly instead (where the refused path works, slowly
    and without a word); this function runs outside the graph, so the error reaches the caller."""
    raise error

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: separates the counter, the streams, the rounds


def _fmix(h: Tensor) -> Tensor:
    """A 32-bit integer hash (Wellons' hash-prospector mixer ``[16 21f0aaad 15 735a2d97 15]``,
    lower bias than MurmurHash3's finalizer): a bijection of ``[0, 2^32)`` with full avalanche.
    Both multipliers are below ``2^31``, so no int64 product overflows."""
    h = h ^ (h >> 16)
    h = (h * 0x21F0AAAD) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x735A2D97) & _M32
    return h ^ (h >> 15)


def _round_keys(key: Tensor, counter: Tensor, stream: int) -> tuple:
    """Three 32-bit round keys (0-dim int64 tensors) of uniform stream ``stream`` for this
    (stream key, counter)."""
    lo, hi = key & _M32, (key >> 32) & _M32
    c_lo, c_hi = counter & _M32, (counter >> 32) & _M32
    k = _fmix(lo ^ _fmix((hi + _GOLDEN * (stream + 1)) & _M32))
    k1 = _fmix(k ^ c_lo)
    k2 = _fmix(k1 ^ c_hi ^ _GOLDEN)
    return k1, k2, _fmix(k2 ^ _GOLDEN)


def _bits(key: Tensor, counter: Tensor, shape: Sequence[int], stream: int, device: torch.device,
          second: bool = False):
    """32 random bits per element of ``shape`` (int64 values in ``[0, 2^32)``); with
    ``second``, a pair: the second is one more keyed round of the first (cheaper than a second
    chain: Inductor's C++ code, and its compile time, grow with every integer op)."""
    k1, k2, k3 = _round_keys(key.to(device), counter.to(device), stream)
    idx = torch.arange(math.prod(shape), device=device, dtype=torch.int64).view(tuple(shape))
    h = _fmix(_fmix(idx ^ k1) ^ k2)
    return (h, _fmix(h ^ k3)) if second else h


def counter_uniform(key: Tensor, counter: Tensor, shape: Sequence[int], stream: int = 0,
                    dtype: torch.dtype = torch.float32, device: torch.device = None) -> Tensor:
    """Uniform numbers in ``[0, 1)`` of ``shape`` (24 random bits each: exact in float32),
    for stream key ``key`` and call ``counter`` (0-dim int64 tensors); ``stream`` picks one
    of several independent uniforms per element."""
    device = key.device if device is None else device
    return (_bits(key, counter, shape, stream, device) >> 8).to(dtype) * (2.0 ** -24)


def counter_normal(key: Tensor, counter: Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32,
                   device: torch.device = None, stream: int = 0) -> Tensor:
    """Standard normals of ``shape`` for stream key ``key`` and call ``counter`` (0-dim int64
    tensors), by Box–Muller (see the module doc); ``stream`` picks one of several independent
    normals per element."""
    device = key.device if device is None else device
    h1, h2 = _bits(key, counter, shape, stream, device, second=True)
    u1 = (h1.to(dtype) + 0.5) * (2.0 ** -32)
    u2 = h2.to(dtype) * (2.0 ** -32)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
