"""The preprocessing a command uses reaches the data and is recorded: CIFAR-10 overrides are
applied or refused (never silently ignored), checkpoints keep their preprocessing and
held-out split, and sweeps name the preprocessing and weights they used."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fxharden.cli import app

N = 20
SWEEP = ["--sigmas", "0.1", "--repeats", "1", "--device", "cpu", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def cifar(tmp_path):
    """A CIFAR-10 folder with N random test images (the npz layout ``load_cifar10`` reads)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(N, 32, 32, 3), dtype=np.uint8)
    y = np.arange(N) % 10
    root = tmp_path / "cifar"
    root.mkdir()
    np.savez(root / "cifar10_test.npz", x=x, y=y)
    return root, x


def input_sum(out):
    return json.loads((out / "results.json").read_text())["identity"]["data"]["inputs_sum"]


def test_cifar_mean_and_std_are_applied(cifar, tmp_path):
    root, x = cifar
    res = invoke("sweep", "lenet5", "--data", root, *SWEEP, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                 "--out", tmp_path / "given")
    assert res.exit_code == 0, res.output
    # by hand: (x/255 - mean)/std summed over every pixel, in float32 per pixel as the data normalise it
    hand = float(((torch.from_numpy(x).float() / 255 - 0.5) / 0.25).double().sum())
    assert input_sum(tmp_path / "given") == pytest.approx(hand, rel=1e-5)
    assert invoke("sweep", "lenet5", "--data", root, *SWEEP, "--out", tmp_path / "default").exit_code == 0
    cifar_mean, cifar_std = torch.tensor((0.4914, 0.4822, 0.4465)), torch.tensor((0.2470, 0.2435, 0.2616))
    default = float(((torch.from_numpy(x).float() / 255 - cifar_mean) / cifar_std).double().sum())
    assert input_sum(tmp_path / "default") == pytest.approx(default, rel=1e-5)
    assert abs(default - hand) > 1e3  # the two differ: the override is not ignored


@pytest.mark.parametrize("args, message", [
    (["--input-size", "64"], "--input-size 64 (input_size) does not apply to CIFAR-10"),
    (["--crop-pct", "0.875"], "--crop-pct 0.875 (crop_pct) does not apply to CIFAR-10"),
])
def test_cifar_size_and_crop_are_refused(cifar, tmp_path, args, message):
    root, _ = cifar
    res = invoke("sweep", "lenet5", "--data", root, *SWEEP, *args, "--out", tmp_path / "o")
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output
    assert invoke("sweep", "lenet5", "--data", root, *SWEEP, "--input-size", "32", "--crop-pct", "1",
                  "--out", tmp_path / "same").exit_code == 0  # 32 and 1 are what CIFAR-10 is: accepted
