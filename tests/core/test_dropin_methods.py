"""A hardened model answers its original class's methods, properties and attributes, running
them on the hardened model."""

import pickle

import torch
from torch import nn

import fxharden


class Encoder(nn.Module):
    """A model a library calls through more than ``forward``."""

    scale_factor = 2.0

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)
        self.device = torch.device("cpu")
        self.name = "encoder"

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)))

    def embed(self, x):
        """Calls the model, then a submodule directly."""
        return self(x.to(self.device)) * self.scale_factor + self.fc(x).sum(1, keepdim=True)

    def embed_forward(self, x):
        return self.forward(x)

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    @staticmethod
    def slices(n):
        return list(range(0, n, 2))


def test_methods_properties_and_attributes_run_on_the_hardened_model():
    torch.manual_seed(0)
    plain = Encoder().eval()
    hm = fxharden.harden(plain, bits=8)
    x = torch.randn(5, 4)
    fxharden.calibrate_quantizers(hm, [x])
    with torch.no_grad():
        # the reference: the original method's formula on the hardened model's own calls
        expected = hm(x) * 2.0 + hm.fc(x).sum(1, keepdim=True)
        assert torch.equal(hm.embed(x), expected)
        assert not torch.allclose(hm.embed(x), plain.embed(x), atol=1e-6)  # it ran the hardened layers
        assert torch.equal(hm.embed_forward(x), hm(x))
        fxharden.set_noise(hm, 0.5)
        assert not torch.equal(hm.embed_forward(x), hm.embed_forward(x))  # the noisy graph
    assert hm.device == torch.device("cpu") and hm.name == "encoder" and hm.dtype == torch.float32
    assert hm.slices(5) == [0, 2, 4]


class Overrides(Encoder):
    """Names the hardened model has a meaning of its own for."""

    def __init__(self):
        super().__init__()
        self.meta = "the model's own"

    def state_dict(self, *args, **kwargs):
        return {}


def test_names_the_hardened_model_has_keep_their_hardened_meaning():
    hm = fxharden.harden(Overrides(), bits=8)
    assert "fc.weight" in hm.state_dict()
    assert "fxharden" in hm.meta
    assert hm.embed(torch.randn(2, 4)).shape == (2, 2)
    pickle.loads(pickle.dumps(hm))  # still pickles
