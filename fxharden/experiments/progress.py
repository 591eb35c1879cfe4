"""Live progress of ``reproduce``: what each running cell is doing, read from its folder.

Cells run in other processes (or inline, in the driver's own thread), so the driver learns
how far one has got only from the files it writes as it goes:

* training: ``progress.json`` (epoch and step, rewritten every ~2 s by ``train``;
  ``fxharden.training.status``), or ``train_log.json`` (per epoch) from older runs;
* sweep: the point store in ``<cell>/<sweep dir>/``: ``sweep.json`` (the grid: sigmas,
  repeats, networks) and ``points.jsonl`` (one line per measured chunk, with its seconds).

``read_cell`` turns a cell folder into a ``CellProgress``. ``LiveProgress`` polls the folders
of the submitted cells from a daemon thread (about once a second; the thread also works when
cells run inline in the driver's thread) and shows them: on a terminal a rich display with an
overall bar (cells done / total, failed) and one line per running cell; elsewhere (pipes, CI)
plain text at most every ``plain_every`` seconds. When the workers do not share the driver's
file system (a remote Ray cluster) nothing is read and only finished cells are reported.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from rich.console import Console
from rich.text import Text

from ..measure.results import HEADER_FILE, POINTS_FILE
from ..training.status import PROGRESS
from ..training.train import LOG

__all__ = ["Phase", "CellProgress", "read_cell", "LiveProgress"]


class Phase(str, Enum):
    """What a running cell is doing."""

    TRAIN = "train"
    SWEEP = "sweep"


@dataclass(frozen=True)
class CellProgress:
    """How far one cell has got, as its files tell."""

    key: str
    phase: Phase
    updated: float
    """Wall-clock time (``time.time()``) of the newest file read."""
    epoch: int = 0
    """Training: epochs finished."""
    epochs: int = 0
    step: Optional[int] = None
    """Training: optimizer steps done (``None``: only per-epoch information was found)."""
    steps: Optional[int] = None
    points: int = 0
    """Sweep: sigma points with every repeat of every network measured (the clean pass excluded)."""
    points_total: Optional[int] = None
    """Sweep: the grid's points (``None`` when the grid is adaptive or per layer)."""
    images_per_second: Optional[float] = None
    """Sweep: images through the network per second of measuring (replicas counted)."""

    def text(self) -> str:
        """One line: ``epoch 3/5 (step 120/200)`` or ``sweep 3/7 points, 1,234 images/s``."""
        if self.phase is Phase.TRAIN:
            running = min(self.epoch + 1, self.epochs) if self.epochs else self.epoch + 1
            head = f"epoch {running}/{self.epochs}" if self.epoch < self.epochs else f"trained {self.epochs} epochs"
            return head + (f" (step {self.step}/{self.steps})" if self.step is not None and self.steps else "")
        total = f"/{self.points_total}" if self.points_total is not None else ""
        rate = f", {self.images_per_second:,.0f} images/s" if self.images_per_second else ""
        return f"sweep {self.points}{total} points{rate}"

    @property
    def completed(self) -> float:
        """Progress of the current phase in its own units (steps or epochs; points)."""
        if self.phase is Phase.SWEEP:
            return self.points
        return self.step if self.step is not None else self.epoch

    @property
    def total(self) -> Optional[float]:
        """The end of ``completed`` (``None``: unknown)."""
        if self.phase is Phase.SWEEP:
            return self.points_total
        return self.steps if self.step is not None else self.epochs or None


def _json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or replaced between the check and the read
        return None
    return data if isinstance(data, dict) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_sweep(key: str, folder: Path, header: Dict[str, Any]) -> CellProgress:
    identity = header.get("identity", {})
    settings = identity.get("settings", {})
    repeats, nets = int(settings.get("repeats") or 1), max(1, len(identity.get("networks") or [None]))
    sigmas = settings.get("sigmas")
    fixed = sigmas is not None and settings.get("mode", "global") == "global"
    done: Dict[Any, int] = {}
    images, seconds = 0, 0.0
    try:
        raw = (folder / POINTS_FILE).read_bytes()
    except OSError:
        raw = b""
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # a line being written
        try:
            rec = json.loads(line)
        except ValueError:
            break
        if "seconds" in rec:
            images += len(rec.get("items", ())) * int(rec.get("total", 0))
            seconds += float(rec["seconds"])
        if str(rec.get("key", "")).startswith("clean/"):
            continue
        for site, sigma, _ in rec.get("items", ()):
            done[(site, sigma)] = done.get((site, sigma), 0) + 1
    points = sum(n >= repeats * nets for n in done.values())
    return CellProgress(key, Phase.SWEEP, max(_mtime(folder / HEADER_FILE), _mtime(folder / POINTS_FILE)),
                        points=points, points_total=len(sigmas) if fixed else None,
                        images_per_second=images / seconds if seconds > 0 else None)


