"""Sweeps of other metrics than top-1: the measured floor of per-layer sweeps, metrics that give
non-finite values, targets that are not class indices, and the raw and fit scales of a result."""

import math

import pytest
import torch
from torch import nn

import fxharden
from fxharden.cli.sweep import _print_result
from fxharden.measure.midpoint import FitStatus


class Logits(nn.Module):
    """Its input is its logits: under noise that swamps them, the argmax is a uniform guess."""

    def forward(self, x):
        return x * 1.0


torch.manual_seed(0)
N, V = 2000, 4
LOGITS = torch.randn(N, V) * 3
LABELS = torch.where(torch.rand(N) < 0.8, LOGITS.argmax(1), torch.randint(0, V, (N,)))
CLEAN = (LOGITS.argmax(1) == LABELS).double().mean().item()
CLEAN_400 = (LOGITS[:400].argmax(1) == LABELS[:400]).double().mean().item()
FAST = dict(repeats=2, batch_size=500, device="cpu")


def hits(out, y):
    return (out.argmax(1) == y).float()


def test_per_layer_floor_is_measured_with_noise_at_every_site():
    res = fxharden.sweep(Logits(), (LOGITS, LABELS), metric=hits, mode=fxharden.SweepMode.PER_LAYER,
                         sigmas=[0.01, 1.0, 100.0], **FAST)
    info = res.metric_info
    assert info["floor_measured"] and info["clean_values"][0] == pytest.approx(CLEAN)
    # noise 100x the largest sigma swamps logits of std 3: argmax uniform over V classes, so the
    # floor is 1/V within the binomial error of 2 repeats x N samples
    assert info["floor"] == pytest.approx(1 / V, abs=4 * math.sqrt((1 / V) * (1 - 1 / V) / (2 * N)))
    assert res.floor_raw == info["floor"] and res.clean_raw == pytest.approx(CLEAN)
    assert len(res.sites) >= 1
    for site in res.sites:
        pts = res.site_points(site)
        small = pts[0]  # sigma 0.01: the clean accuracy, so score (raw - floor) / (clean - floor) ~ 1
        assert small.raw_mean == pytest.approx(CLEAN, abs=0.01)
        assert small.mean == pytest.approx((small.raw_mean - info["floor"]) / (CLEAN - info["floor"]), abs=1e-9)
        assert small.mean > 0.97 and pts[-1].mean < 0.1
        assert res.per_site[site].status is not FitStatus.AT_CHANCE
    glob = fxharden.sweep(Logits(), (LOGITS, LABELS), metric=hits, sigmas=[0.01, 1.0, 100.0], **FAST)
    assert glob.metric_info["floor"] == info["floor"]  # one floor for both modes


def _batches():
    """Two batches; label V - 1 (and so a NaN of ``nan_at_last_class``) only in the second."""
    y = LABELS[:200].clamp_max(V - 2)
    y2 = y.clone()
    y2[7] = V - 1
    return [(LOGITS[:200], y), (LOGITS[200:400], y2)]


def nan_at_last_class(out, y):
    return torch.where(y == V - 1, torch.full_like(y, math.nan, dtype=torch.float32), hits(out, y))


def all_nan(out, y):
    return torch.full((len(y),), math.nan)


def all_inf(out, y):
    return torch.full((len(y),), math.inf)


def nan_under_large_noise(out, y):
    return torch.where(out.abs().amax(1) > 50, math.nan, hits(out, y).double())


STATED_FLOOR = fxharden.Metric("stated_floor", nan_under_large_noise, ideal=1.0, floor=1 / V, logits=False)


@pytest.mark.parametrize("metric, message", [
    (nan_at_last_class, r"'nan_at_last_class' returned 1 NaN per-sample value\(s\) in batch 1 of the evaluation "
                        r"data \(the clean pass \(sigma 0\)\)"),
    (all_nan, r"'all_nan' returned 200 NaN per-sample value\(s\) in batch 0 of the evaluation data \(the clean"),
    (all_inf, r"'all_inf' returned 200 infinite per-sample value\(s\) in batch 0 .*make the metric return a "
              r"finite score for every sample"),
    (nan_under_large_noise, r"'nan_under_large_noise' returned \d+ NaN per-sample value\(s\) in batch 0 of the "
                            r"evaluation data \(the floor: global sigma 10000, repeat 0\)"),
    (STATED_FLOOR, r"'stated_floor' returned \d+ NaN per-sample value\(s\) in batch 0 of the evaluation data "
                   r"\(global sigma 100, repeat 0\)"),
], ids=["one_nan", "all_nan", "all_inf", "nan_at_the_floor", "nan_at_a_point"])
def test_non_finite_metric_values_are_refused(metric, message):
    with pytest.raises(ValueError, match=message):
        fxharden.sweep(Logits(), _batches(), metric=metric, sigmas=[0.01, 1.0, 100.0], repeats=2, device="cpu")


