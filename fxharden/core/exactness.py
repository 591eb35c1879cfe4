"""The exactness check: at no-op the hardened model computes what the plain model computes.

``harden`` promises that a hardened model without noise (sigma 0) and without quantization
(``quant_off``) gives the plain model's outputs. A capture can break that promise silently on
real data: torch.export specialises a data-dependent branch to the path its example took, an
argument is fixed at a value the data do not have, a rewrite is wrong. ``sweep``, ``budget``,
``train`` and ``evaluate`` therefore run ``ExactnessCheck`` on the first batch of every new
input signature they meet (``input_signature``: the structure of the inputs, keyword names
included, and every tensor's dtype and shape without the batch dimension, which every
hardened graph takes at any size).

Cost: one forward of the plain model and one of the hardened model per signature (once per
run for image data; once per distinct sequence length for text), in eval mode and without
gradients; a mismatch costs one more pair, with forward hooks, to find the site where the
outputs first differ. Turn it off with ``check_exact=False`` (``SweepConfig``, ``evaluate``)
or the environment variable ``FXHARDEN_CHECK_EXACT=0``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from .calibrate import call_model
from .harden import HardenedModule
from .noise.verbs import noise_modules, noise_off
from .quant import quant_off
from .trace import OPAQUE_ROOT

__all__ = ["ExactnessError", "ExactnessCheck", "check_exact", "exactness_enabled", "input_signature", "ENV_VAR",
           "TOLERANCE"]

ENV_VAR = "FXHARDEN_CHECK_EXACT"
"""``FXHARDEN_CHECK_EXACT=0`` (or ``false``/``no``/``off``) turns the check off where no
``check_exact`` argument says otherwise."""

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
"""Largest accepted ``max|hardened - plain| / max|plain|`` per dtype (10x that when the two
models run on different devices: other kernels round differently; TF32 is off during the check)."""


class ExactnessError(RuntimeError):
    """The hardened model at no-op does not reproduce the plain model.

    Attributes:
        site: the site (or module) where the outputs first differ, ``None`` when no site the
            two models share differs (the difference comes from a function site or the output).
        error: the relative difference found there (at the output when ``site`` is ``None``).
    """

    def __init__(self, message: str, site: Optional[str], error: float) -> None:
        super().__init__(message)
        self.site, self.error = site, error


def exactness_enabled(flag: Optional[bool] = None) -> bool:
    """``flag`` when given, else the environment (``ENV_VAR``; on unless set to 0/false/no/off)."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def input_signature(inputs: Any) -> Tuple[Any, ...]:
    """What decides which graph path the inputs take: their structure (tuple, dict keys), and
    per tensor its dtype and shape without dim 0 (the batch); other values as they are."""
    if isinstance(inputs, Tensor):
        return ("tensor", inputs.dtype, tuple(inputs.shape[1:]) if inputs.dim() else ())
    if isinstance(inputs, Mapping):
        return ("dict",) + tuple((k, input_signature(v)) for k, v in inputs.items())
    if isinstance(inputs, (tuple, list)):
        return ("seq",) + tuple(input_signature(v) for v in inputs)
    return ("value", repr(inputs))


def _describe(inputs: Any) -> str:
    """The inputs in short: ``Tensor(4, 3, 32, 32) float32``, dicts by key."""
    if isinstance(inputs, Tensor):
        return f"Tensor{tuple(inputs.shape)} {str(inputs.dtype).replace('torch.', '')}"
    if isinstance(inputs, Mapping):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in inputs) + ")"
    return repr(inputs)


def _worst(values: List[Optional[float]]) -> Optional[float]:
    found = [v for v in values if v is not None]
    return max(found) if found else None


def _difference(got: Any, want: Any, cross_device: bool) -> Optional[float]:
    """The largest relative difference between two outputs (tensors, tuples, lists, dicts,
    ``ModelOutput``s) when it exceeds ``TOLERANCE`` (``inf`` for another structure, shape or
    dtype), else ``None``. Entries that are ``None`` on either side (a key/value cache the
    hardened model does not return) and values that are not tensors are not compared."""
    if isinstance(got, Tensor) or isinstance(want, Tensor):
        if not (isinstance(got, Tensor) and isinstance(want, Tensor)):
            return float("inf")
        return _tensor_difference(got, want, cross_device)
    if isinstance(got, Mapping) and isinstance(want, Mapping):
        keys = [k for k in got if k in want and got[k] is not None and want[k] is not None]
        return _worst([_difference(got[k], want[k], cross_device) for k in keys])
    if isinstance(got, (tuple, list)) and isinstance(want, (tuple, list)):
        if len(got) != len(want):
            return float("inf")
        return _worst([_difference(a, b, cross_device) for a, b in zip(got, want)])
    return None


def _tensor_difference(x: Tensor, y: Tensor, cross_device: bool) -> Optional[float]:
    if x.shape != y.shape or x.dtype != y.dtype:
        return float("inf")
    y = y.to(x.device)
    if not x.is_floating_point() and not x.is_complex():
        return None if torch.equal(x, y) else float("inf")
    x64, y64 = x.detach().double(), y.detach().double()
    if not torch.equal(x64.isnan(), y64.isnan()):
        return float("inf")
    x64, y64 = x64.nan_to_num(0.0), y64.nan_to_num(0.0)
    if not x64.numel():
        return None
    err = float((x64 - y64).abs().max()) / max(float(y64.abs().max()), 1e-30)
    return err if err > TOLERANCE.get(x.dtype, 1e-4) * (10 if cross_device else 1) else None


def _device(module: nn.Module) -> Optional[torch.device]:
    t = next(itertools.chain(module.parameters(), module.buffers()), None)
    return t.device if t is not None else None


