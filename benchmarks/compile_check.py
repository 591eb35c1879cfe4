"""torch.compile on hardened models: graphs, graph breaks, recompilations, and speed.

For each model (8-bit, sigma 0.1, quantizers calibrated first) prints Dynamo's ``explain``
counts in eval mode (no grad) and in training mode, then compiles the model and counts the
frames Dynamo compiles and its recompilations while sigma (global, per site), the weight
noise and the seed change between calls and a few training steps run (one frame per mode
means no recompilation); with ``--time``, the
eval forward of the eager and the compiled model (median of ``--reps``).

``llama`` is a small Hugging Face Llama (random init) hardened through torch.export.

Run:  python benchmarks/compile_check.py [--device cpu|cuda] [--models lenet5,resnet18,vit,llama]
          [--backend inductor|aot_eager|eager] [--time --reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
import torch._dynamo as dynamo
from torch._dynamo.utils import counters

import fxharden
from fxharden.zoo.networks import LeNet5


def build(name: str, device: torch.device):
    torch.manual_seed(0)
    if name == "lenet5":
        return LeNet5().to(device), torch.randn(16, 3, 32, 32, device=device)
    if name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(num_classes=10).to(device), torch.randn(16, 3, 32, 32, device=device)
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2)).to(device)
        return model, {"input_ids": torch.randint(0, 256, (4, 32), device=device)}
    import timm
    model = timm.create_model("test_vit" if name == "vit" else name, pretrained=False, num_classes=10).to(device)
    return model, torch.randn(4, 3, *model.default_cfg["input_size"][1:], device=device)


def call(model, x):
    """The model's logits on ``x`` (a dict of keyword inputs for language models)."""
    return model(**x).logits if isinstance(x, dict) else model(x)


def explain(hm, x, train: bool) -> str:
    hm.train(train)
    with torch.set_grad_enabled(train):
        ex = dynamo.explain(hm)(**x) if isinstance(x, dict) else dynamo.explain(hm)(x)
    reasons = Counter(str(r.reason).split("\n")[0][:100] for r in ex.break_reasons)
    top = "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
    return f"graphs {ex.graph_count}, breaks {ex.graph_break_count}" + (f" ({top})" if top else "")


def frames() -> str:
    """Frames Dynamo compiled so far (each compilation, recompilations included) and graphs."""
    return f"frames compiled {counters['frames'].get('ok', 0)}, graphs {counters['stats'].get('unique_graphs', 0)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="lenet5,resnet18,vit")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--time", action="store_true", help="also time eager vs compiled eval forward")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, device {device}, backend {args.backend}")
    for name in args.models.split(","):
        model, x = build(name, device)
        hm = fxharden.harden(model, bits=8, sigma=0.1, example_inputs=x if isinstance(x, dict) else None).eval()
        fxharden.calibrate_quantizers(hm, [x])
        route = fxharden.harden_report(hm).frontend
        print(f"{name} ({route}): eval {explain(hm, x, False)}; train {explain(hm, x, True)}")
        dynamo.reset()
        counters.clear()
        hm.eval()
        cm = torch.compile(hm, backend=args.backend)
        t = time.perf_counter()
        with torch.no_grad():
            call(cm, x)
            first = time.perf_counter() - t
            fxharden.set_noise(hm, 0.3)
            call(cm, x)
            fxharden.set_noise(hm, {s: 0.01 * i for i, s in enumerate(fxharden.noise_sites(hm))})
            call(cm, x)
            fxharden.seed_noise(hm, 1)
            call(cm, x)
        line = f"    compiled eval (first call {first:.1f} s), sigma/seed changed 3 times: {frames()}"
        hm.train()
        opt = torch.optim.SGD(hm.parameters(), lr=1e-3)
        for i in range(3):
            opt.zero_grad()
            call(cm, x).float().logsumexp(-1).mean().backward()
            opt.step()
            fxharden.set_noise(hm, 0.1 + 0.05 * i)
            fxharden.seed_noise(hm, i)
        hm.eval()
        with torch.no_grad():
            call(cm, x)
        print(line + f"; after 3 train steps and back to eval: {frames()}")
        if args.time:
            def med(fn):
                ts = []
                for _ in range(args.reps):
                    sync()
                    t = time.perf_counter()
                    fn()
                    sync()
                    ts.append(time.perf_counter() - t)
                return statistics.median(ts) * 1e3
            with torch.no_grad():
                eager, compiled = med(lambda: call(hm, x)), med(lambda: call(cm, x))
            batch = len(next(iter(x.values())) if isinstance(x, dict) else x)
            print(f"    eval forward, batch {batch}: eager {eager:.2f} ms, compiled {compiled:.2f} ms")


if __name__ == "__main__":
    main()
