"""THE quantizer: uniform fake quantization (paper Eq. 3-5) and its two modules.

``q = clamp(round(x * (1/s)) + z, qmin, qmax)`` and back: ``y = (q - z) * s``. Rounding is
round-half-to-even and the multiplication by ``1/s`` (a float32 reciprocal) is the arithmetic
of PyTorch's fused fake-quantize kernels, so every path gives their values bit for bit. The
fused kernels are not used: on the CPU they run about 2x slower than the same arithmetic as
four in-place passes (they also write a mask; ``benchmarks/overhead.py --generators``), so a
fixed step runs ``_quantize`` (the passes; ``_FixedStep`` keeps a mask when autograd needs
it) and a learned step the composite path with a straight-through round. Nothing else in fxharden rounds or clamps.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from .counter_rng import compiling, refuse
from .grid_usage import CLIP_FRACTION, FEW_LEVELS, GridUsage, GridWarning  # noqa: F401 (re-exported)

__all__ = ["qrange", "round_ste", "fake_quantize", "ActQuant", "WeightQuant", "GridUsage", "GridWarning", "MIN_STEP",
           "FEW_LEVELS", "CLIP_FRACTION", "frozen_weights", "quant_off"]

MIN_STEP = 1e-8
"""Smallest step a statistics-based scale may take (an all-zero tensor would give 0)."""

def qrange(bits: int, signed: bool, levels: Optional[int] = None) -> Tuple[int, int]:
    """Integer grid ``[qmin, qmax]``: ``[-2^(b-1), 2^(b-1)-1]`` signed, ``[0, 2^b-1]`` unsigned;
    with an odd number of ``levels``, the symmetric grid ``[-(levels-1)/2, (levels-1)/2]``."""
    if levels is not None:
        return -((levels - 1) // 2), (levels - 1) // 2
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def round_ste(x: Tensor) -> Tensor:
    """Round to nearest (half to even) with a straight-through gradient of 1."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(
    x: Tensor,
    scale: Tensor,
    qmin: int,
    qmax: int,
    zero_point: int = 0,
    axis: Optional[int] = None,
    clip_grad_only: bool = False,
) -> Tensor:
    """Quantize ``x`` onto the grid ``s * (k - z)``, ``k in [qmin, qmax]``, and dequantize.

    Args:
        x: float tensor.
        scale: the step ``s``: a 0-dim tensor (per tensor) or a 1-dim tensor of
            ``x.shape[axis]`` steps (per channel). All steps must be > 0.
        qmin, qmax: the integer grid (see ``qrange``).
        zero_point: the integer ``z`` that represents 0.0.
        axis: the channel axis for per-channel steps.
        clip_grad_only: with a learned step, only clipped values pass gradient to the step
            (``qmin`` or ``qmax`` times theirs); values inside the grid pass none (the range
            learning of analog converters). Default: the straight-through gradient of every
            value, ``round(x/s) - x/s`` inside the grid.

    Returns:
        A tensor like ``x``. The gradient with respect to ``x`` is 1 where
        ``qmin <= round(x/s) + z <= qmax`` and 0 where the value was clipped; with a learned
        step (``scale.requires_grad``) the step receives the straight-through gradient.
    """
    orig_dtype = x.dtype
    if orig_dtype != torch.float32:
        x = x.float()
    scale = scale.float()
    inv = 1.0 / scale
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, inv = scale.view(shape), inv.view(shape)
    if scale.requires_grad and torch.is_grad_enabled() and clip_grad_only:
        q = torch.round(x.detach() * inv.detach()) + zero_point
        inside = (q >= qmin) & (q <= qmax)
        level = torch.clamp(q, qmin, qmax) - zero_point
        # inside: the grid value, gradient 1 for x and none for the step; clipped: the end level times the step
        y = torch.where(inside, (level * scale).detach() + (x - x.detach()), level * scale)
    elif scale.requires_grad and torch.is_grad_enabled():
        q = round_ste(x * inv) + zero_point
        inside = (q >= qmin) & (q <= qmax)  # inclusive, like the fused kernels' gradient mask
        q = torch.where(inside, q, torch.clamp(q.detach(), qmin, qmax))
        y = (q - zero_point) * scale
    elif torch.is_grad_enabled() and x.requires_grad:
        y = _FixedStep.apply(x, scale, inv, qmin, qmax, zero_point)
    else:
        y = _quantize(x, scale, inv, qmin, qmax, zero_point)[0]
    return y if orig_dtype == torch.float32 else y.to(orig_dtype)


