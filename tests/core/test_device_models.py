"""Device models over time (PCM, CMO ReRAM) against closed forms written from IBM aihwkit's
equations: ``src/aihwkit/inference/noise/pcm.py`` (``PCMLikeNoiseModel``:
``apply_programming_noise_to_conductance``, ``generate_drift_coefficients``,
``apply_drift_noise_to_conductance``), ``src/aihwkit/inference/noise/reram.py``
(``ReRamCMONoiseModel``), ``src/aihwkit/inference/converter/conductance.py``
(``SinglePairConductanceConverter``, ``SingleDeviceConductanceConverter``) and
``src/aihwkit/inference/compensation/drift.py`` (``GlobalDriftCompensation``).

Statistics use 10^6 weights in all (a law over four times: a quarter at each) drawn from the
module's own streams; tolerances are 5 standard
errors of the estimate (mean: s/sqrt(n); standard deviation: s/sqrt(2n))."""

import dataclasses
import math

import pytest
import torch
from torch import nn

import fxharden
from fxharden import HardenConfig, WeightNoise
from fxharden.core.config import config_from_dict, config_to_dict
from fxharden.core.noise import PCM, Draw, Noise, ReRamCMO, Role, StuckAt, noise_off
from fxharden.core.noise.streams import CounterStream, EagerStream
from fxharden.core.noise.verbs import noise_modules