def read_cell(cell_dir: Path, sweep_dir: str, key: Optional[str] = None) -> Optional[CellProgress]:
    """Where the cell in ``cell_dir`` stands (its sweep in ``cell_dir/sweep_dir``); ``None``
    when it has written nothing yet. Files being replaced or half-written are skipped."""
    cell_dir = Path(cell_dir)
    key = key or cell_dir.name
    sweep = cell_dir / sweep_dir
    header = _json(sweep / HEADER_FILE)
    if header is not None:  # "updated" also sees train's file: a resumed cell rewrites it before sweeping on
        swept = _read_sweep(key, sweep, header)
        return replace(swept, updated=max(swept.updated, _mtime(cell_dir / PROGRESS)))
    status = _json(cell_dir / PROGRESS)
    if status is not None:
        return CellProgress(key, Phase.TRAIN, _mtime(cell_dir / PROGRESS), epoch=int(status.get("epoch", 0)),
                            epochs=int(status.get("epochs", 0)), step=status.get("step"), steps=status.get("steps"))
    log = _json(cell_dir / LOG)
    if log is not None:
        return CellProgress(key, Phase.TRAIN, _mtime(cell_dir / LOG), epoch=int(log.get("epoch", 0)),
                            epochs=int((log.get("train_config") or {}).get("epochs", 0)))
    return None


class LiveProgress:
    """Shows ``reproduce``'s progress on ``console`` while cells run. ``reproduce`` makes one
    (``progress=True``) or takes one (``progress=LiveProgress(...)``, other settings), calls
    ``attach`` with the run, uses it as a context manager around the wait for results and
    reports each result with ``finished``.

    Args:
        console: where to show it (default: stderr).
        poll: seconds between two reads of the running cells' folders.
        plain_every: seconds between two status blocks when the console is not a terminal.
    """

    def __init__(self, console: Optional[Console] = None, *, poll: float = 1.0, plain_every: float = 30.0) -> None:
        self.poll, self.plain_every = poll, plain_every
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.cells_dir, self.sweep_dir, self.watch = Path("."), "", False
        self.total = self.done = self.failed = 0
        self._pending: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._since = time.time() - 1.0  # files older than this run belong to an earlier one
        self._last_plain = 0.0
        self._bar: Any = None
        self._tasks: Dict[str, Any] = {}

    def attach(self, cells_dir: Path, sweep_dir: str, total: int, done: int = 0, watch: bool = True) -> None:
        """The run to show: ``cells_dir`` holds one folder per cell, ``sweep_dir`` is the name of
        a cell's sweep folder; ``total`` cells, ``done`` of them finished before this run;
        ``watch``: read the running cells' folders (False when the workers do not share this
        file system: then only finished cells are reported)."""
        self.cells_dir, self.sweep_dir, self.watch = Path(cells_dir), sweep_dir, watch
        self.total, self.done = total, done
        self.failed = 0
        self._since = time.time() - 1.0

    # -- what the driver calls ------------------------------------------------------------------

    def submitted(self, keys: Iterable[str]) -> None:
        """Cells handed to the executor (shown once their files say they are running)."""
        with self._lock:
            self._pending.extend(keys)

    def finished(self, key: str, line: str, ok: bool = True) -> None:
        """A cell's result arrived: print ``line`` and count it."""
        with self._lock:
            if key in self._pending:
                self._pending.remove(key)
            self.done += ok
            self.failed += not ok
            if self._bar is not None:
                task = self._tasks.pop(key, None)
                if task is not None:
                    self._bar.remove_task(task)
                self._update_overall()
        self.print(line, style=None if ok else "red")

    def print(self, line: str, style: Optional[str] = None) -> None:
        """A line above the live display (user text: never read as markup)."""
        self.console.print(Text(line, style=style or ""), soft_wrap=True)

    def __enter__(self) -> "LiveProgress":
        self._stop.clear()
        self._last_plain = time.monotonic()
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}", markup=False), TimeElapsedColumn(),
                                 console=self.console, transient=True)
            self._tasks["<cells>"] = self._bar.add_task("cells", total=self.total, completed=self.done, detail="")
            self._update_overall()
            self._bar.start()
        self._thread = threading.Thread(target=self._loop, name="fxharden-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.stop()

    # -- the polling thread ---------------------------------------------------------------------

    def snapshot(self) -> List[CellProgress]:
        """The running cells that have written something in this run, in submission order."""
        if not self.watch:
            return []
        with self._lock:
            keys = list(self._pending)
        found = (read_cell(self.cells_dir / k, self.sweep_dir, k) for k in keys)
        return [p for p in found if p is not None and p.updated >= self._since]

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._refresh(self.snapshot())
            except Exception:  # a view only: never let it end the run
                pass

    def _update_overall(self) -> None:
        self._bar.update(self._tasks["<cells>"], completed=self.done + self.failed,
                         detail=f"{self.done} done, {self.failed} failed")

    def _refresh(self, running: List[CellProgress]) -> None:
        if not self.live:
            now = time.monotonic()
            if now - self._last_plain >= self.plain_every:
                self._last_plain = now
                self._plain(running)
            return
        with self._lock:
            for p in running:
                if p.key not in self._pending:
                    continue  # finished while it was read
                task = self._tasks.get(p.key)
                if task is None:
                    task = self._tasks[p.key] = self._bar.add_task(p.key, total=p.total, detail="")
                self._bar.update(task, completed=p.completed, total=p.total, detail=p.text())

    def _plain(self, running: List[CellProgress]) -> None:
        lines = [f"{time.strftime('%H:%M:%S')} cells {self.done + self.failed}/{self.total} "
                 f"({self.failed} failed), {len(running)} running"]
        lines += [f"  {p.key}: {p.text()}" for p in running]
        for line in lines:
            self.print(line)
