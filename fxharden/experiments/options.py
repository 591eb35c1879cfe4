"""The typed options of running an experiment (what ``--budget`` becomes). A plain enum: importing
it is cheap (no torch), so the command line can parse with it."""

from __future__ import annotations

from enum import Enum

__all__ = ["Budget"]


class Budget(str, Enum):
    """Which training budget of an experiment to run."""

    PAPER = "paper"
    """The paper's schedule (500 epochs, 10 networks per point)."""
    CPU = "cpu"
    """A budget that fits a laptop CPU (few epochs, subsets, fewer seeds)."""
    GPU = "gpu"
    """A budget sized for one GPU (all data, tens of epochs, several cells at once)."""
