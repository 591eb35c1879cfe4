"""Training step time of QAT and noisy training relative to plain PyTorch training.

    .venv/bin/python benchmarks/train_speed.py [--steps 8] [--device cpu|cuda] [--models resnet18 lenet5]

For each model (3x32x32 inputs, batch 128, Adam, cross-entropy) it times one optimizer step
of: the plain model; the hardened model without quantization or noise; 8-bit QAT with
constant scaling; 8-bit QAT with dynamic (learned) scaling; fp32 noisy training; 8-bit
constant QAT plus noisy training. It prints milliseconds per step (median over ``--steps``
after warm-up) and the ratio to the plain step. Modes are timed round robin (one step of each in turn), so a busy machine slows
them alike. Targets: QAT + noisy training at most 2x the plain step for ResNet-18 and 4x for
LeNet-5.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import fxharden
from fxharden.zoo.models import build_model
from fxharden.devices import resolve_device

TARGETS = {"resnet18": 2.0, "lenet5": 4.0}
MODES = {
    "plain": None,
    "hardened no-op": dict(),
    "QAT 8-bit constant": dict(bits=8, scale=1.0),
    "QAT 8-bit dynamic": dict(bits=8, scale=None),
    "noisy training": dict(sigma=0.1),
    "QAT constant + noisy": dict(bits=8, scale=1.0, sigma=0.1),
}


class Runner:
    """One model in one mode with its optimizer; ``step()`` times one training step."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model.train(), x, y
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.times: list = []

    def step(self, record: bool = True) -> None:
        if self.x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.x.is_cuda:
            torch.cuda.synchronize()
        if record:
            self.times.append(time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "lenet5"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()
    dev = resolve_device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch_size,), device=dev)
    print(f"device {dev}, {torch.get_num_threads()} threads, batch {args.batch_size}, torch {torch.__version__}")
    verdicts = []
    for name in args.models:
        runners = {}
        for mode, kw in MODES.items():
            torch.manual_seed(0)
            model = build_model(name)
            runners[mode] = Runner((fxharden.harden(model, **kw) if kw is not None else model).to(dev), x, y)
        for r in runners.values():
            for _ in range(args.warmup):
                r.step(record=False)
        for _ in range(args.steps):  # round robin: a busy machine slows every mode alike
            for r in runners.values():
                r.step()
        base = statistics.median(runners["plain"].times)
        print(f"\n{name}")
        for mode, r in runners.items():
            ms = statistics.median(r.times)
            print(f"  {mode:22s} {1e3 * ms:9.1f} ms/step   {ms / base:5.2f}x")
        ratio = statistics.median(runners["QAT constant + noisy"].times) / base
        target = TARGETS.get(name)
        ok = target is None or ratio <= target
        verdicts.append(f"{name}: QAT + noisy training {ratio:.2f}x plain (target <= {target}x: "
                        f"{'met' if ok else 'MISSED'})")
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