@pytest.mark.parametrize("metric", ["top1", "top5", "loss"])
def test_float_targets_are_refused_for_metrics_of_class_indices(metric):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6)).eval()
    f0 = torch.rand(64) * 300 + 80  # regression targets in Hz
    with pytest.raises(ValueError, match=rf"metric '{metric}' compares the outputs with class indices, but the "
                                        r"targets of batch 0 are torch.float32 .*fxharden.Metric"):
        fxharden.sweep(net, [(torch.randn(64, 4), f0)], metric=metric, sigmas=[0.1, 1.0], repeats=1, device="cpu")


def test_explicit_floor_metric_on_regression_targets():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)).eval()
    x = torch.randn(256, 4)
    t = net(x).squeeze(-1).detach() + 0.05 * torch.randn(256)
    floor = float((t - t.mean()).abs().mean())
    metric = fxharden.Metric("abs_error", lambda out, y: (out.squeeze(-1) - y).abs(), higher_is_better=False,
                             ideal=0.0, floor=floor)
    res = fxharden.sweep(net, [(x, t)], metric=metric, sigmas=[0.01, 0.1, 1.0, 10.0], repeats=2, device="cpu")
    clean = (net(x).squeeze(-1) - t).abs().double().mean().item()
    assert res.clean_raw == pytest.approx(clean, rel=1e-5) and res.floor_raw == floor
    assert res.clean_fit == res.clean_accuracy == pytest.approx(1 - clean / floor, rel=1e-5)
    sigmas, raw = res.raw_curve()
    assert list(sigmas) == [0.01, 0.1, 1.0, 10.0] and raw[-1] > raw[0] > clean  # the error grows with noise
    assert res.curve()[1] == pytest.approx([min(max(1 - v / floor, 0.0), 1.0) for v in raw], abs=1e-9)


def test_raw_and_fit_scales_of_a_result_and_its_file(tmp_path):
    res = fxharden.sweep(Logits(), (LOGITS[:400], LABELS[:400]), metric=hits, sigmas=[0.3, 3.0, 30.0], out=tmp_path,
                         **FAST)
    clean = CLEAN_400
    assert res.clean_raw == pytest.approx(clean) and res.clean_fit == 1.0  # ideal = the clean value
    point = res.site_points()[0]
    assert point.raw_values.shape == point.fit_scores.shape == (1, 2)
    assert point.fit_scores == pytest.approx((point.raw_values - res.floor_raw) / (clean - res.floor_raw))
    back = fxharden.load_result(tmp_path)
    assert back.clean_raw == res.clean_raw and back.floor_raw == res.floor_raw
    assert list(back.raw_curve()[1]) == list(res.raw_curve()[1])
    top1 = fxharden.sweep(Logits(), (LOGITS[:400], LABELS[:400]), sigmas=[0.3, 3.0], **FAST)
    assert top1.clean_raw == top1.clean_fit == pytest.approx(clean) and top1.floor_raw == top1.chance == 1 / V


def test_cli_table_prints_the_raw_values(capsys):
    res = fxharden.sweep(Logits(), (LOGITS[:400], LABELS[:400]), metric=hits, mode="per_layer",
                         sigmas=[0.3, 3.0, 30.0], **FAST)
    _print_result(res, {})
    printed = capsys.readouterr().out
    site = res.sites[0]
    raw = ", ".join(f"{s:.3g}: {v:.4g}" for s, v in zip(*res.raw_curve(site)))
    assert "hits (raw) at σ" in printed and raw in printed  # e.g. "0.3: 0.8113, 3: 0.5388, 30: 0.2938"
    assert f"hits: clean {CLEAN_400:.4g}" in printed


def test_metric_is_public():
    from fxharden.measure.scores import Metric

    assert fxharden.Metric is Metric and "Metric" in fxharden.__all__
