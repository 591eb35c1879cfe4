"""Executors: retries and failure reports, Ray versus local, driver restarts, the Ray extra."""

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fxharden.experiments.executors import ExecutorKind, LocalExecutor, RayExecutor, make_executor
from fxharden.experiments.distributed import distributed_sweep
from fxharden.experiments.experiment import DataSpec, DatasetKind
from fxharden.experiments.reproduce import RESULT, reproduce

GRID = """
name = "grid4"
dataset = "synthetic"

[sweep]
sigmas = [0.1, 0.5, 2.0, 8.0, 30.0]
repeats = 2
batch_size = 64

[budget.cpu]
epochs = 1
seeds = 2
batch_size = 64
{extra_budget}

[[grid]]
models = ["lenet5"]
bits = ["fp32", 8]
scaling = [1]
{extra_grid}
"""

BROKEN = """
[[grid]]
models = ["alexnet"]
"""
# alexnet passes every check made before the run and fails in its cells: 32x32 images are too
# small for its pooling ("Output size is too small")


def grid_file(tmp_path: Path, broken: bool = False, extra_budget: str = "") -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(extra_grid=BROKEN if broken else "", extra_budget=extra_budget))
    return path


def flaky(marker: str, value: int) -> int:
    """Fails on its first attempt (leaves a marker file), succeeds on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("tried")
        raise RuntimeError(f"transient failure of task {value}")
    return value * 10


def broken(value: int) -> int:
    raise ValueError(f"task {value} always fails")


@pytest.mark.parametrize("jobs", [1, 2])
def test_local_executor_retries_then_reports_and_finishes_the_rest(tmp_path, jobs):
    with LocalExecutor(jobs=jobs, retries=1) as ex:
        ex.submit("ok", pow, 2, 5)
        ex.submit("flaky", flaky, str(tmp_path / "marker"), 4)
        ex.submit("broken", broken, 7)
        outcomes = {o.key: o for o in ex.as_completed()}
    assert (outcomes["ok"].value, outcomes["ok"].attempts) == (32, 1)
    assert (outcomes["flaky"].value, outcomes["flaky"].attempts, outcomes["flaky"].ok) == (40, 2, True)
    bad = outcomes["broken"]
    assert not bad.ok and bad.attempts == 2 and "ValueError: task 7 always fails" in bad.error
    assert "Traceback" in bad.error


def test_executor_argument_errors():
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        LocalExecutor(jobs=0)
    with pytest.raises(ValueError, match="only used with --executor ray"):
        make_executor(ExecutorKind.LOCAL, address="ray://head:10001")
    with LocalExecutor() as ex:
        ex.submit("a", abs, -1)
        with pytest.raises(ValueError, match="already pending"):
            ex.submit("a", abs, -2)


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'fxharden\[ray\]'"):
        RayExecutor()
    with pytest.raises(ImportError, match="fxharden\\[ray\\]"):
        make_executor("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    yield ray
    ray.shutdown()


def test_ray_grid_matches_local_and_reports_a_failing_cell(tmp_path, ray_cluster):
    path = grid_file(tmp_path, broken=True)
    # one torch thread per cell in both, as Ray's num_cpus=1 gives: bit-identical arithmetic
    local = reproduce(path, tmp_path / "local", executor=LocalExecutor(jobs=1, threads=1, retries=1),
                      progress=False)
    with RayExecutor(num_cpus=1, retries=1, shared_filesystem=False) as ex:
        remote = reproduce(path, tmp_path / "ray", executor=ex, progress=False)
    for res in (local, remote):
        assert len(res.computed) == 4 and len(res.failed) == 2
        assert all(k.startswith("alexnet") for k in res.failed)
        assert all("Output size is too small" in tb for tb in res.failed.values())
    failures = (tmp_path / "ray" / "failures.json").read_text()
    assert '"attempts": 2' in failures
    assert (tmp_path / "ray" / "results.csv").read_text() == (tmp_path / "local" / "results.csv").read_text()
    assert (tmp_path / "ray" / "results.md").read_text() == (tmp_path / "local" / "results.md").read_text()
    for key in remote.computed:  # checkpoints shipped back to the driver land in the same layout
        assert (tmp_path / "ray" / "cells" / key / "checkpoint.pt").is_file()


def test_ray_executor_retries_a_flaky_task(tmp_path, ray_cluster):
    with RayExecutor(num_cpus=1, retries=2) as ex:
        ex.submit("flaky", flaky, str(tmp_path / "marker"), 3)
        (outcome,) = list(ex.as_completed())
    # the first attempt fails by design; a Ray worker lost under load may cost one more attempt
    assert outcome.ok and outcome.value == 30 and 2 <= outcome.attempts <= 3


def interrupted(value: int) -> int:
    raise KeyboardInterrupt


def test_ctrl_c_cancels_the_remaining_local_tasks():
    with LocalExecutor(jobs=1) as ex:
        ex.submit("a", interrupted, 1)
        ex.submit("b", abs, -2)
        with pytest.raises(KeyboardInterrupt):
            list(ex.as_completed())
        assert ex.pending == 0 and list(ex.as_completed()) == []


def test_ray_cancel_stops_running_tasks(ray_cluster):
    with RayExecutor(num_cpus=1) as ex:
        ex.submit("slow", time.sleep, 120)
        refs = list(ex._running)
        time.sleep(1.0)
        t0 = time.monotonic()
        ex.cancel()
        ready, _ = ray_cluster.wait(refs, timeout=30)
        assert ready and time.monotonic() - t0 < 30 and ex.pending == 0
        with pytest.raises(ray_cluster.exceptions.RayError):
            ray_cluster.get(refs[0])


DRIVER = """
import sys
from fxharden.experiments.reproduce import reproduce
reproduce(sys.argv[1], sys.argv[2], progress=False)
"""


def test_driver_killed_mid_grid_resumes_without_recomputing(tmp_path):
    path, out = grid_file(tmp_path), tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(path), str(out)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(out.glob(f"cells/*/{RESULT}"))) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob(f"cells/*/{RESULT}")}
    assert 2 <= len(finished) < 4, "the driver must die mid-grid"

    res = reproduce(path, out, progress=False)
    assert sorted(res.reused) == sorted(finished)
    assert len(res.computed) == 4 - len(finished) and not set(res.computed) & set(finished)
    assert {p.parent.name: p.stat().st_mtime_ns for p in out.glob(f"cells/*/{RESULT}") if p.parent.name in finished} \
        == finished
    assert len(res.curves) == 2 and all(len(c.cells) == 2 for c in res.curves)


@pytest.mark.parametrize("per_layer", [False, True], ids=["sigma-chunks", "per-layer-sites"])
def test_split_sweep_reproduces_the_single_sweep(tmp_path, per_layer):
    import torch

    from fxharden.zoo.checkpoint import save_checkpoint
    from fxharden.core.harden import harden
    from fxharden.zoo.networks import lenet5
    from fxharden.measure.sweep import sweep

    torch.manual_seed(0)
    ckpt = tmp_path / "net.pt"
    save_checkpoint(ckpt, harden(lenet5(), bits=8, scale=0.25), "lenet5", {"num_classes": 10})
    data = DataSpec(DatasetKind.SYNTHETIC, synthetic_images=256)
    sigmas = [0.01, 0.1, 0.3, 1.0, 3.0, 10.0]
    settings = {"repeats": 2, "points_per_forward": 2, "batch_size": 64, "seed": 4}
    with LocalExecutor(jobs=1) as ex:
        split = distributed_sweep(ckpt, data, sigmas, ex, parts=3, per_layer=per_layer, **settings)
    single = sweep(str(ckpt), data.load()[1], sigmas=sigmas, mode="per_layer" if per_layer else "global", **settings)
    key = lambda p: (p.site or "", p.sigma)  # noqa: E731
    assert [(p.site, p.sigma, p.correct) for p in sorted(split.points, key=key)] == \
        [(p.site, p.sigma, p.correct) for p in sorted(single.points, key=key)]
    assert split.clean_accuracy == single.clean_accuracy and split.mode == single.mode
    fits = [(split.fit, single.fit)] if not per_layer else [(split.per_site[s], single.per_site[s]) for s in single.sites]
    for a, b in fits:
        assert a.status == b.status and (a.mu == b.mu or (math.isnan(a.mu) and math.isnan(b.mu)))


def dies_once(folder: str, value: int) -> int:
    """Kills its worker process on the first attempt (as the OOM killer would) while another
    task is running and more are queued, then succeeds."""
    import os

    marker = Path(folder, "died")
    if not marker.exists():
        marker.write_text("")
        deadline = time.monotonic() + 60
        while not any(Path(folder).glob("started-*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        os._exit(9)
    return value


def busy_square(folder: str, value: int) -> int:
    Path(folder, f"started-{value}").write_text("")
    time.sleep(1.0)
    return value * value


def test_a_dead_worker_restarts_the_pool_once_and_every_task_finishes(tmp_path):
    restarts = []
    with LocalExecutor(jobs=2, retries=1, threads=1) as ex:
        original = ex._restart_pool
        ex._restart_pool = lambda: (restarts.append(ex._pool), original())
        ex.submit("dies", dies_once, str(tmp_path), 7)
        for i in range(5):
            ex.submit(f"t{i}", busy_square, str(tmp_path), i)
        outcomes = {o.key: o for o in ex.as_completed()}
    # every future of the broken pool fails once (the running task and the queued ones); only
    # the first replaces the pool, and the fresh pool holding the retries is never shut down
    # under them: all six finish
    assert len(restarts) == 1
    assert {k: o.value for k, o in outcomes.items()} == {"dies": 7, **{f"t{i}": i * i for i in range(5)}}
    assert outcomes["dies"].attempts == 2 and all(o.ok for o in outcomes.values())


ORPHANS = """
import os, sys, time
from pathlib import Path
from fxharden.experiments.executors import LocalExecutor

def sleeper(folder):
    Path(folder, str(os.getpid())).write_text("")
    time.sleep(120)

if __name__ == "__main__":
    ex = LocalExecutor(jobs=2, threads=1)
    for i in range(3):
        ex.submit(f"t{i}", sleeper, sys.argv[1])
    list(ex.as_completed())
"""


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by its new parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def test_pool_workers_end_when_their_driver_is_killed(tmp_path):
    script, pids = tmp_path / "driver.py", tmp_path / "pids"
    script.write_text(ORPHANS)
    pids.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(pids)], cwd=tmp_path)
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    workers = [int(p.name) for p in pids.iterdir()]
    assert len(workers) == 2 and all(_alive(w) for w in workers)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "pool workers outlived their driver"
