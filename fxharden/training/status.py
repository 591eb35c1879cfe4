"""``progress.json``: where a training run stands, for whoever watches its output folder.

``train`` writes it atomically when it starts, at the end of every epoch and, within an
epoch, at most every ``interval`` seconds of steps (a clock read per step, no device sync),
so a driver running cells in other processes can show epoch and step of each one
(``fxharden.experiments.progress``). It is only a view: resuming reads the checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

from .._files import atomic_write_json

__all__ = ["PROGRESS", "ProgressFile"]

PROGRESS = "progress.json"
"""File name inside a training run's output directory."""


class ProgressFile:
    """Writes ``out/progress.json`` = ``{"epoch", "epochs", "step", "steps", "finished", "time"}``
    at a bounded rate.

    ``epoch`` counts finished epochs (the one running is ``epoch + 1``), ``step`` optimizer
    steps done of ``steps`` in the whole run, ``time`` the wall-clock time of the write.

    Args:
        out: the run's output directory; ``None`` writes nothing.
        epochs, steps: the run's planned epochs and optimizer steps.
        interval: least seconds between two writes within an epoch.
    """

    def __init__(self, out: Optional[Path], epochs: int, steps: int, interval: float = 2.0) -> None:
        self.path = out / PROGRESS if out is not None else None
        self.epochs, self.steps, self.interval = epochs, steps, interval
        self._last = -float("inf")

    def update(self, state: Dict[str, Any], force: bool = False) -> None:
        """Record ``state`` (``epoch``, ``step``, ``finished``) if ``interval`` seconds have
        passed since the last write, or always with ``force``."""
        now = time.monotonic()
        if self.path is None or (not force and now - self._last < self.interval):
            return
        self._last = now
        try:
            atomic_write_json(self.path, {"epoch": state["epoch"], "epochs": self.epochs, "step": state["step"],
                                          "steps": self.steps, "finished": bool(state["finished"]),
                                          "time": time.time()})
        except OSError:  # a view only: a full disk or a vanished folder must not stop training
            pass
