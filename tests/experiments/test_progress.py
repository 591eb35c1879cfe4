"""Live progress of reproduce: the reader of cell folders, the writer in train, the display."""

import io
import json
import time

import torch
from rich.console import Console
from torch import nn

from fxharden.experiments.progress import LiveProgress, Phase, read_cell
from fxharden.experiments.reproduce import SWEEP_DIR, reproduce
from fxharden.measure.results import HEADER_FILE, POINTS_FILE
from fxharden.training.status import PROGRESS, ProgressFile
from fxharden.training.train import LOG, TrainConfig, train

ONE_CELL = """
name = "one"
dataset = "synthetic"

[sweep]
sigmas = {min = 0.05, max = 50.0, points = 7}
repeats = 2
batch_size = 64

[budget]
default = "cpu"

[budget.cpu]
epochs = 2
seeds = 1
batch_size = 32

[budget.paper]
epochs = 500
seeds = 10

[[grid]]
models = ["lenet5"]
bits = [8]
scaling = [1]
"""


def _training_cell(folder, epoch=2, epochs=5, step=None):
    """A cell folder as train leaves it after ``epoch`` of ``epochs`` epochs (a train log),
    and mid-epoch (a progress file) when ``step`` is given."""
    folder.mkdir(parents=True)
    (folder / LOG).write_text(json.dumps({"epoch": epoch, "step": 40 * epoch, "finished": False,
                                          "train_config": {"epochs": epochs}, "history": []}))
    if step is not None:
        (folder / PROGRESS).write_text(json.dumps({"epoch": epoch, "epochs": epochs, "step": step, "steps": 200,
                                                   "finished": False, "time": 0}))
    return folder