def _quantize(x: Tensor, scale: Tensor, inv: Tensor, qmin: int, qmax: int, zero_point: int,
              with_mask: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """The fake-quantized ``x`` in one new tensor, computed in place pass by pass, and with
    ``with_mask`` the gradient mask (not clipped)."""
    q = x.mul(inv).round_()
    if zero_point:
        q.add_(zero_point)
    mask = (q >= qmin).logical_and_(q <= qmax) if with_mask else None
    q.clamp_(qmin, qmax)
    if zero_point:
        q.sub_(zero_point)
    return q.mul_(scale), mask


class _FixedStep(torch.autograd.Function):
    """Fake quantization with a fixed step: gradient 1 where not clipped, 0 where clipped."""

    @staticmethod
    def forward(ctx, x, scale, inv, qmin, qmax, zero_point):  # type: ignore[override]
        y, mask = _quantize(x, scale, inv, qmin, qmax, zero_point, with_mask=True)
        ctx.save_for_backward(mask)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None, None


class ActQuant(nn.Module):
    """Per-tensor activation quantizer.

    Three behaviours, all with one grid:

    * constant step (``step`` given): the step never changes;
    * statistics-based (``step=None, learn=False``): the step is the running maximum of
      ``peak / levels`` over the first ``calibration_steps`` batches, then fixed;
    * dynamic (``step=None, learn=True``): initialised like the statistics-based one, then a
      learned parameter (the straight-through estimator gives it a gradient).

    ``peak`` is ``max|x|`` (signed grid) or ``max(x, 0)`` (unsigned), and ``levels = qmax``:
    the peak is the top level. A converter (``converter=True``, an ADC/DAC with a calibrated
    bound) follows the converter grid instead: the bound ``B = max|x|`` is the full scale, not
    a level, ``Δ = B / 2^(b-1)`` signed, ``Δ = B / (2^b - 1)`` unsigned. With ``grid_levels``
    (an odd count L, converters) the grid is symmetric, ``[-(L-1)/2, (L-1)/2]``, and the
    bound is its top level: ``Δ = B / ((L-1)/2)``, so the calibrated peak is not clipped.
    With ``percentile`` (converters) ``B`` is that percentile of ``|x|`` over all calibration
    values so far (numpy's linear interpolation), not the maximum. A converter may learn its
    step from a given one (``learn`` with ``step``); its step then gets gradient from clipped
    values only (``fake_quantize``'s ``clip_grad_only``).

    Percentile calibration keeps only the largest ``|x|`` values it can still need (a share
    ``1 - percentile/100`` of ``calibration_steps`` times the largest batch seen), so its bound
    is numpy's percentile exactly when no batch is larger than an earlier one.

    Calibration happens in training mode, and in eval mode for a quantizer that has not seen
    data in training (so a fresh model can be evaluated without training first): it observes
    its first ``calibration_steps`` eval batches too. The defined step for a fresh model is
    ``fxharden.calibrate_quantizers(model, data)`` on real data, which ``sweep`` and
    ``evaluate`` run themselves and which fixes the steps. A degenerate batch (peak 0, or all
    values equal: a smoke test with ``torch.zeros``) is quantized but not counted: the first
    real batch replaces its step. A step that only degenerate batches have set is fixed only
    by ``finish_calibration``, with a warning. An empty batch (no values) is quantized (to an
    empty tensor) and not observed.

    While ``calibrate_quantizers`` runs, the quantizer also records how its data use the grid
    (``GridUsage``): calibration warns when a step erases the signal or clips it.

    Integer tensors (token ids, indices) pass through unchanged: they are never quantized.

    With ``sign_from_data`` (a statistics-based or learned step; ``harden`` sets it at input
    sites) the calibration data choose the grid: unsigned (``[0, 2^b - 1]``, half the step of
    the signed grid for the same peak) while every value seen is >= 0 (spectrograms, images in
    [0, 1]), signed from the first batch with a negative value on. The choice is the buffer
    ``signed_grid`` (it travels in checkpoints) and shows in ``extra_repr``; after
    calibration, data with negative values clip to 0 on an unsigned grid.

    Under ``torch.compile`` the step must be fixed (constant, or calibrated with
    ``calibrate_quantizers`` before compiling): the calibration branch depends on the host
    counter of observed batches, so a quantizer that is still calibrating raises instead of
    recompiling at every batch. A fixed step makes the branch a constant: one graph, no break.
    """

    def __init__(
        self,
        bits: int,
        signed: bool,
        step: Optional[float] = None,
        learn: bool = False,
        calibration_steps: int = 30,
        converter: bool = False,
        sign_from_data: bool = False,
        grid_levels: Optional[int] = None,
        percentile: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.bits, self.signed, self.converter = bits, signed, bool(converter)
        self.grid_levels = grid_levels if converter else None
        self.percentile = percentile if converter else None
        self.qmin, self.qmax = qrange(bits, signed, self.grid_levels)
        # peak / levels = step
        self.levels = -self.qmin if converter and signed and grid_levels is None else self.qmax
        self.calibration_steps = 0 if step is not None else calibration_steps
        self.sign_from_data = sign_from_data and step is None and not converter
        if self.sign_from_data:  # the grid chosen by calibration travels with the step
            self.register_buffer("signed_grid", torch.tensor(bool(signed)))
        self.learn = learn and (step is None or self.converter)
        self._top: Optional[Tensor] = None  # percentile calibration: the largest |x| seen, descending
        self._count = self._batch_max = 0  # percentile calibration: values seen, largest batch
        init = torch.tensor(float(step) if step is not None else 1.0)
        if self.learn:
            self.scale = nn.Parameter(init)
        else:
            self.register_buffer("scale", init)
        self.register_buffer("observed", torch.tensor(0, dtype=torch.int64))
        self._observed = 0  # mirror of the buffer, read without a device sync
        self._eval_calibration = False  # calibrating in eval mode (began there, with no data seen in training)
        self._degenerate = False  # the step was set by degenerate batches only (not counted in observed)
        self._usage: Optional[GridUsage] = None  # while calibrate_quantizers records how the grid is used
        self.grid_checked = False  # calibrate_quantizers has recorded how real data use the grid (GridUsage)

    def __setstate__(self, state):
        state.setdefault("converter", False)  # pickled before these attributes existed
        state.setdefault("levels", state["qmax"])
        state.setdefault("_eval_calibration", False)
        state.setdefault("_degenerate", False)
        state.setdefault("_usage", None)
        state.setdefault("grid_checked", state.pop("_grid_checked", False))
        state.setdefault("sign_from_data", False)
        state.setdefault("grid_levels", None)
        state.setdefault("percentile", None)
        state.setdefault("_top", None)
        state.setdefault("_count", 0)
        state.setdefault("_batch_max", 0)
        super().__setstate__(state)

    def extra_repr(self) -> str:
        kind = "learned" if self.learn else "constant" if self.calibration_steps == 0 else "statistics"
        grid = "signed" if self.signed else "unsigned"
        if self.sign_from_data:
            grid = ("unsigned (calibration data >= 0)" if not self.signed else "signed") if self._observed else \
                "signed, unsigned if the calibration data are >= 0"
        if self.grid_levels is not None:
            grid = f"symmetric {self.grid_levels} levels"
        bound = f", bound=p{self.percentile:g}" if self.percentile is not None and self.calibration_steps else ""
        return f"bits={self.bits}, {grid}, step={kind}{bound}{', converter' if self.converter else ''}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs):
        key = prefix + "signed_grid"
        saved = key in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs)
        if self.sign_from_data and not saved and key in missing_keys:
            missing_keys.remove(key)  # saved before the grid followed the data: it stays signed
        elif self.sign_from_data:
            self._set_grid(bool(self.signed_grid), rescale=False)
        self._observed = int(self.observed)
        if self._observed == 0:
            self._eval_calibration = False  # else the module's own history stands (locate_batch_dims restores it)

    @property
    def needs_data(self) -> bool:
        """Whether the step still waits for data that ``calibrate_quantizers`` would give it:
        statistics-based or dynamic, no batch seen in training, calibration not finished."""
        return self._observed < self.calibration_steps and (self._observed == 0 or self._eval_calibration)

    @property
    def calibration_left(self) -> int:
        """Batches the step still counts before it is fixed (0: a constant or fixed step)."""
        return max(self.calibration_steps - self._observed, 0)

    def begin_grid_check(self) -> None:
        """Record how the next forwards' data use the grid (``GridUsage``)."""
        self._usage = GridUsage(self)

    def end_grid_check(self, keep: bool = True) -> str:
        """Stop recording; with ``keep``, set ``grid_checked`` (once data came) and return what
        is wrong with the grid (``GridUsage.problem``; ``""``: nothing, or not kept)."""
        usage, self._usage = self._usage, None
        if not keep or usage is None:
            return ""
        self.grid_checked = usage.seen
        return usage.problem()

    def _calibrating(self) -> bool:
        if self._observed >= self.calibration_steps:
            return False
        return self.training or self._observed == 0 or self._eval_calibration

    def _set_grid(self, signed: bool, rescale: bool = True) -> None:
        """Use the signed or the unsigned grid; ``rescale``: keep the peak the step was set from."""
        if signed != self.signed:
            peak = self.scale.detach() * self.levels
            self.signed = signed
            self.qmin, self.qmax = qrange(self.bits, signed)
            self.levels = self.qmax
            if rescale:
                self.scale.data.copy_((peak / self.levels).clamp_min(MIN_STEP))
            if self._usage is not None:
                self._usage.qmin, self._usage.qmax = self.qmin, self.qmax
        self.signed_grid.fill_(signed)

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        x = x.detach()
        if self.sign_from_data and (self._observed == 0 or not self.signed):
            # unsigned while every calibration value is >= 0 (one host sync per calibration batch)
            self._set_grid(bool(x.amin() < 0))
        if self.percentile is not None:
            peak = self._percentile_peak(x)
        else:
            peak = x.abs().amax() if self.signed or self.converter else x.amax().clamp_min(0)
        step = (peak.float() / self.levels).clamp_min(MIN_STEP).to(self.scale.dtype)
        if self._observed == 0:
            self.scale.copy_(step)
            # peak 0 or constant: not real data; the next batch calibrates again (one host sync
            # per batch, only until the first real batch)
            if bool((peak == 0) | (x.amin() == x.amax())):
                self._degenerate = True
                self._top, self._count = None, 0
                return
            self._degenerate, self._eval_calibration = False, not self.training
        elif self.percentile is not None:
            self.scale.copy_(step)  # the percentile of all values so far
        else:
            torch.maximum(self.scale, step, out=self.scale.data)
        self._observed += 1
        self.observed.fill_(self._observed)
        if self._observed >= self.calibration_steps:
            self._top = None

    def _percentile_peak(self, x: Tensor) -> Tensor:
        """The ``percentile`` of ``|x|`` over this batch and the values kept from earlier ones
        (numpy's default: linear interpolation between the two nearest ranks), in float64."""
        a = x.detach().abs().flatten().double()
        self._count += a.numel()
        self._batch_max = max(self._batch_max, a.numel())
        q = self.percentile / 100.0
        most = max(self._count, self.calibration_steps * self._batch_max)  # values calibration may still see
        keep = math.ceil((1.0 - q) * (most - 1)) + 2  # ranks above the percentile, and the two it lies between
        pool = a if self._top is None else torch.cat([self._top, a])
        self._top = pool.topk(min(keep, pool.numel())).values  # descending
        h = (self._count - 1) * q
        lo = math.floor(h)
        below = self._top[self._count - 1 - lo]  # ascending rank lo
        above = self._top[max(self._count - 2 - lo, 0)]  # ascending rank lo + 1 (the last rank: itself)
        return below + (h - lo) * (above - below)

    def finish_calibration(self, name: str = "") -> None:
        """Fix the step as it is now: no later batch changes it (``observed`` is set to
        ``calibration_steps``). Warns when the step comes from degenerate batches only (peak 0
        or constant data); a quantizer that has seen no batch at all is left as it is."""
        if self._observed >= self.calibration_steps:
            return
        if self._observed == 0:
            if not self._degenerate:
                return
            warnings.warn(
                f"activation quantizer {name or '(unnamed)'!r} saw only degenerate batches (all values equal, "
                f"e.g. zeros) while calibrating; its step is fixed at {float(self.scale.detach()):.3g} from them. "
                "Calibrate on real data: fxharden.calibrate_quantizers(model, data) before any other forward, "
                "or give the quantizer a constant step", stacklevel=3)
        self._observed, self._eval_calibration, self._degenerate = self.calibration_steps, False, False
        self.observed.fill_(self._observed)
        self._top = None

    _off = 0
    """Depth of enclosing ``quant_off`` blocks: the input passes unchanged and is not observed."""

    def forward(self, x: Tensor) -> Tensor:
        if self._off or not isinstance(x, Tensor) or not x.is_floating_point():
            return x  # ids and indices (and a non-tensor input): quantizing them would change which row is looked up
        if self._calibrating():
            if compiling():
                refuse(RuntimeError(
                    f"an activation quantizer ({self.extra_repr()}) is still calibrating its step "
                    f"({self._observed} of {self.calibration_steps} batches seen) inside torch.compile, which "
                    "would recompile at every batch: call fxharden.calibrate_quantizers(model, data) on real data "
                    "before compiling (it fixes the steps), or give the quantizers a constant step"))
            if x.numel():
                self._observe(x)
        scale = self.scale
        if self.learn:
            scale = scale.abs().clamp_min(MIN_STEP)
        if self._usage is not None:
            self._usage.record(x, scale)
        return fake_quantize(x, scale, self.qmin, self.qmax, clip_grad_only=self.converter)


class WeightQuant(nn.Module):
    """Symmetric signed weight quantizer, step ``max|w| / qmax`` from the current weights.

    ``axis=0`` gives one step per output channel (convolutions), ``axis=None`` one step per
    tensor (linear layers). The step follows the weights as they train. The quantized weight
    is recomputed at every forward, except inside ``frozen_weights`` (see there).
    """

    def __init__(self, bits: int, axis: Optional[int]) -> None:
        super().__init__()
        self.bits, self.axis = bits, axis
        self.qmin, self.qmax = qrange(bits, signed=True)
        self._frozen = 0  # depth of enclosing frozen_weights blocks
        self._cache: Dict[tuple, Tensor] = {}  # filled only inside frozen_weights

    def extra_repr(self) -> str:
        return f"bits={self.bits}, {'per-channel' if self.axis is not None else 'per-tensor'}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"], state["_frozen"] = {}, 0
        return state

    def step(self, w: Tensor) -> Tensor:
        """The quantization step(s) for weight ``w``."""
        w = w.detach()
        if self.axis is None:
            peak = w.abs().amax()
        else:
            peak = w.abs().transpose(0, self.axis).reshape(w.shape[self.axis], -1).amax(dim=1)
        return (peak.float() / self.qmax).clamp_min(MIN_STEP)

    _off = 0
    """Depth of enclosing ``quant_off`` blocks: the weight passes unchanged."""

    def forward(self, w: Tensor) -> Tensor:
        if self._off:
            return w
        key = None
        if self._frozen and not compiling() and not (torch.is_grad_enabled() and w.requires_grad):
            # an inference tensor is only ever handed to another inference-mode forward; compiled,
            # the quantization is part of the graph (no host-side cache to consult)
            key = (w.data_ptr(), w._version, w.device, w.dtype, torch.is_inference_mode_enabled())
            if key in self._cache:
                return self._cache[key]
        out = fake_quantize(w, self.step(w), self.qmin, self.qmax, axis=self.axis)
        if key is not None:
            self._cache[key] = out
        return out


