"""Each noise model's formula is written once and both execution paths use it: fed the very
same draw ε, the eager path (in place, float σ) and the compiled path (``torch.compile``,
functional, σ a tensor) give the same output, for every registered model, with one σ, one σ
per batch group and shared draws; and where one path refuses (an uncalibrated relative site,
a batch that does not split into the groups) the other refuses with the same error.

The reference is the model's closed form computed here in float64 from ε (an independent
eager computation), not the code's output."""

import math

import pytest
import torch

import fxharden.core.noise.module as noise_module
from device_reference import cmo_reference, pcm_reference
from fxharden.core.noise import (MODELS, PCM, Additive, Draw, GroupDimError, LogNormal, Multiplicative, Noise, OutNoise, ReRamCMO,
                                 Relative, StuckAt, noise_model)
from fxharden.core.noise_models import NoiseKind

RMS = 0.75

MODELS_UNDER_TEST = [Additive(), Additive(of_max=True), Additive(of_max=True, per_channel=True), Relative(),
                     Multiplicative(), LogNormal(), StuckAt(zero_fraction=0.3), OutNoise(), OutNoise(per_channel=True),
                     PCM(), PCM(t=86400.0), PCM(t=3.15e7, compensation=False, g_max=10.0),
                     ReRamCMO(), ReRamCMO(t=86400.0, acceptance_range=2.0), ReRamCMO(t=3600.0, compensation=False)]
"""One row per model (and per parameter that changes the formula): a new model needs a row."""
ON_ACTIVATIONS = [m for m in MODELS_UNDER_TEST if m.draw is Draw.NORMAL and not m.channelwise]
"""The models that take batch groups along an activation's batch dimension (per-channel weight
noise acts on weights only: a weight's groups are separate copies, ``draw_weights``)."""
CHANNEL_DIM = 0
"""The output-channel axis given to per-channel models (``Noise.set_channel_dim``)."""


def out_scale(last):
    """The output scale given to output noise: per channel along the last dim, or one value."""
    return torch.linspace(0.5, 1.5, last, dtype=torch.float64)


def closed_form(model, x, eps, sigma):
    """``y`` from the model's documented formula, in float64 (sigma broadcast against x)."""
    x, s = x.double(), sigma.double() if torch.is_tensor(sigma) else sigma
    if isinstance(model, StuckAt):
        u = [e.double() for e in eps]
        peak = x.abs().max()
        value = torch.where(u[2] < model.zero_fraction, torch.zeros_like(x), torch.where(u[1] < 0.5, peak, -peak))
        return torch.where(u[0] < s, value, x)
    if isinstance(model, PCM):
        return pcm_reference(model, x, eps, s)
    if isinstance(model, ReRamCMO):
        return cmo_reference(model, x, eps, s)
    e = eps.double()
    if isinstance(model, Additive) and model.per_channel:  # max over each slice along CHANNEL_DIM
        rows = x.abs().movedim(CHANNEL_DIM, 0).flatten(1).max(1).values
        return x + s * e * rows.view(-1, *[1] * (x.dim() - 1)).movedim(0, CHANNEL_DIM)
    if isinstance(model, Additive):
        return x + s * e * (x.abs().max() if model.of_max else 1.0)
    if isinstance(model, OutNoise):
        return x + s * e * (out_scale(x.shape[-1]) if model.per_channel else RMS)
    if isinstance(model, Relative):
        return x + s * RMS * e
    if isinstance(model, Multiplicative):
        return x * (1 + s * e)
    if isinstance(model, LogNormal):
        return x * torch.exp(s * e)
    raise AssertionError(f"no closed form for {model!r}: add it here")


class FixedEager:
    """An eager stream that hands out the given draws in order."""

    def __init__(self, draws):
        self.draws = list(draws)

    def draw(self, kind, shape, device, dtype, slot=None):
        d = self.draws.pop(0)
        assert tuple(d.shape[-len(shape):]) == tuple(shape)
        return d.clone()  # the eager path consumes its draw


COMPILED_DRAW = None  # a global, so that Dynamo reads it as an input of the graph


class FixedCounter:
    """A compiled stream whose every draw is ``COMPILED_DRAW``."""

    def __init__(self, key, calls):
        pass

    def draw(self, kind, shape, device, dtype):
        return COMPILED_DRAW

    def normal(self, shape, device, dtype):
        return COMPILED_DRAW


def make(model, sigma, draws=None, last=5):
    n = Noise("site", kind=model)
    n.set_sigma(sigma, draws=draws)
    if model.needs_rms:
        n.set_rms(RMS)
    if model.channelwise:
        n.set_channel_dim(CHANNEL_DIM)
    if model.needs_out_scale:
        n.set_out_scale(out_scale(last) if model.per_channel else RMS)
    return n


def draw_for(model, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model.draw is Draw.UNIFORM3:
        return torch.rand((3,) + tuple(shape), generator=g)
    if model.draw.count > 1:
        return torch.randn((model.draw.count,) + tuple(shape), generator=g)
    return torch.randn(shape, generator=g)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def run_both(n, x, eager_draws, compiled_draw, monkeypatch):
    """The eager and the compiled (``backend="eager"``) output of ``n`` on ``x``."""
    n.stream = FixedEager(eager_draws)
    with torch.no_grad():
        eager = n(x.clone())
    monkeypatch.setattr(noise_module, "CounterStream", FixedCounter)
    monkeypatch.setitem(globals(), "COMPILED_DRAW", compiled_draw)
    with torch.no_grad():
        compiled = torch.compile(n, backend="eager", fullgraph=True)(x.clone())
    return eager, compiled


def test_every_registered_model_has_a_row():
    assert {type(m) for m in MODELS_UNDER_TEST} == set(MODELS.values())
    assert {k.value for k in NoiseKind} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS_UNDER_TEST, ids=repr)
