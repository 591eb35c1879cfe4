"""The noise verbs: noise modules by role, and refusals of what would change nothing."""

import math

import pytest
import torch
from torch import nn

import fxharden
from fxharden import HardenConfig, WeightDriftConfig, WeightFaultConfig
from fxharden.core.config import WeightNoiseConfig, config_from_dict, config_to_dict
from fxharden.core.noise import Noise, Role
from fxharden.core.noise.verbs import noise_modules


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def test_set_weight_noise_on_a_model_without_weight_noise_is_refused_with_the_way_out():
    model = mlp()
    hm = fxharden.harden(model, bits=None)
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"no weight noise to set.*WeightNoiseConfig\(kind='additive'"):
        fxharden.set_weight_noise(hm, 0.5)
    assert torch.equal(hm(x), model(x))  # and nothing changed


def test_set_weight_noise_with_only_drift_and_faults_is_refused():
    cfg = HardenConfig(quant=None, weight_drift=WeightDriftConfig(sigma_decade=0.1, t=10.0),
                       weight_faults=WeightFaultConfig(p=0.01))
    hm = fxharden.harden(mlp(), config=cfg)
    with pytest.raises(ValueError, match="no weight-noise link named ''; its links are 'drift', 'faults'"):
        fxharden.set_weight_noise(hm, 0.5)  # drift and faults keep their own settings
    fxharden.set_weight_noise(hm, 0.5, link="faults")  # named: that link changes, the other stays
    mods = noise_modules(hm, Role.WEIGHTS)
    assert {s: float(m.sigma) for s, m in mods.items() if s.startswith("0.")} == {
        "0.weight.drift": pytest.approx(0.1 * math.log10(11.0)), "0.weight.faults": 0.5}
    plain = fxharden.harden(mlp(), config=HardenConfig(quant=None))
    with pytest.raises(ValueError, match="no weight noise to set"):
        fxharden.set_weight_noise(plain, 0.5)


def test_weight_noise_config_without_a_kind_is_refused_and_old_files_load_as_they_ran():
    with pytest.raises(ValueError, match=r"without a kind adds no noise: choose kind='additive'"):
        WeightNoiseConfig(sigma=0.1)
    with pytest.raises(ValueError, match="without a kind"):
        WeightNoiseConfig(relative=True)
    assert WeightNoiseConfig().sigma == 0.0  # no weight noise: fine
    data = config_to_dict(HardenConfig(quant=None))
    data["weight_noise"] = {"kind": "none", "sigma": 0.1, "relative": False}  # a file that kept a sigma that never ran
    assert config_from_dict(data).weight_noise == ()  # no link: no weight noise, as it ran


def test_noise_modules_by_role():
    cfg = HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind="additive", sigma=0.1),
                       weight_faults=WeightFaultConfig(p=0.01))
    hm = fxharden.harden(mlp(), config=cfg)
    acts, weights = noise_modules(hm, Role.ACTIVATIONS), noise_modules(hm, Role.WEIGHTS)
    assert list(acts) == fxharden.noise_sites(hm) == ["input", "0", "1", "2"]
    assert sorted(weights) == ["0.weight", "0.weight.faults", "2.weight", "2.weight.faults"]
    every = {id(m) for m in hm.modules() if isinstance(m, Noise)}
    assert {id(m) for m in acts.values()} | {id(m) for m in weights.values()} == every
    assert not {id(m) for m in acts.values()} & {id(m) for m in weights.values()}
    fxharden.set_weight_noise(hm, 0.3)
    assert [float(weights[s].sigma) for s in ("0.weight", "0.weight.faults")] == pytest.approx([0.3, 0.01])


def test_calibrate_noise_measures_activations_only_on_any_module():
    n = Noise("x", kind="relative")
    layer = fxharden.harden(mlp(), config=HardenConfig(quant=None, weight_noise=WeightNoiseConfig(
        kind="additive", sigma=0.1)))
    x = torch.full((4, 8), 2.0)
    assert set(fxharden.calibrate_noise(nn.Sequential(n), [x])) == {"x"}
    assert float(n.rms) == pytest.approx(2.0)
    assert set(fxharden.calibrate_noise(layer, [x])) == {"input", "0", "1", "2"}
    assert not any(m.calibrated for m in noise_modules(layer, Role.WEIGHTS).values())


def chain_of(*mods, sigmas):
    from fxharden.core.noise import NoiseChain

    for m, s in zip(mods, sigmas):
        m.set_sigma(s)
    return NoiseChain(*mods)


def test_noise_modules_pickled_before_models_were_values_load_and_draw_as_new_ones():
    """``tests/fixtures/noise_modules_before_models.pt``: ``torch.save`` of a calibrated
    relative site and a weight chain (additive relative to max|w|, stuck-at with
    ``zero_fraction=0.25``) by the code before the noise models became values."""
    from pathlib import Path

    from fxharden.core.noise import Additive, Relative, StuckAt

    path = Path(__file__).parents[1] / "fixtures" / "noise_modules_before_models.pt"
    rel, chain = torch.load(path, weights_only=False)
    add, stuck = chain
    assert (rel.model, add.model, stuck.model) == (Relative(), Additive(of_max=True), StuckAt(zero_fraction=0.25))
    assert rel.calibrated and float(rel.rms) == 0.5 and rel._host == (pytest.approx(0.2),)
    fresh = Noise("act", seed=4, kind=Relative())
    fresh.set_rms(0.5)
    fresh.set_sigma(0.2)
    x = torch.randn(3, 5)
    assert torch.equal(rel(x), fresh(x))  # restarted from the seed, like a new module
    assert torch.isfinite(torch.compile(rel, backend="eager")(x)).all()  # calibrated under compile too
    w = torch.randn(4, 4)
    new = chain_of(Noise("w.weight", seed=4, kind=Additive(of_max=True)),
                       Noise("w.weight.faults", seed=4, kind=StuckAt(zero_fraction=0.25)), sigmas=(0.1, 0.3))
    assert all(torch.equal(a, b) for a, b in zip(chain.draw_weights(w), new.draw_weights(w)))
