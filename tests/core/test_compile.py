"""torch.compile: hardened models are captured whole and changing the noise recompiles nothing.

Oracles: Dynamo's own ``explain`` (graph and graph-break counts), ``error_on_recompile``,
the standard normal distribution (moments, Kolmogorov–Smirnov), and the eager model (sigma 0).
Dynamo-level checks use the ``eager``/``aot_eager`` backends (the same capture and guards as
Inductor, without code generation: Inductor's C++ compile takes a minute on a busy 2-core
CPU); the statistics, the repeat and sigma 0 also run through Inductor in the ``slow`` tests."""

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

import fxharden
from fxharden.core.noise import Noise
from fxharden.zoo.networks import LeNet5

pytestmark = pytest.mark.skipif(not hasattr(torch, "compiler") or not hasattr(torch.compiler, "is_compiling"),
                                reason="torch.compiler.is_compiling needs torch >= 2.3")

N = 1 << 20


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def hardened_lenet(sigma=0.1, **kw):
    torch.manual_seed(0)
    hm = fxharden.harden(LeNet5(), bits=8, sigma=sigma, **kw).eval()
    x = torch.randn(8, 3, 32, 32)
    fxharden.calibrate_quantizers(hm, [x])
    return hm, x


def assert_one_graph(fn, *args):
    ex = torch._dynamo.explain(fn)(*args)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), [str(r.reason) for r in ex.break_reasons]


def assert_standard_normal(z):
    z = z.double().flatten()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.std()) - 1) < 5 / math.sqrt(2 * n)
    assert abs(float(stats.kurtosis(z.numpy()))) < 5 * math.sqrt(24 / n)  # excess kurtosis 0
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3


def corr(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


INDUCTOR = pytest.mark.skipif(
    os.environ.get("FXHARDEN_INDUCTOR_TESTS") != "1",
    reason="Inductor compiles C++ kernels for minutes on a 2-core CPU: FXHARDEN_INDUCTOR_TESTS=1 runs it "
           "(the same checks run on the aot_eager backend always)")


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=[pytest.mark.slow, INDUCTOR])])
def test_compiled_noise_is_iid_standard_normal_times_sigma_and_repeats_when_reseeded(backend):
    a, b = Noise("layer1", seed=3), Noise("layer2", seed=3)
    a.set_sigma(0.3)
    b.set_sigma(0.3)
    step = torch.compile(lambda x: (a(x), b(x)), backend=backend, fullgraph=True)
    x = torch.zeros(N)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = step(x)
        second = step(x)
        for z in first + second:
            assert_standard_normal(z / 0.3)
        bound = 5 / math.sqrt(N)  # correlation of independent samples: sd 1/sqrt(n)
        assert abs(corr(first[0], first[1])) < bound  # across sites
        assert abs(corr(first[0], second[0])) < bound  # across consecutive calls
        assert abs(corr(first[0][1:], first[0][:-1])) < bound  # across neighbouring elements
        for m in (a, b):
            m.reseed(3)
        again = step(x)
        assert all(torch.equal(u, v) for u, v in zip(again, first))  # bit for bit
        a.reseed(4)
        assert not torch.equal(step(x)[0], second[0])
        a.set_sigma(0.05)  # a new sigma: a buffer change, no recompilation
        assert abs(float(step(x)[0].std()) - 0.05) < 5 * 0.05 / math.sqrt(2 * N)
        a.set_sigma(0.0)
        y = torch.randn(N)
        assert torch.equal(step(y)[0], y)


def test_a_copy_restarts_the_compiled_stream_from_the_seed_like_the_eager_one():
    n = Noise("a", seed=2)
    n.set_sigma(0.5)
    x = torch.zeros(64)
    first = torch.compile(n, backend="eager", fullgraph=True)(x)
    torch.compile(n, backend="eager", fullgraph=True)(x)
    twin = copy.deepcopy(n)
    assert torch.equal(torch.compile(twin, backend="eager", fullgraph=True)(x), first)


@pytest.mark.parametrize("kind", ["multiplicative", "lognormal", "stuck"])
def test_compiled_weight_noise_models_follow_their_formulas(kind):
    n = Noise("w", seed=1, kind=kind)
    n.set_sigma(0.2)
    x = torch.full((N,), 1.5)
    x[0] = 3.0  # max|x|: no element equals a stuck-at value
    y = torch.compile(n, backend="eager", fullgraph=True)(x)
    if kind == "multiplicative":
        assert_standard_normal(((y / x - 1) / 0.2)[1:])
    elif kind == "lognormal":
        assert_standard_normal((torch.log(y / x) / 0.2)[1:])
    else:  # stuck-at: a share p of the elements replaced by 0 or ±max|x|
        stuck = y != x
        assert abs(float(stuck.double().mean()) - 0.2) < 5 * math.sqrt(0.2 * 0.8 / N)
        assert set(y[stuck].unique().tolist()) <= {0.0, 3.0, -3.0}


