"""The weight-noise chain: ``HardenConfig(weight_noise=(WeightNoise(model, sigma, name), ...))``
applies its links in order, each at its own site, and refuses what it cannot tell apart."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxharden
from fxharden import HardenConfig, WeightNoise, WeightNoiseConfig
from fxharden.core.config import config_from_dict, config_to_dict
from fxharden.core.noise import Additive, LogNormal, Role, StuckAt
from fxharden.core.noise.verbs import noise_modules


def layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5))


def test_links_apply_in_order_each_at_its_own_site():
    x = torch.randn(4, 6)
    plain = layer()
    zero_all = WeightNoise(StuckAt(zero_fraction=1.0), 1.0, "dead")  # p = 1: every weight stuck at 0
    last = fxharden.harden(layer(), config=HardenConfig(quant=None, weight_noise=(
        WeightNoise(LogNormal(), 0.5), zero_all))).eval()
    # stuck last: whatever came before, the weights are 0 and the layer is its bias (eager reference)
    assert torch.equal(last(x), F.linear(x, torch.zeros(5, 6), plain[0].bias))
    assert list(noise_modules(last, Role.WEIGHTS)) == ["0.weight", "0.weight.dead"]
    first = fxharden.harden(layer(), config=HardenConfig(quant=None, weight_noise=(
        zero_all, WeightNoise(Additive(), 0.1, "after")))).eval()
    w = first.get_submodule("0").weight_noise.draw_weights(plain[0].weight.detach())[0]
    assert 0.05 < float(w.std()) < 0.2 and w.ne(0).all()  # noise added to zeros: N(0, 0.1²) weights


def test_link_names_default_and_duplicates_are_refused():
    cfg = HardenConfig(quant=None, weight_noise=(WeightNoise("additive", 0.1), WeightNoise("lognormal", 0.2)))
    assert [x.name for x in cfg.weight_noise] == ["", "lognormal"]  # the second unnamed link: its model's name
    with pytest.raises(ValueError, match="two weight_noise links are named 'a'; give each a distinct name="):
        HardenConfig(weight_noise=(WeightNoise("additive", 0.1, "a"), WeightNoise("lognormal", 0.2, "a")))
    with pytest.raises(ValueError, match="lower-case letters"):
        WeightNoise("additive", 0.1, "Bad name")
    with pytest.raises(ValueError, match="does not act on weights; choose one of: additive, lognormal"):
        WeightNoise("relative", 0.1)
    with pytest.raises(ValueError, match=r"fault probability in \[0, 1\]"):
        WeightNoise(StuckAt(), 1.5)
    with pytest.raises(TypeError, match="weight_noise links must be WeightNoise values"):
        HardenConfig(weight_noise=(0.1,))


def test_shorthands_build_the_same_chain_and_files_round_trip():
    short = HardenConfig(weight_noise=WeightNoiseConfig(kind="additive", sigma=0.1, relative=True))
    assert short.weight_noise == (WeightNoise(Additive(of_max=True), 0.1),)
    chain = HardenConfig(quant=None, weight_noise=(WeightNoise(LogNormal(), 0.2, "drift"),
                                                   WeightNoise(StuckAt(zero_fraction=0.25), 0.01, "faults")))
    data = config_to_dict(chain)
    assert data["weight_noise"][1] == {"model": {"name": "stuck", "zero_fraction": 0.25}, "sigma": 0.01,
                                       "name": "faults"}
    assert config_from_dict(data) == chain


def test_set_weight_noise_sets_one_link():
    hm = fxharden.harden(layer(), config=HardenConfig(quant=None, weight_noise=(
        WeightNoise("additive", 0.1), WeightNoise("lognormal", 0.2, "drift"))))
    fxharden.set_weight_noise(hm, 0.3)
    fxharden.set_weight_noise(hm, 0.0, link="drift")
    mods = noise_modules(hm, Role.WEIGHTS)
    assert (float(mods["0.weight"].sigma), float(mods["0.weight.drift"].sigma)) == (pytest.approx(0.3), 0.0)
    with pytest.raises(ValueError, match="no weight-noise link named 'faults'; its links are '', 'drift'"):
        fxharden.set_weight_noise(hm, 0.1, link="faults")


def test_a_checkpoint_written_before_the_chain_loads_and_draws_the_same_noise():
    """``tests/fixtures/lenet5_checkpoint_0_1.pt``: ``save_checkpoint`` by fxharden before the
    chain existed (LeNet-5, 6-bit dynamic QAT, multiplicative activation noise, relative weight
    noise, drift and faults in the 0.1 format), with an input and the output it gave after
    ``seed_noise(hm, 11)``. Loaded now, the chain has the same sites and streams, so the same
    seed gives the same output, bit for bit."""
    from pathlib import Path

    from fxharden.zoo.checkpoint import load_checkpoint

    ck = load_checkpoint(Path(__file__).parents[1] / "fixtures" / "lenet5_checkpoint_0_1.pt")
    assert [link.name for link in ck.config.weight_noise] == ["drift", "", "faults"]
    hm = ck.model.eval()
    fxharden.seed_noise(hm, 11)
    with torch.no_grad():
        assert torch.equal(hm(ck.inputs["x"]), ck.inputs["y"])
