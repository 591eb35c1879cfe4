"""One-go device check: overhead ratios, sweep cost, a short bf16 noisy-QAT run of ResNet-18,
and the statistics of injected noise under autocast, printed as one table.

Rows: noise statistics; eval and train overhead of LeNet-5 and ResNet-18 (plain, noise only,
8-bit + noise, naive hooks, Brevitas when installed); ResNet-18 under bf16 autocast with both
``autocast_output`` settings; ResNet-50 224 and ViT-S/16 224 (bf16) eval; ResNet-18 eval and
train step with ``torch.compile`` on both sides; sweep points against a plain pass; the CLI's
training loop (``fxharden.train``) against a bare loop of the same hardened steps.

Sizes: ``--device cuda`` (default when a GPU is present) runs the full sizes in a few minutes;
``--device cpu`` runs tiny sizes end to end (the CI test), so the script is known to work
before a GPU is lent. Real CIFAR-10 through $FXHARDEN_DATA when present, else generated images.

Run:  bash benchmarks/gpu_check.sh [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import List

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402  (sibling benchmark script)
from sweep_speed import timed_plain_pass  # noqa: E402  (sibling benchmark script)

import fxharden  # noqa: E402
from fxharden.core.noise import Noise  # noqa: E402
from fxharden.measure.sweep import sweep  # noqa: E402
from fxharden.training.train import Precision, TrainConfig, train  # noqa: E402
from fxharden.zoo.data import DataNotFoundError, load_cifar10, synthetic_dataset  # noqa: E402
from fxharden.zoo.networks import LeNet5  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run (full on a GPU, tiny on the CPU)."""

    lenet_batch: int
    resnet_batch: int
    reps: int
    sweep_images: int
    sweep_batch: int
    train_images: int
    train_steps: int
    noise_elements: int
    warmup: int
    image: int
    """Side of the (square) ResNet-18 input in the overhead rows (LeNet-5 needs 32)."""
    big_batch: int
    big_image: int
    """Batch and side of the ResNet-50 and ViT-S rows (224 on a GPU)."""
    compile_backend: str
    """``torch.compile`` backend of the compiled rows (Inductor on a GPU; on the CPU a cheap one,
    to run the code path: Inductor compiles a hardened ResNet-18 for minutes on 2 cores)."""


FULL = Sizes(lenet_batch=1024, resnet_batch=256, reps=20, sweep_images=4096, sweep_batch=512, train_images=20_000,
             train_steps=300, noise_elements=10_000_000, warmup=3, image=32, big_batch=128, big_image=224,
             compile_backend="inductor")
TINY = Sizes(lenet_batch=32, resnet_batch=2, reps=1, sweep_images=16, sweep_batch=8, train_images=16,
             train_steps=1, noise_elements=100_000, warmup=1, image=16, big_batch=1, big_image=64,
             compile_backend="eager")


