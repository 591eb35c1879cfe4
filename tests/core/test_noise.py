"""Noise injection: statistics, placement, reproducibility, gradients."""

import math

import pytest
import torch
from torch import nn

import fxharden
from fxharden.core.config import WeightNoiseConfig, WeightNoiseKind
from fxharden.core.groups import ensure_batch_dims
from fxharden.core.noise import Noise, stream_seed


def test_additive_noise_statistics_match_sigma():
    n = Noise("x", seed=3)
    n.set_sigma(0.3)
    x = torch.full((200_000,), 2.0)
    d = n(x) - x
    # sample mean and std of 200k N(0, 0.3^2) draws: 5-sigma bands of their sampling errors
    assert abs(float(d.mean())) < 5 * 0.3 / math.sqrt(d.numel())
    assert abs(float(d.std()) - 0.3) < 5 * 0.3 / math.sqrt(2 * d.numel())


def test_lognormal_drift_statistics():
    n = Noise("w", seed=1, kind=WeightNoiseKind.LOGNORMAL)
    n.set_sigma(0.2)
    x = torch.full((200_000,), 1.5)
    lam = torch.log(n(x) / x)
    assert abs(float(lam.mean())) < 5 * 0.2 / math.sqrt(lam.numel())
    assert abs(float(lam.std()) - 0.2) < 0.01


def test_zero_sigma_is_identity_and_returns_same_tensor():
    n = Noise("x")
    x = torch.randn(10)
    assert n(x) is x


def test_per_group_sigma():
    n = Noise("x", seed=0)
    n.set_sigma([0.0, 1.0, 0.1])
    x = torch.zeros(3 * 20_000, 2)
    d = n(x).view(3, -1)
    assert torch.equal(d[0], torch.zeros_like(d[0]))
    assert abs(float(d[1].std()) - 1.0) < 0.03
    assert abs(float(d[2].std()) - 0.1) < 0.003
    with pytest.raises(ValueError, match="equal groups"):
        n(torch.zeros(4, 2))


def test_seeded_noise_repeats_exactly():
    n = Noise("x", seed=7)
    n.set_sigma(1.0)
    x = torch.zeros(100)
    a = n(x)
    n.reseed(7)
    assert torch.equal(n(x), a)
    assert not torch.equal(n(x), a)  # the stream advances


def test_gradient_passes_unchanged():
    for kind in (WeightNoiseKind.ADDITIVE, WeightNoiseKind.LOGNORMAL):
        n = Noise("x", kind=kind)
        n.set_sigma(0.5)
        x = torch.randn(50, requires_grad=True)
        g = torch.randn(50)
        n(x).backward(g)
        assert torch.equal(x.grad, g)


def test_bad_sigma():
    n = Noise("x")
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            n.set_sigma(bad)
    with pytest.raises(ValueError, match="sigma"):
        n.set_sigma([0.1, -1.0])


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 4)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def intermediates(model, x):
    """Eager outputs of every call_module node, recorded by forward hooks."""
    out = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: out.__setitem__(name, o.detach().clone()))
             for name, m in model.named_modules() if name in ("a", "b", "c")]
    model(x)
    for h in hooks:
        h.remove()
    return out


def test_per_site_injection_changes_only_downstream():
    torch.manual_seed(0)
    hm = fxharden.harden(Chain(), bits=None).eval()
    x = torch.randn(16, 8)
    clean = intermediates(hm, x)
    fxharden.set_noise(hm, 0.5, sites=["b"])
    noisy = intermediates(hm, x)
    assert torch.equal(noisy["a"], clean["a"])  # upstream of the site
    assert torch.equal(noisy["b"], clean["b"])  # the layer itself: noise is added after it
    assert not torch.allclose(noisy["c"], clean["c"])  # downstream
    # what reaches c is b's output plus N(0, 0.5^2) noise, propagated linearly through c
    seen = {}
    hook = hm.c.register_forward_pre_hook(lambda mod, args: seen.__setitem__("in", args[0].detach().clone()))
    big = torch.randn(4096, 8)
    out = hm(big)
    hook.remove()
    eps = seen["in"] - hm.b(hm.a(big)).detach()
    assert abs(float(eps.std()) - 0.5) < 0.02
    expected = torch.nn.functional.linear(hm.b(hm.a(big)) + eps, hm.c.weight, hm.c.bias)
    assert torch.allclose(out, expected, atol=1e-5)


