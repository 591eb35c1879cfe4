"""Every tensor argument of ``forward`` is an input site (quantizer + noise), named by its
argument name when there are several ("input" when there is one)."""

import pytest
import torch
from torch import nn

import fxharden
from fxharden import LayerConfig, SiteRules
from fxharden.core.noise import stream_seed


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fa = nn.Linear(3, 2)
        self.fb = nn.Linear(4, 2)

    def forward(self, a, b):
        return self.fa(a) + self.fb(b)


class WithMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, mask=None):
        return self.fc(x if mask is None else x * mask)


A, B = torch.randn(4, 3), torch.randn(4, 4)


def draw(site, shape, seed=0):
    g = torch.Generator().manual_seed(stream_seed(seed, site))
    return torch.empty(shape).normal_(generator=g)


def inputs(hm):
    return {s.name: s for s in fxharden.harden_report(hm).sites if s.kind == "input"}


def test_each_input_is_a_site_named_by_its_argument():
    hm = fxharden.harden(TwoInputs(), bits=8)
    sites = inputs(hm)
    assert list(sites) == ["a", "b"]
    assert all(s.noise and s.quantizer.startswith("bits=8") for s in sites.values())
    assert fxharden.noise_sites(hm)[:2] == ["a", "b"]
    assert list(inputs(fxharden.harden(WithMask()))) == ["input"]  # mask=None is traced as a constant


def test_noise_at_one_input_is_the_hand_computed_one():
    torch.manual_seed(0)
    m = TwoInputs().eval()
    hm = fxharden.harden(m)
    fxharden.set_noise(hm, 0.3, sites=["b"])
    with torch.no_grad():
        ref = m.fa(A) + m.fb(B + 0.3 * draw("b", B.shape))
        torch.testing.assert_close(hm(A, B), ref)
        assert torch.equal(fxharden.harden(m)(A, B), m(A, B))  # the no-op oracle


@pytest.mark.parametrize("name", ["a", "b"])
def test_rules_address_each_input_by_name(name):
    torch.manual_seed(0)
    m = TwoInputs().eval()
    hm = fxharden.harden(m, bits=4, sigma=0.1,
                         rules=SiteRules(by_name={name: LayerConfig(noise=False, quantize=False)}))
    sites = inputs(hm)
    assert not sites[name].noise and sites[name].quantizer == ""
    other = "b" if name == "a" else "a"
    assert sites[other].noise and sites[other].quantizer
    gone = fxharden.harden(m, sigma=0.1, rules=SiteRules(by_name={name: None}))
    assert not inputs(gone)[name].noise and inputs(gone)[other].noise
    assert name not in fxharden.noise_sites(gone)
    with pytest.raises(ValueError, match="matches no site"):
        fxharden.harden(m, rules=SiteRules(by_name={"input": None}))
