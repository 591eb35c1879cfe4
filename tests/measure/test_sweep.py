"""Noise sweeps: accuracy oracles, batched versus naive evaluation, per-layer μ, results and resume."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fxharden
from fxharden.zoo.data import load_cifar10, synthetic_dataset
from fxharden.measure.midpoint import FitStatus
from fxharden.zoo.networks import LeNet5
from fxharden.core.noise import Noise
from fxharden.measure.results import POINTS_FILE, SweepMismatchError, load_result
from fxharden.measure.sweep import SweepConfig, SweepMode, sweep

ROOT = Path(__file__).resolve().parents[2]


class Teacher(nn.Module):
    """A small MLP whose labels are its own clean predictions (clean accuracy 1 by construction).

    ``fc1`` is scaled down by 100 and its output scaled up by 100 again: the function is
    unchanged, but noise at ``fc1`` meets a 100x smaller signal, so it is by far the most
    sensitive site. ``dead`` is a branch multiplied by 0: its noise never reaches the output.
    """

    def __init__(self, shrink: float = 0.01) -> None:
        super().__init__()
        self.gain = 1 / shrink
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 4)
        self.dead = nn.Linear(16, 4)
        with torch.no_grad():
            self.fc1.weight.mul_(shrink)
            self.fc1.bias.mul_(shrink)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x) * self.gain)) + 0.0 * self.dead(x)


@pytest.fixture(scope="module")
def teacher():
    return make_teacher(0.01)


@pytest.fixture(scope="module")
def plain_teacher():
    return make_teacher(1.0)


def make_teacher(shrink):
    torch.manual_seed(0)
    model = Teacher(shrink).eval()
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, (x, y)


def eager_accuracy(model, x, y, batch_size):
    """Independent oracle: a plain loop over the eager model."""
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


def naive_accuracy(hm, data, sigma, seed, batch_size):
    """Independent oracle: one point at a time, no replication, a host sync per batch."""
    fxharden.set_noise(hm, sigma)
    fxharden.seed_noise(hm, seed)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data[0]), batch_size):
            correct += int((hm(data[0][i:i + batch_size]).argmax(1) == data[1][i:i + batch_size]).sum())
    fxharden.set_noise(hm, 0.0)
    return correct / len(data[0])


def test_sweep_end_to_end(plain_teacher):
    model, (x, y) = plain_teacher
    r = sweep(model, (x, y), repeats=2, batch_size=64, sigma_max=100.0, seed=3)
    assert r.clean_accuracy == eager_accuracy(model, x, y, 64) == 1.0
    assert r.chance == 0.25 and r.num_images == 256 and r.mode is SweepMode.GLOBAL
    # automatic batching on a CPU: 4 levels × 2 repeats per chunk, forward passes of <= 512 images
    assert r.config["points_per_forward"] == 8 and r.config["forward_images"] == 512
    sig, acc, _ = r.curve()
    assert acc[0] > 0.95  # sigma 1e-3 flips (almost) nothing
    assert acc[-1] < 0.25 + 0.15  # at sigma 100 the accuracy is at chance
    assert np.all(np.diff(acc) < 0.08)  # falls (up to sampling noise)
    assert math.isfinite(r.fit.mu) and sig[0] < r.fit.mu < sig[-1]
    assert math.isfinite(r.fit.mu_crossing) and sig[0] < r.fit.mu_crossing < sig[-1]
    # the adaptive grid put more points inside the transition than outside
    inside = sum(1 for s, a in zip(sig, acc) if 0.3 < a < 0.95)
    assert inside >= 4
    assert r.timing["forwards"] > 0 and r.timing["images"] >= len(r.points) * 2 * 256


@pytest.mark.parametrize("forward_images, forwards", [
    (12 * 64, 4 + 4),  # clean pass (4 batches) + ONE replicated pass per batch for all 12 points
    (200, 4 + 4 * 4),  # 200 // 12 = 16 images per slice: 4 slices per batch of 64
])
def test_batched_points_match_naive_loop(teacher, forward_images, forwards):
    model, data = teacher
    hm = fxharden.harden(model, bits=8, scale=0.05).eval()
    sigmas, repeats = [0.0, 0.002, 0.005], 4
    r = sweep(hm, data, sigmas=sigmas, repeats=repeats, batch_size=64, points_per_forward=12,
              forward_images=forward_images)
    assert r.timing["forwards"] == forwards
    assert r.config["forward_images"] == forward_images and r.config["points_per_forward"] == 12
    naive = {s: [naive_accuracy(hm, data, s, 100 + k, 64) for k in range(repeats)] for s in sigmas}
    by_sigma = {p.sigma: p for p in r.points}
    # sigma 0 inside a replicated batch: exactly the clean accuracy, in every group
    assert by_sigma[0.0].accuracy.tolist() == [[naive[0.0][0]] * repeats] and r.clean_accuracy == naive[0.0][0]
    for s in sigmas[1:]:
        p, q = by_sigma[s].mean, float(np.mean(naive[s]))
        assert 0.3 < q < 0.98  # the point is in the transition, so the comparison means something
        se = math.sqrt(2 * q * (1 - q) / (256 * repeats))  # two independent binomial means
        assert abs(p - q) < 4 * se + 0.01, (s, p, q)


def test_forward_images_below_one_image_per_point(teacher):
    model, data = teacher
    hm = fxharden.harden(model, bits=8, scale=0.05).eval()
    # a slice smaller than one image per point still measures every image once per point
    tiny = sweep(hm, data, sigmas=[0.002], repeats=2, batch_size=64, points_per_forward=2, forward_images=1)
    assert tiny.timing["forwards"] == 256 + 256 and tiny.timing["images"] == 256 + 2 * 256
    with pytest.raises(ValueError, match="forward_images"):
        sweep(hm, data, sigmas=[0.002], forward_images=0)


def test_seeded_sweep_repeats_exactly_and_restores_the_model(teacher):
    model, data = teacher
    hm = fxharden.harden(model).train()
    fxharden.set_noise(hm, 0.25)
    a = sweep(hm, data, repeats=2, batch_size=128, seed=5)
    b = sweep(hm, data, repeats=2, batch_size=128, seed=5)
    c = sweep(hm, data, repeats=2, batch_size=128, seed=6)
    assert [p.correct for p in a.points] == [p.correct for p in b.points]
    assert [p.correct for p in a.points] != [p.correct for p in c.points]
    assert a.fit.mu == b.fit.mu
    assert hm.training and all(float(m.sigma) == 0.25 for m in hm.modules() if isinstance(m, Noise))


def test_per_layer_ranks_the_sensitive_site_first_and_flags_the_dead_branch(teacher):
    model, data = teacher
    r = sweep(model, data, repeats=2, batch_size=128, mode=SweepMode.PER_LAYER)
    assert set(r.per_site) == set(fxharden.noise_sites(fxharden.harden(model)))  # one fit per site
    ranking = [s for s, _ in r.ranking()]
    assert ranking[0] == "fc1"
    dead = r.per_site["dead"]
    assert dead.status is FitStatus.BEYOND_GRID and not dead.ok and ranking[-1] == "dead"
    sig, acc, _ = r.curve("dead")
    assert np.all(acc == 1.0)  # multiplied by zero: never a single flipped prediction
    fc1, fc2 = r.per_site["fc1"], r.per_site["fc2"]
    assert (fc1.mu if math.isfinite(fc1.mu) else fc1.mu_crossing) * 10 < fc2.mu_crossing


def test_results_files_round_trip(teacher, tmp_path):
    model, data = teacher
    r = sweep(model, data, repeats=2, batch_size=128, out=tmp_path)  # writes results.json/csv at the end
    back = load_result(tmp_path)
    assert [p.correct for p in back.points] == [p.correct for p in r.points]
    assert back.fit.mu == r.fit.mu and back.fit.status is r.fit.status
    refit = load_result(tmp_path / "results.json").refit()
    assert refit.fit.mu == pytest.approx(r.fit.mu, rel=1e-9)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["versions"]["torch"] == torch.__version__ and doc["config"]["repeats"] == 2
    assert doc["harden_configs"][0]["quant"] is None and doc["seed"] == 0
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("site,sigma,n,accuracy_mean") and len(rows) == 2 + len(r.points)


def test_changed_config_in_the_same_directory_is_refused(teacher, tmp_path):
    model, data = teacher
    first = sweep(model, data, sigmas=[0.01, 0.1], repeats=1, out=tmp_path)
    assert 0 < first.timing["points_seconds"] < first.timing["eval_seconds"]  # the clean pass is no point
    again = sweep(model, data, sigmas=[0.01, 0.1], repeats=1, out=tmp_path)  # same settings: all reused
    assert again.timing["points_measured"] == 0 and again.timing["points_reused"] == 2
    assert again.timing["points_seconds"] == 0
    # the automatic points per forward follow the repeats
    changed = r"different settings \(changed: settings.points_per_forward, settings.repeats\)"
    with pytest.raises(SweepMismatchError, match=changed):
        sweep(model, data, sigmas=[0.01, 0.1], repeats=2, out=tmp_path)
    other = Teacher()
    with pytest.raises(SweepMismatchError, match="weights_sha256"):
        sweep(other, data, sigmas=[0.01, 0.1], repeats=1, out=tmp_path)


def test_bad_input_errors(teacher):
    model, data = teacher
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        SweepConfig(sigmas=(-1.0,))
    with pytest.raises(ValueError, match="at least one noise level > 0"):
        SweepConfig(sigmas=(0.0,))
    with pytest.raises(ValueError, match="sigma_min .* must be below sigma_max"):
        SweepConfig(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        SweepConfig(repeats=0)
    with pytest.raises(ValueError, match="'fc9' matches no noise site; did you mean 'fc2', 'fc1'"):
        sweep(model, data, sites=("fc9",))
    with pytest.raises(ValueError, match="either config=SweepConfig"):
        sweep(model, data, repeats=3, config=SweepConfig())
    with pytest.raises(ValueError, match="evaluation data are empty"):
        sweep(model, (data[0][:0], data[1][:0]))


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from fxharden.zoo.data import synthetic_dataset
    from fxharden.zoo.networks import LeNet5
    from fxharden.measure.sweep import sweep
    torch.manual_seed(0)
    sweep(LeNet5(), synthetic_dataset(192, 10, 32, 3, seed=1), sigmas=[0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
          repeats=2, batch_size=64, points_per_forward=1, seed=7, out=sys.argv[1])
""")


