"""Tests for fxharden.zoo.models: the paper's networks, recipes, registry and FLOPs/params counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from fxharden.zoo.data import synthetic_dataset
from fxharden.zoo.models import build_model, model_names
from fxharden.zoo.networks import LeNet5
from fxharden.zoo.recipes import RECIPES, Optimizer, Recipe
from fxharden.zoo.summary import count_flops, count_params, model_summary


def _meta(name, num_classes):
    """Build on the meta device: shapes only, no memory, instant even for VGG-11's 133M params."""
    with torch.device("meta"):
        return build_model(name, num_classes=num_classes)


# --------------------------------------------------------------------------- LeNet-5

def test_lenet5_structure_and_shape():
    m = LeNet5()
    relus = [m.relu1, m.relu2, m.relu3, m.relu4]
    assert all(isinstance(r, nn.ReLU) for r in relus) and len({id(r) for r in relus}) == 4
    assert isinstance(m.pool1, nn.MaxPool2d) and isinstance(m.pool2, nn.MaxPool2d) and m.pool1 is not m.pool2
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    assert [c.out_channels for c in (m.conv1, m.conv2)] == [6, 16] and m.conv1.kernel_size == (5, 5)
    assert [f.out_features for f in (m.fc1, m.fc2, m.fc3)] == [120, 84, 10]
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert LeNet5(num_classes=7)(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    # every ReLU/pool is called exactly once (its own layer)
    calls = []
    for r in relus + [m.pool1, m.pool2]:
        r.register_forward_hook(lambda mod, i, o: calls.append(mod))
    m(torch.randn(1, 3, 32, 32))
    assert len(calls) == 6 and len({id(c) for c in calls}) == 6


def test_lenet5_params_and_flops_match_paper():
    m = LeNet5()
    # hand count: weights + biases of each layer
    params = (3 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert count_params(m) == params == 62006
    assert round(params / 1e6, 2) == RECIPES["lenet5"].paper["mparams"] == 0.06
    # hand count: MACs + one add per biased output element
    macs = 6 * 28 * 28 * 3 * 25 + 16 * 10 * 10 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10
    biases = 6 * 28 * 28 + 16 * 10 * 10 + 120 + 84 + 10
    assert count_flops(m, include_bias=False) == macs
    assert count_flops(m) == macs + biases == 658238
    assert round(count_flops(m) / 1e6, 2) == RECIPES["lenet5"].paper["mflops"] == 0.66


# --------------------------------------------------------------------------- VGG-11 / ResNet-18 vs Table II

def test_vgg11_matches_table2_with_imagenet_head():
    # Table II's VGG-11 numbers are torchvision's with the 1000-class head
    paper = RECIPES["vgg11"].paper
    big = _meta("vgg11", 1000)
    assert round(count_params(big) / 1e6, 2) == paper["mparams"] == 132.86
    assert round(count_flops(big) / 1e6, 2) == paper["mflops"] == 276.56
    small = _meta("vgg11", 10)
    head_diff = 990 * 4096 + 990  # the last Linear(4096, classes): weights + biases
    assert count_params(big) - count_params(small) == head_diff
    assert count_flops(big) - count_flops(small) == head_diff
    assert count_params(small) == 128_807_306


def test_resnet18_matches_table2_with_imagenet_head():
    paper = RECIPES["resnet18"].paper
    big = _meta("resnet18", 1000)
    assert round(count_params(big) / 1e6, 2) == paper["mparams"] == 11.69
    # 37.524 M in our convention vs 37.53 in the paper (0.02% off; see count_flops docs)
    assert count_flops(big) == 37_524_456
    assert abs(count_flops(big) / 1e6 - paper["mflops"]) < 0.01
    small = _meta("resnet18", 10)
    assert count_params(big) - count_params(small) == 990 * 512 + 990
    assert count_flops(small) == 37_016_586


def test_paper_builders_are_the_torchvision_models():
    vgg = _meta("vgg11", 10)
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in vgg.modules())
    assert [d.p for d in vgg.modules() if isinstance(d, nn.Dropout)] == [0.5, 0.5]
    assert vgg.classifier[-1].out_features == 10
    res = _meta("resnet18", 10)
    assert res.fc.out_features == 10 and type(res).__module__ == "torchvision.models.resnet"


# --------------------------------------------------------------------------- counting conventions

def test_count_flops_on_small_layers():
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)  # out 8x5x5, 4/2 in-channels per group, 3x3 kernel
    assert count_flops(conv, (1, 4, 5, 5), include_bias=False) == 8 * 5 * 5 * 2 * 9
    assert count_flops(conv, (1, 4, 5, 5)) == 8 * 5 * 5 * (2 * 9 + 1)
    assert count_flops(conv, (3, 4, 5, 5)) == count_flops(conv, (1, 4, 5, 5))  # per input
    lin = nn.Linear(6, 5, bias=False)
    assert count_flops(lin, (2, 7, 6)) == 7 * 5 * 6  # applied to 7 tokens
    up = nn.ConvTranspose2d(3, 2, 2, stride=2)  # every input value hits 2x2x2 outputs
    assert count_flops(up, (1, 3, 4, 4), include_bias=False) == 3 * 4 * 4 * 2 * 4
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4))  # only the Linear counts
    seq.train()
    assert count_flops(seq, (1, 4)) == 16 + 4 and seq.training and seq[2].num_batches_tracked == 0


