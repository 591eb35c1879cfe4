"""A model hardened where it lives: every tensor fxharden makes is on the model's device, and
the verbs that act on a hardened model keep it there. References: the same model on the CPU."""

import pickle

import pytest
import torch
import torchvision
from torch import nn

import fxharden
from fxharden import HardenConfig, NoiseConfig, NoiseKind, WeightNoiseConfig
from fxharden.core.quant import ActQuant


def tensors(model):
    return list(model.named_parameters()) + list(model.named_buffers())


def off_device(model, device):
    return [n for n, t in tensors(model) if t.device.type != device.type]


def resnet(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=10)


def test_harden_of_a_model_on_the_device_runs_at_its_first_forward(device):
    model = resnet().to(device)
    hm = fxharden.harden(model, bits=8, scale=1.0)
    y = hm(torch.randn(8, 3, 32, 32, device=device))
    assert y.device.type == device.type and y.shape == (8, 10)
    assert off_device(hm, device) == []


def test_every_verb_keeps_the_model_on_its_device(device):
    cfg = HardenConfig.from_shorthand(bits=8, scale=None, sigma=0.1).replace(
        weight_noise=WeightNoiseConfig(kind="additive", sigma=0.05, relative=True))
    hm = fxharden.harden(resnet().to(device), config=cfg)
    x = torch.randn(16, 3, 32, 32, device=device)
    fxharden.calibrate_noise(hm, [x])
    fxharden.set_noise(hm, 0.2)
    fxharden.set_noise(hm, [0.1, 0.3])
    fxharden.set_weight_noise(hm, 0.02)
    fxharden.seed_noise(hm, 3)
    hm.eval()(x)
    with fxharden.frozen_weights(hm):
        hm(x)
    fxharden.set_noise(hm, {fxharden.noise_sites(hm)[1]: 0.5})
    hm.train()(x).sum().backward()
    assert off_device(hm, device) == []


def test_the_outputs_on_the_device_match_the_cpu_within_one_quantization_step(device):
    """8-bit ResNet-18 at sigma 0: every quantizer's output on the device equals the CPU's
    except for rare elements one step apart (a float32 rounding difference upstream that
    moves a value across a rounding boundary); the logits agree closely."""
    model = resnet().eval()
    x = torch.randn(32, 3, 32, 32)
    cpu = fxharden.harden(model, bits=8, scale=None).eval()
    dev = fxharden.harden(model.to(device), bits=8, scale=None).eval()
    cpu(x)  # calibrate the statistics-based steps on the same batch on both
    dev(x.to(device))
    seen = {}

    def keep(tag):
        def hook(mod, inp, out):
            seen.setdefault(tag, {})[mod] = out.detach().cpu()
        return hook

    names = {}
    for tag, hm in (("cpu", cpu), ("dev", dev)):
        for name, mod in hm.named_modules():
            if isinstance(mod, ActQuant):
                mod.register_forward_hook(keep(tag))
                names.setdefault(tag, []).append((name, mod))
    with torch.no_grad():
        y_cpu, y_dev = cpu(x), dev(x.to(device)).cpu()
    for (name, mc), (_, md) in zip(names["cpu"], names["dev"]):
        assert torch.allclose(mc.scale.cpu(), md.scale.cpu(), rtol=1e-5), name
        step = float(mc.scale.detach())
        # grid indices apart (the steps themselves may differ in the last bit: their batch
        # maxima went through different float32 kernels)
        apart = ((seen["cpu"][mc] - seen["dev"][md]).abs() / step).round()
        assert float((apart > 1).float().mean()) < 1e-3, f"{name}: values more than one step apart"
        assert float((apart > 0).float().mean()) < 1e-2, f"{name}: too many values one step apart"
    assert float((y_cpu - y_dev).abs().max()) <= 0.02 * float(y_cpu.abs().max())
    assert float((y_cpu.argmax(1) == y_dev.argmax(1)).float().mean()) >= 0.95


def test_moving_converting_and_pickling_a_hardened_model(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    hm = fxharden.harden(model, bits=8, scale=None)
    x = torch.randn(4, 3, 32, 32)
    ref = hm.eval()(x)
    moved = hm.to(device)
    assert off_device(moved, device) == []
    out = moved(x.to(device))
    assert torch.allclose(out.cpu(), ref, atol=1e-4)
    back = pickle.loads(pickle.dumps(moved))
    assert off_device(back, device) == []
    assert torch.equal(back(x.to(device)), out)
    for dtype in (torch.bfloat16, torch.float16):
        low = pickle.loads(pickle.dumps(hm)).to(device=device, dtype=dtype)
        fxharden.set_noise(low, 0.05)
        y = low(x.to(device, dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert float((y.float().cpu() - ref).abs().max()) < 0.2 * float(ref.abs().max()) + 0.5


@pytest.mark.parametrize("kind", ["relative", "additive"])
def test_noise_and_its_calibration_run_on_the_device(device, kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to(device)
    hm = fxharden.harden(model, config=HardenConfig(quant=None, noise=NoiseConfig(model=NoiseKind(kind))))
    x = torch.randn(20000, 16, device=device)
    rms = fxharden.calibrate_noise(hm, [x])
    with torch.no_grad():
        ref = float(model[0](x).double().pow(2).mean().sqrt())
    assert rms["0"] == pytest.approx(ref, rel=1e-5)
    fxharden.set_noise(hm, 0.1, sites=["0"])
    with torch.no_grad():
        d = hm.eval()(x) - model(x)
    assert d.device.type == device.type and float(d.abs().max()) > 0