@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_one_sigma_same_draw_same_output_on_both_paths(model, sigma, monkeypatch):
    x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(1))
    eps = draw_for(model, x.shape)
    eager, compiled = run_both(make(model, sigma), x, [eps], eps, monkeypatch)
    want = closed_form(model, x, eps, sigma)
    torch.testing.assert_close(eager.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eager, compiled, rtol=1e-6, atol=1e-6)
    if sigma == 0:
        assert torch.equal(eager, x) and torch.equal(compiled, x)


@pytest.mark.parametrize("model", ON_ACTIVATIONS, ids=repr)
def test_groups_with_shared_draws_same_draw_same_output_on_both_paths(model, monkeypatch):
    """Four groups along dim 1, draws [0, 1, 0, 2]: group r takes draw d[r] scaled by sigma[r]."""
    sigma, draws = [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 2]
    x = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(2))
    eps = [draw_for(model, (3, 2, 5), seed=k) for k in range(3)]
    n = make(model, sigma, draws)
    n.batch_dim = 1
    by_group = torch.stack(eps + [torch.full_like(eps[0], math.nan)], 1)  # (3, groups, 2, 5): draw k in group k
    eager, compiled = run_both(n, x, eps, by_group, monkeypatch)
    want = torch.cat([closed_form(model, x[:, 2 * r:2 * r + 2], eps[d], s)
                      for r, (s, d) in enumerate(zip(sigma, draws))], 1)
    torch.testing.assert_close(eager.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model", MODELS_UNDER_TEST, ids=repr)
def test_zero_input_gives_the_same_output_on_both_paths(model, monkeypatch):
    """A degenerate tensor (all zeros: max|x| 0, nothing to scale) is left as it is."""
    x = torch.zeros(4, 6)
    eps = draw_for(model, x.shape)
    eager, compiled = run_both(make(model, 0.5, last=6), x, [eps], eps, monkeypatch)
    want = closed_form(model, x, eps, 0.5)
    torch.testing.assert_close(eager.double(), want)
    torch.testing.assert_close(compiled.double(), want)


def test_uncalibrated_relative_site_raises_the_same_error_on_both_paths():
    n = Noise("site", kind="relative")
    n.set_sigma(0.1)
    x = torch.randn(4, 6)
    with pytest.raises(RuntimeError, match=r"relative noise at site 'site' needs.*calibrate_noise") as eager:
        n(x)
    with pytest.raises(RuntimeError, match=r"relative noise at site 'site' needs.*calibrate_noise") as compiled:
        torch.compile(n, backend="eager")(x)
    assert str(compiled.value) == str(eager.value)
    n.set_rms(RMS)  # calibrated: both run, and the compiled one is not stuck in its refusal
    assert torch.isfinite(torch.compile(n, backend="eager")(x)).all()


@pytest.mark.parametrize("model", ON_ACTIVATIONS, ids=repr)
def test_a_batch_that_does_not_split_into_the_groups_raises_the_same_error_on_both_paths(model):
    n = make(model, [0.1, 0.2, 0.3], last=6)
    x = torch.randn(4, 6)
    with pytest.raises(GroupDimError, match="does not split into 3 equal groups") as eager:
        n(x)
    with pytest.raises(GroupDimError, match="does not split into 3 equal groups") as compiled:
        torch.compile(n, backend="eager")(x)
    assert str(compiled.value) == str(eager.value)


def test_unknown_names_and_parameters_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown noise model 'gaussian'; choose one of: additive, lognormal, "
                                         "multiplicative, out_noise, pcm, relative, reram_cmo, stuck"):
        noise_model("gaussian")
    with pytest.raises(ValueError, match="Relative noise model takes no parameters, not of_max"):
        noise_model("relative", of_max=True)
    with pytest.raises(ValueError, match="zero_fraction must be a finite number in \\[0, 1\\]"):
        StuckAt(zero_fraction=1.5)
    assert noise_model(NoiseKind.STUCK, zero_fraction=0.25) == StuckAt(0.25)


def test_output_noise_without_its_scale_raises_the_same_error_on_both_paths():
    n = Noise("site", kind=OutNoise())
    n.set_sigma(0.1)
    x = torch.randn(4, 6)
    with pytest.raises(RuntimeError, match=r"out_noise noise at site 'site' needs the output scale") as eager:
        n(x)
    with pytest.raises(RuntimeError, match=r"out_noise noise at site 'site' needs the output scale") as compiled:
        torch.compile(n, backend="eager")(x)
    assert str(compiled.value) == str(eager.value)
    n.set_out_scale(RMS)  # set: both run
    assert torch.isfinite(torch.compile(n, backend="eager")(x)).all()


def test_per_channel_weight_noise_without_a_channel_axis_raises_the_same_error_on_both_paths():
    """On activations (no channel axis given) per-channel weight noise is refused, not applied
    per tensor."""
    n = Noise("site", kind=Additive(of_max=True, per_channel=True))
    n.set_sigma(0.1)
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"per-channel additive noise .* not on activations") as eager:
        n(x)
    with pytest.raises(ValueError, match=r"per-channel additive noise .* not on activations") as compiled:
        torch.compile(n, backend="eager")(x)
    assert str(compiled.value) == str(eager.value)
    with pytest.raises(ValueError, match=r"needs of_max=True"):
        Additive(per_channel=True)
