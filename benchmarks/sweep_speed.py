"""Speed of the sweep engine, as measured ratios.

(a) Throughput at one batch size: a bare loop of hardened-model forwards (data already on
    the device, no accuracy bookkeeping) versus the sweep engine at the same batch size, one
    point per forward (target >= 0.9x) and with its automatic batching of points (replicated
    batches, one sigma per group). Interleaved repetitions, median reported.
(c) Cost of one (σ, repeat) point: sweep evaluation time per point divided by the time of
    one plain fp32 forward (the unhardened model) over the same images at the same batch
    size; LeNet-5 and ResNet-18 (32x32), 8-bit + noise, global and per-layer mode, with
    shared (common random numbers across σ) and with independent draws. Interleaved.
(d) Spread of μ over independent sweeps (--mu-spread N): N seeds with shared draws and N
    with independent draws on the trained LeNet-5, interleaved; std of μ and mean wall time.
(b) Wall time to μ: the adaptive, batched ``fxharden.sweep`` (5 repeats) versus a plain loop
    over a fixed 20-point grid (one point at a time, ``.item()`` per batch, then the same fit),
    for LeNet-5 (and ResNet-18 with --resnet18), briefly trained first so that μ exists.

Data: real CIFAR-10 through $FXHARDEN_DATA (or --data) when present, else generated images.

Run:  python benchmarks/sweep_speed.py [--device cuda] [--images 2000] [--resnet18]
      python benchmarks/sweep_speed.py --cost-only [--cost-images 512]   (only (c))
      python benchmarks/sweep_speed.py --cost-only --forward-images 2048,512   (c) per slice size
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import fxharden
from fxharden.zoo.data import DataNotFoundError, load_cifar10, synthetic_dataset
from fxharden.measure.midpoint import fit_midpoint
from fxharden.zoo.models import build_model
from fxharden.measure.sweep import CHUNK_LEVELS, SweepConfig, sweep
from fxharden.training.train import TrainConfig, train


def datasets(root, images: int):
    try:
        train_set, test_set = load_cifar10("train", root), load_cifar10("test", root)
        return "CIFAR-10", train_set, test_set.subset(min(images, len(test_set)))
    except DataNotFoundError:
        full = synthetic_dataset(5000 + images, seed=1)  # one seed: train and test share the class prototypes
        return "synthetic", full.subset(torch.arange(5000)), full.subset(torch.arange(5000, 5000 + images))


def trained(name: str, train_set, epochs: int, device: str, max_steps=None):
    torch.manual_seed(0)
    hm = fxharden.harden(build_model(name), bits=8, scale=1.0 if name == "lenet5" else None)
    lr = {"lenet5": 1e-3, "resnet18": 1e-2}.get(name, 1e-3)
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=lr, device=device, eval_each_epoch=False, max_steps=max_steps)
    return train(hm, train_set, config=cfg).model.eval()


def throughput(hm, data, batch: int, device: torch.device, reps: int) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    xs = [x for x, _ in data.batches(batch, device=device)]
    n = sum(len(x) for x in xs)
    sigmas = [0.05 * (k + 1) for k in range(4)]
    auto = CHUNK_LEVELS.get(device.type, 4) * 2  # what sweep picks for 2 repeats

    def bare() -> float:
        fxharden.set_noise(hm, 0.1)
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            for _ in range(len(sigmas) * 2):
                for x in xs:
                    hm(x)
        sync()
        fxharden.set_noise(hm, 0.0)
        return len(sigmas) * 2 * n / (time.perf_counter() - t)

    def engine(per_forward: int):
        def run() -> float:
            r = sweep(hm, data, sigmas=sigmas, repeats=2, batch_size=batch, points_per_forward=per_forward,
                      device=str(device))
            return r.timing["images"] / r.timing["eval_seconds"]
        return run

    runs = {"bare loop": bare, "engine, 1 point/forward": engine(1), f"engine, {auto} points/forward": engine(auto)}
    for f in runs.values():
        f()  # warm up
    got = {k: [] for k in runs}
    for _ in range(reps):
        for k, f in runs.items():
            got[k].append(f())
    base = statistics.median(got["bare loop"])
    print(f"(a) throughput at batch {batch} on {device}, {n} images, median of {reps}:")
    for k, v in got.items():
        print(f"    {k:28s} {statistics.median(v):12,.0f} images/s   {statistics.median(v) / base:5.2f}x")


def timed_plain_pass(plain, xs, sync) -> float:
    """Seconds of one inference pass of ``plain`` over the batches ``xs`` (``sync`` waits for the device)."""
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        for x in xs:
            plain(x)
    sync()
    return time.perf_counter() - t


def _shared_kw(shared: bool) -> dict:
    """``shared_noise`` when this version of the sweep has the setting (else nothing)."""
    return {"shared_noise": shared} if "shared_noise" in SweepConfig.__dataclass_fields__ else {}


def cost_per_point(name: str, data, batch: int, device: torch.device, reps: int, scan=None) -> None:
    """(c): seconds per (σ, repeat) point over the seconds of one plain fp32 pass of the data;
    with ``scan`` (a list of ``forward_images`` values) global mode with shared draws at each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    plain = build_model(name).to(device).eval()
    hm = fxharden.harden(plain, bits=8, scale=1.0 if name == "lenet5" else None)
    xs = [x for x, _ in data.batches(batch, device=device)]
    sites = fxharden.noise_sites(hm)
    every = sites[:: max(1, len(sites) // 4)][:4]  # per-layer: 4 sites spread over the network
    sigmas = [0.02, 0.05, 0.1, 0.2]

    def plain_pass() -> float:
        return timed_plain_pass(plain, xs, sync)

    def swept(mode: str, shared: bool, forward_images=None):
        kw = dict(sigmas=sigmas, repeats=2, batch_size=batch, device=str(device), **_shared_kw(shared))
        if forward_images is not None:
            kw.update(forward_images=forward_images)
        if mode == "per_layer":
            kw.update(mode="per_layer", sites=tuple(every))

        def run() -> float:
            r = sweep(hm, data, **kw)
            return r.timing["points_seconds"] / r.timing["points_measured"]
        return run

    runs = {"plain fp32 pass": plain_pass, "global, shared draws": swept("global", True),
            "global, independent": swept("global", False), "per-layer, shared": swept("per_layer", True),
            "per-layer, independent": swept("per_layer", False)}
    if scan:
        runs = {"plain fp32 pass": plain_pass,
                **{f"global, shared, {n} images/forward": swept("global", True, n) for n in scan}}
    elif not _shared_kw(True):
        runs = {k: v for k, v in runs.items() if "independent" not in k}
    for f in runs.values():
        f()
    got = {k: [] for k in runs}
    for _ in range(reps):
        for k, f in runs.items():
            got[k].append(f())
    base = statistics.median(got["plain fp32 pass"])
    print(f"(c) {name}: cost per (σ, repeat) point on {len(data)} images, batch {batch}, {device}, median of {reps} "
          f"(per-layer sites: {', '.join(every)})")
    for k, v in got.items():
        print(f"    {k:34s} {statistics.median(v) * 1e3:9.1f} ms   {statistics.median(v) / base:5.2f}x plain")


def mu_spread(hm, data, batch: int, device: torch.device, seeds: int) -> None:
    """(d): μ of ``seeds`` independent sweeps, with shared and with independent draws."""
    got = {True: ([], []), False: ([], [])}
    for seed in range(seeds):
        for shared in (True, False):
            t = time.perf_counter()
            r = sweep(hm, data, repeats=5, batch_size=batch, device=str(device), seed=seed, **_shared_kw(shared))
            got[shared][0].append(r.fit.mu)
            got[shared][1].append(time.perf_counter() - t)
    print(f"(d) spread of μ over {seeds} seeds, LeNet-5, {len(data)} images, 5 repeats, adaptive sweep:")
    for shared, (mus, secs) in got.items():
        print(f"    {'shared draws     ' if shared else 'independent draws'}  μ mean {np.mean(mus):.4g}  "
              f"std {np.std(mus, ddof=1):.3g}  ({', '.join(f'{m:.4g}' for m in mus)})  "
              f"mean wall {np.mean(secs):.1f} s")


def plain_fixed_grid(hm, data, batch: int, device: torch.device, repeats: int):
    """What one writes by hand: 20 points, one at a time, a host sync per batch."""
    grid = np.geomspace(1e-3, 10, 20)
    hm.eval().to(device)
    means = []
    t = time.perf_counter()
    for sigma in grid:
        accs = []
        for r in range(repeats):
            fxharden.set_noise(hm, float(sigma))
            fxharden.seed_noise(hm, r)
            correct = 0
            with torch.no_grad():
                for x, y in data.batches(batch, device=device):
                    correct += (hm(x).argmax(1) == y).sum().item()
            accs.append(correct / len(data))
        means.append(float(np.mean(accs)))
    fxharden.set_noise(hm, 0.0)
    fit = fit_midpoint(grid, means, chance=0.1)
    return time.perf_counter() - t, fit, 20 * repeats * len(data)


def time_to_mu(name: str, hm, data, batch: int, device: torch.device) -> None:
    t = time.perf_counter()
    r = sweep(hm, data, repeats=5, batch_size=batch, device=str(device))
    fast = time.perf_counter() - t
    slow, fit, images = plain_fixed_grid(hm, data, batch, device, 5)
    print(f"(b) {name}: wall time to μ on {len(data)} images, 5 repeats (clean accuracy {r.clean_accuracy:.3f})")
    print(f"    adaptive+batched sweep  {fast:8.2f} s  {len(r.points):2d} points  {r.timing['images']:>10,} images  "
          f"μ = {r.fit.mu:.4g} ± {r.fit.mu_err:.2g} ({r.fit.status.value}), crossing {r.fit.mu_crossing:.4g}")
    print(f"    plain 20-point loop     {slow:8.2f} s  20 points  {images:>10,} images  "
          f"μ = {fit.mu:.4g} ± {fit.mu_err:.2g} ({fit.status.value}), crossing {fit.mu_crossing:.4g}")
    print(f"    speed-up {slow / fast:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2000, help="test images for (b)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs before (b)")
    parser.add_argument("--data", default=None, help="CIFAR-10 folder (default: $FXHARDEN_DATA)")
    parser.add_argument("--resnet18", action="store_true", help="also time ResNet-18")
    parser.add_argument("--resnet18-images", type=int, default=None, help="test images for ResNet-18 in (b)")
    parser.add_argument("--resnet18-steps", type=int, default=None, help="cap ResNet-18's training steps")
    parser.add_argument("--cost-images", type=int, default=512, help="images for (c)")
    parser.add_argument("--cost-only", action="store_true", help="only (c), on LeNet-5 and ResNet-18")
    parser.add_argument("--forward-images", default=None,
                        help="(c): comma-separated forward_images values to compare (global, shared draws)")
    parser.add_argument("--skip-throughput", action="store_true", help="skip (a)")
    parser.add_argument("--mu-spread", type=int, default=0, help="(d) with this many seeds (LeNet-5 only)")
    args = parser.parse_args()
    device = torch.device(args.device)
    kind, train_set, test_set = datasets(args.data or os.environ.get("FXHARDEN_DATA"), max(args.images, args.cost_images))
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, data {kind}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.cost_only:
        for name in ("lenet5", "resnet18"):
            scan = [int(v) for v in args.forward_images.split(",")] if args.forward_images else None
            cost_per_point(name, test_set.subset(min(args.cost_images, len(test_set))), args.batch, device, args.reps,
                           scan)
        return
    test_full = test_set
    test_set = test_full.subset(min(args.images, len(test_full)))
    for name in ["lenet5"] + (["resnet18"] if args.resnet18 else []):
        hm = trained(name, train_set, args.epochs, str(device), args.resnet18_steps if name == "resnet18" else None)
        if name == "lenet5" and args.mu_spread:
            mu_spread(hm, test_set, args.batch, device, args.mu_spread)
            continue
        if name == "lenet5" and not args.skip_throughput:
            throughput(hm, test_set, args.batch, device, args.reps)
        n = args.resnet18_images if name == "resnet18" and args.resnet18_images else len(test_set)
        time_to_mu(name, hm, test_full.subset(min(n, len(test_full))), args.batch, device)


if __name__ == "__main__":
    main()
