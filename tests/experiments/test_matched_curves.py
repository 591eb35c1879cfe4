"""Noisy-training (matched) curves: warm-started cell chains and the two a_max conventions."""

import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import fxharden.training.train as train_module
from fxharden.experiments.curves import AMax, matched_crossings, merge_curve
from fxharden.experiments.experiment import ExperimentError
from fxharden.experiments.recipe_file import parse_experiment
from fxharden.experiments.reproduce import reproduce
from fxharden.measure.results import bootstrap_curves

WARM = """
name = "warm"
dataset = "synthetic"

[sweep]
sigmas = [0.05, 0.5]
matched_sigmas = [0.05, 0.8]
repeats = 2
batch_size = 64

[budget.cpu]
epochs = 1
seeds = 2
batch_size = 64
train_images = 128
test_images = 64

[[grid]]
models = ["lenet5"]
train_sigma = ["off", "matched"]
warm_start = true
"""


def _experiment(**grid):
    return parse_experiment({"name": "w", "sweep": {"sigmas": [0.1], "matched_sigmas": [0.5, 1.0, 2.0]},
                             "budget": {"cpu": {"seeds": 2}},
                             "grid": {"models": "lenet5", "train_sigma": ["off", "matched"], **grid}})


def test_warm_start_chains_the_cells_of_a_seed_in_sigma_order():
    exp = _experiment(warm_start=True)
    off, matched = exp.variants
    assert not off.warm_start and matched.warm_start and matched.key == "lenet5-fp32-matched-warm"
    cells = [c for c in exp.cells() if c.variant == matched]
    by = {(c.train_sigma, c.seed): c for c in cells}
    for seed in (0, 1):
        assert by[0.5, seed].init_from is None
        assert by[1.0, seed].init_from == by[0.5, seed].key
        assert by[2.0, seed].init_from == by[1.0, seed].key
    cold = {(c.train_sigma, c.seed): c.key for c in _experiment().cells() if c.variant.matched}
    assert all(by[k].key != cold[k] for k in cold)  # a warm-started network is another network
    assert all(c.init_from is None for c in exp.cells() if c.variant == off)


@pytest.mark.parametrize("grid, match", [({"warm_start": "yes"}, "warm_start must be true or false"),
                                         ({"warm_start": True, "train_sigma": "off"}, "needs a matched curve")])
def test_bad_warm_start_is_refused(grid, match):
    with pytest.raises(ExperimentError, match=match):
        _experiment(**grid)


