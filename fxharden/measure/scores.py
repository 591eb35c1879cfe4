"""What a sweep measures: top-1 accuracy (the paper), or any other score of the outputs.

A metric turns a batch's outputs and targets into per-sample ``(sum, count)`` pairs; the
sweep adds them up per batch group on the device and reports ``value = Σsum / Σcount`` for
every (point, network, repeat). Token metrics on sequence outputs ``(batch, length, vocab)``
score next-token prediction, as Hugging Face causal LMs do: the logits at position ``t``
against the target at ``t + 1``, targets ``-100`` ignored.

The midpoint fit works on a score in ``[0, 1]`` that falls from its clean value to a floor:
``fit_score = (value - floor) / (ideal - floor)`` clipped to ``[0, 1]``, floor at 0 (chance).
Accuracy metrics keep their own scale (ideal 1, floor chance: ``1/V``, ``min(5, V)/V``), so
μ is the paper's. Lower-is-better metrics flip: loss (mean negative log-likelihood, ideal 0,
floor ``ln V``, the loss of a uniform guess) and perplexity, fitted on the log scale (its
log is the loss). A callable's floor, unless given, is measured at a large σ.

:class:`MetricName` lists the built-ins. torch loads when a metric first scores a batch, so
the command line builds its choices from this module without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple, Union

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["MetricName", "Metric", "resolve_metric", "output_logits", "align_targets", "IGNORE_INDEX"]

IGNORE_INDEX = -100
"""Targets with this value are not scored (Hugging Face's convention for labels)."""


class MetricName(str, Enum):
    """The built-in sweep metrics."""

    TOP1 = "top1"
    TOP5 = "top5"
    LOSS = "loss"
    PERPLEXITY = "perplexity"
    TOKEN_ACCURACY = "token_accuracy"


def output_logits(out: Any) -> Tensor:
    """The logits of a model output: the tensor itself, ``.logits`` of a Hugging Face
    ``ModelOutput``, ``["logits"]`` of a dict, or the first element of a tuple."""
    from torch import Tensor

    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        if "logits" in out:
            return out["logits"]
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}; return a tensor, "
                    "a dict or ModelOutput with 'logits', or pass a callable metric that reads your output")


def align_targets(logits: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """``(N, V)`` logits and ``(N,)`` targets; sequences are shifted for next-token prediction."""
    if logits.dim() == 3 and targets.dim() == 2 and targets.shape == logits.shape[:2]:
        logits, targets = logits[:, :-1], targets[:, 1:]
    elif logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"outputs {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match: expected "
                         "(batch, classes) logits with (batch,) targets, or (batch, length, vocab) with (batch, length)")
    return logits, targets