class Table:
    def __init__(self) -> None:
        self.rows: List[tuple] = []

    def add(self, section: str, what: str, value: str, note: str = "") -> None:
        self.rows.append((section, what, value, note))
        print(f"  {section:9s} {what:44s} {value:>14s}  {note}", flush=True)

    def print(self) -> None:
        widths = [max(len(r[i]) for r in self.rows) for i in range(4)]
        print("\n| " + " | ".join(h.ljust(w) for h, w in zip(("section", "check", "value", "note"), widths)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in self.rows:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def overhead_rows(table: Table, sizes: Sizes, device: torch.device, sync) -> None:
    for name, build, batch in (("lenet5", LeNet5, sizes.lenet_batch),
                               ("resnet18", lambda: torchvision.models.resnet18(num_classes=10), sizes.resnet_batch)):
        torch.manual_seed(0)
        model = build().to(device)
        side = 32 if name == "lenet5" else sizes.image
        x = torch.randn(batch, 3, side, side, device=device)
        variants = {"plain": model, "noise": fxharden.harden(model, bits=None, sigma=0.1),
                    "q8+noise": fxharden.harden(model, bits=8, scale=1.0, sigma=0.1), "naive": overhead.naive(model, 0.1)}
        bm, why = overhead.brevitas_model(name, 0.1, model)
        if bm is not None:
            variants["brevitas"] = bm.to(device)
        for train_step in (False, True):
            res = overhead.compare(variants, x, sizes.reps, train_step, sync, sizes.warmup)
            step = "train" if train_step else "eval"
            cells = ", ".join(f"{k} {r:.2f}x" for k, (r, _) in res.items() if k != "plain")
            table.add("overhead", f"{name} {side}px b{batch} {step} (plain {res['plain'][1] * 1e3:.2f} ms)",
                      f"{res['q8+noise'][0]:.2f}x", cells + ("" if bm is not None else f"; no brevitas: {why}"))


def bf16_rows(table: Table, sizes: Sizes, device: torch.device, sync) -> None:
    """ResNet-18 eval and train step under bf16 autocast: sites handing on float32 (the
    default) against sites rounding once to bf16 (``NoiseConfig.autocast_output="input"``)."""
    from fxharden import HardenConfig, NoiseConfig, QuantConfig

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(sizes.resnet_batch, 3, sizes.image, sizes.image, device=device).to(
        memory_format=torch.channels_last)
    q8 = QuantConfig(bits=8, scale=1.0)
    variants = {"plain": model, "q8+noise": fxharden.harden(model, bits=8, scale=1.0, sigma=0.1),
                "q8+noise bf16 out": fxharden.harden(model, config=HardenConfig(quant=q8, noise=NoiseConfig(
                    sigma=0.1, autocast_output="input")))}
    for train_step in (False, True):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            res = overhead.compare(variants, x, sizes.reps, train_step, sync, sizes.warmup)
        step = "train" if train_step else "eval"
        cells = ", ".join(f"{k} {r:.2f}x" for k, (r, _) in res.items() if k != "plain")
        table.add("bf16", f"resnet18 {sizes.image}px b{sizes.resnet_batch} {step}, bf16 autocast, channels_last "
                  f"(plain {res['plain'][1] * 1e3:.2f} ms)", f"{res['q8+noise bf16 out'][0]:.2f}x", cells)


def big_rows(table: Table, sizes: Sizes, device: torch.device, sync) -> None:
    """ResNet-50 (fp32) and ViT-S/16 (bf16 autocast) eval at 224 px."""
    import timm

    from fxharden import HardenConfig, NoiseConfig

    side, batch = sizes.big_image, sizes.big_batch
    torch.manual_seed(0)
    r50 = torchvision.models.resnet50(num_classes=1000).to(device)
    x = torch.randn(batch, 3, side, side, device=device)
    res = overhead.compare({"plain": r50, "q8+noise": fxharden.harden(r50, bits=8, scale=1.0, sigma=0.1),
                            "naive": overhead.naive(r50, 0.1)}, x, sizes.reps, False, sync, sizes.warmup)
    table.add("overhead", f"resnet50 {side}px b{batch} eval (plain {res['plain'][1] * 1e3:.2f} ms)",
              f"{res['q8+noise'][0]:.2f}x", f"naive {res['naive'][0]:.2f}x; target <= 1.5x")
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=side).to(device)
    bf16_out = HardenConfig.from_shorthand(bits=8, scale=None).replace(
        noise=NoiseConfig(sigma=0.1, autocast_output="input"))
    variants = {"plain": vit, "q8+noise": fxharden.harden(vit, bits=8, scale=None, sigma=0.1),
                "q8+noise bf16 out": fxharden.harden(vit, config=bf16_out)}
    for net in list(variants.values())[1:]:
        fxharden.calibrate_quantizers(net, [x])
    with torch.autocast(device.type, dtype=torch.bfloat16):
        res = overhead.compare(variants, x, sizes.reps, False, sync, sizes.warmup)
    table.add("overhead", f"vit_small_patch16 {side}px b{batch} eval bf16 (plain {res['plain'][1] * 1e3:.2f} ms)",
              f"{res['q8+noise'][0]:.2f}x", f"bf16 out {res['q8+noise bf16 out'][0]:.2f}x; target <= 1.5x")


def compiled_rows(table: Table, sizes: Sizes, device: torch.device, sync) -> None:
    """ResNet-18 eval and train step with ``torch.compile`` on both sides (the hardened model
    compiles to one graph: ``benchmarks/compile_check.py``)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    x = torch.randn(sizes.resnet_batch, 3, sizes.image, sizes.image, device=device)
    hm = fxharden.harden(model, bits=8, scale=1.0, sigma=0.1)
    fxharden.calibrate_quantizers(hm, [x])  # statistics-based steps are fixed before compiling
    variants = {"plain": torch.compile(model, backend=sizes.compile_backend),
                "q8+noise": torch.compile(hm, backend=sizes.compile_backend)}
    for train_step in (False, True):
        t = time.perf_counter()
        res = overhead.compare(variants, x, sizes.reps, train_step, sync, sizes.warmup)
        step = "train" if train_step else "eval"
        table.add("compiled", f"resnet18 {sizes.image}px b{sizes.resnet_batch} {step}, both compiled "
                  f"(plain {res['plain'][1] * 1e3:.2f} ms)", f"{res['q8+noise'][0]:.2f}x",
                  f"backend {sizes.compile_backend}, {time.perf_counter() - t:.0f} s with compilation; target <= 1.3x")


def loop_rows(table: Table, sizes: Sizes, device: torch.device, train_set) -> None:
    """``fxharden.train`` against a bare loop of the same hardened steps (Adam, bf16 autocast,
    the same batches on the device): how much of the chip the training loop leaves unused."""
    from fxharden.training.feed import on_device, training_batches

    batch, steps = min(256, max(2, sizes.train_images // 2)), max(2, sizes.train_steps // 3)
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-3, device=str(device), precision=Precision.BF16,
                      train_sigma=0.05, max_steps=steps, eval_each_epoch=False)
    torch.manual_seed(0)
    hm = fxharden.harden(torchvision.models.resnet18(num_classes=10), bits=8, scale=None).to(device)
    fxharden.set_noise(hm, 0.05)
    data = on_device(train_set, device)
    xs = [b for _, b in zip(range(steps), training_batches(data, batch, device, torch.Generator().manual_seed(0)))]
    opt = torch.optim.Adam(hm.parameters(), lr=1e-3)
    hm.train()

    def bare() -> None:
        for x, y in xs:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(hm(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    bare()  # warm-up (calibration, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    bare()
    if device.type == "cuda":
        torch.cuda.synchronize()
    bare_rate = len(xs) * batch / (time.perf_counter() - t)
    t = time.perf_counter()
    res = train(hm, train_set, config=cfg)
    cli_rate = res.steps * batch / (time.perf_counter() - t)
    table.add("train", f"fxharden.train vs bare loop, resnet18 8-bit noisy b{batch} bf16",
              f"{cli_rate / bare_rate:.2f}x", f"{cli_rate:,.0f} vs {bare_rate:,.0f} images/s; target >= 0.8x")


def sweep_rows(table: Table, sizes: Sizes, device: torch.device, data, sync) -> None:
    for name, build in (("lenet5", LeNet5), ("resnet18", lambda: torchvision.models.resnet18(num_classes=10))):
        torch.manual_seed(0)
        plain = build().to(device).eval()
        hm = fxharden.harden(plain, bits=8, scale=1.0 if name == "lenet5" else None)
        xs = [x for x, _ in data.batches(sizes.sweep_batch, device=device)]
        sites = fxharden.noise_sites(hm)

        def plain_pass() -> float:
            return timed_plain_pass(plain, xs, sync)

        plain_pass()
        base = statistics.median(plain_pass() for _ in range(max(3, sizes.reps // 4)))
        for mode, kw in (("global", {}), ("per-layer", {"mode": "per_layer", "sites": tuple(sites[::max(1, len(sites) // 4)][:4])})):
            r = sweep(hm, data, sigmas=[0.02, 0.05, 0.1, 0.2], repeats=2, batch_size=sizes.sweep_batch,
                      device=str(device), **kw)
            per_point = r.timing["points_seconds"] / r.timing["points_measured"]
            table.add("sweep", f"{name} {mode}: time per (sigma, repeat) point", f"{per_point / base:.2f}x plain",
                      f"{r.timing['images_per_second']:,.0f} images/s, {len(data)} images, target <= "
                      f"{'1.5' if mode == 'global' else '2'}x")


def train_rows(table: Table, sizes: Sizes, device: torch.device, train_set) -> None:
    torch.manual_seed(0)
    hm = fxharden.harden(torchvision.models.resnet18(num_classes=10), bits=8, scale=None)
    cfg = TrainConfig(epochs=1, batch_size=min(128, sizes.train_images // 2), lr=1e-3, device=str(device),
                      precision=Precision.BF16, train_sigma=0.05, max_steps=sizes.train_steps,
                      eval_each_epoch=False)
    t = time.perf_counter()
    res = train(hm, train_set, config=cfg)
    seconds = time.perf_counter() - t
    log = res.history[-1]
    ok = math.isfinite(log.loss)
    table.add("train", "resnet18 8-bit noisy QAT, bf16 autocast", f"{res.steps / seconds:.1f} steps/s",
              f"{res.steps} steps of {cfg.batch_size}, loss {log.loss:.3f}, train acc {log.train_accuracy:.3f}, "
              f"{'finite' if ok else 'NOT FINITE'}")


def noise_rows(table: Table, sizes: Sizes, device: torch.device) -> None:
    """Noise injected into bf16 activations under autocast: the realised noise ``out - x``
    (in float64) against N(0, sigma^2), on small and on large activations."""
    n = sizes.noise_elements
    for level, sigma in ((1.0, 0.1), (100.0, 0.1)):
        mod = Noise("check", seed=1)
        mod.set_sigma(sigma)
        x = torch.full((n,), level, device=device, dtype=torch.bfloat16)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = mod(x)
        d = (out.double() - x.double()) / sigma
        mean, var = float(d.mean()), float(d.var())
        kurt = float(((d - mean) ** 4).mean()) / var ** 2 if var > 0 else float("nan")
        table.add("noise", f"bf16 x={level:g}, sigma={sigma}: std/sigma, kurtosis", f"{math.sqrt(var):.4f}",
                  f"mean {mean:+.4f}, kurtosis {kurt:.3f} (N(0,1): 1, 3), output dtype {out.dtype}")
    spacing = 2.0 ** -7  # bf16 at 1.5; rounded once (autocast_output="input"): variance sigma^2 + D^2/12
    for sigma in (4 * spacing, spacing / 8):
        mod = Noise("check", seed=1, keep_float32=False)
        mod.set_sigma(sigma)
        x = torch.full((n,), 1.5, device=device, dtype=torch.bfloat16)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = mod(x)
        want = math.sqrt(sigma ** 2 + spacing ** 2 / 12) if sigma > spacing else 0.0
        table.add("noise", f"bf16 out, x=1.5, sigma={sigma:.3g}: realised std", f"{float((out.double() - 1.5).std()):.3g}",
                  f"closed form {want:.3g} (sigma >> spacing 2^-7) or ~0 (sigma << spacing); dtype {out.dtype}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=None, help="CIFAR-10 folder (default: $FXHARDEN_DATA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = FULL if device.type == "cuda" else TINY
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        root = args.data or os.environ.get("FXHARDEN_DATA")
        train_set, test_set, kind = load_cifar10("train", root), load_cifar10("test", root), "CIFAR-10"
    except DataNotFoundError:
        full = synthetic_dataset(sizes.train_images + sizes.sweep_images, seed=1)
        train_set, test_set, kind = full, full, "synthetic"
    train_set = train_set.subset(min(sizes.train_images, len(train_set)))
    test_set = test_set.subset(min(sizes.sweep_images, len(test_set)))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"fxharden device check: torch {torch.__version__}, {device} ({gpu}), data {kind}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    table, t0 = Table(), time.perf_counter()
    noise_rows(table, sizes, device)
    overhead_rows(table, sizes, device, sync)
    bf16_rows(table, sizes, device, sync)
    big_rows(table, sizes, device, sync)
    compiled_rows(table, sizes, device, sync)
    sweep_rows(table, sizes, device, test_set, sync)
    train_rows(table, sizes, device, train_set)
    loop_rows(table, sizes, device, train_set)
    table.add("total", "wall time", f"{time.perf_counter() - t0:.0f} s")
    table.print()


if __name__ == "__main__":
    main()
