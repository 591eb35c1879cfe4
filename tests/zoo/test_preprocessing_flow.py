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


NETS = '''
import torch.nn as nn


def small_cnn(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, num_classes))
'''


@pytest.fixture
def factory_and_folder(tmp_path, monkeypatch):
    """A ``package.module:factory`` model (no pretrained config) and a plain image folder of
    3 classes × 10 images of 40x40 pixels."""
    from PIL import Image

    (tmp_path / "h8nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        base = rng.integers(0, 256, size=(1, 1, 3))
        for i in range(10):
            img = np.clip(base + rng.normal(0, 30, size=(40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return "h8nets:small_cnn", root


def test_a_checkpoint_keeps_its_preprocessing_and_held_out_split(factory_and_folder, tmp_path):
    from fxharden.core.harden import set_noise
    from fxharden.zoo.checkpoint import load_checkpoint
    from fxharden.zoo.inputs import resolve_splits
    from fxharden.zoo.options import DataOptions
    from fxharden.zoo.preprocess import Preprocess

    source, folder = factory_and_folder
    run = tmp_path / "run"
    res = invoke("train", source, "--data", folder, "--input-size", "32", "--mean", "0.5,0.5,0.5", "--std",
                 "0.2,0.2,0.2", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu",
                 "--no-progress", "--out", run)
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(run / "checkpoint.pt")
    trained = Preprocess((3, 32, 32), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))  # crop and interpolation: the defaults
    assert ck.preprocess == trained
    assert ck.inputs["data"]["layout"] == "holdout" and ck.inputs["data"]["images"] == 30

    # the printed next step, as printed: 32 px, mean/std 0.5/0.2, on the 6 held-out images (20 % of 30)
    res = invoke("sweep", run / "checkpoint.pt", "--data", folder, "--workers", "0", *SWEEP, "--out", tmp_path / "s")
    assert res.exit_code == 0, res.output
    stored = json.loads((tmp_path / "s" / "results.json").read_text())
    assert stored["num_images"] == 6
    assert stored["provenance"]["preprocess"]["input_size"] == [3, 32, 32]
    assert "checkpoint" in stored["provenance"]["preprocess"]["origin"]
    text = " ".join(res.stdout.split())
    assert "32x32, mean (0.5, 0.5, 0.5), std (0.2, 0.2, 0.2)" in text and "held out" in text
    # independent: the held-out images normalised by hand, and the model evaluated eagerly on them
    _, test = resolve_splits(DataOptions(path=folder, workers=0), trained)
    x = (test.images.float() / 255 - 0.5) / 0.2
    assert stored["identity"]["data"]["inputs_sum"] == pytest.approx(float(x.double().sum()), rel=1e-5)
    model = ck.model.eval()
    set_noise(model, 0.0)
    with torch.no_grad():
        eager = int((model(x).argmax(1) == test.labels).sum()) / len(test)
    assert stored["clean_accuracy"] == pytest.approx(eager, abs=1e-9)

    # budget takes the same model/data options and the same inputs; inspect names the preprocessing
    res = invoke("budget", run / "checkpoint.pt", "--data", folder, "--workers", "0", "--max-drop", "0.5",
                 "--repeats", "1", "--sigma-min", "0.1", "--sigma-max", "1", "--device", "cpu", "--no-progress",
                 "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "preprocessing: 32x32" in text and "the 6 images" in text
    res = invoke("inspect", run / "checkpoint.pt")
    assert res.exit_code == 0 and "preprocessing: 32x32" in " ".join(res.stdout.split()), res.output


def test_the_preprocessing_and_weights_are_printed_and_recorded(factory_and_folder, tmp_path):
    from fxharden.measure.results import SweepResult, load_result

    source, folder = factory_and_folder
    res = invoke("sweep", source, "--data", folder, "--workers", "0", *SWEEP, "--out", tmp_path / "s")
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "preprocessing" in text and "224x224, mean (0.485, 0.456, 0.406)" in text
    assert "default: timm's 224 px" in text
    prov = load_result(tmp_path / "s").provenance
    assert prov["preprocess"]["input_size"] == [3, 224, 224] and "default" in prov["preprocess"]["origin"]
    assert prov["weights"] == ["random (seed 0)"]

    import h8nets

    torch.save(h8nets.small_cnn(3).state_dict(), tmp_path / "w.pth")
    res = invoke("sweep", source, "--weights", tmp_path / "w.pth", "--num-classes", 3, "--data", folder,
                 "--workers", "0", "--input-size", "32", *SWEEP, "--out", tmp_path / "w")
    assert res.exit_code == 0, res.output
    prov = load_result(tmp_path / "w").provenance
    assert prov["weights"] == [str(tmp_path / "w.pth")]
    assert prov["preprocess"]["input_size"] == [3, 32, 32] and "--input-size from the command line" in \
        prov["preprocess"]["origin"]
    # results written before these fields existed still load
    old = json.loads((tmp_path / "w" / "results.json").read_text())
    del old["provenance"], old["identity"]
    assert SweepResult.from_dict(old).provenance == {}
