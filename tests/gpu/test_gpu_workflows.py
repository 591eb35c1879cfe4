"""Whole workflows on the device against the CPU: a sweep (every point within binomial error,
μ within errors), training under bf16 autocast, checkpoints across devices, frozen weights,
the budget, ``reproduce`` with two cells on one GPU, and every example."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fxharden
from fxharden import HardenConfig
from fxharden.measure.sweep import SweepConfig
from fxharden.training.train import Precision, TrainConfig
from fxharden.zoo.data import synthetic_dataset
from fxharden.zoo.networks import LeNet5

ROOT = Path(__file__).resolve().parents[2]


class Teacher(nn.Module):
    """An MLP whose labels are its own clean predictions (clean accuracy 1 by construction)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def teacher_data(n=4096, seed=0):
    torch.manual_seed(seed)
    model = Teacher().eval()
    x = torch.randn(n, 16)
    with torch.no_grad():
        model.fc2.bias -= model(x).mean(0)  # classes about equally frequent: the floor is chance
        y = model(x).argmax(1)
    return model, (x, y)


def test_a_sweep_on_the_device_matches_the_cpu_within_errors(device):
    model, data = teacher_data()
    sigmas = [0.003, 0.01, 0.02, 0.04, 0.07, 0.1, 0.14, 0.2, 0.3, 0.5, 1.0, 3.0, 10.0]
    results = {dev: fxharden.sweep(model, data, sigmas=sigmas, repeats=4, bits=None, batch_size=512, device=dev)
               for dev in ("cpu", device.type)}
    cpu, dev = results["cpu"], results[device.type]
    assert dev.config["device"] == device.type
    assert cpu.clean_accuracy == dev.clean_accuracy == 1.0
    n = cpu.num_images * 4
    for a, b in zip(cpu.site_points(), dev.site_points()):
        assert a.sigma == b.sigma
        p = (a.mean + b.mean) / 2
        err = math.sqrt(2 * max(p * (1 - p), 1 / n) / n)
        assert abs(a.mean - b.mean) < 5 * err, (a.sigma, a.mean, b.mean)
    # the model-free midpoint (crossing of the half level) with its bootstrap error
    fa, fb = cpu.fit, dev.fit
    assert math.isfinite(fa.mu_crossing) and math.isfinite(fb.mu_crossing)
    assert abs(fa.mu_crossing - fb.mu_crossing) < 4 * math.hypot(fa.mu_crossing_err, fb.mu_crossing_err) \
        + 0.03 * fa.mu_crossing


def test_training_under_bf16_autocast_is_finite_and_the_loss_falls(device):
    _, data = teacher_data(2048)
    torch.manual_seed(0)
    hm = fxharden.harden(Teacher(), bits=8, scale=None, sigma=0.02).to(device)
    opt = torch.optim.Adam(hm.parameters(), lr=3e-3)
    x, y = data[0].to(device), data[1].to(device)
    losses = []
    for step in range(50):
        idx = slice((step * 256) % 2048, (step * 256) % 2048 + 256)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(hm(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])


def test_train_and_checkpoints_across_devices(device, tmp_path):
    """``fxharden.train`` on the device in bf16; its checkpoint loads on the CPU and back on the
    device, with the same clean outputs as the trained model."""
    data = synthetic_dataset(256, seed=3)
    torch.manual_seed(0)
    hm = fxharden.harden(LeNet5(), bits=8, scale=None)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-3, device=device.type, precision=Precision.BF16, train_sigma=0.05)
    res = fxharden.train(hm, data, data, cfg, tmp_path / "run", arch="lenet5", progress=False)
    assert math.isfinite(res.history[-1].loss)
    x = torch.randn(8, 3, 32, 32)
    ref = hm.eval().to("cpu")(x)
    on_cpu = fxharden.load_checkpoint(res.checkpoint, map_location="cpu").model.eval()
    assert {t.device.type for t in on_cpu.state_dict().values()} == {"cpu"}
    assert torch.allclose(on_cpu(x), ref, atol=1e-5)
    fxharden.save_checkpoint(tmp_path / "cpu.pt", on_cpu, "lenet5")
    back = fxharden.load_checkpoint(tmp_path / "cpu.pt", map_location=device).model.eval()
    assert {t.device.type for t in back.state_dict().values()} == {device.type}
    assert torch.allclose(back(x.to(device)).cpu(), ref, atol=1e-4)


def test_frozen_weights_on_the_device_give_the_unfrozen_outputs(device):
    torch.manual_seed(0)
    hm = fxharden.harden(LeNet5(), bits=4, scale=1.0).to(device).eval()
    x = torch.randn(16, 3, 32, 32, device=device)
    with torch.no_grad():
        ref = hm(x)
        with fxharden.frozen_weights(hm):
            first, second = hm(x), hm(x)
    assert torch.equal(first, ref) and torch.equal(second, ref)


def test_budget_on_the_device(device):
    model, data = teacher_data(2048)
    cfg = SweepConfig(repeats=2, batch_size=512, device=device.type, sigma_min=0.01, sigma_max=10.0)
    res = fxharden.budget(model, data, 0.05, config=cfg)
    assert res.sites and res.scale > 0
    assert res.clean_accuracy - res.accuracy <= 0.05 + 0.02  # verified within the drop (binomial slack)


TINY = (ROOT / "tests" / "fixtures" / "tiny_recipe.toml").read_text()  # two LeNet-5 cells on synthetic data


def test_reproduce_two_cells_on_one_gpu(device, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    res = fxharden.reproduce(recipe, tmp_path / "out", jobs=2, device=device.type, synthetic=True, progress=False)
    assert len(res.computed) == 2 and not res.failed
    sweeps = list((tmp_path / "out" / "cells").glob("*/**/sweep.json"))
    assert len(sweeps) == 2
    assert {json.loads(p.read_text())["identity"]["settings"]["device"] for p in sweeps} == {device.type}


EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", EXAMPLES)
def test_every_example_runs_on_the_device(script, device, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    run = subprocess.run([sys.executable, str(ROOT / "examples" / script), "out"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"mu = ", run.stdout), run.stdout
    sweeps = list((tmp_path / "out").glob("**/sweep.json"))
    assert sweeps, "the example wrote no sweep"
    assert {json.loads(p.read_text())["identity"]["settings"]["device"] for p in sweeps} == {device.type}


def test_weight_noise_spread_over_repeats_is_the_same_on_the_device_and_the_cpu(device):
    """A repeat is one programmed chip on either device: the standard deviation of the correct
    counts over repeats agrees between the CPU and the device, each at its own default
    batching (CPU: 4 levels per chunk, slices of 512 images; CUDA: 16 levels, 16,384 images)."""
    model, (x, y) = teacher_data(2048)
    cfg = HardenConfig.from_shorthand(bits=None).replace(
        weight_noise=fxharden.WeightNoiseConfig(kind="additive", sigma=0.15, relative=True))
    hm = fxharden.harden(model, config=cfg)
    spreads = {}
    for dev in ("cpu", device.type):
        res = fxharden.sweep(hm, (x, y), sigmas=[1e-6], repeats=32, batch_size=512, seed=3, device=dev)
        counts = res.points[0].correct[0]
        assert len(set(counts)) > 1
        spreads[dev] = float(np.std(counts, ddof=1))
    ratio = spreads[device.type] / spreads["cpu"]
    assert 0.5 < ratio < 2.0, spreads  # F(31, 31) ratio of standard deviations: 99.9 % inside
