"""What a matched (noisy-training) curve shows, everywhere it is shown: no σ = 0 point (it has
none), accuracies at the networks' own σ, and a Pareto figure whose legend names only what it
draws, at the value the tables quote."""

import math

import numpy as np
import pytest

from fxharden.experiments import report
from fxharden.experiments.curves import matched_crossings, merge_curve
from fxharden.experiments.recipe_file import parse_experiment
from fxharden.experiments.reproduce import _done_text
from fxharden.measure.midpoint import QuoteKind

# a matched curve like the measured warm-started LeNet-5 one: 45 % at σ = 0.5 falling to 25 %
# at σ = 5, never near chance (10 %); its lowest-σ networks score 70 % at σ = 0 (not a point)
ACC = {0.5: 45, 1.0: 42, 2.0: 35, 3.0: 31, 5.0: 25}
CLEAN_OF_LOWEST = 0.7


def _matched_curve():
    exp = parse_experiment({"name": "m", "sweep": {"sigmas": [0.1], "matched_sigmas": sorted(ACC)},
                            "budget": {"cpu": {"seeds": 2}}, "grid": {"models": "lenet5", "train_sigma": "matched"}})
    cells = exp.cells()
    done = {c.key: {"key": c.key, "points": [{"sigma": c.train_sigma, "correct": [ACC[c.train_sigma]] * 2,
                                               "total": 100}],
                    "clean_accuracy": CLEAN_OF_LOWEST, "chance": 0.1, "num_images": 100, "sites": ["input"],
                    "harden": {}} for c in cells}
    curve = merge_curve(exp.variants[0], cells, done)
    curve.crossings = matched_crossings(curve.result)
    return curve


def test_a_matched_curves_results_csv_has_no_sigma_0_row():
    rows = _matched_curve().result.to_csv().splitlines()[1:]
    assert [float(r.split(",")[1]) for r in rows] == sorted(ACC)  # its own σ points, nothing at σ = 0
    assert all(float(r.split(",")[3]) == pytest.approx(ACC[float(r.split(",")[1])] / 100) for r in rows)


def test_a_finished_matched_cell_shows_its_accuracy_at_its_own_sigma():
    """The row's peak accuracy is the best point at the networks' own σ; the progress line of a
    cell says the same accuracy, not the network's σ = 0 accuracy."""
    record = {"key": "lenet5-fp32-matched-s0.3", "variant": {"matched": True}, "train_sigma": 0.3,
              "test_accuracy": 0.422, "points": [{"sigma": 0.3, "correct": [480, 494], "total": 1000}],
              "train": {"epochs": 5, "seconds": 60}, "sweep_seconds": 2}
    text = _done_text(record)
    assert f"acc {(480 + 494) / 2000:.3f}" in text and "0.3" in text and "0.422" not in text
    plain = {**record, "variant": {"matched": False}, "train_sigma": 0.0}
    assert "acc 0.422" in _done_text(plain)  # an ordinary cell: its clean accuracy


def _pareto(curves, monkeypatch, tmp_path):
    figures = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.setdefault(path.name, fig) and path)
    monkeypatch.setattr(report, "save_plots", lambda result, out: {})
    report.write_figures(curves, tmp_path)
    return figures["pareto.png"].axes[0]


def test_the_pareto_point_of_a_matched_curve_is_its_quoted_crossing(monkeypatch, tmp_path):
    curve = _matched_curve()
    q = curve.quote()
    assert q.kind is QuoteKind.CROSSING and "matched crossing" in q.label
    ax = _pareto([curve], monkeypatch, tmp_path)
    # best point 0.45: level (0.45 + 0.1) / 2 = 0.275, between σ = 3 (0.31) and 5 (0.25), linear in ln σ
    expected = math.exp(math.log(3) + (0.31 - 0.275) / (0.31 - 0.25) * math.log(5 / 3))
    (drawn,) = [t.xy for t in ax.texts]
    assert drawn == pytest.approx((expected, 45.0))
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["lenet5 (measured)", "crossing estimate (fit not OK)"]  # no paper point: no "paper"


def test_the_pareto_legend_lists_nothing_that_is_not_drawn(monkeypatch, tmp_path):
    """A curve at chance has nothing to quote: no point is drawn, so no legend entry either."""
    flat = [{"sigma": s, "correct": [10, 10], "total": 100} for s in ACC]  # chance everywhere
    exp = parse_experiment({"name": "c", "sweep": {"sigmas": sorted(ACC)}, "budget": {"cpu": {}},
                            "grid": {"models": "lenet5"}})
    cells = exp.cells()
    done = {c.key: {"key": c.key, "points": flat, "clean_accuracy": 0.1, "chance": 0.1, "num_images": 100,
                    "sites": ["input"], "harden": {}} for c in cells}
    at_chance = merge_curve(exp.variants[0], cells, done)
    assert at_chance.quote().kind is QuoteKind.NONE
    assert not np.isfinite(at_chance.quote().value)
    ax = _pareto([at_chance], monkeypatch, tmp_path)
    assert len(ax.texts) == 0 and ax.get_legend() is None