@contextlib.contextmanager
def frozen_weights(model: nn.Module) -> Iterator[nn.Module]:
    """A block in which ``model``'s weights do not change: each weight quantizer computes its
    quantized weight once per device/dtype and reuses it (what a sweep does).

    Outside such a block nothing is cached, so any change to a weight (an optimizer step,
    ``weight.data.zero_()``, ``load_state_dict``) is seen by the next forward. The caches are
    dropped when the block ends. Changing a weight inside the block is not supported.
    """
    quants = [m for m in model.modules() if isinstance(m, WeightQuant)]
    for q in quants:
        q._frozen += 1
    try:
        yield model
    finally:
        for q in quants:
            q._frozen -= 1
            if not q._frozen:
                q._cache = {}


@contextlib.contextmanager
def quant_off(model: nn.Module) -> Iterator[nn.Module]:
    """A block in which every quantizer of ``model`` (activations, ADC/DAC converters, weights)
    passes its input through unchanged; activation quantizers do not calibrate on what they see.
    With ``noise_off`` it makes a hardened model compute what the plain model computes
    (``fxharden.core.exactness``). Nested blocks are fine; each ends, however it ends, by
    restoring the quantizers."""
    quants = [m for m in model.modules() if isinstance(m, (ActQuant, WeightQuant))]
    for q in quants:
        q._off += 1
    try:
        yield model
    finally:
        for q in quants:
            q._off -= 1
            if not q._off:
                del q._off  # back to the class default
