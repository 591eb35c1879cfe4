"""Noisy fine-tuning of a pretrained model: μ before and after.

What it shows: a "pretrained" timm model (a local weights file) is hardened to 8 bits and
measured (μ before), fine-tuned for one epoch with noise σ at every layer (``train`` with
``NoiseSchedule``; QAT and noise training in one run, a checkpoint written), and measured again
(μ after). Noisy training usually raises μ: the network learns to tolerate the noise. The same
from the shell: ``fxharden train timm:test_resnet --weights w.pth --num-classes 4 --data FOLDER
--bits 8 --train-sigma 0.1 --epochs 1``, then ``fxharden sweep OUT/checkpoint.pt --data FOLDER``.

Stand-ins (``_stand_ins.py``): a 4-class folder of 32x32 images and ``timm:test_resnet``
trained for a few steps, in place of your data and a downloaded checkpoint. The folder is split
by ``resolve_splits`` (a stratified 20 % held out for measuring).

Run: ``python examples/noisy_finetune.py [OUT_DIR]`` (default ``example_finetune``). Expected
output: ``before: clean accuracy 0.xx, mu = ...``, ``fine-tuned 1 epoch(s) with sigma 0.1:
OUT_DIR/checkpoint.pt``, ``after: clean accuracy 0.xx, mu = ...`` (``fit.quote()``: μ only when the fit is ok, else a
marked crossing, a lower bound or ``-``, with the fit's status).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from _stand_ins import image_folder, stand_in_weights

from fxharden import HardenConfig, NoiseSchedule, TrainConfig, harden, sweep, train
from fxharden.zoo.inputs import resolve_splits
from fxharden.zoo.models import load_model
from fxharden.zoo.options import DataOptions

SOURCE, CLASSES, SIZE, TRAIN_SIGMA = "timm:test_resnet", 4, 32, 0.1
SIGMAS = (0.03, 0.06, 0.1, 0.2, 0.4, 1.0)


def _mu(net, data, out: Path) -> str:
    result = sweep(net, data, sigmas=SIGMAS, repeats=2, out=out)
    # quote(): mu only when the fit is ok, else the marked crossing, a lower bound or "-", with the status
    return f"clean accuracy {result.clean_accuracy:.3f}, mu = {result.fit.quote().text(3)}"


def main(out: Path) -> None:
    folder = image_folder(out / "images", classes=CLASSES, per_class=20)
    weights = stand_in_weights(SOURCE, folder, out / "weights.pth", num_classes=CLASSES, input_size=SIZE)

    lm = load_model(SOURCE, weights=weights, num_classes=CLASSES)
    train_set, test_set = resolve_splits(DataOptions(path=folder, workers=0), lm.preprocess.override(input_size=SIZE))
    net = harden(lm.model, config=HardenConfig.from_shorthand(bits=8))
    print(f"before: {_mu(net, test_set, out / 'sweep_before')}")

    torch.manual_seed(0)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-3, train_sigma=NoiseSchedule(TRAIN_SIGMA))
    result = train(net, train_set, test_set, config, out / "train", arch=lm.source.text, arch_kwargs=lm.arch_kwargs,
                   progress=False)
    print(f"fine-tuned {len(result.history)} epoch(s) with sigma {TRAIN_SIGMA}: {result.checkpoint}")
    print(f"after: {_mu(net, test_set, out / 'sweep_after')}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_finetune"))
