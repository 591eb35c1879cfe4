"""The exactness check: sweeps, evaluate, budget and train compare the hardened model at no-op
with the plain model on the first batch of every new input signature."""

import pytest
import torch
from torch import nn

import fxharden
from fxharden.core.exactness import ENV_VAR, ExactnessError, check_exact
from fxharden.core.noise import Noise, noise_off
from fxharden.core.quant import quant_off
from fxharden.measure.budget import budget
from fxharden.training.train import TrainConfig, evaluate, train


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Pooled(nn.Module):
    """Takes ``(N, 4, L)`` of any length; the reduction depends on the length (a branch that
    torch.export specialises to its example's path)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = x.amax(-1) if x.shape[-1] > 8 else x.mean(-1)
        return self.fc(y)


def _data(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture
def broken_fc1(monkeypatch):
    """Every hardened model's site ``fc1`` adds 1 to its output, at any sigma."""
    forward = Noise.forward
    monkeypatch.setattr(Noise, "forward", lambda self, x: forward(self, x) + 1.0 if self.site == "fc1"
                        else forward(self, x))


def _count_forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    return calls


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_correct_model_passes_and_keeps_its_settings(frontend):
    torch.manual_seed(0)
    model, (x, _) = MLP().eval(), _data()
    hm = fxharden.harden(model, bits=3, sigma=0.5, frontend=frontend, example_inputs=(x,))
    with torch.no_grad():
        assert not torch.allclose(hm(x), model(x), atol=1e-3)  # quantized and noisy: not the plain model
        with noise_off(hm), quant_off(hm):
            assert torch.equal(hm(x), model(x))  # the no-op the check relies on
    check_exact(hm, model, x)
    assert all(float(m.sigma) == 0.5 for m in hm.modules() if isinstance(m, Noise) and m.site in
               fxharden.noise_sites(hm))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_broken_site_is_named(frontend, broken_fc1):
    torch.manual_seed(0)
    model, (x, _) = MLP().eval(), _data()
    hm = fxharden.harden(model, frontend=frontend, example_inputs=(x,))
    with pytest.raises(ExactnessError, match=r"first differ at site 'fc1'") as info:
        check_exact(hm, model, x)
    assert info.value.site == "fc1"


def test_export_specialised_to_another_branch_is_refused_or_caught():
    """A branch torch.export specialised: on the input's shape, the hardened model's input
    guard refuses other lengths; on anything the guard cannot see (here a Python attribute
    changed after hardening), ``evaluate`` against the plain model names the first site."""
    from fxharden.core.input_guard import InputShapeError

    torch.manual_seed(0)
    model = Pooled().eval()
    long, short = torch.randn(4, 4, 16), torch.randn(4, 4, 6)
    hm = fxharden.harden(model, frontend="export", example_inputs=(long,))
    y = torch.zeros(4, dtype=torch.long)
    evaluate(hm, [(long, y)], reference=model)  # the path it was captured on
    with pytest.raises(InputShapeError, match=r"x\.shape\[2\]"):
        evaluate(hm, [(long, y), (short, y)], reference=model)
    model.fc.bias.data += 1.0  # the reference now computes something else than the hardened copy
    with pytest.raises(ExactnessError, match=r"\(evaluate; inputs Tensor\(4, 4, 16\) float32\).*first differ at site 'fc'"):
        evaluate(hm, [(long, y)], reference=model)


def test_sweep_checks_once_per_signature_and_stops_on_a_broken_site(broken_fc1, monkeypatch):
    torch.manual_seed(0)
    model, data = MLP().eval(), _data(10)
    calls = _count_forwards(model)
    with pytest.raises(ExactnessError, match=r"sweep.*site 'fc1'"):
        fxharden.sweep(model, data, sigmas=[0.1], repeats=1, batch_size=4, device="cpu")
    assert len(calls) == 2  # the check's plain forward, and the one that locates the site
    fxharden.sweep(model, data, sigmas=[0.1], repeats=1, batch_size=4, device="cpu", check_exact=False)
    monkeypatch.setenv(ENV_VAR, "0")
    fxharden.sweep(model, data, sigmas=[0.1], repeats=1, batch_size=4, device="cpu")
    assert len(calls) == 2  # switched off: no plain forward


def test_sweep_and_evaluate_of_a_correct_model_forward_the_plain_model_once_per_signature():
    torch.manual_seed(0)
    model, data = MLP().eval(), _data(10)
    calls = _count_forwards(model)
    fxharden.sweep(model, data, sigmas=[0.1], repeats=1, batch_size=4, device="cpu")  # batches of 4, 4, 2
    assert len(calls) == 1
    pooled = Pooled().eval()
    hm = fxharden.harden(pooled)  # torch.fx cannot trace the branch: the whole model is one opaque layer
    calls = _count_forwards(pooled)
    y = torch.zeros(2, dtype=torch.long)
    batches = [(torch.randn(2, 4, 16), y), (torch.randn(2, 4, 16), y), (torch.randn(2, 4, 6), y),
               (torch.randn(2, 4, 6), y)]
    evaluate(hm, batches, reference=pooled)
    assert len(calls) == 2  # two lengths, two signatures


def test_train_checks_its_first_batch(broken_fc1):
    torch.manual_seed(0)
    model, (x, y) = MLP(), _data(16)
    with pytest.raises(ExactnessError, match=r"train, first batch.*site 'fc1'"):
        train(model, [(x[:8], y[:8]), (x[8:], y[8:])], config=TrainConfig(epochs=1, device="cpu"))


def test_train_of_a_correct_model_forwards_the_plain_model_once():
    torch.manual_seed(0)
    model, (x, y) = MLP(), _data(16)
    calls = _count_forwards(model)
    result = train(model, [(x[:8], y[:8]), (x[8:], y[8:])], config=TrainConfig(epochs=2, device="cpu"))
    assert len(calls) == 1 and result.steps == 4


def test_budget_checks_the_model(broken_fc1):
    torch.manual_seed(0)
    with pytest.raises(ExactnessError, match=r"budget.*site 'fc1'"):
        budget(MLP().eval(), _data(10), 0.05, config=fxharden.SweepConfig(device="cpu", repeats=1))
