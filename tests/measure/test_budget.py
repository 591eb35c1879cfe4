"""Noise budget: per-site allocations verified against independent evaluations and an
independently computed cost; sigma maps in set_noise and sweeps; bad input."""

import json
import math

import numpy as np
import pytest
import torch

import fxharden
from fxharden.core.noise import Noise
from fxharden.measure.budget import BudgetError, budget
from fxharden.measure.noise_cost import site_ops
from fxharden.measure.sigma_map import read_sigma_map, write_sigma_map
from fxharden.measure.options import Units
from fxharden.measure.sweep import SweepConfig, sweep

from torch import nn


class Teacher(nn.Module):
    """A small MLP labelled by its own clean predictions (clean accuracy 1). ``fc1`` scaled by
    ``shrink`` and its output back by ``1/shrink``: same function, but noise at ``fc1`` meets a
    smaller signal. ``dead`` is multiplied by 0: its noise never reaches the output."""

    def __init__(self, shrink: float) -> None:
        super().__init__()
        self.gain = 1 / shrink
        self.fc1, self.act, self.fc2, self.dead = nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4), nn.Linear(16, 4)
        with torch.no_grad():
            self.fc1.weight.mul_(shrink)
            self.fc1.bias.mul_(shrink)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x) * self.gain)) + 0.0 * self.dead(x)


def make_teacher(shrink):
    torch.manual_seed(0)
    model = Teacher(shrink).eval()
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model, (x, model(x).argmax(1))

FAST = SweepConfig(repeats=3, batch_size=128, device="cpu", sigma_min=1e-3, sigma_max=10.0)
# Teacher: x (16) -> fc1 (16->32) -> act -> fc2 (32->4), plus dead (16->4); ops per image by hand
TEACHER_OPS = {"input": 16, "fc1": 16 * 32, "act": 32, "fc2": 32 * 4, "dead": 16 * 4}


def hand_cost(sigma, digital_sigma):
    """E = Σ ops/σ², digital sites at σ_d: written out from the documented formula."""
    return sum(n / (sigma[s] ** 2 if sigma[s] > 0 else digital_sigma ** 2) for s, n in TEACHER_OPS.items())


def eval_map(hm, data, sigma_map, seeds):
    """Independent oracle: set_noise with the map, one plain forward per seed."""
    accs = []
    fxharden.set_noise(hm, sigma_map)
    with torch.no_grad():
        for seed in seeds:
            fxharden.seed_noise(hm, seed)
            accs.append(float((hm(data[0]).argmax(1) == data[1]).float().mean()))
    fxharden.set_noise(hm, 0.0)
    return np.array(accs)


@pytest.fixture(scope="module")
def plain():
    model, data = make_teacher(1.0)
    hm = fxharden.harden(model).eval()
    return hm, data, budget(hm, data, 0.03, config=FAST)


def test_site_ops_count_macs_and_elements(plain):
    hm, data, _ = plain
    assert site_ops(hm, data[0]) == TEACHER_OPS


def test_allocation_keeps_the_drop_and_costs_less_than_uniform(plain):
    hm, data, r = plain
    assert r.drop <= 0.03 and r.clean_accuracy == 1.0
    # an independent evaluation with the allocation: the drop stays within the target (3 standard errors)
    accs = eval_map(hm, data, r.sigma_map, range(100, 130))
    se = accs.std(ddof=1) / math.sqrt(len(accs))
    assert 1.0 - accs.mean() <= 0.03 + 3 * se, (accs.mean(), se)
    # the cost from the documented formula, computed here; the uniform σ is a measured passing point
    assert r.cost == pytest.approx(hand_cost(r.sigma_map, r.digital_sigma), rel=1e-9)
    uniform = {s: r.uniform_sigma for s in TEACHER_OPS}
    assert r.uniform_cost == pytest.approx(hand_cost(uniform, r.digital_sigma), rel=1e-9)
    assert r.cost <= hand_cost(uniform, r.digital_sigma)
    # the sensitivity shape wins; by how much is not asserted: on 256 images the uniform search's
    # passing point moves a grid step with the draws (ratios 0.1 to 1.0 over seeds 0-4)
    assert r.shape == "sensitivity"
    # the dead branch (noise never reaches the output) gets far more noise than the sites that matter
    assert r.sigma_map["dead"] > 10 * max(r.sigma_map[s] for s in ("fc1", "fc2", "act"))
    assert not r.protected


