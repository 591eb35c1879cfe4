"""Independent plain-PyTorch reference for fxharden's LeNet-5 noise sweep.

Trains the paper's LeNet-5 on CIFAR-10 and sweeps additive Gaussian noise N(0, σ²) with
nothing from fxharden: the network, the data loading, the training loop (Adam 1e-3,
per-step cosine decay to 0, batch 128, no augmentation) and the noise (added by hand after
the input and after every conv, linear, ReLU and pool: 12 sites, as fxharden places them)
are all written here. Only at the very end is fxharden imported, to fit μ with
``fxharden.fit_midpoint`` and to compare with fxharden's measured curve
(tests/fixtures/lenet5_fp32_25ep.json). The crossing is also computed here, independently:
the σ where the mean accuracy falls through (clean + chance) / 2, by linear interpolation in
ln σ.

Run (about 10 minutes on two idle CPU cores):

    OMP_NUM_THREADS=2 FXHARDEN_DATA=../shared/data/cifar10 python benchmarks/plain_lenet5.py

Defaults: 25 epochs (the budget of the stored fxharden curve), seed 0, the fixture's σ
grid, 5 repeats, all 10,000 test images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SITES = ("input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "fc1", "relu3", "fc2", "relu4", "fc3")
"""Where noise is added, in forward order: after the input and after every layer."""
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lenet5_fp32_25ep.json"
CHANCE = 0.1


class PlainLeNet5(nn.Module):
    """LeNet-5 with explicit noise: ``forward(x, sigmas, gen)`` adds ``sigmas[site] * N(0, 1)``
    after each site in ``SITES`` that has a nonzero entry. The submodule names match
    fxharden's LeNet5, so their state dicts are interchangeable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: Tensor, sigmas: Optional[Dict[str, float]] = None,
                gen: Optional[torch.Generator] = None) -> Tensor:
        def n(site: str, t: Tensor) -> Tensor:
            s = (sigmas or {}).get(site, 0.0)
            return t + s * torch.randn(t.shape, generator=gen, dtype=t.dtype) if s else t

        x = n("input", x)
        x = n("pool1", F.max_pool2d(n("relu1", F.relu(n("conv1", self.conv1(x)))), 2))
        x = n("pool2", F.max_pool2d(n("relu2", F.relu(n("conv2", self.conv2(x)))), 2))
        x = x.flatten(1)
        x = n("relu3", F.relu(n("fc1", self.fc1(x))))
        x = n("relu4", F.relu(n("fc2", self.fc2(x))))
        return n("fc3", self.fc3(x))


def load_split(root: Path, split: str) -> Tuple[Tensor, Tensor]:
    """Normalised float images (N, 3, 32, 32) and int64 labels of ``cifar10_<split>.npz``."""
    with np.load(root / f"cifar10_{split}.npz") as z:
        x, y = z["x"], z["y"]
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255.0)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std, torch.from_numpy(y.astype(np.int64))


def train(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, batch: int = 128, lr: float = 1e-3,
          seed: int = 0, log=print) -> None:
    """Adam with per-step cosine decay from ``lr`` to 0; a fresh shuffle every epoch; last
    partial batch dropped."""
    steps_per_epoch = len(x) // batch
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    model.train()
    for epoch in range(epochs):
        t0, loss_sum = time.perf_counter(), 0.0
        order = torch.randperm(len(x), generator=gen)
        for b in range(steps_per_epoch):
            idx = order[b * batch:(b + 1) * batch]
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach())
        log(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / steps_per_epoch:.4f} ({time.perf_counter() - t0:.0f} s)")


@torch.inference_mode()
def correct_counts(model: PlainLeNet5, x: Tensor, y: Tensor, sigmas: Sequence[float], repeats: int, *,
                   sites: Sequence[str] = SITES, seed: int = 0, batch: int = 1000) -> np.ndarray:
    """Correct predictions, shape ``(len(sigmas), repeats)``: noise σ at each of ``sites``
    (0 elsewhere), a fresh draw for every image, site and repeat."""
    model.eval()
    out = np.zeros((len(sigmas), repeats), dtype=np.int64)
    for i, s in enumerate(sigmas):
        noise = {site: float(s) for site in sites}
        for r in range(repeats):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i * 1009 + r)
            for b in range(0, len(x), batch):
                pred = model(x[b:b + batch], noise, gen).argmax(1)
                out[i, r] += int((pred == y[b:b + batch]).sum())
    return out