N = 1_000_000
TIMES = (1.0, 3600.0, 86400.0, 365 * 86400.0)
"""1 s, 1 h, 1 day, 1 year after programming."""
PHI = torch.distributions.Normal(0.0, 1.0).cdf


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def levels(values, n=N):
    """A weight of ``n`` elements in equal blocks at ``values`` (``max|w|`` = 1: ĝ = value)."""
    return torch.tensor(values, dtype=torch.float32).repeat_interleave(n // len(values))


def noisy(model, x, sigma=1.0, seed=0):
    n = Noise("layer.weight", seed=seed, kind=model)
    n.set_sigma(sigma)
    with torch.no_grad():
        return n(x.clone()).double()


def close(value, want, se):
    assert abs(value - want) <= 5 * se, f"{value} vs {want} (5 standard errors: {5 * se})"


def folded_drift_mean(mu, sd, big_l):
    """``E[exp(-L |Y|)]``, ``Y ~ N(mu, sd²)``: the mean drift factor ``((t + t0)/t0)^(-ν)``
    with ``ν = |mu + sd ε|``, ``L = ln((t + t0)/t0)`` (the folded normal's moment generating
    function)."""
    a, b = torch.tensor(mu / sd - big_l * sd), torch.tensor(-mu / sd - big_l * sd)
    return math.exp(big_l ** 2 * sd ** 2 / 2) * (math.exp(-big_l * mu) * float(PHI(a))
                                                 + math.exp(big_l * mu) * float(PHI(b)))


# ---------------------------------------------------------------- the published constants


def one(model, g_hat, e):
    """The weight of one PCM element at ĝ = ``g_hat`` (``max|w|`` = 1 by a second element at
    1) with the normals ``e`` of its positive device (the negative device's are 0)."""
    x = torch.tensor([g_hat, 1.0])
    eps = torch.zeros(6, 2)
    eps[0:3, 0] = torch.tensor(e)
    return float(model.apply(x, eps, 1.0)[0])


@pytest.mark.parametrize("g_hat, sig_prog", [(0.0, 0.26348), (0.5, 0.952705), (1.0, 1.05538)])
def test_pcm_programming_noise_polynomial_at_published_points(g_hat, sig_prog):
    """σ_prog(ĝ) = 0.26348 + 1.9650 ĝ - 1.1731 ĝ² µS (``PCMLikeNoiseModel.__init__``,
    ``prog_coeff``) at g_max = 25 µS: a draw of +1 moves the weight by σ_prog / 25."""
    assert one(PCM(), g_hat, [1.0, 0.0, 0.0]) - g_hat == pytest.approx(sig_prog / 25.0, rel=1e-5)
    half = PCM(g_max=12.5)  # the polynomial is in µS at the 25 µS reference: scaled by g_max / 25
    assert one(half, g_hat, [1.0, 0.0, 0.0]) - g_hat == pytest.approx(sig_prog / 25.0, rel=1e-5)


@pytest.mark.parametrize("g_hat, mu_nu, sd_nu", [
    (1.0, 0.049, 0.008),        # -0.0155 ln 1 + 0.0244 = 0.0244 clipped up to 0.049; -0.0059 up to 0.008
    (0.1, 0.060090, 0.022882),  # inside both clips
    (0.01, 0.095780, 0.045),    # sd: 0.051664 clipped down to 0.045
    (0.001, 0.1, 0.045),        # mu: 0.131470 clipped down to 0.1
])
def test_pcm_drift_coefficients_at_published_points(g_hat, mu_nu, sd_nu):
    """ν = |μ_ν + σ_ν ε| with μ_ν = clip(-0.0155 ln ĝ + 0.0244, 0.049, 0.1), σ_ν =
    clip(-0.0125 ln ĝ - 0.0059, 0.008, 0.045) (``generate_drift_coefficients``); the weight at
    t drifts by ((t + t0) / t0)^(-ν), t0 = 20 s."""
    model = PCM(t=86400.0, compensation=False, read_noise_scale=0.0)
    factor = (86420.0 / 20.0)
    assert one(model, g_hat, [0.0, 0.0, 0.0]) / g_hat == pytest.approx(factor ** -mu_nu, rel=1e-5)
    assert one(model, g_hat, [0.0, 1.0, 0.0]) / g_hat == pytest.approx(factor ** -(mu_nu + sd_nu), rel=1e-5)


@pytest.mark.parametrize("g_hat, q_s", [(1.0, 0.0088), (0.25, 0.021668), (0.01, 0.175575), (0.001, 0.2)])
def test_pcm_read_noise_at_published_points(g_hat, q_s):
    """σ_read = q_s sqrt(ln((t + t0 + t_read) / (2 t_read))), q_s = min(0.2, 0.0088 /
    max(1e-3, ĝ^0.65)), t_read = 250 ns, relative to |g| (``apply_drift_noise_to_conductance``)."""
    model = PCM(t=3600.0, compensation=False, drift_scale=0.0)
    law = math.sqrt(math.log((3620.0 + 250e-9) / 500e-9))
    assert one(model, g_hat, [0.0, 0.0, 1.0]) / g_hat - 1 == pytest.approx(q_s * law, rel=1e-4)


def test_cmo_constants_at_published_points():
    """``ReRamCMONoiseModel``: σ_prog = 0.00081107 + 0.00106879 g µS (0.2 % acceptance),
    mean shift -0.08900206 ln t µS, spread 0.04201137 ln t + 0.41183342 µS; g in [9, 88.2] µS."""
    x = torch.tensor([-1.0, 1.0])  # g = 9 and 88.199997 µS: r = 79.199997 / 2 per unit weight
    r = (88.199997 - 9.0) / 2.0

    def moved(model, e):
        eps = torch.zeros(3, 2)
        eps[:, 1] = torch.tensor(e)
        return (float(model.apply(x, eps, 1.0)[1]) - 1.0) * r

    assert moved(ReRamCMO(), [-1.0, 0.0, 0.0]) == pytest.approx(-(0.00081107 + 0.00106879 * 88.199997), rel=1e-3)
    assert moved(ReRamCMO(acceptance_range=2.0), [-1.0, 0, 0]) == pytest.approx(
        -(0.0112185391 + 0.01129027418 * 88.199997), rel=1e-4)
    day = ReRamCMO(t=86400.0, compensation=False, read_noise_scale=0.0)
    lt = math.log(86400.0)
    assert moved(day, [0.0, 0.0, 0.0]) == pytest.approx(-0.08900206 * lt, rel=1e-4)
    assert moved(day, [0.0, -1.0, 0.0]) == pytest.approx(-0.08900206 * lt - (0.04201137 * lt + 0.41183342), rel=1e-4)


# ---------------------------------------------------------------- statistics at 10^6 weights


def test_pcm_programming_noise_std_follows_the_polynomial():
    """At t = 0 only programming noise: the weight's deviation is (Δg+ - Δg-) / r with Δg+ ~
    N(0, σ_prog(ĝ)²) and g- = max(0, c0 ε) (its device targets 0), so its std is
    sqrt(σ_prog² + c0² (1/2 - 1/(2π))) / 25 and its mean -c0 / sqrt(2π) / 25."""
    values = (0.25, 0.5, 0.75, 1.0)
    x = levels(values)
    d = (noisy(PCM(), x) - x.double()).view(len(values), -1)
    c0 = 0.26348
    for g_hat, row in zip(values, d):
        sig = 0.26348 + 1.9650 * g_hat - 1.1731 * g_hat ** 2
        want = math.sqrt(sig ** 2 + c0 ** 2 * (0.5 - 0.5 / math.pi)) / 25.0
        close(float(row.std()), want, want / math.sqrt(2 * row.numel()))
        close(float(row.mean()), -c0 / math.sqrt(2 * math.pi) / 25.0, want / math.sqrt(row.numel()))


def test_pcm_mean_drift_follows_the_power_law_and_decreases_with_time():
    """Without programming and read noise and without compensation, w(t) / w = ((t + t0) /
    t0)^(-ν), ν = |μ_ν + σ_ν ε|: its mean is the folded normal's moment generating function,
    at every published time, and it falls monotonically with t."""
    x = levels((0.1, 1.0), N // len(TIMES))
    coeff = {0.1: (0.060090, 0.022882), 1.0: (0.049, 0.008)}
    means = []
    for t in TIMES:
        model = PCM(t=t, compensation=False, prog_noise_scale=0.0, read_noise_scale=0.0)
        ratio = (noisy(model, x) / x.double()).view(2, -1)
        big_l = math.log((t + 20.0) / 20.0)
        for g_hat, row in zip((0.1, 1.0), ratio):
            close(float(row.mean()), folded_drift_mean(*coeff[g_hat], big_l), float(row.std()) / math.sqrt(row.numel()))
        means.append(float(ratio.mean()))
    assert all(a > b for a, b in zip(means, means[1:])) and means[-1] < 0.5


def test_pcm_read_noise_std_grows_with_the_log_law():
    """Without programming noise and drift, w(t) / w - 1 = q_s(ĝ) sqrt(ln((t + t0 + t_read) /
    (2 t_read))) ε: its std at each published time, growing with t."""
    x = levels((0.25, 1.0), N // len(TIMES))
    stds = []
    for t in TIMES:
        model = PCM(t=t, compensation=False, prog_noise_scale=0.0, drift_scale=0.0)
        rel = (noisy(model, x) / x.double() - 1).view(2, -1)
        law = math.sqrt(math.log((t + 20.0 + 250e-9) / 500e-9))
        for q_s, row in zip((0.0088 / 0.25 ** 0.65, 0.0088), rel):
            close(float(row.std()), q_s * law, q_s * law / math.sqrt(2 * row.numel()))
        stds.append(float(rel.std()))
    assert all(a < b for a, b in zip(stds, stds[1:]))


def test_pcm_global_drift_compensation_restores_the_mean_weight():
    """After a year of drift the mean |w| falls by 40 % or more; compensated it is the mean |w|
    just after programming (one scale per layer, ``GlobalDriftCompensation``), which differs
    from the target's only by the zero devices' mean, c0 / sqrt(2π) µS (0.42 % of g_max): stated
    tolerance 5 standard errors of the programmed mean."""
    x = levels((0.2, 0.4, 0.6, 0.8, 1.0))
    year = 365 * 86400.0
    programmed = float(x.double().mean()) - 0.26348 / math.sqrt(2 * math.pi) / 25.0
    se = 1.06 / 25.0 / math.sqrt(x.numel())
    plain = noisy(PCM(t=year, compensation=False), x)
    assert float(plain.abs().mean()) < 0.6 * programmed
    comp = noisy(PCM(t=year), x)
    close(float(comp.abs().mean()), programmed, se)


def test_cmo_programming_and_relaxation_follow_their_laws():
    """CMO ReRAM: at t = 0 the conductance's std is c0 + c1 g (0.2 % acceptance: in weight
    units / r); after a day without read noise its mean has moved by m ln t µS and its
    spread is sqrt(σ_prog² + (a ln t + b)²) µS (mid-range levels: the clip to [g_min, g_max]
    does not act)."""
    r = (88.199997 - 9.0) / 2.0  # weights in [-1, 1]
    x = levels((-1.0, -0.5, 0.5, 1.0))
    g = (x.view(4, -1)[:, 0].double() + 1) * r + 9.0
    sig_prog = 0.0112185391 + 0.01129027418 * g  # 2 % acceptance: large enough to measure
    d = ((noisy(ReRamCMO(acceptance_range=2.0), x) - x.double()) * r).view(4, -1)
    for s, row in zip(sig_prog.tolist(), d):
        close(float(row.std()), s, s / math.sqrt(2 * row.numel()))
    lt = math.log(86400.0)
    day = ReRamCMO(t=86400.0, acceptance_range=2.0, compensation=False, read_noise_scale=0.0)
    d = ((noisy(day, x) - x.double()) * r).view(4, -1)
    for s, row in zip(sig_prog[1:3].tolist(), d[1:3]):
        spread = math.sqrt(s ** 2 + (0.04201137 * lt + 0.41183342) ** 2)
        close(float(row.mean()), -0.08900206 * lt, spread / math.sqrt(row.numel()))
        close(float(row.std()), spread, spread / math.sqrt(2 * row.numel()))


# ---------------------------------------------------------------- σ = 0, time as a model value, draws


@pytest.mark.parametrize("model", [PCM(), PCM(t=86400.0), PCM(t=1.0, compensation=False), ReRamCMO(),
                                   ReRamCMO(t=3.15e7)], ids=repr)
def test_sigma_zero_is_an_exact_no_op_eager_and_compiled(model):
    x = torch.randn(64, 33, generator=torch.Generator().manual_seed(0))
    n = Noise("layer.weight", kind=model)
    n.set_sigma(0.0)
    assert torch.equal(n(x), x)
    assert torch.equal(torch.compile(n, backend="eager", fullgraph=True)(x), x)
    n.set_sigma(1.0)
    with noise_off(n):
        assert torch.equal(n(x), x)
    assert not torch.equal(n(x), x)


def test_set_model_changes_the_time_of_a_compiled_site():
    """The compiled path follows a model replaced by ``set_model``: its mean drift is the
    closed form at the new time, not the one it was first traced with."""
    x = levels((1.0,), n=100_000)
    n = Noise("layer.weight", kind=PCM(t=1.0, compensation=False, prog_noise_scale=0.0, read_noise_scale=0.0))
    n.set_sigma(1.0)
    compiled = torch.compile(n, backend="eager", fullgraph=True)
    for t in (1.0, 365 * 86400.0):
        n.set_model(dataclasses.replace(n.model, t=t))
        ratio = (compiled(x) / x).double()
        close(float(ratio.mean()), folded_drift_mean(0.049, 0.008, math.log((t + 20.0) / 20.0)),
              float(ratio.std()) / math.sqrt(ratio.numel()))


def test_set_model_refuses_what_is_not_a_model_or_out_of_its_range():
    n = Noise("layer.weight", kind=PCM())
    n.set_sigma(2.0)
    with pytest.raises(TypeError, match="set_model takes a NoiseModel value"):
        n.set_model("pcm")
    with pytest.raises(ValueError, match=r"stuck noise takes a fault probability in \[0, 1\], got 2.0"):
        n.set_model(StuckAt())
    assert n.model == PCM()


@pytest.mark.parametrize("stream", ["eager", "counter"])
@pytest.mark.parametrize("kind", [Draw.NORMAL3, Draw.NORMAL6])
def test_several_normals_per_element_are_independent_standard_normals(stream, kind):
    shape = (200_000,)
    if stream == "eager":
        eps = EagerStream("site", 0).draw(kind, shape, torch.device("cpu"), torch.float32)
    else:
        eps = CounterStream(torch.tensor(12345), torch.tensor(0)).draw(kind, shape, torch.device("cpu"), torch.float32)
    e = torch.stack([eps[k] for k in range(kind.count)]).double()
    se = 1 / math.sqrt(shape[0])
    for k in range(kind.count):
        close(float(e[k].mean()), 0.0, se)
        close(float(e[k].std()), 1.0, se / math.sqrt(2))
    corr = torch.corrcoef(e)
    off = corr[~torch.eye(kind.count, dtype=torch.bool)]
    assert float(off.abs().max()) < 5 * se


@pytest.mark.parametrize("bad, message", [
    (dict(t=-1.0), r"t must be a finite number in \[0, inf\]"),
    (dict(g_max=0.0), r"g_max must be a finite number in \(0, inf\]"),
    (dict(compensation=1), "compensation must be True or False"),
])
def test_pcm_refuses_bad_fields(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        PCM(**bad)


@pytest.mark.parametrize("bad, message", [
    (dict(acceptance_range=2e-2), r"acceptance_range must be one of \[0.2, 2.0\]"),
    (dict(g_min=90.0), "g_min must be below g_max"),
    (dict(t=1e-7), "t must be 0 or at least t_read"),
])
def test_cmo_refuses_bad_fields(bad, message):
    with pytest.raises(ValueError, match=message):
        ReRamCMO(**bad)


def test_one_sigma_per_batch_group_draws_one_weight_per_group_and_is_refused_compiled():
    """Eagerly each group gets its own weight (σ 0: the weight itself); compiled, per-group σ
    runs only for models of one normal per element, and the refusal says what to do."""
    w = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    n = Noise("layer.weight", kind=PCM(t=3600.0))
    n.set_sigma([0.0, 1.0, 1.0])
    clean, a, b = n.draw_weights(w)
    assert clean is w and not torch.equal(a, w) and not torch.equal(a, b)
    with pytest.raises(NotImplementedError, match="one normal per element.*single sigma under torch.compile"):
        torch.compile(n, backend="eager")(w)


def test_a_hardened_layer_takes_a_device_model_as_a_weight_noise_link():
    """``HardenConfig(weight_noise=(WeightNoise(PCM(t=...), 1.0),))``: off, the hardened model
    is the plain one exactly; on, the layer's weight drifts by the closed form at the
    configured time, and at a new time after ``set_model``; the config file keeps the model."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 3)).eval()
    with torch.no_grad():
        plain[0].weight.copy_(torch.randn(1000, 1000).sign() * 0.1)  # every |w| = max|w|: ĝ = 1
    drift_only = PCM(t=86400.0, compensation=False, prog_noise_scale=0.0, read_noise_scale=0.0)
    cfg = HardenConfig(quant=None, weight_noise=(WeightNoise(drift_only, 1.0),))
    assert config_to_dict(cfg)["weight_noise"][0]["model"] == {
        "name": "pcm", "t": 86400.0, "compensation": False, "prog_noise_scale": 0.0, "read_noise_scale": 0.0}
    assert config_from_dict(config_to_dict(cfg)) == cfg
    hm = fxharden.harden(plain, config=cfg)
    x = torch.randn(8, 1000)
    with torch.no_grad(), noise_off(hm):
        assert torch.equal(hm(x), plain(x))
    layer = hm.get_submodule("0")
    for t in (86400.0, 365 * 86400.0):
        if t != 86400.0:
            for mod in noise_modules(hm, Role.WEIGHTS).values():
                mod.set_model(dataclasses.replace(mod.model, t=t))
        with torch.no_grad():
            ratio = (layer.hardened_weight() / plain[0].weight).double()
        close(float(ratio.mean()), folded_drift_mean(0.049, 0.008, math.log((t + 20.0) / 20.0)),
              float(ratio.std()) / math.sqrt(ratio.numel()))
