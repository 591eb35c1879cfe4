"""THE noise module: one noise model value (``models``) at one site, on activations or
weights, forward only, with its random stream (``streams``).

Sigma lives in a buffer (changing it needs no retrace; it travels with ``state_dict``), with
host mirrors the eager forward reads without a device sync. The site's clean RMS (relative
noise, relative units) lives in the ``rms`` buffer (-1 until ``calibrate_noise`` has run).

Batch groups: sigma may hold ``R`` values, one per group of the batch (``batch``: where the
groups lie, the eager paths that apply them). Without autograd the noise is added in place to
an input the module owns (``owns_input``).

Under ``torch.compile`` (``torch.compiler.is_compiling()``) the forward takes another path
that Dynamo captures without a graph break: the draws come from the counter-based stream
(``CounterStream``) keyed by the ``stream_key`` and ``calls`` buffers, sigma is read from its
buffer, and the model's formula is applied functionally (``NoiseModel.apply_tensor``; sigma 0
adds exact zeros). Changing sigma or the seed between calls changes buffers only: no
recompilation. What the compiled path cannot do it refuses with the error of the eager path
(an uncalibrated relative site, a batch that does not split into the groups), raised while
Dynamo traces, from host state that the trace guards on.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..config import check_sigma
from ..counter_rng import compiling, refuse
from .batch import BatchGroups, expand_batch
from .models import Draw, NoiseModel, StuckAt, noise_model
from .streams import CounterStream, EagerStream, stream_seed

__all__ = ["Noise", "NoiseSetting", "SigmaLike"]

SigmaLike = Union[float, Sequence[float], Tensor]


class NoiseSetting(NamedTuple):
    """What ``set_sigma`` sets on a ``Noise`` module, as ``Noise.setting`` returns it and
    ``Noise.restore`` takes it back: the ``sigma`` buffer and the host mirrors the forward
    reads (one value per group, the shared draw indices)."""

    sigma: Tensor
    host: Tuple[float, ...]
    draws: Optional[Tuple[int, ...]]


def _model(kind, relative: bool, zero_fraction: float) -> NoiseModel:
    """The model value of ``Noise``'s arguments (a value, or a name and its parameters)."""
    if isinstance(kind, NoiseModel):
        if relative:
            raise ValueError("relative=True goes with a model name; a model value carries its own "
                             "parameters (Additive(of_max=True))")
        return kind
    if getattr(kind, "value", kind) == "none":
        raise ValueError("Noise needs a noise model, not WeightNoiseKind.NONE")
    model = noise_model(kind)
    if relative and model.name != "additive":
        raise ValueError("relative=True (sigma * max|x|) is defined for the additive kind only")
    params = {"of_max": True} if relative else {}
    if isinstance(model, StuckAt):
        params["zero_fraction"] = zero_fraction
    return noise_model(model.name, **params) if params else model


