"""The first forward of a command: the preprocessing is printed before it, a model built for
another input size stops there with the size used and the option that changes it (exit 2, no
traceback), and images enlarged to a default size that the model never named are reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fxharden.cli import app

NETS = '''
import torch.nn as nn


def cnn32(num_classes=10):
    """Built for 32 px images: 4 x 16 x 16 features after the pool."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 16 * 16, num_classes))


def any_size(num_classes=10):
    """Takes any image size (global pooling)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
'''
SWEEP = ["--sigmas", "0.1", "--repeats", "1", "--device", "cpu", "--no-progress", "--workers", "0"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def own(tmp_path, monkeypatch):
    """``package.module:factory`` models that name no preprocessing, and a folder of 3 classes x
    4 images of 32x32 px."""
    from PIL import Image

    (tmp_path / "ff32nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("command", [["sweep", *SWEEP], ["train", "--epochs", "1", "--device", "cpu",
                                                          "--no-progress", "--workers", "0"]])
def test_a_model_for_32_px_without_input_size_says_which_size_and_flag(own, tmp_path, command):
    # the model's own failure, eagerly: it takes 32 px (timm's default 224 px cannot pass)
    from ff32nets import cnn32

    cnn32(3)(torch.zeros(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        cnn32(3)(torch.zeros(1, 3, 224, 224))

    res = invoke(command[0], "ff32nets:cnn32", "--data", own, *command[1:], "--out", tmp_path / "o")
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, RuntimeError)
    assert "Error: ff32nets:cnn32 cannot take the images as prepared" in text
    assert "3x224x224" in text and "--input-size 32" in text and "mat1 and mat2" in text
    # the preprocessing was printed before the first forward
    assert text.index("preprocessing: 224x224") < text.index("Error:")

    fixed = invoke(command[0], "ff32nets:cnn32", "--data", own, "--input-size", "32", *command[1:],
                   "--out", tmp_path / "fixed")
    assert fixed.exit_code == 0, fixed.output
    assert "preprocessing: 32x32" in " ".join(fixed.output.split())


def test_images_enlarged_to_a_default_size_are_reported_once(own, tmp_path):
    res = invoke("sweep", "ff32nets:any_size", "--data", own, *SWEEP, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("names no preprocessing, so the images of") == 1, res.output
    assert "(32x32 px) are enlarged to 224x224 px" in text and "--input-size 32" in text
    res = invoke("sweep", "ff32nets:any_size", "--data", own, *SWEEP, "--input-size", "32", "--out", tmp_path / "s")
    assert res.exit_code == 0, res.output
    assert "names no preprocessing" not in res.output
