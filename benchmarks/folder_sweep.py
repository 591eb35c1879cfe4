"""Sweep throughput on an image folder at 224x224, as a measured ratio.

For each timm model (random weights, 8-bit hardened): ``--images`` JPEGs are written to a
temporary image folder and decoded once with the model's own preprocessing (``resolve_data``;
its time is reported apart). Then, over the same decoded tensors:

* sweep: ``fxharden.sweep`` with ``--points`` noise levels and ``points_per_forward=--points``
  (each forward holds that many replicas of a batch, one σ per replica), plus its clean point;
* bare: a loop of hardened forwards over the same replicated batches with noise on, no
  bookkeeping (the ceiling the sweep engine is measured against).

Prints images/s (image-points per second) for both and sweep/bare (target >= 0.9).

Run:  python benchmarks/folder_sweep.py [--images 1000] [--batch 16] [--points 8]
      [--models resnet18 vit_tiny_patch16_224] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fxharden
from fxharden.zoo.folders import resolve_data
from fxharden.zoo.models import load_model


def write_folder(root: Path, images: int, classes: int = 10, size: int = 256) -> Path:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 256, size=(size // 16, size // 16, 3), dtype=np.uint8)
        Image.fromarray(img).resize((size, size), Image.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def bench(name: str, folder: Path, args) -> None:
    device = torch.device(args.device)
    lm = load_model(f"timm:{name}", num_classes=10)
    t0 = time.perf_counter()
    data = resolve_data(folder, preprocess=lm.preprocess)
    decode = time.perf_counter() - t0
    hm = fxharden.harden(lm.model, bits=8).eval().to(device)
    sigmas = tuple(float(s) for s in np.geomspace(0.01, 1.0, args.points))

    t0 = time.perf_counter()
    result = fxharden.sweep(hm, data, sigmas=sigmas, repeats=1, adaptive=False, batch_size=args.batch,
                            points_per_forward=args.points, device=args.device)
    sweep_s = time.perf_counter() - t0
    sweep_rate = (args.points + 1) * len(data) / sweep_s  # the noisy points and the clean one

    xs = [x.repeat(args.points, 1, 1, 1) for x, _ in data.batches(args.batch, device=device)]
    fxharden.set_noise(hm, 0.1)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in xs:
            hm(x).argmax(1)
    bare_s = time.perf_counter() - t0
    fxharden.set_noise(hm, 0.0)
    bare_rate = args.points * len(data) / bare_s
    print(f"{name}: {len(data)} images {tuple(data.shape)}, decoded once in {decode:.1f} s; "
          f"sweep {sweep_rate:.1f} images/s ({sweep_s:.1f} s, clean {result.clean_accuracy:.3f}), "
          f"bare {bare_rate:.1f} images/s -> sweep/bare {sweep_rate / bare_rate:.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--points", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=["resnet18", "vit_tiny_patch16_224"])
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}, device {args.device}, {args.points} points per forward")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp), args.images)
        for name in args.models:
            bench(name, folder, args)


if __name__ == "__main__":
    main()