def test_outputs_and_the_map_read_back_by_a_sweep(plain, tmp_path):
    hm, data, r = plain
    files = r.save(tmp_path)
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = files["table"].read_text()
    assert all(f"`{s}`" in table for s in TEACHER_OPS) and "cost ratio" in table
    assert json.loads(files["json"].read_text())["cost_ratio"] == pytest.approx(r.cost_ratio)
    sigma, units = read_sigma_map(tmp_path)
    assert sigma == pytest.approx(r.sigma_map) and units is Units.ABSOLUTE
    # sweep at σ = 1 with the map: the allocation itself; agrees with the independent oracle
    res = sweep(hm, data, config=SweepConfig(sigmas=(1.0,), repeats=20, batch_size=128, device="cpu",
                                             sigma_map=sigma))
    accs = eval_map(hm, data, sigma, range(200, 220))
    p, q = res.site_points(None)[0].mean, accs.mean()
    se = math.sqrt(accs.var(ddof=1) / 20 * 2) + 1e-3
    assert abs(p - q) < 4 * se, (p, q)


def test_set_noise_with_a_map_sets_each_site_and_zero_elsewhere(plain):
    hm = plain[0]
    fxharden.set_noise(hm, {"fc1": 0.5, "act": 0.25})
    got = {m.site: float(m.sigma) for m in hm.modules() if isinstance(m, Noise)}
    assert got == {"input": 0.0, "fc1": 0.5, "act": 0.25, "fc2": 0.0, "dead": 0.0}
    with pytest.raises(ValueError, match="unknown noise site 'fc9'"):
        fxharden.set_noise(hm, {"fc9": 0.1})
    with pytest.raises(ValueError, match="not both"):
        fxharden.set_noise(hm, {"fc1": 0.1}, sites=["fc1"])
    fxharden.set_noise(hm, 0.0)


def test_a_site_that_fails_alone_is_protected_or_named():
    model, data = make_teacher(0.01)  # fc1 sees a 100x smaller signal: fails at the smallest σ
    hm = fxharden.harden(model).eval()
    with pytest.raises(BudgetError, match="fc1") as err:
        budget(hm, data, 0.02, config=FAST, protect=False)
    assert err.value.sites == ["fc1"]
    r = budget(hm, data, 0.02, config=FAST)
    assert r.protected == ["fc1"] and r.sigma_map["fc1"] == 0.0 and r.drop <= 0.02
    assert r.digital_sigma == FAST.sigma_min
    assert r.cost == pytest.approx(hand_cost(r.sigma_map, FAST.sigma_min), rel=1e-9)
    accs = eval_map(hm, data, r.sigma_map, range(30))
    assert 1.0 - accs.mean() <= 0.02 + 3 * accs.std(ddof=1) / math.sqrt(30)


@pytest.mark.parametrize("drop", [-0.01, 1.0, float("nan"), True, "0.01"])
def test_bad_max_drop_is_refused(plain, drop):
    hm, data, _ = plain
    with pytest.raises(ValueError, match="max_drop"):
        budget(hm, data, drop, config=FAST)