def test_model_summary_and_count_params():
    m = LeNet5()
    s = model_summary(m)
    assert s["flops"] == count_flops(m) and s["params"] == 62006 and s["mparams"] == pytest.approx(0.062006)
    m.fc3.weight.requires_grad_(False)
    assert count_params(m, trainable_only=True) == 62006 - 840
    shared = nn.Sequential(m.fc3, m.fc3)
    assert count_params(shared) == 850


# --------------------------------------------------------------------------- registry

def test_build_model_recipes_timm_torchvision():
    assert isinstance(build_model("lenet5"), LeNet5) and isinstance(build_model("LeNet-5", num_classes=3), LeNet5)
    timm_model = build_model("test_resnet", num_classes=7)
    assert type(timm_model).__module__.startswith("timm.")
    assert timm_model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    tv = build_model("mobilenet_v3_small", num_classes=5)  # a torchvision-only name
    assert type(tv).__module__.startswith("torchvision.models")
    assert tv.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    names = model_names()
    assert names[:3] == ["lenet5", "vgg11", "resnet18"] and "test_resnet" in names and "mobilenet_v3_small" in names


@pytest.mark.parametrize("name, suggestion", [("lenet", "lenet5"), ("resnet-19", "resnet18"), ("vgg_11x", "vgg11")])
def test_unknown_model_suggests(name, suggestion):
    with pytest.raises(ValueError) as info:
        build_model(name)
    msg = str(info.value)
    assert repr(name) in msg and f"'{suggestion}'" in msg and "lenet5, vgg11, resnet18" in msg


def test_recipes_hold_the_paper_settings():
    assert set(RECIPES) == {"lenet5", "vgg11", "resnet18"}
    lenet, vgg, res = RECIPES["lenet5"], RECIPES["vgg11"], RECIPES["resnet18"]
    assert (lenet.lr, lenet.lr_quantized, vgg.lr, vgg.lr_quantized, res.lr, res.lr_quantized) == \
        (1e-3, 1e-3, 1e-3, 1e-4, 0.01, 0.01)
    assert vgg.lr_for(quantized=True) == 1e-4 and vgg.lr_for(quantized=False) == 1e-3
    assert [r.cpu_epochs for r in (lenet, vgg, res)] == [25, 2, 2]
    for r in RECIPES.values():
        assert isinstance(r, Recipe) and r.batch_size == 128 and r.optimizer is Optimizer.ADAM == "adam"
        assert r.schedule == "cosine" and r.paper_epochs == 500 and hash(r)
    expected = {"lenet5": (0.66, 0.06, 12, 75.0, 0.286, 2.59), "vgg11": (276.56, 132.86, 27, 87.7, 0.154, 2.957),
                "resnet18": (37.53, 11.69, 33, 86.9, 0.494, 3.023)}
    keys = ("mflops", "mparams", "noisy_layers", "peak_accuracy", "mu", "mu_noisy_training")
    for name, row in expected.items():
        assert tuple(RECIPES[name].paper[k] for k in keys) == row
    with pytest.raises(dataclasses.FrozenInstanceError):
        lenet.lr = 1.0


def test_lenet5_learns_synthetic_data():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threads only add overhead (and contention on shared CPUs)
    try:
        torch.manual_seed(0)
        data = synthetic_dataset(200, seed=0)
        model = LeNet5()
        opt = torch.optim.Adam(model.parameters(), lr=RECIPES["lenet5"].lr)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            for x, y in data.batches(25, shuffle=True, generator=gen):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            acc = sum((model(x).argmax(1) == y).sum().item() for x, y in data.batches(100)) / len(data)
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.9
