"""The hardened model is a drop-in replacement: the plain model's call signature (names,
defaults, keyword use) on both frontends, and a clear refusal of a value the graph was not
captured for."""

import copy
import functools
import inspect
import pickle

import pytest
import torch
from torch import nn

from fxharden import harden
from fxharden.core.signature import SpecialisedArgumentError


class Embedder(nn.Module):
    """``forward(x, embed=False)``, as torchcrepe's network (``model(frames, embed=False)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x, embed=False):
        y = torch.relu(self.fc(x))
        return y if embed else self.head(y)


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, mask=None, scale: float = 1.0):
        y = self.fc(x) * scale
        if mask is not None:
            y = y * mask
        return y


FRONTENDS = ["fx", "export"]


def _harden(model, frontend, example):
    return harden(model.eval(), frontend=frontend, example_inputs=example)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_embed_flag_positional_and_keyword(frontend):
    torch.manual_seed(0)
    model, x = Embedder().eval(), torch.randn(5, 4)
    hm = _harden(model, frontend, (x,))
    assert inspect.signature(hm.forward) == inspect.signature(model.forward)
    want = model(x)
    for got in (hm(x), hm(x, False), hm(x, embed=False), hm(x=x, embed=False), hm.forward(x, embed=False)):
        assert torch.equal(got, want)
    with pytest.raises(SpecialisedArgumentError, match=r"embed=False.*embed=True was passed.*example_inputs"):
        hm(x, embed=True)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_mask_and_scale_defaults(frontend):
    torch.manual_seed(0)
    model, x = Masked().eval(), torch.randn(5, 4)
    hm = _harden(model, frontend, (x,))
    assert inspect.signature(hm.forward) == inspect.signature(model.forward)
    want = model(x)
    for got in (hm(x), hm(x, None), hm(x, None, 1.0), hm(x, scale=1.0), hm(x, mask=None, scale=1), hm(x=x)):
        assert torch.equal(got, want)
    with pytest.raises(SpecialisedArgumentError, match=r"mask=None.*mask=a tensor was passed"):
        hm(x, mask=torch.ones(5, 3))
    with pytest.raises(SpecialisedArgumentError, match=r"scale=1.0.*scale=2.0"):
        hm(x, scale=2.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'masks'"):
        hm(x, masks=None)  # as the plain model says


def test_export_captures_the_given_values():
    """A tensor mask and a non-default scale in example_inputs: the graph takes the mask (by
    position or keyword) and accepts only the scale it was captured with."""
    torch.manual_seed(0)
    model, x, mask = Masked().eval(), torch.randn(5, 4), torch.rand(5, 3)
    hm = harden(model, frontend="export", example_inputs={"x": x, "mask": mask, "scale": 2.0})
    assert inspect.signature(hm.forward) == inspect.signature(model.forward)
    want = model(x, mask, 2.0)
    for got in (hm(x, mask, 2.0), hm(x, mask=mask, scale=2.0), hm(mask=mask, x=x, scale=2)):
        assert torch.equal(got, want)
    with pytest.raises(SpecialisedArgumentError, match=r"scale=2.0.*scale=1.0 was passed"):
        hm(x, mask)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_signature_survives_modes_copies_and_pickling(frontend):
    torch.manual_seed(0)
    model, x = Embedder().eval(), torch.randn(3, 4)
    hm = _harden(model, frontend, (x,))
    for other in (copy.deepcopy(hm), pickle.loads(pickle.dumps(hm)), hm.train().eval()):
        assert inspect.signature(other.forward) == inspect.signature(model.forward)
        assert torch.equal(other(x, embed=False), model(x))
        with pytest.raises(SpecialisedArgumentError):
            other(x, embed=True)


def _passes_through(forward):
    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        return forward(*args, **kwargs)
    return wrapper


class Decorated(nn.Module):
    """A forward behind a ``functools.wraps`` decorator: torch.fx fails with a low-level
    ``ValueError: code: co_varnames is too small`` when it builds the placeholders."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    @_passes_through
    def forward(self, x, *, scale=1.0):
        return torch.relu(self.fc(x)) * scale


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -x


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner, self.out = Branchy(), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.inner(x))


def test_opaque_reason_names_the_decorator_and_the_route():
    torch.manual_seed(0)
    model, x = Decorated().eval(), torch.randn(5, 4)
    hm = harden(model)
    reason = hm.report.opaque["model"]
    assert reason.startswith("torch.fx cannot trace the model's own forward (Decorated): its forward is wrapped by a "
                             "decorator (the wrapper wrapper(*args, **kwargs)")
    assert "functools.wraps" in reason and "test_dropin.py" in reason
    assert reason.endswith("its layers (1 linear) are hardened by hooks (module route)")
    assert [s.route for s in hm.report.sites if s.name == "fc"] == ["module"]
    assert inspect.signature(hm.forward) == inspect.signature(model.forward)
    assert torch.equal(hm(x, scale=2.0), model(x, scale=2.0))  # a keyword-only argument reaches the opaque model


def test_opaque_reason_names_data_dependent_control_flow():
    hm = harden(Outer().eval())
    reason = hm.report.opaque["inner"]
    assert reason.startswith("torch.fx cannot trace submodule 'inner' (Branchy): data-dependent control flow")
    assert "if x.sum() > 0:" in reason and reason.endswith("hardened by hooks (module route)")
