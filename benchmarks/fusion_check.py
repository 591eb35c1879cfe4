"""Does Inductor fuse a hardened site into the kernels of the plain model?

Compiles the plain model and its hardened versions (noise only; 8-bit + noise, quantizers
calibrated) with ``torch.compile`` (Inductor) and counts the fused kernels and the extern
calls (convolutions, matmuls) in the generated code. A site computed in one pass adds no
kernel of its own: its quantizer, counter-based normal draw and add are fused into the
epilogue of the kernel before it. Also prints the compile time (first call). The generated
code of each variant is written to ``--out`` for reading.

Run:  python benchmarks/fusion_check.py [--device cpu|cuda] [--models lenet5,resnet18] [--out fusion_code]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch
from torch._inductor.utils import run_and_get_code

import fxharden
from fxharden.zoo.networks import LeNet5


def build(name: str):
    if name == "lenet5":
        return LeNet5()
    import torchvision
    return torchvision.models.get_model(name, weights=None, num_classes=10)


def count(src: str) -> tuple:
    kernels = set(re.findall(r"^(\w*(?:cpp|triton)_\w+) = async_compile\.", src, re.M))
    externs = len(re.findall(r"extern_kernels\.\w+\(", src))
    return len(kernels), externs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="lenet5")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default="fusion_code")
    args = parser.parse_args()
    device, out = torch.device(args.device), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, device {device}, Inductor")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build(name).to(device).eval()
        x = torch.randn(args.batch, 3, 32, 32, device=device)
        variants = {"plain": model, "noise": fxharden.harden(model, bits=None, sigma=0.1).eval(),
                    "q8+noise": fxharden.harden(model, bits=8, scale=1.0, sigma=0.1).eval()}
        for label, net in variants.items():
            if label != "plain":
                fxharden.calibrate_quantizers(net, [x])
            torch._dynamo.reset()
            t = time.perf_counter()
            with torch.no_grad():
                _, code = run_and_get_code(torch.compile(net), x)
            src = "\n".join(code)
            (out / f"{name}_{label.replace('+', '_')}.py").write_text(src)
            kernels, externs = count(src)
            sites = len(fxharden.noise_sites(net)) if label != "plain" else 0
            print(f"{name:9s} {label:9s} noise sites {sites:3d}  fused kernels {kernels:3d}  extern calls {externs:3d}"
                  f"  compile {time.perf_counter() - t:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