def test_global_noise_seeded_model_runs_repeat():
    hm = fxharden.harden(Chain(), bits=8, scale=0.05, sigma=0.1).eval()
    x = torch.randn(4, 8)
    fxharden.seed_noise(hm, 11)
    a = hm(x)
    fxharden.seed_noise(hm, 11)
    assert torch.equal(hm(x), a)
    fxharden.seed_noise(hm, 12)
    assert not torch.equal(hm(x), a)


def test_weight_noise_additive_and_lognormal():
    for kind in (WeightNoiseKind.ADDITIVE, WeightNoiseKind.LOGNORMAL):
        cfg = fxharden.HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind=kind, sigma=0.05))
        model = Chain().eval()
        hm = fxharden.harden(model, config=cfg).eval()
        x = torch.randn(4, 8)
        assert not torch.equal(hm(x), model(x))
        assert torch.allclose(hm(x), model(x), atol=1.0)


def test_weight_noise_streams_differ_between_layers():
    cfg = fxharden.HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind=WeightNoiseKind.ADDITIVE, sigma=0.1))
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    with torch.no_grad():
        model[1].weight.copy_(model[0].weight)
    hm = fxharden.harden(model, config=cfg)
    d0 = hm.get_submodule("0").hardened_weight() - model[0].weight
    d1 = hm.get_submodule("1").hardened_weight() - model[1].weight
    assert not torch.allclose(d0, d1)  # independent draws, not one shared stream


def injected(hm, x, seed=0):
    """The noise each activation site added in one forward: its output minus its input."""
    out = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: out.__setitem__(mod.site, (o.float() - i[0].float()).detach()))
             for m in hm.modules() if isinstance(m, Noise) and m.site in fxharden.noise_sites(hm)]
    fxharden.seed_noise(hm, seed)
    with torch.no_grad():
        hm(x)
    for h in hooks:
        h.remove()
    return out


def test_noise_survives_bf16_autocast_on_large_activations():
    """8-bit unsigned grid with s = 1: activations near 200, where bf16 steps are 1.0 apart;
    sigma = 0.1 must still add N(0, 0.1^2), so the site computes in float32."""
    model = nn.Sequential(nn.Linear(4, 4096), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(200.0)
    hm = fxharden.harden(model, bits=8, scale=1.0, sigma=0.1).eval()
    x = torch.randn(64, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = injected(hm, x)["1"]  # the ReLU site, after its quantizer
    assert abs(float(d.std()) - 0.1) < 5 * 0.1 / math.sqrt(2 * d.numel())
    assert abs(float(d.mean())) < 5 * 0.1 / math.sqrt(d.numel())


def test_streams_never_overlap_across_sites_and_seeds():
    """Site i+1 at seed s must not replay site i at seed s+1 (nor weight noise any site)."""
    cfg = fxharden.HardenConfig(quant=None, noise=fxharden.NoiseConfig(sigma=1.0),
                                weight_noise=WeightNoiseConfig(kind=WeightNoiseKind.ADDITIVE, sigma=1.0))
    model = Chain().eval()
    hm = fxharden.harden(model, config=cfg).eval()
    x = torch.zeros(1, 8)
    draws = {}
    for seed in range(3):
        for site, d in injected(hm, x, seed).items():
            draws[(site, seed)] = d.flatten()[:4]
        fxharden.seed_noise(hm, seed)
        for name in ("a", "b", "c"):
            layer = hm.get_submodule(name)
            draws[(f"{name}.weight", seed)] = (layer.hardened_weight() - layer.weight).detach().flatten()[:4]
    keys = list(draws)
    for i, k in enumerate(keys):
        for other in keys[i + 1:]:
            assert not torch.allclose(draws[k], draws[other]), (k, other)


def test_relative_weight_noise_scales_with_the_weights():
    """Additive, relative: std = sigma * max|w| of the tensor (closed form)."""
    cfg = fxharden.HardenConfig(quant=None, weight_noise=WeightNoiseConfig(
        kind=WeightNoiseKind.ADDITIVE, sigma=0.05, relative=True))
    model = nn.Sequential(nn.Linear(300, 300))
    with torch.no_grad():
        model[0].weight.mul_(40)
    hm = fxharden.harden(model, config=cfg)
    layer = hm.get_submodule("0")
    d = (layer.hardened_weight() - layer.weight).detach()
    expected = 0.05 * float(layer.weight.detach().abs().max())
    assert abs(float(d.std()) - expected) < 5 * expected / math.sqrt(2 * d.numel())
    with pytest.raises(ValueError, match="additive"):
        WeightNoiseConfig(kind=WeightNoiseKind.LOGNORMAL, sigma=0.1, relative=True)


def test_layer_left_alone_gets_no_weight_noise():
    cfg = fxharden.HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind=WeightNoiseKind.ADDITIVE, sigma=0.1),
                                rules=fxharden.SiteRules(by_name={"b": None}))
    model = Chain().eval()
    hm = fxharden.harden(model, config=cfg).eval()
    assert type(hm.b) is nn.Linear  # untouched: the plain layer
    assert hm.a.weight_noise is not None
    # reference: a's noisy output fed through the eager b and c
    seen = {}
    hm.b.register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0]))
    x = torch.randn(5, 8)
    with torch.no_grad():
        out = hm(x)
        ref_bc = nn.functional.linear(model.b(seen["in"]), hm.c.weight, hm.c.bias)
    assert not torch.allclose(out, ref_bc)  # c still has weight noise...
    fxharden.set_weight_noise(hm, 0.0)
    with torch.no_grad():
        assert torch.equal(hm(x), model(x))  # ...and with it off, everything is eager


