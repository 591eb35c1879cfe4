"""Cost of hardened recurrent layers: LSTM and GRU forward (eval, no autograd), as ratios to
the plain torch layer.

Measured in one interleaved run (each repetition times every variant back to back, the
median is reported). Variants, per layer type:

* plain       torch's ``nn.LSTM`` / ``nn.GRU``
* no-op       ``harden(model)``: sigma 0, no quantization (torch's fused forward is called)
* q8          ``harden(model, bits=8)``, sigma 0: quantized weights, still the fused forward
* q8+noise    ``harden(model, bits=8, sigma=0.1)``: noise after every product of every time
              step (the step loop)

Shapes: batch 32, 160 steps, 256 inputs and hidden units, 3 layers (``--batch``, ``--steps``,
``--hidden``, ``--layers`` change them).

Run:  python benchmarks/recurrent_speed.py [--reps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import fxharden


class Sequence(nn.Module):
    def __init__(self, cls: type, hidden: int, layers: int) -> None:
        super().__init__()
        self.rnn = cls(hidden, hidden, num_layers=layers)

    def forward(self, x):
        return self.rnn(x)[0]


def _time(fn, x) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.steps, args.batch, args.hidden)
    print(f"batch {args.batch}, {args.steps} steps, hidden {args.hidden}, {args.layers} layers, "
          f"{torch.get_num_threads()} threads, median of {args.reps}")
    for cls in (nn.LSTM, nn.GRU):
        plain = Sequence(cls, args.hidden, args.layers).eval()
        variants = {"plain": plain, "no-op": fxharden.harden(plain), "q8": fxharden.harden(plain, bits=8),
                    "q8+noise": fxharden.harden(plain, bits=8, sigma=0.1)}
        times = {k: [] for k in variants}
        with torch.inference_mode():
            for m in variants.values():
                m(x)  # warm up
            for _ in range(args.reps):
                for name, m in variants.items():
                    times[name].append(_time(m, x))
        base = statistics.median(times["plain"])
        row = ", ".join(f"{k} {statistics.median(v) * 1e3:.0f} ms ({statistics.median(v) / base:.2f}x)"
                        for k, v in times.items())
        print(f"{cls.__name__}: {row}")


if __name__ == "__main__":
    main()
