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
