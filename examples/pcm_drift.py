"""Accuracy over time on phase-change memory (PCM): plain training against hardware-aware training.

What it shows: LeNet-5 with its conv/linear weights stored as PCM conductances
(``WeightNoise(PCM(t), 1.0)``: programming noise, conductance drift and read noise until the
time ``t`` after programming, with global drift compensation; see docs/noise_models.md, "Device
models over time"), trained twice from the same initial weights with ``fxharden.train``:

* plain: the PCM link at σ = 0 while training (the ideal weights, exactly);
* hardware-aware: the PCM link at σ = 1 read at ``t = 1 day`` (``TRAIN_TIME``) while training,
  a new draw of every weight in every training forward pass.

Both are then read as PCM chips at 1 s, 1 h, 1 day, 1 month and 1 year after programming by
``fxharden.sweep_axis`` along time: a chip is one draw of the weights held for the whole test
set, with the same random streams at every time and in both networks, so the same programmed
chip is read at every time and both networks meet the same device randomness.
Accuracy falls with time as the conductances drift (README, "Accuracy over time under PCM drift",
has the figures measured on CIFAR-10).

Data: generated images (``load_splits(DatasetKind.SYNTHETIC)``, seconds), or CIFAR-10 with
``--data DIR`` or ``$FXHARDEN_DATA`` (a folder with ``cifar10_{train,test}.npz``; the first
``--train-images`` training images, 0 for all, and the first ``--test-images`` test images). The
defaults are a quick run (1 epoch on 10,000 images, 2 chips); the README's table comes from
``python examples/pcm_drift.py out --data DIR --epochs 6 --chips 5 --train-images 0 --test-images 2000``.

Run: ``python examples/pcm_drift.py [OUT_DIR] [--data DIR] [--epochs N] [--chips N]
[--train-images N] [--test-images N]`` (default ``example_pcm_drift``). Expected output:
``data: ...`` (which data, how many images), one line per network, ``plain: clean accuracy
0.xxx (N epoch(s), S s)`` and ``hardware-aware (PCM at 1 day): clean accuracy 0.xxx (...)``
(ideal weights, after training), then one line per time, ``1 day: plain 0.xxx ± 0.xxx,
hardware-aware 0.xxx ± 0.xxx`` (mean ± std over chips), per network ``plain: half-way time
...`` (``fit.quote()``: the time at which accuracy has fallen half way from its value at 1 s to
chance when the fit is ok, else a lower bound such as ``> 3.16e+07 (beyond_grid)``), and ``wrote
OUT_DIR/results.json OUT_DIR/accuracy_vs_time.png`` (dashed in the plot: the accuracy with the
ideal weights). Each network's sweep is in ``OUT_DIR/<network>/`` (``axis_results.json``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from fxharden import PCM, AxisResult, HardenConfig, HardenedModule, TrainConfig, WeightNoise, harden, \
    set_weight_noise, sweep_axis, train
from fxharden.measure.plots import new_figure, save_figure
from fxharden.zoo.data import DatasetKind, TensorImageDataset, load_splits
from fxharden.zoo.networks import lenet5

DAY = 86400.0
TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": DAY, "1 month": 30 * DAY, "1 yr": 365.25 * DAY}
"""Times after programming (seconds) at which the chips are read."""
TICKS = ("1 s", "1 h", "1 d", "1 mo", "1 yr")
TRAIN_TIME = DAY
"""The PCM time the hardware-aware network is trained at."""
NETWORKS = ("plain", "hardware-aware")


def pcm_lenet5(seed: int = 0) -> HardenedModule:
    """LeNet-5 whose conv/linear weights are PCM conductances read at ``TRAIN_TIME`` (σ = 1: the
    published device); no quantization, so the device is all that departs from the ideal."""
    torch.manual_seed(seed)
    return harden(lenet5(), config=HardenConfig(quant=None, weight_noise=(WeightNoise(PCM(t=TRAIN_TIME), 1.0),)))


def trained(aware: bool, train_set: TensorImageDataset, test_set: TensorImageDataset,
            epochs: int) -> Tuple[HardenedModule, float]:
    """A ``pcm_lenet5`` trained with the PCM link on (``aware``) or at σ = 0 (plain), left at σ = 1,
    and its test accuracy with the ideal weights."""
    net = pcm_lenet5()
    set_weight_noise(net, 1.0 if aware else 0.0)
    result = train(net, train_set, test_set, TrainConfig(epochs=epochs))
    set_weight_noise(net, 1.0)
    name = f"hardware-aware (PCM at {TRAIN_TIME / DAY:g} day)" if aware else "plain"
    # test_accuracy: measured with every noise off (the ideal weights)
    print(f"{name}: clean accuracy {result.test_accuracy:.3f} ({epochs} epoch(s), {result.seconds:.0f} s)")
    return net, result.test_accuracy


def chip_accuracies(net: HardenedModule, test_set: TensorImageDataset, chips: int, out: Path) -> AxisResult:
    """Accuracy of ``chips`` PCM chips read at each of ``TIMES`` (``sweep_axis`` along time: a chip
    is one weight draw held for the whole test set, the same chip at every time) into ``out``."""
    return sweep_axis(net, test_set, axis="time", values=tuple(TIMES.values()), repeats=chips, out=out)


def plot(table: Dict[str, Dict[str, List[float]]], clean: Dict[str, float], path: Path) -> Path:
    """Mean accuracy over chips against time (log axis), error bars: std over chips; dashed: the
    accuracy with the ideal weights."""
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    x = np.array(list(TIMES.values()))
    for i, name in enumerate(NETWORKS):
        accs = np.array([table[name][label] for label in TIMES])
        ax.errorbar(x, accs.mean(1), yerr=_std(accs), fmt="o-", ms=4, capsize=3, color=f"C{i}", label=name)
        ax.axhline(clean[name], ls="--", lw=0.9, color=f"C{i}", label=f"{name}, ideal weights")
    ax.set_xscale("log")
    ax.set_xticks(x, TICKS)
    ax.minorticks_off()
    ax.set_xlabel("time after programming")
    ax.set_ylabel("accuracy")
    chips = len(next(iter(table[NETWORKS[0]].values())))
    ax.set_title(f"LeNet-5 on PCM: mean and std over {chips} chips", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def _std(accs: np.ndarray) -> np.ndarray:
    """Sample std over chips (the last axis); 0 for one chip."""
    return accs.std(-1, ddof=1) if accs.shape[-1] > 1 else np.zeros(accs.shape[:-1])


def main(out: Path, data: Optional[Path], epochs: int, chips: int, train_images: Optional[int],
         test_images: int) -> None:
    kind = DatasetKind.CIFAR10 if data is not None else DatasetKind.SYNTHETIC
    train_set, test_set = load_splits(kind, data, train_images=train_images, test_images=test_images,
                                    synthetic_images=2048)
    print(f"data: {kind.value}, {len(train_set)} training and {len(test_set)} test images")
    nets, clean = {}, {}
    for name in NETWORKS:
        nets[name], clean[name] = trained(name != "plain", train_set, test_set, epochs)
    sweeps = {name: chip_accuracies(net, test_set, chips, out / name) for name, net in nets.items()}
    # one point per time: its accuracy per network (one here) and chip
    table = {name: {label: [float(a) for a in point.accuracy[0]] for label, point in zip(TIMES, result.points)}
             for name, result in sweeps.items()}
    for label in TIMES:
        stats = ", ".join(f"{name} {np.mean(table[name][label]):.3f} ± {_std(np.array(table[name][label])):.3f}"
                          for name in NETWORKS)
        print(f"{label}: {stats}")
    for name, result in sweeps.items():
        # quote(): the time at which accuracy has fallen half way from 1 s to chance, when the fit says so
        print(f"{name}: half-way time {result.fit.quote().text(3)}")

    out.mkdir(parents=True, exist_ok=True)
    chance = 1.0 / test_set.num_classes
    record = {"times_s": TIMES, "train_time_s": TRAIN_TIME, "chips": chips, "epochs": epochs, "data": kind.value,
              "train_images": len(train_set), "test_images": len(test_set), "chance": chance,
              "clean_accuracy": clean,
              "accuracy": {name: {label: {"chips": accs, "mean": float(np.mean(accs)),
                                          "std": float(_std(np.array(accs)))} for label, accs in rows.items()}
                           for name, rows in table.items()}}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    png = plot(table, clean, out / "accuracy_vs_time.png")
    print(f"wrote {out / 'results.json'} {png}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="example_pcm_drift", type=Path, help="output folder")
    parser.add_argument("--data", type=Path, default=os.environ.get("FXHARDEN_DATA") or None,
                        help="CIFAR-10 folder (default: $FXHARDEN_DATA; unset: generated images)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--chips", type=int, default=2, help="chips (weight draws) per time and network")
    parser.add_argument("--train-images", type=int, default=10000,
                        help="use the first N training images (0: all; a quick run by default)")
    parser.add_argument("--test-images", type=int, default=1000, help="use the first N test images")
    args = parser.parse_args()
    main(args.out, args.data, args.epochs, args.chips, args.train_images or None, args.test_images)
