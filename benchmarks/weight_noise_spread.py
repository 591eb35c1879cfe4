"""The spread over repeats of a network with weight noise only, for several batchings.

A repeat is one programmed chip (``SweepConfig.weight_draws="repeat"``, the default): its
weights are drawn once and evaluated on every image, so the standard deviation of the
correct counts over repeats must not depend on ``points_per_forward`` / ``forward_images``
(which differ between a CPU and CUDA). With ``weight_draws="forward"`` every forward pass
(slice of ``forward_images // points_per_forward`` images) draws its own weights and the
spread shrinks as the slices get smaller.

Trains a LeNet-5 briefly (plain Adam, ``--epochs`` over the CIFAR-10 training set), then
sweeps it with weight noise only (additive, ``--sigma-w`` × max|w| per tensor, activation
noise at a negligible 1e-6) at one point with ``--repeats`` repeats and several seeds, and
prints the standard deviation of the correct counts over repeats (pooled over the seeds).

    OMP_NUM_THREADS=2 FXHARDEN_DATA=../shared/data/cifar10 python benchmarks/weight_noise_spread.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

import fxharden
from fxharden.core.config import HardenConfig, WeightNoiseConfig
from fxharden.measure.sweep import sweep
from fxharden.zoo.data import as_batches, load_cifar10
from fxharden.zoo.networks import lenet5


def train(epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, data = lenet5(), load_cifar10("train")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        for x, y in as_batches(data, 128, "cpu", shuffle=True, generator=torch.Generator().manual_seed(seed)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--sigma-w", type=float, default=0.3)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args()
    model = train(args.epochs, 0)
    cfg = HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind="additive", sigma=args.sigma_w, relative=True))
    hm = fxharden.harden(model, config=cfg).eval()
    test = load_cifar10("test")
    print(f"LeNet-5 ({args.epochs} epochs), weight noise {args.sigma_w} x max|w|, {args.images} images, "
          f"{args.repeats} repeats, {args.seeds} seeds")
    print(f"{'weight_draws':>12} {'points/forward':>14} {'forward_images':>14} {'images/slice':>12} "
          f"{'mean correct':>12} {'std over repeats':>16}")
    for draws in ("repeat", "forward"):
        for ppf, fi in ((args.repeats, 512), (1, 512), (args.repeats, 16384)):
            counts = []
            for seed in range(args.seeds):
                res = sweep(hm, test, sigmas=[1e-6], repeats=args.repeats, batch_size=args.images,
                            max_images=args.images, points_per_forward=ppf, forward_images=fi, seed=seed,
                            weight_draws=draws, device="cpu")
                counts.append(np.asarray(res.points[0].correct[0], dtype=float))
            counts = np.array(counts)  # (seeds, repeats)
            pooled = float(np.sqrt(np.mean(counts.var(axis=1, ddof=1))))
            print(f"{draws:>12} {ppf:>14} {fi:>14} {min(args.images, max(1, fi // ppf)):>12} "
                  f"{counts.mean():>12.1f} {pooled:>16.1f}")


if __name__ == "__main__":
    main()