# ---------------------------------------------------------------- shared draws, sparse groups


def _ks_normal(z: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance of the sample ``z`` from N(0, 1)."""
    z = z.double().flatten().sort().values
    n = z.numel()
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


def test_shared_draws_keep_each_group_iid_normal_and_repeats_independent():
    sigmas, draws, n = [0.5, 1.0, 2.0, 0.5, 1.0, 2.0], [0, 0, 0, 1, 1, 1], 100_000
    mod = Noise("x", seed=5)
    mod.set_sigma(sigmas, draws)
    x = torch.full((6 * n,), 3.0)
    z = ((mod(x) - x).view(6, n) / torch.tensor(sigmas)[:, None]).double()
    ks_bound = 1.95 / math.sqrt(n)  # KS critical value, p = 0.001
    for r in range(6):
        assert abs(float(z[r].mean())) < 5 / math.sqrt(n)
        assert abs(float(z[r].var()) - 1) < 5 * math.sqrt(2 / n)
        assert _ks_normal(z[r]) < ks_bound
        lag1 = float((z[r][1:] * z[r][:-1]).mean())  # i.i.d. within the group
        assert abs(lag1) < 5 / math.sqrt(n)
    # groups of one draw index carry the same standard normals, scaled by their own sigma
    torch.testing.assert_close(z[1], z[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z[5], z[3], rtol=1e-5, atol=1e-5)
    # different draw indices (repeats) are independent: correlation within sampling error
    assert abs(float((z[0] * z[3]).mean())) < 5 / math.sqrt(n)


def test_without_draws_every_group_draws_its_own():
    mod = Noise("x", seed=2)
    mod.set_sigma([1.0, 2.0])
    z = mod(torch.zeros(2 * 50_000)).view(2, -1) / torch.tensor([[1.0], [2.0]])
    assert abs(float((z[0] * z[1]).mean())) < 5 / math.sqrt(50_000)


def test_draws_must_match_the_groups():
    with pytest.raises(ValueError, match="one index per sigma value"):
        Noise("x").set_sigma([0.1, 0.2], [0, 0, 1])


def test_sparse_groups_match_the_dense_reference():
    """Groups with sigma 0 are passed through and draw nothing; the others get exactly the
    noise of an eager computation drawing one standard normal tensor per active group."""
    sigmas = [0.0, 0.3, 0.0, 0.0, 1.5]
    mod = Noise("x", seed=11)
    mod.set_sigma(sigmas)
    x = torch.randn(5 * 4, 3, 7)
    got = mod(x).view(5, 4, 3, 7)
    gen = torch.Generator().manual_seed(stream_seed(11, "x"))
    xs = x.view(5, 4, 3, 7)
    for r, s in enumerate(sigmas):
        want = xs[r] + s * torch.randn((4, 3, 7), generator=gen) if s else xs[r]
        torch.testing.assert_close(got[r], want)


def test_grouped_noise_with_gradient_matches_no_grad_and_passes_gradient():
    for kind in (WeightNoiseKind.ADDITIVE, WeightNoiseKind.LOGNORMAL):
        mod = Noise("x", seed=4, kind=kind)
        mod.set_sigma([0.2, 0.0, 0.4], [0, 1, 0])
        x = (torch.rand(6, 5) + 0.5).requires_grad_()
        y = mod(x)
        mod.reseed(4)
        with torch.no_grad():
            torch.testing.assert_close(y.detach(), mod(x))
        g = torch.randn(6, 5)
        y.backward(g)
        torch.testing.assert_close(x.grad, g)


def test_single_sigma_outputs_do_not_alias_the_reused_buffer():
    mod = Noise("x", seed=3)
    mod.set_sigma(1.0)
    x = torch.zeros(1000)
    with torch.inference_mode():
        a = mod(x)
    first = a.clone()
    b = mod(torch.zeros(1000, requires_grad=True))  # outside inference mode, same buffer
    b.sum().backward()
    assert torch.equal(a, first) and not torch.equal(a, b.detach())


def test_single_sigma_noise_is_standard_normal_at_ten_million_samples():
    """Two calls of 5e6 (the second reuses the first's scratch buffer): mean, variance,
    kurtosis, KS distance and the tail mass beyond 4 sigma of N(0, 1), within 5 standard
    errors (KS: the p = 0.001 critical value); the two calls uncorrelated."""
    mod = Noise("x", seed=9)
    mod.set_sigma(0.5)
    half = 5_000_000
    with torch.inference_mode():
        a, b = (mod(torch.zeros(half)).double() / 0.5 for _ in range(2))
    z, n = torch.cat([a, b]), 2 * half
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z ** 4).mean()) - 3) < 5 * math.sqrt(96 / n)  # var of the 4th moment of N(0,1): 105 - 9
    assert _ks_normal(z) < 1.95 / math.sqrt(n)
    p4 = math.erfc(4 / math.sqrt(2))  # P(|z| > 4)
    tail = int((z.abs() > 4).sum())
    assert abs(tail - n * p4) < 5 * math.sqrt(n * p4)
    assert abs(float((a * b).mean())) < 5 / math.sqrt(half)


def test_shared_sparse_groups_along_a_later_batch_dim_in_float32():
    """Batch in dim 1 (sequence-first), bf16 input: group r is the r-th slice of dim 1, noise
    is added in float32, sigma-0 groups draw nothing and groups of one draw index share it."""
    sigmas, draws = [0.5, 0.0, 2.0, 0.5], [0, 0, 0, 1]
    mod = Noise("x", seed=7)
    mod.batch_dim = 1
    mod.set_sigma(sigmas, draws)
    x = torch.randn(3, 8, 5).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(stream_seed(7, "x"))
    eps = [torch.randn((3, 2, 5), generator=gen) for _ in range(2)]  # draw 0 (group 0), draw 1 (group 3)
    want = torch.cat([x[:, 2 * r:2 * r + 2].float() + s * eps[d] for r, (s, d) in enumerate(zip(sigmas, draws))], 1)
    for grad in (False, True):
        mod.reseed(7)
        xin = x.clone().requires_grad_(grad)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast the output stays float32
            got = mod(xin)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.detach(), want)
        if grad:
            got.backward(torch.ones_like(got))
            torch.testing.assert_close(xin.grad, torch.ones_like(x))
    assert torch.equal(got.detach()[:, 2:4], x[:, 2:4].float())  # the sigma-0 group passed through
    mod.reseed(7)
    plain = mod(x)  # a bf16 model without autocast: the float32 result rounded once to bf16
    assert plain.dtype == torch.bfloat16 and torch.equal(plain, want.to(torch.bfloat16))


def test_weight_draws_follow_the_draw_indices_and_shared_weights_run_once(monkeypatch):
    """Per group the layer uses w + sigma_r * eps_d (eps_d: the d-th draw of the site's stream),
    exactly; groups with one draw index and one sigma share the weight, adjacent ones in one call."""
    cfg = fxharden.HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind=WeightNoiseKind.ADDITIVE, sigma=0.1))
    model = nn.Sequential(nn.Linear(6, 3)).eval()
    hm = fxharden.harden(model, config=cfg).eval()
    layer = hm.get_submodule("0")
    sigmas, draws = [0.1, 0.1, 0.3, 0.0, 0.0, 0.1], [0, 0, 0, 1, 1, 1]
    layer.weight_noise.set_sigma(sigmas, draws)
    x = torch.randn(12, 6)
    ensure_batch_dims(hm, (x,), {})  # what the first forward does; here before linear is counted
    fxharden.seed_noise(hm, 4)
    calls = []
    real = nn.functional.linear
    monkeypatch.setattr(nn.functional, "linear", lambda a, w, b=None: calls.append(a.shape[0]) or real(a, w, b))
    with torch.no_grad():
        got = hm(x)
    gen = torch.Generator().manual_seed(stream_seed(4, layer.weight_noise.site))
    w = model[0].weight.detach()
    eps = [torch.randn(w.shape, generator=gen) for _ in range(2)]  # draw 0 (group 0), draw 1 (group 5)
    want = torch.cat([real(x[2 * r:2 * r + 2], w + s * eps[d], model[0].bias)
                      for r, (s, d) in enumerate(zip(sigmas, draws))])
    torch.testing.assert_close(got, want)
    assert calls == [4, 2, 4, 2]  # groups (0, 1), 2, (3, 4) and 5


def test_autocast_output_input_rounds_once_to_bf16_with_the_closed_form_spread():
    """AutocastOutput.INPUT: under bf16 autocast a site hands on bf16 (rounded once). On values
    of 1.5 (bf16 spacing D = 2**-7) the realised noise of a bf16 rounding of 1.5 + s*eps has
    variance s^2 + D^2/12 for s = 4D, and is almost all rounded away for s = D/8; the default
    (FLOAT32) keeps s exactly. (1.5: in the middle of [1, 2), whose spacing is D on both sides.)"""
    spacing = 2.0 ** -7
    x = torch.full((2_000_000,), 1.5, dtype=torch.bfloat16)
    for sigma, want in ((4 * spacing, math.sqrt((4 * spacing) ** 2 + spacing ** 2 / 12)), (spacing / 8, None)):
        fast, kept = Noise("a", seed=3, keep_float32=False), Noise("a", seed=3)
        for m in (fast, kept):
            m.set_sigma(sigma)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_fast, y_kept = fast(x), kept(x)
        assert y_fast.dtype == torch.bfloat16 and y_kept.dtype == torch.float32
        assert torch.equal(y_fast, y_kept.to(torch.bfloat16))  # the same draw, rounded once
        spread = float((y_fast.double() - 1.5).std())
        if want is not None:
            assert spread == pytest.approx(want, rel=0.01)
        else:
            assert spread < sigma / 4  # far below the spacing: rounded away (the caveat)
        assert float((y_kept.double() - 1.5).std()) == pytest.approx(sigma, rel=0.01)


def test_a_hardened_model_keeps_bf16_activations_with_autocast_output_input():
    from fxharden import AutocastOutput, HardenConfig, NoiseConfig
    from fxharden.core.config import config_from_dict, config_to_dict

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    cfg = HardenConfig(noise=NoiseConfig(sigma=0.05, autocast_output="input"))
    assert config_from_dict(config_to_dict(cfg)).noise.autocast_output is AutocastOutput.INPUT
    seen = []
    hm = fxharden.harden(model, config=cfg).eval()
    for m in hm.modules():
        if isinstance(m, Noise):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        hm(torch.randn(4, 8))
    # the float32 input stays float32; every layer autocast ran in bf16 hands on bf16
    assert seen[0] == torch.float32 and len(seen) == 4 and set(seen[1:]) == {torch.bfloat16}
    seen.clear()
    default = fxharden.harden(model, sigma=0.05).eval()
    for m in default.modules():
        if isinstance(m, Noise):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        default(torch.randn(4, 8))
    assert set(seen) == {torch.float32}  # the default keeps float32 after every site


def test_channels_last_models_stay_channels_last():
    """Every quantizer and noise output of a channels_last ResNet-18 is channels_last, with and
    without autograd: a site never makes the next convolution convert the layout back."""
    import torchvision

    from fxharden.core.quant import ActQuant

    model = torchvision.models.resnet18(num_classes=10).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    hm = fxharden.harden(model, bits=8, sigma=0.1).eval()
    layouts = []
    for mod in hm.modules():
        if isinstance(mod, (Noise, ActQuant)):
            mod.register_forward_hook(lambda m, a, out: layouts.append(
                out.is_contiguous(memory_format=torch.channels_last) if out.dim() == 4 else True))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            hm(x)
    assert len(layouts) > 50 and all(layouts)