def log_crossing(sigmas: Sequence[float], acc: Sequence[float], level: float) -> float:
    """σ where ``acc`` first falls through ``level``, linear in ln σ (nan if it never does)."""
    s, a = np.log(np.asarray(sigmas, float)), np.asarray(acc, float)
    for i in range(len(a) - 1):
        if a[i] >= level > a[i + 1]:
            return float(np.exp(s[i] + (a[i] - level) / (a[i] - a[i + 1]) * (s[i + 1] - s[i])))
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--test-images", type=int, default=None, help="only the first N test images (smoke runs)")
    p.add_argument("--out", type=Path, default=None, help="save weights and counts here (json + .pt)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = Path(os.environ.get("FXHARDEN_DATA", "../shared/data/cifar10"))
    fixture = json.loads(FIXTURE.read_text())
    sigmas = fixture["sigmas"]
    xtr, ytr = load_split(root, "train")
    xte, yte = load_split(root, "test")
    xte, yte = xte[:args.test_images], yte[:args.test_images]
    model = PlainLeNet5()
    t0 = time.perf_counter()
    train(model, xtr, ytr, epochs=args.epochs, seed=args.seed)
    t_train = time.perf_counter() - t0
    clean_counts = correct_counts(model, xte, yte, [0.0], 1)[0, 0]
    clean = clean_counts / len(yte)
    t0 = time.perf_counter()
    counts = correct_counts(model, xte, yte, sigmas, args.repeats, seed=args.seed)
    t_sweep = time.perf_counter() - t0
    acc = counts / len(yte)
    mean, dy = acc.mean(1), acc.std(1, ddof=1) / math.sqrt(args.repeats)
    mu_x = log_crossing(sigmas, mean, 0.5 * (clean + CHANCE))
    print(f"train {t_train:.0f} s, sweep {t_sweep:.0f} s ({len(sigmas)} sigmas x {args.repeats} repeats x "
          f"{len(yte)} images)")
    for s, m, e in zip(sigmas, mean, dy):
        print(f"  sigma {s:<8g} acc {m:.4f} ± {e:.4f}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out / "plain_lenet5.pt")
        (args.out / "plain_lenet5.json").write_text(json.dumps(
            {"clean": float(clean), "sigmas": sigmas, "correct": counts.tolist(), "total": len(yte)}))

    # ---- only from here on: fxharden, to fit and to compare
    import fxharden

    fit = fxharden.fit_midpoint(sigmas, mean, dy, chance=CHANCE, plateau=(float(clean), float(np.sqrt(
        clean * (1 - clean) / len(yte)))))
    fx_clean = float(np.mean(fixture["clean_accuracies"]))
    fx_acc = np.asarray(fixture["correct"], float)[:, 0, :].mean(1) / fixture["total"]
    fx_cross = log_crossing(sigmas, fx_acc, 0.5 * (fx_clean + CHANCE))
    fx_mu = 0.2794
    print(f"plain PyTorch: clean accuracy {clean:.4f}; crossing μ {mu_x:.4f} (linear in ln σ at "
          f"(clean + chance)/2); fxharden.fit_midpoint μ {fit.mu:.4f} ± {fit.mu_err:.4f} ({fit.status.value})")
    print(f"fxharden fixture: clean accuracy {fx_clean:.4f}; crossing μ {fx_cross:.4f} (same rule); "
          f"fit μ {fx_mu:.4f}")
    print(f"ratio plain/fxharden: fit μ {fit.mu / fx_mu:.3f}, crossing μ {mu_x / fx_cross:.3f}, "
          f"clean accuracy {clean / fx_clean:.3f}")


if __name__ == "__main__":
    main()