def test_bad_sigma_maps_are_refused(plain, tmp_path):
    hm, data, _ = plain
    with pytest.raises(ValueError, match="does not have: 'nope'"):
        sweep(hm, data, config=SweepConfig(sigmas=(1.0,), repeats=1, device="cpu", sigma_map={"nope": 1.0}))
    with pytest.raises(ValueError, match="every site a factor of 0"):
        SweepConfig(sigma_map={"fc1": 0.0})
    with pytest.raises(ValueError, match="no sigma map"):
        read_sigma_map(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"sigma": {"fc1": 1}}')
    with pytest.raises(ValueError, match="is not a sigma map"):
        read_sigma_map(tmp_path / "bad.json")
    write_sigma_map(tmp_path / "neg.json", {"fc1": 0.1}, Units.RELATIVE)
    text = (tmp_path / "neg.json").read_text().replace("0.1", "-0.1")
    (tmp_path / "neg.json").write_text(text)
    with pytest.raises(ValueError, match="finite number >= 0"):
        read_sigma_map(tmp_path / "neg.json")


def test_site_ops_of_a_batch_norm_model_in_training_mode():
    """A loaded checkpoint is in training mode; one image through its batch norm must neither
    fail nor move the norm's statistics (ResNet-18 budgets did both before)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), \
                nn.Linear(4 * 8 * 8, 2)

        def forward(self, x):
            return self.fc(self.act(self.bn(self.conv(x))).flatten(1))

    torch.manual_seed(0)
    hm = fxharden.harden(Net())
    assert hm.training
    before = {k: v.clone() for k, v in hm.state_dict().items() if "bn." in k}
    ops = site_ops(hm, torch.randn(5, 3, 8, 8))
    assert hm.training
    assert all(torch.equal(before[k], v) for k, v in hm.state_dict().items() if k in before)
    assert ops["conv"] == 8 * 8 * 4 * (3 * 3 * 3) and ops["fc"] == 2 * 4 * 8 * 8  # MACs by hand


def test_budget_reports_progress_by_phase_and_runs_from_the_command_line(tmp_path):
    model, data = make_teacher(1.0)
    seen = {}
    budget(fxharden.harden(model).eval(), data, 0.03, config=FAST,
           progress=lambda phase, done, total: seen.setdefault(phase, []).append((done, total)))
    assert set(seen) == {"per-layer profile", "allocation search", "uniform search"}
    for calls in seen.values():
        assert all(0 < done <= total for done, total in calls)
    assert seen["per-layer profile"][-1][0] == seen["per-layer profile"][-1][1]  # the profile ran to its end

    from typer.testing import CliRunner
    from fxharden.cli import app

    res = CliRunner().invoke(app, ["budget", "lenet5", "--synthetic", "--max-drop", "0.05", "--max-images", "64",
                                   "--repeats", "1", "--sigma-min", "0.01", "--sigma-max", "1", "--device", "cpu",
                                   "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert {"budget.md", "budget.json", "budget.png", "sigma_map.json"} <= {p.name for p in (tmp_path / "b").iterdir()}


def test_site_ops_count_each_call_of_a_layer_called_twice():
    """``self.c(self.pool(self.c(x)))``: two sites ``c`` and ``c_1``, each counted on its own
    call (the hook kept the last call for ``c`` and counted ``c_1``'s outputs: 1,296 and 36)."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.pool = nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2)

        def forward(self, x):
            return self.c(self.pool(self.c(x)))

    hm = fxharden.harden(Twice(), bits=8).eval()  # with output quantizers between layer and noise
    x = torch.randn(3, 4, 6, 6)
    fan_in = 4 * 3 * 3
    # by hand: first call 4×6×6 outputs, pool to 4×3×3, second call 4×3×3 outputs
    hand = {"input": 4 * 6 * 6, "c": 4 * 6 * 6 * fan_in, "pool": 4 * 3 * 3, "c_1": 4 * 3 * 3 * fan_in}
    assert hand["c"] == 5184 and hand["c_1"] == 1296
    assert site_ops(hm, x) == hand
    assert site_ops(fxharden.harden(Twice()).eval(), x) == hand


def per_layer_profile(hm, data, out=None):
    """The profile ``budget`` runs itself, made by hand."""
    from dataclasses import replace
    from fxharden.measure.sweep import SweepMode

    return sweep(hm, data, config=replace(FAST, mode=SweepMode.PER_LAYER, adaptive=True), out=out)


def test_a_profile_of_other_weights_is_refused(plain, tmp_path):
    """A profile from before a fine-tune describes another network: refused, saying what
    differs and what to do (it gave a 6.9-point drop for max_drop 0.02, reported negative)."""
    hm, data, _ = plain
    profile = per_layer_profile(hm, data, out=tmp_path / "p")
    tuned = make_teacher(1.0)[0]
    with torch.no_grad():
        tuned.fc2.weight.add_(0.01)  # the "fine-tune"
    with pytest.raises(ValueError, match=r"weights .* not this model's.*without a profile"):
        budget(fxharden.harden(tuned).eval(), data, 0.03, config=FAST, profile=profile)
    # other data, another harden config: refused too, each named
    x2 = data[0] + 0.5
    with pytest.raises(ValueError, match=r"its data differ") as err:
        budget(hm, (x2, data[1]), 0.03, config=FAST, profile=profile)
    assert "weights" not in str(err.value)
    with pytest.raises(ValueError, match=r"harden config"):
        budget(fxharden.harden(make_teacher(1.0)[0], bits=8).eval(), data, 0.03, config=FAST, profile=profile)
    # a results.json written before the identity was recorded: read back from its sweep.json
    from fxharden.measure.results import load_result

    stored = json.loads((tmp_path / "p" / "results.json").read_text())
    del stored["identity"]
    (tmp_path / "p" / "results.json").write_text(json.dumps(stored))
    assert load_result(tmp_path / "p").identity == profile.identity
    (tmp_path / "p" / "sweep.json").unlink()
    with pytest.raises(ValueError, match="does not record which weights"):
        budget(hm, data, 0.03, config=FAST, profile=load_result(tmp_path / "p"))


def test_the_reference_clean_accuracy_is_measured_on_the_model(plain):
    """Only the profile's sensitivities are used: a profile whose clean accuracy is off (here
    set to 0.5) neither moves the reference nor makes the drop negative."""
    from dataclasses import replace

    hm, data, _ = plain
    profile = replace(per_layer_profile(hm, data), clean_accuracy=0.5)
    r = budget(hm, data, 0.03, config=FAST, profile=profile)
    with torch.no_grad():
        eager = float((hm(data[0]).argmax(1) == data[1]).float().mean())  # the model itself, eagerly
    assert r.clean_accuracy == eager == 1.0
    assert 0 <= r.drop <= 0.03
    accs = eval_map(hm, data, r.sigma_map, range(100, 130))
    assert eager - accs.mean() <= 0.03 + 3 * accs.std(ddof=1) / math.sqrt(len(accs))


def test_a_site_beyond_the_grid_is_printed_as_a_bound(plain):
    """``dead``'s noise never reaches the output, so its accuracy never falls half way inside the
    profile's grid: its per-layer μ is a lower bound and prints as ``> σ_max``, never as the
    largest σ measured as if that were its μ."""
    _, _, r = plain
    dead = next(s for s in r.sites if s.site == "dead")
    assert dead.estimate == "lower bound" and dead.mu >= FAST.sigma_max
    row = next(line for line in r.markdown().splitlines() if "`dead`" in line)
    assert row.split("|")[6].strip() == f"> {dead.mu:.4g}"
    for s in r.sites:  # a fitted μ is printed with its error, a crossing marked "~"
        cell = next(line for line in r.markdown().splitlines() if f"`{s.site}`" in line).split("|")[6].strip()
        assert cell.startswith({"fit": "", "crossing": "~", "lower bound": "> ", "none": "-"}[s.estimate])
        assert ("±" in cell) == (s.estimate in ("fit", "crossing") and math.isfinite(s.mu_err))
