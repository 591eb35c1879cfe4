"""Light option enums of the measure layer (no torch import: the CLI builds its options from them)."""

from __future__ import annotations

from enum import Enum

__all__ = ["MetricName"]


class MetricName(str, Enum):
    """The built-in sweep metrics (``fxharden.measure.scores``)."""

    TOP1 = "top1"
    TOP5 = "top5"
    LOSS = "loss"
    PERPLEXITY = "perplexity"
    TOKEN_ACCURACY = "token_accuracy"
