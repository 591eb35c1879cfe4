"""fxharden's sweep against the independent plain-PyTorch LeNet-5 of benchmarks/plain_lenet5.py.

The plain script adds N(0, σ²) by hand after the input and after every layer; here both
implementations sweep the same (untrained) weights, with noise at one site at a time and at
all sites at once, on images labelled by the network's own clean predictions (clean accuracy 1,
so every site's sensitivity shows). The two draw different random numbers, so their
accuracies must agree within binomial error, not exactly.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import fxharden
from fxharden.measure.options import FitOptions
from fxharden.measure.sweep import SweepMode, sweep
from fxharden.zoo.networks import lenet5

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "plain_lenet5.py"
N, REPEATS, SIGMA = 128, 2, 0.3


@pytest.fixture(scope="module")
def plain():
    spec = importlib.util.spec_from_file_location("plain_lenet5", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def setup(plain):
    torch.manual_seed(0)
    net = lenet5()
    ref = plain.PlainLeNet5()
    ref.load_state_dict(net.state_dict())
    x = torch.randn(N, 3, 32, 32)
    with torch.no_grad():
        y = ref(x).argmax(1)
    return net, ref, x, y


def _agree(a_fx: float, a_ref: float, n: int) -> bool:
    """Within 4 binomial standard errors of the difference of two independent estimates."""
    p = min(max(0.5 * (a_fx + a_ref), 1.0 / n), 1 - 1.0 / n)
    return abs(a_fx - a_ref) <= 4 * np.sqrt(2 * p * (1 - p) / n)


def test_same_sites_in_the_same_order(plain):
    assert tuple(fxharden.noise_sites(fxharden.harden(lenet5()))) == plain.SITES


def test_plain_network_equals_fxharden_lenet5_without_noise(setup):
    net, ref, x, _ = setup
    with torch.no_grad():
        torch.testing.assert_close(ref(x), net(x))


def test_per_site_and_global_accuracies_agree(plain, setup):
    net, ref, x, y = setup
    opts = FitOptions(n_boot=0)
    per_site = sweep(net, (x, y), sigmas=[SIGMA], repeats=REPEATS, mode=SweepMode.PER_LAYER, device="cpu",
                     batch_size=N, fit_options=opts)
    fx = {p.site: float(p.mean) for p in per_site.points if p.sigma == SIGMA}
    ref_acc = {site: plain.correct_counts(ref, x, y, [SIGMA], REPEATS, sites=[site]).mean() / N
               for site in plain.SITES}
    assert set(fx) == set(ref_acc)
    bad = {s: (fx[s], ref_acc[s]) for s in plain.SITES if not _agree(fx[s], ref_acc[s], N * REPEATS)}
    assert not bad, f"per-site accuracy (fxharden, plain) disagree beyond binomial error: {bad}"
    # the check has power: the sites' sensitivities differ by far more than the tolerance
    assert max(ref_acc.values()) - min(ref_acc.values()) > 0.3

    sigmas = [0.05, 0.2]
    glob = sweep(net, (x, y), sigmas=sigmas, repeats=REPEATS, device="cpu", batch_size=N, fit_options=opts)
    fx_g = {p.sigma: float(p.mean) for p in glob.points}
    ref_g = plain.correct_counts(ref, x, y, sigmas, REPEATS).mean(1) / N
    for s, r in zip(sigmas, ref_g):
        assert _agree(fx_g[s], r, N * REPEATS), (s, fx_g[s], r)
    assert ref_g[0] > ref_g[1] + 0.1  # the global points lie on the drop, not on a plateau


def test_log_crossing_closed_form(plain):
    # a straight line in ln σ from 1.0 at σ = 0.1 to 0.0 at σ = 10 crosses 0.5 at σ = 1
    assert plain.log_crossing([0.1, 10.0], [1.0, 0.0], 0.5) == pytest.approx(1.0)
    # a quarter of the way down in accuracy is a quarter of the way in ln σ
    assert plain.log_crossing([0.01, 1.0, 100.0], [0.9, 0.8, 0.4], 0.7) == pytest.approx(10 ** 0.5)
    assert np.isnan(plain.log_crossing([0.1, 1.0], [0.9, 0.8], 0.5))