def _sweeping_cell(folder):
    """A cell whose sweep (4 sigmas x 2 repeats, one network, 100 images) has measured the
    clean pass, both repeats of sigma 0.1 and one of sigma 0.2; the last line is torn."""
    sweep = folder / SWEEP_DIR
    sweep.mkdir(parents=True)
    (sweep / HEADER_FILE).write_text(json.dumps({"fingerprint": "x", "identity": {
        "settings": {"mode": "global", "sigmas": [0.1, 0.2, 0.5, 1.0], "repeats": 2},
        "networks": [{"harden": {}}]}}))
    lines = [{"key": "clean/0", "items": [[None, 0.0, 0]], "correct": [90], "total": 100, "seconds": 0.25},
             {"key": "abc/0", "items": [[None, 0.1, 0], [None, 0.1, 1], [None, 0.2, 0]], "correct": [80, 81, 60],
              "total": 100, "seconds": 0.5}]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"key": "def/0", "items": [[null, 0.2, 1]'
    (sweep / POINTS_FILE).write_text(text)
    return folder


def test_reader_tells_epoch_then_step_then_sweep_points(tmp_path):
    assert read_cell(tmp_path / "nothing-yet", SWEEP_DIR) is None

    logged = read_cell(_training_cell(tmp_path / "a"), SWEEP_DIR)
    assert (logged.phase, logged.text()) == (Phase.TRAIN, "epoch 3/5")  # 2 of 5 done: the third runs
    assert (logged.completed, logged.total) == (2, 5)

    mid = read_cell(_training_cell(tmp_path / "b", step=97), SWEEP_DIR)
    assert mid.text() == "epoch 3/5 (step 97/200)" and (mid.completed, mid.total) == (97, 200)

    done = read_cell(_training_cell(tmp_path / "c", epoch=5), SWEEP_DIR)
    assert done.text() == "trained 5 epochs"

    swept = read_cell(_sweeping_cell(tmp_path / "d"), SWEEP_DIR)
    # sigma 0.1 has both repeats: 1 point of 4; images 1*100 + 3*100 in 0.25 + 0.5 s
    assert swept.phase is Phase.SWEEP and swept.key == "d"
    assert swept.text() == "sweep 1/4 points, 533 images/s"
    assert (swept.completed, swept.total) == (1, 4)


def test_train_writes_where_it_stands_at_a_bounded_rate(tmp_path, monkeypatch):
    writes = []
    real = ProgressFile.update

    def spy(self, state, force=False):
        before = self.path.stat().st_mtime_ns if self.path.exists() else None
        real(self, state, force)
        if self.path.exists() and self.path.stat().st_mtime_ns != before:
            writes.append(json.loads(self.path.read_text()))

    monkeypatch.setattr(ProgressFile, "update", spy)
    x, y = torch.randn(64, 3, 4, 4), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    start = time.monotonic()
    train(model, (x, y), None, TrainConfig(epochs=3, batch_size=8, device="cpu"), tmp_path)
    seconds = time.monotonic() - start
    # 8 steps per epoch: the start and the end of each epoch, and mid-epoch at most one per 2 s
    boundaries = [(w["epoch"], w["step"], w["finished"]) for w in writes if w["step"] == 8 * w["epoch"]]
    assert boundaries == [(0, 0, False), (1, 8, False), (2, 16, False), (3, 24, True)]
    assert len(writes) - len(boundaries) <= seconds / 2
    assert {(w["epochs"], w["steps"]) for w in writes} == {(3, 24)}
    assert read_cell(tmp_path, SWEEP_DIR).text() == "trained 3 epochs (step 24/24)"

    fast = ProgressFile(tmp_path / "fast", epochs=1, steps=10, interval=0.0)
    (tmp_path / "fast").mkdir()
    state = {"epoch": 0, "step": 0, "finished": False}
    for state["step"] in range(1, 4):
        fast.update(state)
    assert json.loads((tmp_path / "fast" / PROGRESS).read_text())["step"] == 3


def test_terminal_display_shows_a_line_per_running_cell(tmp_path):
    _training_cell(tmp_path / "cells" / "cell-a", step=97)
    _sweeping_cell(tmp_path / "cells" / "cell-b")
    buf = io.StringIO()
    display = LiveProgress(Console(file=buf, force_terminal=True, width=160), poll=0.01)
    display.attach(tmp_path / "cells", SWEEP_DIR, total=4, done=1)
    with display:
        display.submitted(["cell-a", "cell-b", "cell-c"])
        deadline = time.monotonic() + 10
        while len(display._tasks) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        display._bar.refresh()
        display.finished("cell-b", "[2/3] cell-b: acc 0.5")
    out = buf.getvalue()
    assert "cell-a" in out and "epoch 3/5 (step 97/200)" in out
    assert "sweep 1/4 points, 533 images/s" in out and "[2/3] cell-b: acc 0.5" in out
    assert "1 done, 0 failed" in out and "2 done, 0 failed" in out

    unshared = LiveProgress(Console(file=io.StringIO()))
    unshared.attach(tmp_path / "cells", SWEEP_DIR, total=4, watch=False)
    unshared.submitted(["cell-a", "cell-b"])
    assert unshared.snapshot() == []  # workers elsewhere: only finished cells are reported


def test_plain_output_is_rate_limited(tmp_path):
    _training_cell(tmp_path / "cells" / "cell-a", step=97)
    buf = io.StringIO()
    display = LiveProgress(Console(file=buf, width=160), poll=0.01, plain_every=0.3)
    display.attach(tmp_path / "cells", SWEEP_DIR, total=2)
    start = time.monotonic()
    with display:
        display.submitted(["cell-a"])
        while "running" not in buf.getvalue() and time.monotonic() < start + 10:
            time.sleep(0.01)
        time.sleep(0.5)
    blocks = buf.getvalue().count("running")
    assert 1 <= blocks <= (time.monotonic() - start) / 0.3 + 1
    assert "cells 0/2 (0 failed), 1 running\n  cell-a: epoch 3/5 (step 97/200)" in buf.getvalue()


def test_reproduce_shows_epochs_and_sweep_points_as_cells_run(tmp_path):
    (tmp_path / "one.toml").write_text(ONE_CELL)
    buf = io.StringIO()
    res = reproduce(tmp_path / "one.toml", tmp_path / "out",
                    progress=LiveProgress(Console(file=buf, width=200), poll=0.02, plain_every=0.0))
    out = buf.getvalue()
    assert len(res.computed) == 1 and not res.failed
    assert "epoch 1/2" in out or "epoch 2/2" in out, out
    assert "/7 points" in out, out  # the grid: 7 sigmas
    assert f"[1/1] {res.computed[0]}: acc " in out and "2 epochs in" in out