@pytest.mark.slow  # a fresh Python process (torch import) is killed mid-sweep
def test_killed_sweep_resumes_to_the_same_result(tmp_path):
    torch.manual_seed(0)
    model, data = LeNet5(), synthetic_dataset(192, 10, 32, 3, seed=1)
    kwargs = dict(sigmas=[0.05, 0.1, 0.2, 0.5, 1.0, 2.0], repeats=2, batch_size=64, points_per_forward=1, seed=7)
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run)], env=env)
    points = run / POINTS_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if points.exists() and points.read_bytes().count(b"\n") >= 4:  # clean + 3 of 12 chunks
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = points.read_bytes().count(b"\n")
    assert 4 <= done < 13, f"the sweep was not killed mid-way ({done} records)"
    resumed = sweep(model, data, out=run, **kwargs)
    assert resumed.timing["points_reused"] >= 3 and resumed.timing["points_measured"] >= 1
    fresh = sweep(model, data, **kwargs)
    assert [(p.sigma, p.correct) for p in resumed.points] == [(p.sigma, p.correct) for p in fresh.points]
    assert resumed.clean_accuracies == fresh.clean_accuracies
    assert resumed.fit.to_dict() == fresh.fit.to_dict()


@pytest.mark.cifar
def test_real_cifar10_lenet5_quick_sweep():
    if not os.environ.get("FXHARDEN_DATA"):
        pytest.skip("FXHARDEN_DATA is not set")
    data = load_cifar10("test")
    torch.manual_seed(0)
    model = LeNet5().eval()
    r = sweep(model, data, sigmas=[0.1, 1.0], repeats=1, max_images=500)
    x, y = next(data.subset(500).batches(500))
    assert r.num_images == 500 and r.clean_accuracy == eager_accuracy(model, x, y, 256)