def test_hardened_lenet_is_one_graph_in_both_modes_and_sigma_and_seed_do_not_recompile():
    hm, x = hardened_lenet(weight_noise=fxharden.WeightNoiseConfig(kind="additive", sigma=0.02))
    with torch.no_grad():
        assert_one_graph(hm, x)
    hm.train()
    assert_one_graph(hm, x)
    hm.eval()
    cm = torch.compile(hm, backend="aot_eager")
    with torch.no_grad():
        cm(x)
        with torch._dynamo.config.patch(error_on_recompile=True):
            fxharden.set_noise(hm, 0.3)
            cm(x)
            fxharden.set_noise(hm, {s: 0.01 * i for i, s in enumerate(fxharden.noise_sites(hm))})
            fxharden.set_weight_noise(hm, 0.0)
            cm(x)
            fxharden.seed_noise(hm, 7)
            a = cm(x)
            fxharden.seed_noise(hm, 7)
            assert torch.equal(cm(x), a)


def test_compiled_output_at_sigma_0_equals_eager():
    hm, x = hardened_lenet(sigma=0.0)
    with torch.no_grad():
        assert torch.equal(torch.compile(hm, backend="aot_eager")(x), hm(x))


@pytest.mark.slow
@INDUCTOR
def test_inductor_output_at_sigma_0_is_close_to_eager():
    hm, x = hardened_lenet(sigma=0.0)
    with torch.no_grad():
        assert torch.allclose(torch.compile(hm)(x), hm(x), atol=1e-5, rtol=1e-5)  # Inductor may reorder sums


def test_a_compiled_training_step_gives_the_eager_gradients_at_sigma_0_and_noise_with_sigma():
    hm, x = hardened_lenet(sigma=0.0)
    hm.train()
    cm = torch.compile(hm, backend="aot_eager")
    cm(x).logsumexp(1).mean().backward()
    got = {n: p.grad.clone() for n, p in hm.named_parameters()}
    hm.zero_grad()
    hm(x).logsumexp(1).mean().backward()
    for n, p in hm.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-6), n
    fxharden.set_noise(hm, 0.5)
    with torch._dynamo.config.patch(error_on_recompile=True):
        noisy = cm(x)
        assert not torch.equal(noisy, hm(x).detach())
        noisy.sum().backward()


