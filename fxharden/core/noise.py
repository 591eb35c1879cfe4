"""THE noise module: every noise model of ``noise_models.NoiseKind`` on activations or
weights, forward only.

Sigma lives in a buffer (changing it needs no retrace; it travels with ``state_dict``),
randomness comes from a per-module ``torch.Generator`` whose seed is derived from the base
seed and the site's name (``stream_seed``), so a seeded run repeats exactly and no two sites
ever share a stream, whatever the base seeds. The site's clean RMS (relative noise, relative
units) lives in the ``rms`` buffer (-1 until ``calibrate_noise`` has run).

Batch groups: sigma may hold ``R`` values, one per group of the batch (the sweep measures
``R`` noise settings in one forward pass). Group ``r`` is the ``r``-th of ``R`` equal slices
of the batch dimension at the site, which ``fxharden.groups.locate_batch_dims`` finds (it is
not always dim 0: sequence-first layers put the batch in dim 1). On activations every group
gets its own draw anyway; on weights (``draw_weights``) each group gets its own perturbed
copy of the weight. A site whose tensor the batch shares (a position embedding, ``(1, L, E)``)
gets one copy per group, each with its own sigma and draw, repeated for the group's rows
(``Noise.broadcast``).

Cost: the standard-normal draw dominates (one number per element, several times a plain
add; torch's CPU generator is serial, so large CPU draws are split into ``LANES`` streams
drawn on several threads). ``set_sigma(..., draws=...)`` lets groups that differ only in sigma
share one draw (common random numbers: per group the noise is still N(0, sigma^2), i.i.d.
within the group, and neighbouring sigma points see the same draw, so curves are smoother);
groups whose sigma is 0 draw nothing. Draws consumed within the call (activations) go into
scratch buffers reused from call to call; draws that outlive it (weights) are new tensors.
Without autograd, the noise is added in place to an input the module owns (``owns_input``):
on a CPU a new output tensor costs more than the add itself.

Under ``torch.compile`` (``torch.compiler.is_compiling()``) the forward takes another path
that Dynamo captures without a graph break: the standard normals come from the counter-based
generator of ``counter_rng`` keyed by the ``stream_key`` buffer (``stream_seed(seed, site)``)
and the ``calls`` buffer (one more per call), sigma is read from the ``sigma`` buffer (never
from the host mirrors), and ``σ·ε`` is always added (sigma 0 adds exact zeros: the output
equals the input). Changing sigma (``set_sigma``, ``set_noise``) or the seed (``reseed``,
``seed_noise``) between calls changes buffers only: no recompilation. The compiled noise is a
different stream from the eager one (eager: ``torch.Generator`` normals; compiled: the hash),
each reproducible for a given seed, both N(0, σ²) i.i.d. over elements, sites and calls.
Batch groups (one sigma per group) run compiled too for the Gaussian models: the tensor is
viewed per group along its batch dimension, each group scaled by its sigma, groups that share
a draw index reading one draw (the ``draw_index`` buffer; a different sigma or draw pattern of
the same number of groups recompiles nothing). Calibration (``calibrate_noise``), batch-dim
location and stuck-at faults in groups run eagerly only.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .config import WeightNoiseKind, check_sigma
from .counter_rng import compiling, counter_normal, counter_uniform, refuse
from .noise_models import NoiseKind, parse_kind

__all__ = ["Noise", "NoiseChain", "NoiseSetting", "SigmaLike", "stream_seed", "GroupDimError", "noise_off",
           "BatchBroadcast", "expand_batch"]

SigmaLike = Union[float, Sequence[float], Tensor]

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


class NoiseSetting(NamedTuple):
    """What ``set_sigma`` sets on a ``Noise`` module, as ``Noise.setting`` returns it and
    ``Noise.restore`` takes it back: the ``sigma`` buffer and the host mirrors the forward
    reads (one value per group, the shared draw indices)."""

    sigma: Tensor
    host: Tuple[float, ...]
    draws: Optional[Tuple[int, ...]]


class GroupDimError(ValueError):
    """A per-group sigma was used at a site whose batch dimension is not known."""


GROUPS_HINT = ("measure one sigma value per forward pass (fxharden sweep or budget --points-per-forward 1; in "
               "Python SweepConfig(points_per_forward=1)), or leave this site out (fxharden sweep --sites)")
"""How to avoid batch groups, named in every error that refuses them."""


class BatchBroadcast(str, Enum):
    """How the tensors of a site without a batch dimension broadcast against the batch later
    (found by ``groups.locate_batch_dims``; e.g. a position embedding looked up on position
    ids that the whole batch shares)."""

    LEADING_ONE = "leading-one"
    """Dim 0 has size 1 whatever the batch: ``(1, L, E)`` added to ``(N, L, E)``."""
    NO_BATCH_DIM = "no-batch-dim"
    """No dimension for the batch: ``(L, E)`` added to ``(N, L, E)``."""


def expand_batch(x: Tensor, how: BatchBroadcast, size: int) -> Tensor:
    """``x`` (a site's tensor that broadcasts against the batch as ``how`` says) as a view with
    a batch of ``size`` in dim 0."""
    if how is BatchBroadcast.NO_BATCH_DIM:
        x = x.unsqueeze(0)
    return x.expand(size, *x.shape[1:])


class Noise(nn.Module):
    """Forward-only noise: the gradient passes through unchanged.

    ``kind`` is a ``NoiseKind`` (formulas there): additive ``x + σε``, relative
    ``x + σ·rms·ε``, multiplicative ``x(1 + σε)``, log-normal ``x·exp(σε)`` (BayesFT drift),
    stuck-at faults with probability σ (drawn as uniform numbers, not normals).

    Sigma is a scalar or one value per batch group (see the module doc). Noise is generated
    and added in float32 (or float64) at the site: under bf16/fp16 autocast the site's output
    stays float32 (``keep_float32``), so small noise on large activations is not rounded away,
    or is rounded once to the input's dtype (``keep_float32=False``: activations stay bf16, see
    ``AutocastOutput``); without autocast a half/bfloat16 input gets its noisy output back in
    its own dtype.

    Under ``torch.compile`` the normals (or uniforms) come from ``counter_rng`` keyed by the
    ``stream_key`` and ``calls`` buffers instead of the generator, and sigma from its buffer:
    another stream than eager mode, as reproducible, with the same statistics; sigma and seed
    changes recompile nothing (module doc). Batch groups of Gaussian models run there too.

    Args:
        site: dotted name of the layer this module follows (``<layer>.weight`` on weights).
        seed: base seed; the generator is seeded with ``stream_seed(seed, site)``.
        kind: the noise model (a ``NoiseKind``, its name, or a ``WeightNoiseKind``).
        relative: additive only: the standard deviation is ``sigma * max|x|`` of the tensor
            the noise is added to (Noisy Machines' convention for weights).
        zero_fraction: ``STUCK`` only: share of the faulty elements stuck at 0.
        keep_float32: under autocast, hand on the float32 result (default) instead of the
            input's dtype (``HardenConfig.noise.autocast_output``).
    """

    keep_float32 = True  # the class default: modules pickled before the attribute existed keep it
    batch_dim_known = True
    unbatched = ""
    """Why the tensors at this site hold no batch dimension even where one dimension grows with
    the batch (rows regrouped by expert inside a mixture-of-experts layer); '' when they may."""
    broadcast: Optional[BatchBroadcast] = None
    """Set by ``locate_batch_dims`` at a site whose tensors have no batch dimension but broadcast
    against the batch later: with one sigma per batch group the tensor is expanded to one copy
    per group (each with its own sigma and draw, shared by the group's rows, as when the group
    runs alone) and then to the batch (``broadcast_batch`` rows)."""
    broadcast_batch = 0
    """The batch size of the current forward at a ``broadcast`` site (``ensure_batch_dims``)."""

    def __init__(self, site: str, seed: int = 0, kind=NoiseKind.ADDITIVE, relative: bool = False,
                 zero_fraction: float = 0.5, keep_float32: bool = True) -> None:
        super().__init__()
        if kind is WeightNoiseKind.NONE:
            raise ValueError("Noise needs a noise model, not WeightNoiseKind.NONE")
        kind = parse_kind(getattr(kind, "value", kind))
        if relative and kind is not NoiseKind.ADDITIVE:
            raise ValueError("relative=True (sigma * max|x|) is defined for the additive kind only")
        self.site, self.seed, self.kind, self.relative = site, int(seed), kind, bool(relative)
        self.zero_fraction = float(zero_fraction)
        self.keep_float32 = bool(keep_float32)
        self.register_buffer("sigma", torch.tensor(0.0))
        self.register_buffer("rms", torch.tensor(-1.0))  # -1: not calibrated (compares equal, unlike NaN)
        self._register_stream_buffers()
        self._calibration: Optional[list] = None  # [sum of x^2, count] while calibrate_noise runs
        self._active = False  # mirror of (sigma != 0).any(), read without a device sync
        self._host: Tuple[float, ...] = (0.0,)  # mirror of sigma (one value per group), no sync
        self._draws: Optional[Tuple[int, ...]] = None  # draw index per group (None: one each)
        self._generator: Optional[torch.Generator] = None
        self._lanes: Optional[List[torch.Generator]] = None  # CPU: the site's LANES streams
        self.batch_dim: Optional[int] = 0
        """Batch dimension of the tensors at this site: 0 for a module used on its own; inside
        a hardened model ``locate_batch_dims`` sets it (``None``: the site has none)."""
        self.batch_dim_known = True
        """False for the modules ``harden`` makes until ``locate_batch_dims`` has run: batch
        groups under ``torch.compile`` (where nothing can be located) are refused until then."""
        self._record: Optional[List[tuple]] = None  # shapes seen while locating batch dims
        self.owns_input = False
        """Set by ``harden``: the tensor this module receives is a new one that nothing else
        reads (a quantizer's or a layer's output), so without autograd the noise is added to
        it in place (no new tensor: on a CPU allocating the output costs more than the add)."""
        self._producer: tuple = ()  # (layer,) whose output arrives here: its forward hooks see it

    def extra_repr(self) -> str:
        rel = ", relative" if self.relative else ""
        return f"site={self.site!r}, kind={self.kind.value}{rel}, seed={self.seed}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_generator"], state["_record"], state["_calibration"] = None, None, None  # restarted from the seed
        state["_lanes"] = None
        return state

    def __setstate__(self, state):
        state.setdefault("owns_input", False)  # pickled before the attribute existed
        state.setdefault("_producer", ())
        state.setdefault("_lanes", None)
        super().__setstate__(state)
        if "stream_key" not in self._buffers:
            self._register_stream_buffers()
        else:  # restarted from the seed, like the eager generator
            self._buffers["calls"] = torch.zeros_like(self._buffers["calls"])
        if "draw_index" not in self._buffers:  # pickled before batch groups ran compiled
            self.register_buffer("draw_index", torch.zeros(1, dtype=torch.int64, device=self.sigma.device),
                                 persistent=False)
        self._sync_draw_index()

    def _register_stream_buffers(self) -> None:
        """The compiled path's stream (see the module doc): ``stream_key`` is
        ``stream_seed(seed, site)``, ``calls`` counts the compiled calls since the last
        (re)seed. Not in ``state_dict``: a loaded model restarts its stream, as eager does."""
        device = self.sigma.device
        self.register_buffer("stream_key", torch.tensor(stream_seed(self.seed, self.site), device=device),
                             persistent=False)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("draw_index", torch.zeros(1, dtype=torch.int64, device=device), persistent=False)

    def _sync_draw_index(self) -> None:
        """The compiled path's copy of the groups' draw indices (``set_sigma``'s ``draws``),
        renumbered 0, 1, ... in order of first use: a tensor, so new draws recompile nothing."""
        seen: Dict[int, int] = {}
        index = [seen.setdefault(d, len(seen)) for d in self._group_draws()]
        self.draw_index = torch.tensor(index, dtype=torch.int64, device=self.sigma.device)

    @property
    def calibrated(self) -> bool:
        """Whether the site's clean RMS has been measured (``calibrate_noise``)."""
        return bool(self.rms >= 0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "sigma"
        if key in state_dict and state_dict[key].shape != self.sigma.shape:
            self.sigma = torch.empty_like(state_dict[key], device=self.sigma.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + "rms" not in state_dict and prefix + "rms" in missing_keys:
            missing_keys.remove(prefix + "rms")  # saved before the rms buffer existed: uncalibrated
        if key in state_dict:  # a new sigma: the mirrors follow it, shared draws end
            self._host = tuple(self.sigma.detach().cpu().flatten().tolist())
            self._active, self._draws = any(v != 0 for v in self._host), None
            self._sync_draw_index()

    @property
    def active(self) -> bool:
        """Whether any group has sigma != 0."""
        return self._active

    @property
    def groups(self) -> int:
        """Number of batch groups (1 for a scalar sigma)."""
        return self.sigma.numel() if self.sigma.dim() == 1 else 1

    def set_sigma(self, sigma: SigmaLike, draws: Optional[Sequence[int]] = None) -> None:
        """Set the noise strength: a float, or one float per batch group (see class doc).

        Args:
            sigma: the noise strength(s), each >= 0.
            draws: with one sigma per group, one draw index per group: groups with the same
                index share one standard-normal draw, each scaled by its own sigma (use it
                for groups that differ only in sigma). ``None``: every group draws its own.
        """
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            values = torch.tensor(check_sigma(sigma))
        else:
            values = torch.as_tensor(sigma, dtype=torch.float32).detach().cpu().flatten()
            for v in values.tolist():
                check_sigma(v)
        if self.kind is NoiseKind.STUCK and bool((values > 1).any()):
            raise ValueError(f"site {self.site!r}: stuck-at noise takes a fault probability in [0, 1], got {sigma!r}")
        if draws is not None:
            draws = tuple(int(d) for d in draws)
            if values.dim() != 1 or len(draws) != values.numel():
                raise ValueError(f"noise site {self.site!r}: draws needs one index per sigma value, got "
                                 f"{len(draws)} indices for {values.numel()} values")
        self._host = tuple(values.flatten().tolist())
        self._active, self._draws = any(v != 0 for v in self._host), draws
        self.sigma = values.to(device=self.sigma.device, dtype=self.sigma.dtype)
        self._sync_draw_index()

    def setting(self) -> NoiseSetting:
        """The current noise setting, for ``restore`` (a copy: later changes do not touch it)."""
        return NoiseSetting(self.sigma.detach().clone(), self._host, self._draws)

    def restore(self, setting: NoiseSetting) -> None:
        """Set the noise back to ``setting`` (from ``setting()``), sigma and the values the
        forward reads alike, on the module's current device."""
        self.sigma = setting.sigma.to(device=self.sigma.device)
        self._host, self._draws = setting.host, setting.draws
        self._active = any(v != 0 for v in self._host)
        self._sync_draw_index()

    def reseed(self, seed: int) -> None:
        """Restart the random stream from base seed ``seed``."""
        self.seed = int(seed)
        self._generator, self._lanes = None, None
        with torch.no_grad():
            self.stream_key.fill_(stream_seed(self.seed, self.site))
            self.calls.zero_()

    def _gen(self, device: torch.device) -> torch.Generator:
        gen = self._generator
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(stream_seed(self.seed, self.site))
            self._generator, self._lanes = gen, None
        return gen

    def _gens(self, device: torch.device) -> List[torch.Generator]:
        """The site's streams for normals: its own, and on the CPU the other ``LANES - 1``."""
        first = self._gen(device)
        if device.type != "cpu":
            return [first]
        if self._lanes is None:
            rest = [torch.Generator().manual_seed(stream_seed(self.seed, f"{self.site}#{k}")) for k in range(1, LANES)]
            self._lanes = [first] + rest
        return self._lanes

    def _draw(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """Standard normals in a new tensor, from this site's streams."""
        return _normal_(torch.empty(tuple(shape), device=device, dtype=dtype), self._gens(device))

    def _eps(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype,
             slot: Optional[int] = None) -> Tensor:
        """The random numbers one application of this model consumes: standard normals of
        ``shape``, or for stuck-at faults three uniform numbers per element (``(3, *shape)``:
        fault, sign, stuck-at-zero). With ``slot`` the normals are in scratch buffer ``slot``
        (see ``_scratch_normal``), else in a new tensor."""
        if self.kind is NoiseKind.STUCK:
            return torch.rand((3,) + tuple(shape), generator=self._gen(device), device=device, dtype=dtype)
        if slot is not None:
            return _scratch_normal(shape, device, dtype, self._gens(device), slot)
        return self._draw(shape, device, dtype)

    def _group_draws(self) -> Tuple[int, ...]:
        """The draw index of every group: the shared indices, or one index per group."""
        return self._draws if self._draws is not None else tuple(range(len(self._host)))

    # ------------------------------------------------------------------ batch groups

    def observe(self, x: Tensor) -> bool:
        """While batch dims are located: record the shape of ``x`` (a batched tensor at this
        site) and return True; otherwise return False."""
        if self._record is None:
            return False
        if isinstance(x, Tensor):
            self._record.append(tuple(x.shape))
        return True

    def group_dim(self, x: Tensor) -> int:
        """The dimension of ``x`` that holds the batch, checked to split into the groups."""
        dim, groups = self.batch_dim, self.groups
        if self.unbatched:
            raise GroupDimError(
                f"noise site {self.site!r} has {groups} sigma values (one per batch group) but {self.unbatched}. "
                "Measure one sigma value per forward pass (sweep: points_per_forward=1), or exclude this site")
        if dim is None or dim >= x.dim():
            raise GroupDimError(
                f"noise site {self.site!r} has {groups} sigma values (one per batch group) but the batch "
                f"dimension of its {tuple(x.shape)} tensors is not known: the site's tensors have no "
                "dimension that follows the batch size and they do not simply broadcast against the batch; "
                + GROUPS_HINT)
        if x.shape[dim] % groups:
            raise GroupDimError(
                f"noise site {self.site!r} has {groups} sigma values but the batch of {x.shape[dim]} "
                f"(dim {dim} of {tuple(x.shape)}) does not split into {groups} equal groups; "
                "use a batch size divisible by the number of sigma values")
        return dim

    def _broadcast_rows(self) -> int:
        """Rows per group of the batch at a ``broadcast`` site, checked to split into the groups."""
        batch, groups = self.broadcast_batch, self.groups
        if batch < 1 or batch % groups:
            raise GroupDimError(
                f"noise site {self.site!r} has {groups} sigma values but the batch of {batch} does not split "
                f"into {groups} equal groups; use a batch size divisible by the number of sigma values")
        return batch // groups

    def _grouped_broadcast(self, x: Tensor) -> Tensor:
        """Per-group noise at a ``broadcast`` site: one copy of ``x`` per group (its sigma, its
        draw), each repeated for the group's rows: the batch the tensor broadcasts against."""
        rows = self._broadcast_rows()
        copies = expand_batch(x, self.broadcast, self.groups).contiguous()  # a new tensor, ours alone
        y = self._grouped(copies, 0, fresh=not (torch.is_grad_enabled() and x.requires_grad))
        return y.repeat_interleave(rows, 0) if rows > 1 else y

    # ------------------------------------------------------------------ noise

    def forward(self, x: Tensor) -> Tensor:
        if compiling() and self._calibration is None and self._record is None:
            return self._forward_compiled(x)
        if self._calibration is not None and isinstance(x, Tensor) and x.is_floating_point():
            self._calibration[0] += float(x.detach().double().pow(2).sum())
            self._calibration[1] += x.numel()
        if self.observe(x) or not self._active or not isinstance(x, Tensor) or not x.is_floating_point():
            if self._active and self._record is None and not isinstance(x, Tensor):
                warnings.warn(f"noise site {self.site!r} received a {type(x).__name__}, not a tensor: no noise "
                              "is added there (only tensors get noise)", RuntimeWarning, stacklevel=2)
            return x
        if self.kind is NoiseKind.RELATIVE and not self.calibrated:
            raise RuntimeError(
                f"relative noise at site {self.site!r} needs the site's clean signal RMS: call "
                "fxharden.calibrate_noise(model, data) once on clean data (fxharden.sweep does it for you)")
        x32 = x if x.dtype in (torch.float32, torch.float64) else x.float()
        y = self._noisy(x32, fresh=x32 is not x)
        if x32 is x or (self.keep_float32 and torch.is_autocast_enabled(x.device.type)):
            return y  # under autocast the float32 result keeps noise that the low precision would round away
        return y.to(x.dtype)  # rounded once: a half/bfloat16 model, or bf16 activations under autocast

    def _forward_compiled(self, x: Tensor) -> Tensor:
        """The forward under ``torch.compile`` (module doc): tensors only, nothing the host
        mirrors hold, ``σ·ε`` added whatever sigma is. With one sigma per batch group the
        site's tensor is viewed as ``(..., groups, batch / groups, ...)`` along its batch
        dimension (located eagerly first: ``groups.ensure_batch_dims``), each group scaled by
        its sigma, groups with one draw index sharing one draw (``draw_index``)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            return x
        x32 = x if x.dtype in (torch.float32, torch.float64) else x.float()
        groups = self.groups
        rows = 0
        if groups > 1:
            dim = self.batch_dim
            if self.broadcast is not None and self.batch_dim_known:  # one copy per group, see _grouped_broadcast
                rows, x32, dim = self._broadcast_rows(), expand_batch(x32, self.broadcast, groups), 0
            if self.kind is NoiseKind.STUCK or not self.batch_dim_known or dim is None or dim >= x32.dim():
                refuse(NotImplementedError(
                    f"noise site {self.site!r} has one sigma per batch group, which runs compiled only for "
                    "Gaussian noise models at a site whose batch dimension is located: call "
                    "fxharden.core.groups.ensure_batch_dims(model, (x,), {}) eagerly on an input first (a sweep "
                    "with compile_backend does); or use a single sigma under torch.compile, or run the "
                    "uncompiled model"))
            xg = x32.unflatten(dim, (groups, x32.shape[dim] // groups))
            eps = counter_normal(self.stream_key, self.calls, xg.shape, xg.dtype, xg.device)
            eps = eps.index_select(dim, self.draw_index)  # groups with one draw index share a draw
            view = [1] * xg.dim()
            view[dim] = groups
            sigma = self.sigma.detach().to(xg.dtype).view(view)
            y = self._inject_tensor(xg, eps, sigma).flatten(dim, dim + 1)
            if rows > 1:
                y = y.repeat_interleave(rows, 0)
        else:
            sigma = self.sigma.detach().reshape(()).to(x32.dtype)
            if self.kind is NoiseKind.STUCK:
                u = [counter_uniform(self.stream_key, self.calls, x32.shape, k, x32.dtype, x32.device)
                     for k in range(3)]
                y = self._stuck(x32, u, sigma, None)
            else:
                eps = counter_normal(self.stream_key, self.calls, x32.shape, x32.dtype, x32.device)
                y = self._inject_tensor(x32, eps, sigma)
        with torch.no_grad():
            self.calls.add_(1)
        if x32 is x or (self.keep_float32 and torch.is_autocast_enabled(x.device.type)):
            return y
        return y.to(x.dtype)

    def _inject_tensor(self, x: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
        """``_inject`` with sigma a tensor (0-dim, or one value per group broadcast along the
        group dimension) and nothing in place (the compiled path). An
        uncalibrated relative site (``rms`` -1) gives NaN: the check would need a host sync."""
        if self.kind in (NoiseKind.ADDITIVE, NoiseKind.RELATIVE):
            if self.relative:
                eps = eps * x.detach().abs().amax()
            if self.kind is NoiseKind.RELATIVE:
                rms = self.rms.detach().to(x.dtype)
                sigma = sigma * torch.where(rms >= 0, rms, torch.full_like(rms, math.nan))
            return x + sigma * eps
        if self.kind is NoiseKind.MULTIPLICATIVE:
            return x + sigma * (eps * x.detach())
        return x + x.detach() * torch.expm1(sigma * eps)  # log-normal: x exp(σε) = x + x (exp(σε) - 1)

    def _noisy(self, x32: Tensor, fresh: bool) -> Tensor:
        """The noisy ``x32`` (float32 or float64); ``fresh``: an upcast copy nobody else holds."""
        mine = not (torch.is_grad_enabled() and x32.requires_grad) and (fresh or self._may_overwrite())
        if self.groups > 1:
            if self.broadcast is not None:
                return self._grouped_broadcast(x32)
            return self._grouped(x32, self.group_dim(x32), fresh=mine)
        out = x32 if mine else None
        if self.kind is NoiseKind.STUCK:
            return self._inject(x32, self._eps(x32.shape, x32.device, x32.dtype), self._host[0], out=out)
        eps = _scratch_normal(x32.shape, x32.device, x32.dtype, self._gens(x32.device))
        return self._inject(x32, eps, self._host[0], out=out)  # saves nothing for backward: eps is free again

    def _may_overwrite(self) -> bool:
        """Whether, without autograd, the noise may be added to the input in place: the module
        owns its input and no forward hook (of this module, of the layer before it, or global)
        may hold it."""
        if not self.owns_input or self._forward_hooks or self._forward_pre_hooks:
            return False
        glob = torch.nn.modules.module
        if glob._global_forward_hooks or glob._global_forward_pre_hooks:
            return False
        return not any(m._forward_hooks for m in self._producer)

    def _grouped(self, x: Tensor, dim: int, fresh: bool) -> Tensor:
        """Noise on ``x`` whose dim ``dim`` holds the groups: group ``r`` gets ``sigma[r]``;
        groups with sigma 0 draw nothing, groups with the same draw index share their draw.
        Without autograd the groups are written into one output (``x`` itself when ``fresh``:
        an upcast copy that nobody else holds)."""
        per = x.shape[dim] // self.groups
        grad = torch.is_grad_enabled() and x.requires_grad
        out = None if grad else (x if fresh else torch.empty_like(x))
        eps: Dict[int, Tensor] = {}
        parts: List[Tensor] = []
        for r, (s, d) in enumerate(zip(self._host, self._group_draws())):
            xr = x.narrow(dim, r * per, per)
            o = None if out is None else out.narrow(dim, r * per, per)
            if s == 0:
                if o is None:
                    parts.append(xr)
                elif out is not x:
                    o.copy_(xr)
                continue
            if d not in eps:  # consumed within this call: drawn into a reused buffer
                eps[d] = self._eps(xr.shape, x.device, x.dtype, slot=len(eps))
            part = self._inject(xr, self._own(eps[d]), s, out=o)
            if o is None:
                parts.append(part)
        return torch.cat(parts, dim) if grad else out

    def draw_weights(self, w: Union[Tensor, Sequence[Tensor]]) -> List[Tensor]:
        """One perturbed copy of weight ``w`` per batch group: ``w`` itself where sigma is 0;
        groups with the same draw index share one draw, each scaled by its own sigma, and
        groups with the same draw index, sigma and input get the very same tensor (so a layer
        can run them in one call). ``w`` may already be one weight per group (the previous
        model of a ``NoiseChain``); a single sigma then applies to every group, one draw each."""
        host, draws = self._host, self._group_draws()
        ws = list(w) if isinstance(w, (list, tuple)) else [w] * len(host)
        if len(host) == 1 and len(ws) > 1:
            host, draws = host * len(ws), tuple(range(len(ws)))
        if len(host) != len(ws):
            raise ValueError(f"noise site {self.site!r}: {len(host)} sigma values for {len(ws)} weight groups")
        eps: Dict[int, Tensor] = {}
        made: Dict[Tuple[float, int, int], Tensor] = {}
        out = []
        for wi, s, d in zip(ws, host, draws):
            if s == 0:
                out.append(wi)
                continue
            if (s, d, id(wi)) not in made:
                if d not in eps:
                    eps[d] = self._eps(wi.shape, wi.device, wi.dtype)
                made[(s, d, id(wi))] = self._inject(wi, self._own(eps[d]), s)
            out.append(made[(s, d, id(wi))])
        return out

    def _own(self, eps: Tensor) -> Tensor:
        """``eps`` as ``_inject`` may consume it: a copy where it would be changed in place."""
        in_place = self.relative or self.kind in (NoiseKind.MULTIPLICATIVE, NoiseKind.LOGNORMAL)
        return eps.clone() if in_place else eps

    def _inject(self, x: Tensor, eps: Tensor, sigma: float, out: Optional[Tensor] = None) -> Tensor:
        """``x`` with noise of strength ``sigma`` from the standard normals ``eps`` (which may
        be changed in place), written into ``out`` if given (no autograd then)."""
        if self.kind is NoiseKind.STUCK:
            return self._stuck(x, eps, sigma, out)
        if self.kind in (NoiseKind.ADDITIVE, NoiseKind.RELATIVE):
            if self.relative:
                eps = eps.mul_(x.detach().abs().amax())
            if self.kind is NoiseKind.RELATIVE:
                sigma = sigma * float(self.rms)
            return torch.add(x, eps, alpha=sigma, out=out) if out is not None else torch.add(x, eps, alpha=sigma)
        if self.kind is NoiseKind.MULTIPLICATIVE:  # forward only: x (1 + s e) = x + s (e x)
            noise = eps.mul_(x.detach())
            return torch.add(x, noise, alpha=sigma, out=out) if out is not None else torch.add(x, noise, alpha=sigma)
        # log-normal drift, forward only: x * exp(l) = x + x * (exp(l) - 1)
        drift = eps.mul_(sigma).exp_().sub_(1).mul_(x.detach())
        return torch.add(x, drift, out=out) if out is not None else x + drift

    def _stuck(self, x: Tensor, u: Sequence[Tensor], p: Union[float, Tensor], out: Optional[Tensor]) -> Tensor:
        """Stuck-at faults from the uniforms ``u = (fault, sign, zero)``: each element with
        probability ``p`` is replaced by 0 (share ``zero_fraction``) or by ±max|x| (random
        sign); exact values, gradient 1 (forward only)."""
        peak = x.detach().abs().amax()
        value = torch.where(u[2] < self.zero_fraction, torch.zeros_like(x), torch.where(u[1] < 0.5, peak, -peak))
        res = torch.where(u[0] < p, value + (x - x.detach()), x)
        return out.copy_(res) if out is not None else res


@contextlib.contextmanager
def noise_off(model: nn.Module) -> Iterator[nn.Module]:
    """A block in which every ``Noise`` module of ``model`` (activations and weights, all
    models) has sigma 0; each module's full setting (``Noise.setting``) is restored when the
    block ends, however it ends. Use it wherever noise is switched off for a while (clean
    calibration, clean accuracy): restoring only the ``sigma`` buffer would leave the values
    the forward reads at 0."""
    saved = {m: m.setting() for m in model.modules() if isinstance(m, Noise)}
    try:
        for m in saved:
            m.set_sigma(0.0)
        yield model
    finally:
        for m, setting in saved.items():
            m.restore(setting)


class NoiseChain(nn.Sequential):
    """Several noise models on one weight, applied in order (drift, weight noise, faults):
    the interface of ``Noise`` that hardened layers use; each group's weight passes through
    every model's own draw (``Noise.draw_weights``)."""

    @property
    def site(self) -> str:
        return self[0].site

    @property
    def active(self) -> bool:
        return any(m.active for m in self)

    @property
    def groups(self) -> int:
        return max(m.groups for m in self if m.active) if self.active else 1

    def observe(self, x: Tensor) -> bool:
        return any([m.observe(x) for m in self])  # a list, not a generator: every member records

    def group_dim(self, x: Tensor) -> int:
        return next(m for m in self if m.active and m.groups == self.groups).group_dim(x)

    def draw_weights(self, w: Tensor) -> List[Tensor]:
        ws: List[Tensor] = [w] * self.groups
        for m in self:
            if m.active:
                ws = m.draw_weights(ws)
        return ws