def _spy_initial_weights(monkeypatch):
    """Record the weights each cell's network has when training starts, by cell directory."""
    seen, real = {}, train_module.train

    def spy(model, data_train, data_test=None, config=None, out=None, **kw):
        seen[Path(out).name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real(model, data_train, data_test, config, out, **kw)

    monkeypatch.setattr(train_module, "train", spy)
    return seen


def _final(out: Path, key: str):
    return torch.load(out / "cells" / key / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_warm_started_cell_starts_from_the_previous_cells_trained_network(tmp_path, monkeypatch):
    path, out = tmp_path / "warm.toml", tmp_path / "out"
    path.write_text(WARM)
    seen = _spy_initial_weights(monkeypatch)
    res = reproduce(path, out, progress=False)
    assert not res.failed
    cells = [c for c in parse_experiment_file(path).cells() if c.variant.matched]
    chained = [c for c in cells if c.init_from is not None]
    assert len(chained) == 2
    for c in chained:  # independent check: the predecessor's checkpoint as written to disk
        assert _same(seen[c.key], _final(out, c.init_from)), c.key
        other_seed = next(o for o in cells if o.train_sigma != c.train_sigma and o.seed != c.seed)
        assert not _same(seen[c.key], _final(out, other_seed.key))
    first = [c for c in cells if c.init_from is None]
    assert not _same(seen[first[0].key], seen[first[1].key])  # fresh, seeded initialisations

    # resume: the last cell of a chain lost its results; only it runs again, from the same predecessor
    last = max(chained, key=lambda c: (c.train_sigma, c.seed))
    shutil.rmtree(out / "cells" / last.key)
    seen.clear()
    again = reproduce(path, out, progress=False)
    assert again.computed == [last.key] and set(seen) == {last.key}
    assert _same(seen[last.key], _final(out, last.init_from))

    md = (out / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| lenet5-fp32-matched-warm |"))
    assert "(a_max " in row.split("|")[11] and "(a_max " in row.split("|")[12]  # both conventions: σ_train = 0 exists
    assert "warm-started" in md


def test_a_failed_cell_fails_the_cells_that_start_from_it(tmp_path, monkeypatch):
    path, out = tmp_path / "warm.toml", tmp_path / "out"
    path.write_text(WARM)
    exp = parse_experiment_file(path)
    bad = next(c for c in exp.cells() if c.variant.matched and c.init_from is None and c.seed == 1)
    real = train_module.train

    def failing(model, data_train, data_test=None, config=None, out=None, **kw):
        if Path(out).name == bad.key:
            raise RuntimeError("injected training failure")
        return real(model, data_train, data_test, config, out, **kw)

    monkeypatch.setattr(train_module, "train", failing)
    res = reproduce(path, out, progress=False)
    chain = {c.key for c in exp.cells() if c.variant.matched and c.seed == 1}
    assert set(res.failed) == chain
    assert "injected training failure" in res.failed[bad.key]
    assert all("not run" in res.failed[k] for k in chain - {bad.key})
    assert {c.key for c in exp.cells() if c.seed == 0 or not c.variant.matched} <= set(res.computed)


def parse_experiment_file(path: Path):
    from fxharden.experiments.recipe_file import load_experiment

    return load_experiment(path)


def _matched(correct_by_sigma, seeds=2):
    """A matched curve whose network (σ, seed) gets ``correct_by_sigma[σ][seed]`` of 100 right at
    every repeat."""
    exp = parse_experiment({"name": "m", "sweep": {"sigmas": [0.1], "matched_sigmas": sorted(correct_by_sigma)},
                            "budget": {"cpu": {"seeds": seeds}}, "grid": {"models": "lenet5", "train_sigma": "matched"}})
    cells = exp.cells()
    done = {c.key: {"key": c.key, "points": [{"sigma": c.train_sigma, "correct": [correct_by_sigma[c.train_sigma][c.seed]] * 3,
                                               "total": 100}],
                    "clean_accuracy": 0.5, "chance": 0.1, "num_images": 100, "sites": ["input"], "harden": {}}
            for c in cells}
    return merge_curve(exp.variants[0], cells, done).result


def test_the_two_a_max_conventions_give_the_closed_form_crossings():
    # every network of a σ agrees: accuracy 0.8, 0.6, 0.2 at σ = 0.1, 1, 10; chance 0.1
    result = _matched({0.1: [80, 80], 1.0: [60, 60], 10.0: [20, 20]})
    x = matched_crossings(result, clean_accuracy=0.9)
    # a_max = clean 0.9: level 0.5, a quarter of the way from 0.6 to 0.2 -> ln μ = ln 10 / 4
    assert x[AMax.CLEAN].a_max == 0.9 and x[AMax.CLEAN].mu == pytest.approx(10 ** 0.25)
    # a_max = best point 0.8: level 0.45, 0.15 / 0.4 of the way -> μ = 10^0.375
    assert x[AMax.BEST].a_max == pytest.approx(0.8) and x[AMax.BEST].mu == pytest.approx(10 ** 0.375)
    # identical networks and repeats: networks and noise draws add nothing to the error, the
    # 100 images (a sample of the data) do
    pts = [p for p in result.site_points() if p.sigma > 0]
    assert np.ptp(bootstrap_curves(pts, 50, images=False), axis=0) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < x[AMax.CLEAN].mu_err < 10 ** 0.25
    # without a σ_train = 0 network only the best-point convention applies
    assert set(matched_crossings(result)) == {AMax.BEST}
    # a clean accuracy so high that the curve starts below half way: no crossing, said as NaN
    assert math.isnan(matched_crossings(result, clean_accuracy=1.6)[AMax.CLEAN].mu)


def test_matched_crossing_error_reflects_the_spread_across_networks():
    result = _matched({0.1: [85, 75], 1.0: [70, 50], 10.0: [25, 15]})
    x = matched_crossings(result, clean_accuracy=0.9)[AMax.CLEAN]
    # seed 0 alone crosses 0.5 at 10^(0.2/0.45), seed 1 alone at σ = 1: the error spans a good part of that
    lo, hi = 1.0, 10 ** (0.2 / 0.45)
    assert lo < x.mu < hi and 0.1 * (hi - lo) < x.mu_err < hi - lo


def test_a_matched_curve_that_ends_above_chance_quotes_its_matched_crossing():
    """Like the measured warm-started LeNet-5 curves: 45 % at σ = 0.5 falling to 25 % at σ = 5,
    never near chance (10 %). The fit's generic crossing (half way between the best and the
    lowest point, 35 %) is no midpoint; the table quotes the matched crossing instead."""
    from fxharden.experiments.curves import Curve
    from fxharden.measure.midpoint import QuoteKind

    acc = {0.5: 45, 1.0: 42, 2.0: 35, 3.0: 31, 5.0: 25}
    result = _matched({s: [a, a] for s, a in acc.items()})
    variant = parse_experiment({"name": "m", "sweep": {"sigmas": [0.1], "matched_sigmas": [0.5]},
                                "budget": {"cpu": {}}, "grid": {"models": "lenet5", "train_sigma": "matched"}}).variants[0]
    assert not result.fit.ok  # no lower plateau on this grid
    clean = Curve(variant, result, [], crossings=matched_crossings(result, clean_accuracy=0.57))
    q = clean.quote()
    # a_max 0.57: level (0.57 + 0.1) / 2 = 0.335, between σ = 2 (0.35) and σ = 3 (0.31), linear in ln σ
    expected = math.exp(math.log(2) + (0.35 - 0.335) / (0.35 - 0.31) * math.log(1.5))
    assert q.kind is QuoteKind.CROSSING and q.value == pytest.approx(expected)
    assert q.text(3).endswith("(matched crossing, a_max clean)") and "a_max = 57.0 %" in q.reason
    # without σ_train = 0 networks: a_max = best point 0.45, level 0.275, between σ = 3 and 5
    best = Curve(variant, result, [], crossings=matched_crossings(result)).quote()
    assert best.value == pytest.approx(math.exp(math.log(3) + (0.31 - 0.275) / (0.31 - 0.25) * math.log(5 / 3)))
    assert best.text(3).endswith("(matched crossing, a_max best)")
    # an ordinary curve keeps the fit's own quote
    assert Curve(replace(variant, matched=False), result, []).quote() == result.fit.quote()
