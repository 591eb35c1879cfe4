"""The no-op oracle on the device across a zoo of a dozen timm and torchvision models: no
quantization and sigma 0 give output ``torch.equal`` to the plain model on the same device,
in train and in eval mode. The hardened 8-bit noisy model runs forward and backward there."""

import pytest
import timm
import torch
import torchvision

import fxharden
from fxharden.zoo.networks import LeNet5

ZOO = {
    "lenet5": (lambda: LeNet5(), (3, 32, 32)),
    "vgg11": (lambda: torchvision.models.vgg11(num_classes=10), (3, 32, 32)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32)),
    "tv_mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), (3, 64, 64)),
    "tv_vit_b_16_tiny": (lambda: torchvision.models.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=10),
                         (3, 32, 32)),
}
for _name, _size in (("resnet10t", (3, 64, 64)), ("mobilenetv3_small_050", (3, 64, 64)),
                     ("convnext_atto", (3, 64, 64)), ("efficientnet_b0", (3, 64, 64)),
                     ("regnetx_002", (3, 64, 64)), ("vit_tiny_patch16_224", None), ("levit_128s", None),
                     ("test_vit", None), ("test_efficientnet", None)):
    ZOO[_name] = ((lambda n=_name: timm.create_model(n, pretrained=False, num_classes=10)), _size)


def build(name):
    make, size = ZOO[name]
    torch.manual_seed(0)
    model = make()
    if size is None:
        size = model.pretrained_cfg["input_size"]
    return model, torch.randn(4, *size)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_no_op_hardening_is_exact_on_the_device(name, device):
    model, x = build(name)
    model, x = model.to(device), x.to(device)
    hm = fxharden.harden(model, bits=None)
    for mode in (False, True):
        model.train(mode)
        hm.train(mode)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(1)
            ref = model(x)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(1)
            out = hm(x)
        assert torch.equal(out, ref), f"{name}: differs from the plain model in {'train' if mode else 'eval'} mode"
    hq = fxharden.harden(model.train(), bits=8, scale=1.0, sigma=0.05)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = hq(x)
    out.float().sum().backward()
    assert torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in hq.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["resnet18", "test_vit"])
def test_export_frontend_is_exact_on_the_device(name, device):
    """The torch.export route on the device: no-op output equal to the plain model there."""
    model, x = build(name)
    model, x = model.to(device).eval(), x.to(device)
    he = fxharden.harden(model, frontend="export", example_inputs=(x,))
    assert fxharden.harden_report(he).frontend == "export"
    with torch.no_grad():
        assert torch.equal(he(x), model(x))


def test_a_language_model_through_export_on_the_device(device):
    """A small Llama captured by torch.export on the device: no-op logits equal to the plain
    model's there, a bf16 noisy 8-bit training step finite, and a perplexity sweep on the
    device whose clean value matches the CPU's."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg).to(device).eval()
    ids = torch.randint(0, 128, (4, 16), device=device)
    he = fxharden.harden(model, example_inputs={"input_ids": ids})
    assert fxharden.harden_report(he).frontend == "export"
    with torch.no_grad():
        assert torch.equal(he(input_ids=ids).logits, model(input_ids=ids, use_cache=False).logits)
    hq = fxharden.harden(model, bits=8, scale=None, sigma=0.05, example_inputs={"input_ids": ids}).train()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits = hq(input_ids=ids).logits
    logits.float().logsumexp(-1).mean().backward()
    assert torch.isfinite(logits).all()
    batches = [(ids.cpu(), ids.cpu())]
    on_device = fxharden.sweep(model, batches, metric="perplexity", sigmas=[0.01, 0.5], repeats=1, device=str(device))
    on_cpu = fxharden.sweep(model.cpu(), batches, metric="perplexity", sigmas=[0.01, 0.5], repeats=1, device="cpu")
    assert on_device.metric_info["clean_values"][0] == pytest.approx(on_cpu.metric_info["clean_values"][0], rel=1e-4)
