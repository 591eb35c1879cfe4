"""Fine-tuning a model with weights from a file on an image folder (``fxharden train SOURCE
--weights w.pth --num-classes K --data FOLDER --bits 8 --train-sigma 0.1``): the checkpoint
rebuilds with ``load_checkpoint`` and holds what was trained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fxharden.cli import app
from fxharden.core.harden import set_noise
from fxharden.zoo.checkpoint import load_checkpoint
from fxharden.zoo.inputs import resolve_splits
from fxharden.zoo.models import load_model
from fxharden.zoo.options import DataOptions

timm = pytest.importorskip("timm")

K, SIZE = 3, 32


def _folder(root, per_class=10):
    rng = np.random.default_rng(0)
    for c in range(K):
        (root / f"c{c}").mkdir(parents=True)
        base = rng.integers(0, 256, size=(1, 1, 3))
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 30, size=(SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return root


def test_finetune_from_weights_writes_a_checkpoint_that_rebuilds(tmp_path):
    folder = _folder(tmp_path / "images")
    torch.manual_seed(1)
    start = timm.create_model("test_resnet", num_classes=K)  # stands in for downloaded weights
    torch.save(start.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "timm:test_resnet", "--weights", str(tmp_path / "w.pth"),
                                   "--num-classes", str(K), "--data", str(folder), "--bits", "8",
                                   "--train-sigma", "0.1", "--epochs", "1", "--input-size", str(SIZE),
                                   "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt.arch == "timm:test_resnet" and ckpt.arch_kwargs.get("num_classes") == K
    assert ckpt.config.quant is not None and ckpt.config.quant.bits == 8

    # the file's architecture with a K-way head, trained: its weights moved away from the file's
    trained, initial = ckpt.model.state_dict(), start.state_dict()
    common = [k for k in initial if k.endswith("weight") and k in trained]
    assert "fc.weight" in common and trained["fc.weight"].shape[0] == K
    assert all(trained[k].shape == initial[k].shape for k in common)
    assert any(not torch.equal(trained[k], initial[k]) for k in common)

    # the logged clean accuracy is an eager evaluation of the rebuilt model on the held-out split
    logged = json.loads((out / "train_log.json").read_text())["history"][-1]["test_accuracy"]
    preprocess = load_model("timm:test_resnet", num_classes=K).preprocess.override(input_size=SIZE)
    _, test = resolve_splits(DataOptions(path=folder, workers=0), preprocess)
    model = ckpt.model.eval()
    set_noise(model, 0.0)
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    assert len(test) == 6 and logged == pytest.approx(correct / len(test), abs=1e-9)
