"""The hardware models on models nobody here wrote: timm and transformers networks hardened with
per-channel weight noise, PCM weights over time and aihwkit's output noise, through both
frontends, eager and compiled. Off, each is the plain model exactly; on, it moves every output
and stays finite."""

import pytest
import torch

import fxharden
from fxharden import HardenConfig, NoiseConfig, SiteKind, WeightNoise
from fxharden.core.noise import PCM, Additive, OutNoise, Role
from fxharden.core.noise.verbs import noise_modules

V = 64
IMAGE = torch.randn(2, 3, 32, 32)
IDS = {"input_ids": torch.randint(3, V, (2, 6))}


def _timm(name):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name, num_classes=10)


def _hf(name):
    T = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[lm]')")
    return {
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48,
                                                          num_hidden_layers=1, num_attention_heads=4,
                                                          num_key_value_heads=2)),
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=16,
                                                       bos_token_id=0, eos_token_id=0)),
    }[name]


CASES = [("test_resnet", _timm, IMAGE, "fx", False), ("test_vit", _timm, IMAGE, "export", False),
         ("gpt2", _hf, IDS, "fx", False), ("llama", _hf, IDS, "export", True)]
"""(name, source, example, frontend, also compiled): compiling costs most of a case's time, so one
case runs compiled too (the compiled fx route of every model is in ``tests/core/test_compile.py``)."""
HARDWARE = HardenConfig(
    quant=None, noise=NoiseConfig(model=OutNoise(per_channel=True, input_range=1.0),
                                  kinds=frozenset({SiteKind.CONV, SiteKind.LINEAR})),
    weight_noise=(WeightNoise(Additive(of_max=True, per_channel=True), 0.0), WeightNoise(PCM(t=86400.0), 0.0, "pcm")))


def _out(model, example):
    out = model(**example) if isinstance(example, dict) else model(example)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("name,source,example,frontend,compile", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_hardware_models_are_exact_off_and_move_every_output_on(name, source, example, frontend, compile):
    torch.manual_seed(0)
    model = source(name)().eval()
    args = example if isinstance(example, dict) else (example,)
    hm = fxharden.harden(model, config=HARDWARE.replace(frontend=frontend),
                         example_inputs=args if frontend == "export" else None).eval()
    assert noise_modules(hm, Role.WEIGHTS) and noise_modules(hm)  # weights and outputs both carry noise
    runs = (hm, torch.compile(hm, backend="eager")) if compile else (hm,)
    with torch.no_grad():
        plain = _out(model, example)
        for run in runs:
            assert torch.equal(_out(run, example), plain)
        fxharden.set_noise(hm, 0.05)
        fxharden.set_weight_noise(hm, 0.05)
        fxharden.set_weight_noise(hm, 1.0, link="pcm")
        for run in runs:
            noisy = _out(run, example)
            assert torch.isfinite(noisy).all() and (noisy != plain).float().mean() > 0.99
