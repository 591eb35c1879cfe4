"""Placement on the CPU: what ``harden`` creates lives on the model's device, in its precision.
References: the device and dtype of the plain model's own tensors, and its eager output."""

import pytest
import torch
import torchvision
from torch import nn

import fxharden
from fxharden.core.placement import ModelPlacementError


def tensors(model):
    return list(model.named_parameters()) + list(model.named_buffers())


def test_a_meta_model_hardens_to_a_model_entirely_on_meta():
    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=10)
    hm = fxharden.harden(model, bits=8, scale=None, sigma=0.1,
                         weight_noise=fxharden.WeightNoiseConfig(kind="additive", sigma=0.1))
    fxharden.set_noise(hm, [0.1, 0.2])
    fxharden.set_weight_noise(hm, 0.05)
    fxharden.seed_noise(hm, 1)
    assert len(tensors(hm)) > len(tensors(model))
    assert [n for n, t in tensors(hm) if t.device.type != "meta"] == []


def test_a_float64_model_stays_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    hm = fxharden.harden(model, bits=None)
    assert {t.dtype for _, t in tensors(hm) if t.is_floating_point()} == {torch.float64}
    x = torch.randn(5, 8, dtype=torch.float64)
    assert torch.equal(hm(x), model(x))
    fxharden.set_noise(hm, 0.1)
    assert {m.sigma.dtype for m in hm.modules() if hasattr(m, "sigma")} == {torch.float64}
    assert hm(x).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_after_hardening_keeps_the_model_dtype(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    hm = fxharden.harden(model, bits=8, scale=None, sigma=0.05).to(dtype).eval()
    x = torch.randn(4, 3, 8, 8)
    y = hm(x.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    # sigma 0: the low-precision model against the same model run in float32 on the same input
    fxharden.set_noise(hm, 0.0)
    ref = fxharden.harden(model, bits=8, scale=None).eval()
    ref(x.to(dtype).float())
    assert torch.allclose(hm(x.to(dtype)).float(), ref(x.to(dtype).float()), atol=0.1, rtol=0.05)


def test_a_model_on_two_devices_is_refused_naming_both():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[1].to("meta")
    with pytest.raises(ModelPlacementError, match=r"'0.weight' on cpu, '1.weight' on meta.*model.to\(device\)"):
        fxharden.harden(model)


def test_a_model_without_tensors_hardens_on_the_default_device():
    hm = fxharden.harden(nn.ReLU(), bits=8, sigma=0.1)
    assert {t.device.type for _, t in tensors(hm)} == {"cpu"}
    assert hm(torch.randn(3, 4)).shape == (3, 4)