def _to(inputs: Any, device: Optional[torch.device]) -> Any:
    if device is None:
        return inputs
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: _to(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to(v, device) for v in inputs)
    return inputs


class _Recorder:
    """Forward hooks that keep the first output of each named module, in call order."""

    def __init__(self) -> None:
        self.outputs: Dict[str, Tuple[int, Any]] = {}
        self.handles: List[Any] = []
        self._order = itertools.count()
        self._final: set = set()

    def watch(self, name: str, module: nn.Module, final: bool = False) -> None:
        """Record ``module``'s first output as ``name``'s; a ``final`` module (the noise module
        at a site's end) replaces what the site's layer recorded, keeping its place in the order."""
        def hook(_module: nn.Module, _args: Any, out: Any) -> None:
            if name in self._final:
                return
            if final:
                self._final.add(name)
            if final or name not in self.outputs:
                order = self.outputs[name][0] if name in self.outputs else next(self._order)
                self.outputs[name] = (order, out)
        self.handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def _ieee_float32() -> Iterator[None]:
    """Full float32 matmuls and convolutions (no TF32 on CUDA) within the block, so a model on a
    GPU and its plain model on the CPU round alike."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _run(hardened: nn.Module, plain: nn.Module, inputs: Any, watch: bool) -> Tuple[Any, Any, _Recorder, _Recorder]:
    """Both models on ``inputs`` in eval mode, without gradients, the hardened one with noise and
    quantization off; with ``watch``, the output of every site and module is recorded."""
    rec_h, rec_p = _Recorder(), _Recorder()
    if watch:
        plain_names = {n for n, _ in plain.named_modules() if n}
        sites = noise_modules(hardened) if isinstance(hardened, HardenedModule) else {}
        for site, noise in sites.items():
            rec_h.watch(site, noise, final=True)  # at sigma 0 it passes its site's output through
        for name, module in hardened.named_modules():
            short = name[len(OPAQUE_ROOT) + 1:] if name.startswith(OPAQUE_ROOT + ".") else name
            for n in (name, short):
                if n in plain_names:
                    rec_h.watch(n, module)
                    break
        for name in plain_names:
            rec_p.watch(name, plain.get_submodule(name))
    modes = (hardened.training, plain.training)
    try:
        hardened.eval()
        plain.eval()
        with torch.no_grad(), _ieee_float32():
            with noise_off(hardened), quant_off(hardened):
                got = call_model(hardened, inputs)
            want = call_model(plain, _to(inputs, _device(plain)))
    finally:
        rec_h.remove()
        rec_p.remove()
        hardened.train(modes[0])
        plain.train(modes[1])
    return got, want, rec_h, rec_p


def check_exact(hardened: nn.Module, plain: nn.Module, inputs: Any, where: str = "") -> None:
    """Check that ``hardened`` without noise and quantization reproduces ``plain`` on ``inputs``
    (a tensor, a tuple of positional or a dict of keyword inputs, as ``call_model`` takes them).

    Raises:
        ExactnessError: the outputs differ beyond ``TOLERANCE``; the message names the site
            where they first differ (``where`` says which run met the inputs).
    """
    cross = _device(hardened) != _device(plain)
    got, want, _, _ = _run(hardened, plain, inputs, watch=False)
    error = _difference(got, want, cross)
    if error is None:
        return
    _, _, rec_h, rec_p = _run(hardened, plain, inputs, watch=True)
    site, site_error, agreed = None, error, []
    for name, (_, out) in sorted(rec_h.outputs.items(), key=lambda kv: kv[1][0]):
        if name not in rec_p.outputs:
            continue
        diff = _difference(out, rec_p.outputs[name][1], cross)
        if diff is not None:
            site, site_error = name, diff
            break
        agreed.append(name)
    context = f" ({where}; inputs {_describe(inputs)})" if where else f" (inputs {_describe(inputs)})"
    if site is not None:
        found = (f"the outputs first differ at site {site!r} (relative error {site_error:.3g}"
                 f"{'; every site before it agrees' if agreed else ''})")
    else:
        found = (f"no site shared with the plain model differs ({len(agreed)} agree"
                 f"{', the last ' + repr(agreed[-1]) if agreed else ''}): the difference comes from a function "
                 "site or the graph's output")
    raise ExactnessError(
        f"the hardened model without noise and quantization does not reproduce the plain model{context}: "
        f"output relative error {error:.3g}; {found}. The capture is wrong for these inputs (e.g. torch.export "
        "specialised a data-dependent branch to its example's path, or an argument was fixed at another value): "
        "harden with example_inputs like these inputs, or frontend='fx' (parts torch.fx cannot trace keep "
        f"their Python). Set check_exact=False or {ENV_VAR}=0 to skip this check.", site, site_error)


class ExactnessCheck:
    """``check_exact`` on the first inputs of every new ``input_signature``.

    Args:
        hardened: the hardened model.
        plain: the plain model it was hardened from (same weights), or ``None``: no check.
        enabled: ``None`` reads ``FXHARDEN_CHECK_EXACT`` (``exactness_enabled``).
        where: which run meets the inputs, for the error message.
    """

    def __init__(self, hardened: nn.Module, plain: Optional[nn.Module], enabled: Optional[bool] = None,
                 where: str = "") -> None:
        self.hardened, self.plain, self.where = hardened, plain, where
        self.active = plain is not None and exactness_enabled(enabled)
        self.seen: set = set()
        self.checks = 0
        """Signatures checked (one plain forward each)."""

    def __call__(self, inputs: Any) -> None:
        if not self.active:
            return
        signature = input_signature(inputs)
        if signature in self.seen:
            return
        check_exact(self.hardened, self.plain, inputs, self.where)
        self.seen.add(signature)
        self.checks += 1