def _per_sample(logits: Tensor, targets: Tensor, values: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-sample sums of ``values`` and counts of ``valid`` (sequences: over their tokens)."""
    values = values.double() * valid
    if values.dim() == 2:
        return values.sum(1), valid.sum(1).double()
    return values, valid.double()


def _topk(k: int) -> Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]:
    def score(logits: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        logits, targets = align_targets(logits, targets)
        valid = targets != IGNORE_INDEX
        top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        hit = (top == targets.clamp_min(0).unsqueeze(-1)).any(-1)
        return _per_sample(logits, targets, hit, valid)
    return score


def _nll(logits: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    import torch.nn.functional as F

    logits, targets = align_targets(logits, targets)
    valid = targets != IGNORE_INDEX
    nll = F.cross_entropy(logits.float().transpose(1, -1) if logits.dim() == 3 else logits.float(),
                          targets.clamp_min(0), reduction="none")
    return _per_sample(logits, targets, nll, valid)


@dataclass(frozen=True)
class Metric:
    """A sweep metric (``fxharden.Metric``): the built-ins are instances, and so is the way to
    sweep a score whose floor a large σ does not measure well (a regression error, a score
    of unknown range): state its direction, ideal and floor.

    The fit sees ``(value - floor) / (ideal - floor)`` clipped to ``[0, 1]``; μ is where it has
    fallen half way from its clean value. For example, the absolute error of a regression
    against the error of predicting the mean of the targets ``y``::

        Metric("abs_error", lambda out, t: (out.squeeze(-1) - t).abs(), higher_is_better=False,
               ideal=0.0, floor=float((y - y.mean()).abs().mean()))

    Attributes:
        name: its name in results (``"top1"``, ..., or the callable's name).
        totals: ``(outputs, targets) -> (sums, counts)``, one pair per sample, or the
            per-sample scores alone (counts 1); every value must be finite.
        higher_is_better: the direction of the raw value.
        ideal: the best value (``None``: the clean value of each sweep).
        floor: the value of a model that knows nothing (``None``: measured under global noise
            at a large σ; a callable of the number of classes ``V`` for the built-ins).
        log_scale: the reported value is ``exp`` of the mean (perplexity).
    """

    name: str
    totals: Callable[[Any, Tensor], Tuple[Tensor, Tensor]]
    higher_is_better: bool = True
    ideal: Optional[float] = None
    floor: Union[None, float, Callable[[int], float]] = None
    log_scale: bool = False
    logits: bool = True
    """``totals`` takes the logits (``output_logits``) rather than the raw output."""
    class_targets: bool = False
    """The targets are class indices (the built-ins): a sweep refuses floating-point targets."""

    def sums(self, out: Any, targets: Tensor) -> Tuple[Tensor, Tensor]:
        """Per-sample ``(sums, counts)`` of a batch, checked."""
        import torch

        got = self.totals(output_logits(out) if self.logits else out, targets)
        n = len(targets)
        if not (isinstance(got, tuple) and len(got) == 2):
            got = (got, None)
        s, c = got
        if not isinstance(s, torch.Tensor) or s.dim() != 1 or len(s) != n:
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"metric {self.name!r} must return one score per sample, a tensor of shape ({n},) for "
                             f"{n} targets; got {shape}")
        return s.double(), (torch.ones_like(s, dtype=torch.float64) if c is None else c.double())

    def floor_value(self, classes: Optional[int]) -> Optional[float]:
        """The floor in the accumulated (mean) scale, if known."""
        if callable(self.floor):
            return self.floor(classes) if classes else None
        return self.floor

    def report(self, mean: float) -> float:
        """The value users read (perplexity: ``exp`` of the mean loss)."""
        return math.exp(mean) if self.log_scale else mean

    def fit_score(self, mean: float, ideal: float, floor: float) -> float:
        """The score in ``[0, 1]`` the midpoint fit sees: 0 at the floor, 1 at the ideal."""
        span = ideal - floor
        if span == 0 or not math.isfinite(mean):
            return 0.0
        return min(max((mean - floor) / span, 0.0), 1.0)


_BUILTIN = {
    MetricName.TOP1: lambda: Metric("top1", _topk(1), True, 1.0, lambda v: 1.0 / v, class_targets=True),
    MetricName.TOP5: lambda: Metric("top5", _topk(5), True, 1.0, lambda v: min(5, v) / v, class_targets=True),
    MetricName.TOKEN_ACCURACY: lambda: Metric("token_accuracy", _topk(1), True, 1.0, lambda v: 1.0 / v,
                                              class_targets=True),
    MetricName.LOSS: lambda: Metric("loss", _nll, False, 0.0, lambda v: math.log(v), class_targets=True),
    MetricName.PERPLEXITY: lambda: Metric("perplexity", _nll, False, 0.0, lambda v: math.log(v), log_scale=True,
                                          class_targets=True),
}


def resolve_metric(metric: Union[str, MetricName, Metric, Callable[..., Any], Any]) -> Metric:
    """A ``Metric`` from a name, a ``Metric``, a torchmetrics ``Metric`` (its per-batch value
    is the score of every sample of the batch; higher is better) or a callable
    ``(outputs, targets) -> per-sample scores`` (higher is better; floor measured).

    Raises:
        ValueError: an unknown name (the message lists the choices).
    """
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, (str, MetricName)):
        try:
            return _BUILTIN[MetricName(metric)]()
        except ValueError:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(m.value for m in MetricName)}, "
                             "or pass a callable (outputs, targets) -> per-sample scores") from None
    if hasattr(metric, "update") and hasattr(metric, "compute") and hasattr(metric, "reset"):
        tm = metric

        def batch_score(out: Tensor, targets: Tensor) -> Tensor:
            import torch

            tm.reset()
            value = tm.to(out.device)(out, targets)
            return torch.as_tensor(value, dtype=torch.float64, device=out.device).reshape(()).expand(len(targets))

        return Metric(type(tm).__name__, batch_score, bool(getattr(tm, "higher_is_better", True) is not False))
    if callable(metric):
        return Metric(getattr(metric, "__name__", type(metric).__name__), metric, logits=False)
    raise ValueError(f"metric must be one of {', '.join(m.value for m in MetricName)} or a callable, got {metric!r}")