@pytest.mark.parametrize("shared", [True, False])
def test_items_of_one_repeat_share_their_draw_only_when_shared(monkeypatch, shared):
    seen = []
    real = Noise.set_sigma

    def spy(self, sigma, draws=None):
        if self.site == "conv1":
            seen.append((sigma, draws))
        return real(self, sigma, draws)

    monkeypatch.setattr(Noise, "set_sigma", spy)
    data = synthetic_dataset(8, seed=0)
    sweep(fxharden.harden(LeNet5()), data, sigmas=[0.1, 0.2], repeats=2, batch_size=8, points_per_forward=4,
          shared_noise=shared)
    chunk = [s for s in seen if isinstance(s[0], list)]
    assert chunk == [([0.1, 0.1, 0.2, 0.2], [0, 1, 0, 1] if shared else None)]


def test_a_smoke_test_forward_before_the_sweep_changes_nothing(teacher):
    """A forward of zeros on a fresh model used to fix its input step at the minimum: the
    sweep calibrates on its own first batches, so the result is the one without it, and the
    input step is the hand count max|x| / 127 over the evaluation data."""
    model, (x, y) = teacher
    smoked, fresh = (fxharden.harden(model, bits=8, scale=0.05).eval() for _ in range(2))
    with torch.no_grad():
        smoked(torch.zeros(1, 16))
    a = sweep(smoked, (x, y), sigmas=[0.002], repeats=2, batch_size=64)
    b = sweep(fresh, (x, y), sigmas=[0.002], repeats=2, batch_size=64)
    assert a.clean_accuracy == b.clean_accuracy and [p.correct for p in a.points] == [p.correct for p in b.points]
    step = float(smoked.get_submodule("fxharden.input__quant").scale)
    assert step == pytest.approx(float(x.abs().max()) / 127, rel=1e-6)
    assert a.clean_accuracy > 0.9  # real steps, not the 1e-8 of an all-zero batch
