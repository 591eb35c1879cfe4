"""Cost of hardening: eval forward and train step of hardened vs plain models, as ratios.

Measured in one interleaved run (each repetition times every variant back to back, the
median is reported), so machine-load drift affects all variants alike. Variants:

* plain       the fp32 model
* noise       ``harden(bits=None, sigma=0.1)``: Gaussian noise after every layer
* q8+noise    ``harden(bits=8, scale=1.0, sigma=0.1)``: the paper's placement
* q8+noise export  the same through the torch.export frontend (an ATen-level graph)
* naive       ``x + randn_like(x) * sigma`` and a fake-quant after every node (the baseline
              a user writes by hand), built with the same tracer
* brevitas    Brevitas 8-bit model with a noise module after every layer (when installed):
              LeNet-5 written with Brevitas layers, ResNet-18 through Brevitas's graph-mode
              ``quantize`` on the torchvision model

Run:  python benchmarks/overhead.py [--device cpu|cuda] [--reps 30]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time

import torch
import torchvision
from torch import fx, nn

import fxharden
from fxharden.zoo.networks import LeNet5


class NaiveNoiseQuant(nn.Module):
    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        x = torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127)
        return x + torch.randn_like(x) * self.sigma


def naive(model: nn.Module, sigma: float) -> nn.Module:
    """A fake-quant and noise module after every node, the hand-written way."""
    gm = fx.symbolic_trace(model)
    gm.add_module("naive", NaiveNoiseQuant(sigma))
    for node in list(gm.graph.nodes):
        if node.op in ("placeholder", "call_module", "call_function", "call_method") and node.target is not torch.flatten:
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module("naive", (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
    gm.recompile()
    return gm


def brevitas_model(name: str, sigma: float, model: nn.Module):
    """Brevitas 8-bit version of the same network with a noise module after every layer.

    LeNet-5 is written with Brevitas layers by hand; ResNet-18 (torchvision) goes through
    Brevitas's graph mode: ``brevitas.fx.symbolic_trace`` then ``brevitas.graph.quantize``
    (its default 8-bit layer-wise recipe), then a noise module after every node, as for the
    naive variant. Returns ``(model, None)`` or ``(None, why)``."""
    try:
        import brevitas.nn as qnn
    except ImportError as err:
        return None, f"brevitas not installed ({err})"

    class Noise(nn.Module):
        def forward(self, x):
            if hasattr(x, "value"):  # a QuantTensor: keep its scale etc., perturb the value
                fields = list(x)
                return type(x)(fields[0] + torch.randn_like(fields[0]) * sigma, *fields[1:])
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                return x
            return x + torch.randn_like(x) * sigma

    def seq(*layers):
        out = [qnn.QuantIdentity(bit_width=8, return_quant_tensor=False), Noise()]
        for layer in layers:
            out += [layer, Noise()]
        return nn.Sequential(*out)

    if name == "lenet5":
        return seq(
            qnn.QuantConv2d(3, 6, 5, weight_bit_width=8), qnn.QuantReLU(bit_width=8), nn.MaxPool2d(2),
            qnn.QuantConv2d(6, 16, 5, weight_bit_width=8), qnn.QuantReLU(bit_width=8), nn.MaxPool2d(2),
            nn.Flatten(), qnn.QuantLinear(400, 120, bias=True, weight_bit_width=8), qnn.QuantReLU(bit_width=8),
            qnn.QuantLinear(120, 84, bias=True, weight_bit_width=8), qnn.QuantReLU(bit_width=8),
            qnn.QuantLinear(84, 10, bias=True, weight_bit_width=8),
        ), None
    try:
        from brevitas.fx import symbolic_trace
        from brevitas.graph.quantize import quantize

        gm = quantize(symbolic_trace(copy.deepcopy(model).eval()))
    except Exception as err:  # report why instead of dropping the column silently
        return None, f"brevitas graph mode failed: {type(err).__name__}: {err}"
    gm.add_module("noise", Noise())
    for node in list(gm.graph.nodes):
        if node.op in ("call_module", "call_function", "call_method") and node.target is not torch.flatten:
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module("noise", (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
    gm.recompile()
    return gm, None


def timed(fn, sync) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


FROZEN = "q8+noise frozen"
"""The 8-bit model evaluated inside ``fxharden.frozen_weights`` (weights quantized once, as
``evaluate`` and sweeps do); eval only."""


def compare(variants: dict, x: torch.Tensor, reps: int, train: bool, sync, warmup: int = 3) -> dict:
    variants = {k: m for k, m in variants.items() if not (train and k == FROZEN)}
    with contextlib.ExitStack() as stack:
        if FROZEN in variants:
            stack.enter_context(fxharden.frozen_weights(variants[FROZEN]))
        return _compare(variants, x, reps, train, sync, warmup)


def _compare(variants: dict, x: torch.Tensor, reps: int, train: bool, sync, warmup: int) -> dict:
    times = {k: [] for k in variants}
    for m in variants.values():
        m.train(train)
    opt_steps = {}
    for k, m in variants.items():
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-6) if train else None

        def step(m=m, opt=opt):
            if opt is None:
                with torch.no_grad():
                    m(x)
            else:
                opt.zero_grad(set_to_none=True)
                m(x).float().logsumexp(1).mean().backward()
                opt.step()
        opt_steps[k] = step
    for _ in range(warmup):
        for step in opt_steps.values():
            step()
    for _ in range(reps):
        for k, step in opt_steps.items():
            times[k].append(timed(step, sync))
    base = statistics.median(times["plain"])
    return {k: (statistics.median(v) / base, statistics.median(v)) for k, v in times.items()}


def generators(device: torch.device, n: int, reps: int, sync) -> None:
    """ns per element of torch's standard-normal generator, of fxharden's draw (the same
    generator in ``LANES`` streams on several threads), of the parts of a table-based
    inverse-CDF sampler (random integers, then a table gather: the faster sampler is only
    worth adding if those parts together beat ``normal_``), of an add into a new tensor and
    in place, and of fake quantization by PyTorch's fused kernel and by fxharden."""
    gen = torch.Generator(device=device).manual_seed(0)
    buf = torch.empty(n, device=device)
    table = torch.special.ndtri((torch.arange(1 << 16, device=device, dtype=torch.float64) + 0.5) / (1 << 16)).float()
    idx = torch.randint(0, 1 << 16, (n,), device=device, generator=gen)
    x = torch.randn(n, device=device)
    from fxharden.core.noise import LANES, _normal_
    from fxharden.core.quant import fake_quantize
    step = torch.tensor(0.05, device=device)
    lanes = [gen] + [torch.Generator(device=device).manual_seed(k) for k in range(1, LANES)]
    runs = {
        "normal_ (torch)": lambda: buf.normal_(generator=gen),
        f"normal_, {LANES} lanes (fxharden)": lambda: _normal_(buf, lanes),
        "uniform_": lambda: buf.uniform_(generator=gen),
        "random_ int64 indices": lambda: idx.random_(0, 1 << 16, generator=gen),
        "table gather": lambda: torch.index_select(table, 0, idx, out=buf),
        "add into a new tensor": lambda: torch.add(x, buf, alpha=0.1),
        "add in place": lambda: x.add_(buf, alpha=1e-30),
        "fake-quantize, fused kernel": lambda: torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127),
        "fake-quantize, fxharden": lambda: fake_quantize(x, step, -128, 127),
    }
    got = {k: [] for k in runs}
    for _ in range(reps):
        for k, f in runs.items():
            got[k].append(timed(f, sync) / n * 1e9)
    print(f"noise generation and elementwise passes on {device}, {n:,} elements, median of {reps}, ns per element:")
    for k, v in got.items():
        print(f"    {k:32s} {statistics.median(v):6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--generators", action="store_true", help="only time noise generation")
    parser.add_argument("--models", default="lenet5,resnet18", help="comma-separated: lenet5, resnet18")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the batch sizes (256, 64) by this")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.generators:
        generators(device, 10 << 20, args.reps, sync)  # 40 MiB of float32: above glibc's mmap threshold
        return
    nets = {"lenet5": (LeNet5, 256), "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 64)}
    for name in args.models.split(","):
        build, batch = nets[name]
        batch = max(1, int(batch * args.scale))
        torch.manual_seed(0)
        model = build().to(device)
        x = torch.randn(batch, 3, 32, 32, device=device)
        variants = {
            "plain": model,
            "noise": fxharden.harden(model, bits=None, sigma=0.1),
            "q8+noise": fxharden.harden(model, bits=8, scale=1.0, sigma=0.1),
            "q8+noise export": fxharden.harden(model, bits=8, scale=1.0, sigma=0.1, frontend="export",
                                               example_inputs=(x,)),
            FROZEN: fxharden.harden(model, bits=8, scale=1.0, sigma=0.1),
            "naive": naive(model, 0.1),
        }
        bm, why = brevitas_model(name, 0.1, model)
        if bm is not None:
            variants["brevitas"] = bm.to(device)
        else:
            print(f"{name}: no Brevitas column: {why}")
        for train in (False, True):
            res = compare(variants, x, args.reps, train, sync)
            what = "train step" if train else "eval forward"
            cells = "  ".join(f"{k} {r:.2f}x" for k, (r, _) in res.items())
            print(f"{name:9s} batch {batch:3d} {what:12s} plain {res['plain'][1] * 1e3:7.2f} ms  {cells}")


if __name__ == "__main__":
    main()
