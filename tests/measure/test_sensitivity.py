"""Per-layer sensitivity map: rows in network order, quoted μ, markdown table, figure."""

import math

import numpy as np
import pytest

from fxharden.measure.plots import save_plots
from fxharden.measure.options import SweepMode
from fxharden.measure.results import SweepPoint, SweepResult
from fxharden.measure.sensitivity import Estimate, sensitivity, sensitivity_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOTAL = 100_000


def logistic(sigma, mu, width=None, a_max=0.9, chance=0.1):
    """Eq. 1 written out independently: half way between a_max and chance at sigma = mu."""
    width = width or mu / 8
    return chance + (a_max - chance) / (1 + math.exp(min((sigma - mu) / width, 700)))


def per_layer_result(mus, kinds):
    """A per-layer result whose points follow the logistic exactly (no sampling noise)."""
    sigmas = np.geomspace(1e-3, 10, 41)
    points = []
    for site, mu in mus.items():
        for s in sigmas:
            acc = 0.9 if mu is None else logistic(s, mu)
            points.append(SweepPoint(site, float(s), ((round(acc * TOTAL),) * 3,), TOTAL))
    return SweepResult(mode=SweepMode.PER_LAYER, points=points, sites=list(mus), clean_accuracy=0.9,
                       clean_accuracies=[0.9], chance=0.1, num_images=TOTAL, networks=["net"], config={},
                       harden_configs=[{}], seed=0, seeding="", site_kinds=kinds).refit()


@pytest.fixture(scope="module")
def result():
    mus = {"input": 2.0, "conv1": 0.05, "relu": 0.8, "fc": 0.3, "dead": None}
    kinds = {"input": "input", "conv1": "conv", "relu": "activation", "fc": "linear", "dead": "conv"}
    return per_layer_result(mus, kinds)


def test_rows_are_in_network_order_with_the_true_mu(result):
    rows = sensitivity(result)
    assert [r.site for r in rows] == ["input", "conv1", "relu", "fc", "dead"]
    assert [r.index for r in rows] == [1, 2, 3, 4, 5]
    assert [r.kind for r in rows] == ["input", "conv", "activation", "linear", "conv"]
    for row, true_mu in zip(rows[:4], (2.0, 0.05, 0.8, 0.3)):
        assert row.estimate in (Estimate.FIT, Estimate.CROSSING)  # the fit's quote: μ, or the crossing
        assert row.mu == pytest.approx(true_mu, rel=0.03)
        assert row.mu_err >= 0
    dead = rows[4]
    assert dead.estimate == Estimate.LOWER_BOUND and dead.mu == pytest.approx(10.0) and dead.text() == "> 10"


def test_markdown_table_has_one_row_per_site_and_ranks_by_mu(result):
    text = sensitivity_markdown(result)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 5
    rank = {line.split("`")[1]: line.rstrip(" |").rsplit("|", 1)[1].strip() for line in rows}
    assert rank == {"conv1": "1", "fc": "2", "relu": "3", "input": "4", "dead": "-"}


def test_figure_and_table_are_written(result, tmp_path):
    paths = save_plots(result, tmp_path)
    assert paths["per_layer"].read_bytes()[:8] == PNG_MAGIC
    assert paths["per_layer_table"].read_text() == sensitivity_markdown(result)


def test_global_result_is_refused(result):
    glob = SweepResult(mode=SweepMode.GLOBAL, points=[], sites=["a"], clean_accuracy=1, clean_accuracies=[1],
                       chance=0.1, num_images=1, networks=["n"], config={}, harden_configs=[{}], seed=0, seeding="")
    with pytest.raises(ValueError, match="per-layer sweep"):
        sensitivity(glob)