class Noise(BatchGroups, nn.Module):
    """Forward-only noise: the gradient passes through unchanged.

    The noise model (``model``: additive ``x + σε``, relative ``x + σ·rms·ε``,
    multiplicative ``x(1 + σε)``, log-normal ``x·exp(σε)``, stuck-at faults with probability
    σ; formulas in ``fxharden.core.noise.models``) is applied with sigma a scalar or one value
    per batch group (module doc). Noise is generated and added in float32 (or float64) at the
    site: under bf16/fp16 autocast the site's output stays float32 (``keep_float32``), or is
    rounded once to the input's dtype (``keep_float32=False``); without autocast a
    half/bfloat16 input gets its noisy output back in its own dtype.

    Args:
        site: dotted name of the layer this module follows (``<layer>.weight`` on weights).
        seed: base seed; the stream is seeded with ``stream_seed(seed, site)``.
        kind: the noise model: a ``NoiseModel`` value, or a name (``NoiseKind``, its string,
            or a ``WeightNoiseKind``) with the two parameters below.
        relative: additive only: the standard deviation is ``sigma * max|x|`` of the tensor
            the noise is added to (Noisy Machines' convention for weights).
        zero_fraction: stuck-at only: share of the faulty elements stuck at 0.
        keep_float32: under autocast, hand on the float32 result (default) instead of the
            input's dtype (``HardenConfig.noise.autocast_output``).
    """

    keep_float32 = True  # the class default: modules pickled before the attribute existed keep it
    channel_dim: Optional[int] = None
    """On weights: the axis of the weight that indexes the layer's output channels, read by a
    ``channelwise`` model (per-channel weight ranges); set by ``harden`` (``set_channel_dim``)."""
    batch_dim_known = True
    _rms_known = False

    def __init__(self, site: str, seed: int = 0, kind="additive", relative: bool = False,
                 zero_fraction: float = 0.5, keep_float32: bool = True) -> None:
        super().__init__()
        self.model: NoiseModel = _model(kind, relative, zero_fraction)
        self.site, self.seed = site, int(seed)
        self.keep_float32 = bool(keep_float32)
        self.stream = EagerStream(site, self.seed)
        self.register_buffer("sigma", torch.tensor(0.0))
        self.register_buffer("rms", torch.tensor(-1.0))  # -1: not calibrated (compares equal, unlike NaN)
        self._rms_known = False  # mirror of rms >= 0, read under torch.compile
        self._register_stream_buffers()
        self._calibration: Optional[list] = None  # [sum of x^2, count] while the clean RMS is measured
        self._active = False  # mirror of (sigma != 0).any(), read without a device sync
        self._host: Tuple[float, ...] = (0.0,)  # mirror of sigma (one value per group), no sync
        self._draws: Optional[Tuple[int, ...]] = None  # draw index per group (None: one each)
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

    @property
    def kind(self) -> str:
        """The model's name (its key in ``MODELS``)."""
        return self.model.name

    @property
    def relative(self) -> bool:
        """Additive noise relative to ``max|x|`` (``Additive.of_max``)."""
        return bool(getattr(self.model, "of_max", False))

    @property
    def zero_fraction(self) -> float:
        """Stuck-at faults: the share stuck at 0 (``StuckAt.zero_fraction``)."""
        return float(getattr(self.model, "zero_fraction", 0.5))

    def extra_repr(self) -> str:
        rel = ", relative" if self.relative else ""
        return f"site={self.site!r}, kind={self.kind}{rel}, seed={self.seed}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_record"], state["_calibration"] = None, None
        return state

    def __setstate__(self, state):
        state.setdefault("owns_input", False)  # pickled before the attribute existed
        state.setdefault("_producer", ())
        if "model" not in state:  # pickled before models were values
            state["model"] = _model(state.pop("kind"), state.pop("relative", False), state.pop("zero_fraction", 0.5))
        for old in ("_generator", "_lanes"):
            state.pop(old, None)
        state.setdefault("stream", EagerStream(state["site"], state["seed"]))
        super().__setstate__(state)
        self._rms_known = bool(self.rms >= 0)
        if "stream_key" not in self._buffers:
            self._register_stream_buffers()
        else:  # restarted from the seed, like the eager stream
            self._buffers["calls"] = torch.zeros_like(self._buffers["calls"])
        if "draw_index" not in self._buffers:  # pickled before batch groups ran compiled
            self.register_buffer("draw_index", torch.zeros(1, dtype=torch.int64, device=self.sigma.device),
                                 persistent=False)
        self._sync_draw_index()

    def _register_stream_buffers(self) -> None:
        """The compiled path's stream: ``stream_key`` is ``stream_seed(seed, site)``, ``calls``
        counts the compiled calls since the last (re)seed. Not in ``state_dict``: a loaded
        model restarts its stream, as eager does."""
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

    # ------------------------------------------------------------------ the clean RMS

    @property
    def calibrated(self) -> bool:
        """Whether the site's clean RMS has been measured (``calibrate_noise``)."""
        return bool(self.rms >= 0)

    def set_rms(self, rms: float) -> None:
        """Set the site's clean signal RMS (``calibrate_noise`` measures it); -1: unknown."""
        self.rms.fill_(float(rms))
        self._rms_known = float(rms) >= 0

    @property
    def watching(self) -> bool:
        """Whether the module must see every tensor that passes, whatever its sigma: while its
        clean RMS is measured (``begin_rms``) or its batch dimension is located."""
        return self._calibration is not None or self._record is not None

    def begin_rms(self) -> None:
        """Start measuring the clean RMS: the next forwards add up ``x²`` (and add no noise
        if sigma is 0, as ``calibrate_noise`` has it)."""
        self._calibration = [0.0, 0]

    def end_rms(self, keep: bool = True) -> Optional[float]:
        """Stop measuring; with ``keep``, store and return the RMS of what the forwards saw
        (``None`` where only integer tensors passed: noise never applies there)."""
        total, count = self._calibration or (0.0, 0)
        self._calibration = None
        if not keep or count == 0:
            return None
        self.set_rms(math.sqrt(total / count))
        return float(self.rms)

    def set_channel_dim(self, dim: Optional[int]) -> None:
        """On weights: the axis of the weights this module perturbs that indexes the layer's
        output channels (0 for torch conv/linear/recurrent weights, 1 for a ``(in, out)``
        matrix); ``harden`` sets it for every layer."""
        self.channel_dim = None if dim is None else int(dim)

    def _model_kw(self) -> Dict[str, int]:
        """What the model's formula takes besides the tensor: a ``channelwise`` model's axis."""
        return {"group_dim": self.channel_dim} if self.model.channelwise and self.channel_dim is not None else {}

    @property
    def has_out_scale(self) -> bool:
        """Whether the site's output scale is set (``set_out_scale``)."""
        return "out_scale" in self._buffers

    def set_out_scale(self, scale: Tensor) -> None:
        """Set the site's output scale: what a model with ``needs_out_scale`` multiplies its
        draw by (output noise: the layer's input range times its ``max|W|``, per output channel
        shaped to broadcast against the site's output, or one value). ``harden`` sets it at the
        conv/linear outputs (``OutNoise.out_scale``); it travels with ``state_dict``."""
        scale = torch.as_tensor(scale, dtype=torch.float32).detach().to(self.sigma.device)
        if not torch.isfinite(scale).all() or (scale < 0).any():
            raise ValueError(f"noise site {self.site!r}: the output scale must be finite and >= 0, got {scale}")
        if self.has_out_scale:
            self._buffers["out_scale"] = scale.clone()
        else:
            self.register_buffer("out_scale", scale.clone())

    def _no_out_scale(self) -> RuntimeError:
        return RuntimeError(
            f"{self.model.name} noise at site {self.site!r} needs the output scale of its layer (input range "
            "times max|W|): harden sets it at conv/linear outputs; at any other site call "
            "set_out_scale(scale) on this module, or keep this model off the site (NoiseConfig.kinds)")

    def _uncalibrated(self) -> RuntimeError:
        return RuntimeError(
            f"relative noise at site {self.site!r} needs the site's clean signal RMS: call "
            "fxharden.calibrate_noise(model, data) once on clean data (fxharden.sweep does it for you)")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "sigma"
        if key in state_dict and state_dict[key].shape != self.sigma.shape:
            self.sigma = torch.empty_like(state_dict[key], device=self.sigma.device)
        if self.has_out_scale and prefix + "out_scale" in state_dict:
            self._buffers["out_scale"] = torch.empty_like(state_dict[prefix + "out_scale"], device=self.sigma.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + "rms" not in state_dict and prefix + "rms" in missing_keys:
            missing_keys.remove(prefix + "rms")  # saved before the rms buffer existed: uncalibrated
        self._rms_known = bool(self.rms >= 0)
        if key in state_dict:  # a new sigma: the mirrors follow it, shared draws end
            self._host = tuple(self.sigma.detach().cpu().flatten().tolist())
            self._active, self._draws = any(v != 0 for v in self._host), None
            self._sync_draw_index()

    # ------------------------------------------------------------------ sigma and seed

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
            sigma: the noise strength(s), each >= 0 and within the model's range.
            draws: with one sigma per group, one draw index per group: groups with the same
                index share one draw, each scaled by its own sigma (use it for groups that
                differ only in sigma). ``None``: every group draws its own.
        """
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            values = torch.tensor(check_sigma(sigma))
        else:
            values = torch.as_tensor(sigma, dtype=torch.float32).detach().cpu().flatten()
            for v in values.tolist():
                check_sigma(v)
        host = tuple(values.flatten().tolist())
        self.model.check_sigma(host, self.site)
        if draws is not None:
            draws = tuple(int(d) for d in draws)
            if values.dim() != 1 or len(draws) != values.numel():
                raise ValueError(f"noise site {self.site!r}: draws needs one index per sigma value, got "
                                 f"{len(draws)} indices for {values.numel()} values")
        self._host = host
        self._active, self._draws = any(v != 0 for v in self._host), draws
        self.sigma = values.to(device=self.sigma.device, dtype=self.sigma.dtype)
        self._sync_draw_index()

    def set_model(self, model: NoiseModel) -> None:
        """Replace the noise model by the value ``model`` (a sweep over a model's field, e.g.
        the time of a device model: ``n.set_model(dataclasses.replace(n.model, t=3600.0))``).
        Sigma, the seed and the streams stay. A compiled model sees the new value: its graph
        guards on the model's fields and is traced again.

        Raises:
            TypeError: ``model`` is not a ``NoiseModel`` value.
            ValueError: the current sigma is outside the new model's range."""
        if not isinstance(model, NoiseModel):
            raise TypeError(f"noise site {self.site!r}: set_model takes a NoiseModel value (e.g. PCM(t=3600.0)), "
                            f"got {type(model).__name__} {model!r}")
        model.check_sigma(self._host, self.site)
        self.model = model

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
        """Restart the random streams (eager and compiled) from base seed ``seed``."""
        self.seed = int(seed)
        self.stream.reseed(self.seed)
        with torch.no_grad():
            self.stream_key.fill_(stream_seed(self.seed, self.site))
            self.calls.zero_()

    def _draw(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """Standard normals in a new tensor, from this site's eager stream."""
        return self.stream.normal(shape, device, dtype)

    def _group_draws(self) -> Tuple[int, ...]:
        """The draw index of every group: the shared indices, or one index per group."""
        return self._draws if self._draws is not None else tuple(range(len(self._host)))

    # ------------------------------------------------------------------ noise

    def forward(self, x: Tensor) -> Tensor:
        if compiling() and not self.watching:
            return self._forward_compiled(x)
        if self._calibration is not None and isinstance(x, Tensor) and x.is_floating_point():
            self._calibration[0] += float(x.detach().double().pow(2).sum())
            self._calibration[1] += x.numel()
        if self.observe(x) or not self._active or not isinstance(x, Tensor) or not x.is_floating_point():
            if self._active and self._record is None and not isinstance(x, Tensor):
                warnings.warn(f"noise site {self.site!r} received a {type(x).__name__}, not a tensor: no noise "
                              "is added there (only tensors get noise)", RuntimeWarning, stacklevel=2)
            return x
        if self.model.needs_rms and not self.calibrated:
            raise self._uncalibrated()
        if self.model.needs_out_scale and not self.has_out_scale:
            raise self._no_out_scale()
        x32 = x if x.dtype in (torch.float32, torch.float64) else x.float()
        y = self._noisy(x32, fresh=x32 is not x)
        if x32 is x or (self.keep_float32 and torch.is_autocast_enabled(x.device.type)):
            return y  # under autocast the float32 result keeps noise that the low precision would round away
        return y.to(x.dtype)  # rounded once: a half/bfloat16 model, or bf16 activations under autocast

    def _rms(self) -> Union[float, Tensor]:
        """The formula's reference (eager): the clean RMS, the output scale, or -1 (none)."""
        if self.model.needs_out_scale:
            return self.out_scale
        return float(self.rms) if self.model.needs_rms else -1.0

    def _forward_compiled(self, x: Tensor) -> Tensor:
        """The forward under ``torch.compile`` (module doc): tensors only, nothing the host
        mirrors of sigma hold, the model's formula applied whatever sigma is. With one sigma
        per batch group the site's tensor is viewed as ``(..., groups, batch / groups, ...)``
        along its batch dimension (located eagerly first: ``groups.ensure_batch_dims``), each
        group scaled by its sigma, groups with one draw index sharing one draw."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            return x
        if self.model.needs_rms and not self._rms_known:
            refuse(self._uncalibrated())
        if self.model.needs_out_scale and not self.has_out_scale:
            refuse(self._no_out_scale())
        x32 = x if x.dtype in (torch.float32, torch.float64) else x.float()
        ref = self.out_scale if self.model.needs_out_scale else self.rms
        stream, rms = CounterStream(self.stream_key, self.calls), ref.detach().to(x32.dtype)
        groups = self.groups
        if groups > 1:
            if self.model.draw is not Draw.NORMAL or self.model.channelwise or not self.batch_dim_known:
                refuse(NotImplementedError(
                    f"noise site {self.site!r} has one sigma per batch group, which runs compiled only for "
                    "noise models of one normal per element (not per channel) at a site whose batch dimension is located: call "
                    "fxharden.core.groups.ensure_batch_dims(model, (x,), {}) eagerly on an input first (a sweep "
                    "with compile_backend does); or use a single sigma under torch.compile, or run the "
                    "uncompiled model"))
            rows, dim = 0, self.batch_dim
            error = self._broadcast_error() if self.broadcast is not None else self._group_error(x32)
            if error is not None:  # the eager path's error, raised while tracing
                refuse(error)
            if self.broadcast is not None:  # one copy per group, see _grouped_broadcast
                rows, x32, dim = self.broadcast_batch // groups, expand_batch(x32, self.broadcast, groups), 0
            xg = x32.unflatten(dim, (groups, x32.shape[dim] // groups))
            eps = stream.normal(xg.shape, xg.device, xg.dtype).index_select(dim, self.draw_index)
            view = [1] * xg.dim()
            view[dim] = groups
            sigma = self.sigma.detach().to(xg.dtype).view(view)
            y = self.model.apply_tensor(xg, eps, sigma, rms, group_dim=dim).flatten(dim, dim + 1)
            if rows > 1:
                y = y.repeat_interleave(rows, 0)
        else:
            sigma = self.sigma.detach().reshape(()).to(x32.dtype)
            y = self.model.apply_tensor(x32, stream.draw(self.model.draw, x32.shape, x32.device, x32.dtype),
                                        sigma, rms, **self._model_kw())
        with torch.no_grad():
            self.calls.add_(1)
        if x32 is x or (self.keep_float32 and torch.is_autocast_enabled(x.device.type)):
            return y
        return y.to(x.dtype)

    def _noisy(self, x32: Tensor, fresh: bool) -> Tensor:
        """The noisy ``x32`` (float32 or float64); ``fresh``: an upcast copy nobody else holds."""
        mine = not (torch.is_grad_enabled() and x32.requires_grad) and (fresh or self._may_overwrite())
        if self.groups > 1:
            if self.broadcast is not None:
                return self._grouped_broadcast(x32)
            return self._grouped(x32, self.group_dim(x32), fresh=mine)
        # a draw consumed at once (scratch slot 0): nothing keeps it for backward
        eps = self.stream.draw(self.model.draw, x32.shape, x32.device, x32.dtype, slot=0)
        return self.model.apply(x32, eps, self._host[0], self._rms(), out=x32 if mine else None, **self._model_kw())

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