class _FunctionalDropout(nn.Module):
    """Code that differs between the modes: harden keeps one graph per mode."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.dropout(torch.relu(self.fc1(x)), 0.1, self.training))


def test_switching_modes_back_and_forth_compiles_once_per_mode():
    hm = fxharden.harden(_FunctionalDropout(), bits=None, sigma=0.1)
    cm = torch.compile(hm, backend="eager")
    x = torch.randn(4, 8)
    hm.train()
    cm(x)
    hm.eval()
    cm(x)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for mode in (True, False, True, False):
            hm.train(mode)
            cm(x)


def test_a_quantizer_still_calibrating_is_refused_under_compile_with_the_fix():
    hm = fxharden.harden(LeNet5(), bits=8, sigma=0.1).eval()  # the input quantizer calibrates
    with pytest.raises(Exception, match="calibrate_quantizers"):
        torch.compile(hm, backend="eager")(torch.randn(2, 3, 32, 32))


def test_batch_groups_under_compile_need_their_batch_dims_located_first():
    from fxharden.core.groups import ensure_batch_dims

    hm, x = hardened_lenet()
    fxharden.set_noise(hm, [0.1, 0.2])
    with pytest.raises(Exception, match="batch dimension is located: call fxharden.core.groups.ensure_batch_dims"):
        torch.compile(hm, backend="eager")(x)
    torch._dynamo.reset()
    ensure_batch_dims(hm, (x,), {})
    with torch.no_grad():
        out = torch.compile(hm, backend="eager")(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()


def test_a_hardened_vit_is_one_graph_in_both_modes():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=10)
    hm = fxharden.harden(model, bits=8, sigma=0.1).eval()
    x = torch.randn(2, 3, *model.default_cfg["input_size"][1:])
    fxharden.calibrate_quantizers(hm, [x])
    with torch.no_grad():
        assert_one_graph(hm, x)
    hm.train()
    assert_one_graph(hm, x)


@pytest.mark.slow
def test_a_hardened_resnet18_is_one_graph_and_sigma_and_seed_do_not_recompile():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    hm = fxharden.harden(torchvision.models.resnet18(num_classes=10), bits=8, sigma=0.1).eval()
    x = torch.randn(2, 3, 32, 32)
    fxharden.calibrate_quantizers(hm, [x])
    with torch.no_grad():
        assert_one_graph(hm, x)
        cm = torch.compile(hm, backend="eager")
        cm(x)
        with torch._dynamo.config.patch(error_on_recompile=True):
            fxharden.set_noise(hm, 0.2)
            fxharden.seed_noise(hm, 1)
            cm(x)


class CountingBackend:
    """A torch.compile backend that runs the captured graph eagerly and counts the graphs."""

    graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward

    def __repr__(self) -> str:
        return "counting"


def test_batch_groups_run_compiled_with_their_sigmas_and_shared_draws():
    """One sigma per batch group under torch.compile: group g is N(0, sigma_g^2), groups with
    one draw index share a draw (exactly proportional), others are uncorrelated; a new sigma or
    draw pattern of the same number of groups recompiles nothing."""
    mod = Noise("s", seed=1)
    mod.batch_dim = 0
    per = 1 << 17
    x = torch.zeros(4 * per)
    backend = CountingBackend()
    f = torch.compile(mod, backend=backend, fullgraph=True)
    mod.set_sigma([0.0, 1.0, 2.0, 1.0], draws=[0, 0, 1, 1])
    y = f(x).view(4, per)
    assert torch.equal(y[0], torch.zeros(per))
    assert_standard_normal(y[1])
    assert torch.allclose(y[2], 2 * y[3])  # one draw, two sigmas
    assert abs(corr(y[1], y[3])) < 5 / math.sqrt(per)  # two draws
    mod.set_sigma([0.5, 3.0, 0.5, 1.0], draws=[0, 1, 2, 3])
    y = f(x).view(4, per)
    for g, s in enumerate((0.5, 3.0, 0.5, 1.0)):
        assert_standard_normal(y[g] / s)
    assert abs(corr(y[0], y[2])) < 5 / math.sqrt(per)
    assert backend.graphs == 1


def test_a_compiled_sweep_measures_what_the_eager_sweep_measures():
    """``SweepConfig.compile_backend``: the clean accuracy is the eager one exactly, every point
    agrees with the eager sweep within binomial errors (another random stream), and the chunks
    run a few graphs (no recompilation per chunk); weight noise is refused with the way out."""
    from fxharden.zoo.data import synthetic_dataset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))
    data = synthetic_dataset(400, image_size=8, seed=0)
    with torch.no_grad():  # a classifier that fits the data: accuracy has room to fall
        x = torch.stack([data[i][0] for i in range(len(data))]).flatten(1)
        y = torch.tensor([int(data[i][1]) for i in range(len(data))])
        w = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), F.one_hot(y, 10).float()).solution
        model[1].weight.copy_(torch.eye(32, x.shape[1]))
        model[3].weight.zero_()
    hm = fxharden.harden(nn.Sequential(nn.Flatten(), nn.Linear(x.shape[1], 10)), sigma=0.0)
    with torch.no_grad():
        hm.get_submodule("1").weight.copy_(w[:-1].T)
        hm.get_submodule("1").bias.copy_(w[-1])
    sigmas = [0.05, 0.2, 0.5, 1.0, 2.0]
    eager = fxharden.sweep(hm, data, sigmas=sigmas, repeats=4)
    backend = CountingBackend()
    compiled = fxharden.sweep(hm, data, sigmas=sigmas, repeats=4, compile_backend=backend)
    # graphs: two batch sizes (256, 144) and two chunk sizes (one sigma; 16 points), then dynamic shapes
    assert backend.graphs <= 4 < compiled.timing["forwards"]
    assert compiled.clean_accuracy == eager.clean_accuracy
    assert compiled.config["compile_backend"] and "compile_backend" not in eager.config
    for a, b in zip(eager.site_points(None), compiled.site_points(None)):
        p = (a.mean + b.mean) / 2
        assert abs(a.mean - b.mean) < 5 * math.sqrt(max(p * (1 - p), 1e-4) * 2 / (400 * 4)) + 1e-9, (a, b)
    noisy_weights = fxharden.harden(nn.Linear(4, 2), config=fxharden.HardenConfig(
        quant=None, weight_noise=fxharden.WeightNoiseConfig(kind="additive", sigma=0.1)))
    with pytest.raises(ValueError, match="activation noise only.*without compile_backend"):
        fxharden.sweep(noisy_weights, (torch.randn(8, 4), torch.randint(0, 2, (8,))), sigmas=[0.1], repeats=1,
                       compile_backend="aot_eager")
