"""harden(): the public contract, its oracles and its errors."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxharden
from fxharden import HardenConfig, LayerConfig, QuantConfig, Scaling, SiteKind, SiteRules
from fxharden.core.quant import qrange


class LeNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(6 * 14 * 14, 32)
        self.relu2 = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        return self.fc2(self.drop(self.relu2(self.fc1(torch.flatten(x, 1)))))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)) + x)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: untraceable
            return x * 2
        return x


class WithUntraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.odd = DataDependent()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.odd(self.stem(x)).mean((2, 3)))


X = torch.randn(4, 3, 32, 32)


def test_noop_hardening_is_exact_in_eval_and_train():
    model = LeNetLike()
    hm = fxharden.harden(model, bits=None)
    for mode in (False, True):
        model.train(mode)
        hm.train(mode)
        torch.manual_seed(0)
        ref = model(X)
        torch.manual_seed(0)
        assert torch.equal(hm(X), ref)


def test_sites_follow_the_paper_placement():
    hm = fxharden.harden(LeNetLike(), bits=8, scale=1.0)
    assert fxharden.noise_sites(hm) == ["input", "conv1", "relu1", "pool1", "fc1", "relu2", "fc2"]
    kinds = {s.name: s.kind for s in fxharden.harden_report(hm).sites}
    assert kinds["conv1"] == "conv" and kinds["relu1"] == "activation" and kinds["input"] == "input"


def test_residual_add_sites_are_configurable():
    hm = fxharden.harden(Residual(), bits=None)
    assert "add" not in fxharden.noise_sites(hm)
    cfg = HardenConfig(quant=None, noise=fxharden.NoiseConfig(
        kinds=fxharden.core.config.DEFAULT_NOISE_KINDS | {SiteKind.ADD}))
    assert "add" in fxharden.noise_sites(fxharden.harden(Residual(), config=cfg))


def test_constant_scaling_puts_activations_on_the_grid():
    s = 0.25
    hm = fxharden.harden(LeNetLike(), bits=4, scale=s).eval()
    seen = {}
    hm.fc1.register_forward_pre_hook(lambda m, a: seen.__setitem__("pool", a[0]))
    hm(X)
    k = seen["pool"] / s  # relu1 -> quantizer -> maxpool -> flatten: values stay on the grid
    assert torch.allclose(k, k.round(), atol=1e-5)
    assert k.min() >= 0 and k.max() <= qrange(4, False)[1]


def test_weights_are_quantized_per_channel():
    hm = fxharden.harden(LeNetLike(), bits=4, scale=1.0)
    w = hm.conv1.weight.detach()
    wq = hm.conv1.hardened_weight().detach()
    steps = w.abs().amax(dim=(1, 2, 3)) / 7
    k = wq / steps.view(-1, 1, 1, 1)
    assert torch.allclose(k, k.round(), atol=1e-4)
    assert (wq - w).abs().max() <= steps.max() / 2 + 1e-6
    # linear: one step for the whole tensor
    step = hm.fc1.weight.abs().max() / 7
    k = hm.fc1.hardened_weight().detach() / step
    assert torch.allclose(k, k.round(), atol=1e-4)


def test_caller_model_is_unchanged():
    model = LeNetLike().train()
    before = copy.deepcopy(model.state_dict())
    modules_before = [(n, type(m)) for n, m in model.named_modules()]
    hm = fxharden.harden(model, bits=8, scale=None, sigma=0.2)
    hm(X).sum().backward()
    assert [(n, type(m)) for n, m in model.named_modules()] == modules_before
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("scale", [1.0, None])
def test_every_parameter_receives_a_gradient(scale):
    hm = fxharden.harden(LeNetLike(), bits=8, scale=scale, sigma=0.05).train()
    hm(X).logsumexp(1).sum().backward()
    missing = [n for n, p in hm.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    if scale is None:
        assert any("quant" in n for n, _ in hm.named_parameters())  # learned steps are parameters


def test_mode_is_kept_and_switches():
    model = LeNetLike().eval()
    hm = fxharden.harden(model)
    assert not hm.training
    hm.train()
    assert hm.training and hm.drop.training


def test_state_dict_round_trip_and_deepcopy():
    hm = fxharden.harden(LeNetLike(), bits=8, scale=None, sigma=0.1).train()
    hm(X)  # calibrates dynamic steps
    buf = io.BytesIO()
    torch.save(hm.state_dict(), buf)
    buf.seek(0)
    other = fxharden.harden(LeNetLike(), bits=8, scale=None).eval()
    other.load_state_dict(torch.load(buf))
    hm.eval()
    for h in (hm, other):
        fxharden.seed_noise(h, 5)
    assert torch.equal(hm(X), other(X))  # same weights, steps, sigma and noise streams
    clone = copy.deepcopy(hm)
    fxharden.seed_noise(clone, 5)
    fxharden.seed_noise(hm, 5)
    assert torch.equal(clone(X), hm(X))
    assert fxharden.noise_sites(clone) == fxharden.noise_sites(hm)


def test_rules_precedence():
    rules = SiteRules(
        by_type={nn.ReLU: None},  # leave every ReLU alone...
        by_regex={r"relu2": LayerConfig(noise=True, quantize=False)},  # ...but relu2 gets noise
        by_name={"conv1": LayerConfig(noise=False, quantize=True)},
    )
    hm = fxharden.harden(LeNetLike(), config=HardenConfig(quant=QuantConfig(bits=8), rules=rules))
    sites = fxharden.noise_sites(hm)
    assert "relu1" not in sites and "relu2" in sites and "conv1" not in sites
    report = {s.name: s for s in fxharden.harden_report(hm).sites}
    assert report["relu1"].quantizer == "" and report["relu2"].quantizer == ""
    assert report["conv1"].quantizer.startswith("weights")


def test_set_noise_per_layer_and_unknown_site():
    hm = fxharden.harden(LeNetLike())
    fxharden.set_noise(hm, 0.3, sites=["fc1"])
    sig = {n: float(m.sigma) for n, m in hm.named_modules() if isinstance(m, fxharden.core.noise.Noise)}
    assert sig["fxharden.fc1"] == pytest.approx(0.3) and sum(sig.values()) == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"unknown noise site 'fc_1'.*'fc1'"):
        fxharden.set_noise(hm, 0.1, sites=["fc_1"])


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 1}, "between 2 and 16"),
    ({"bits": 17}, "between 2 and 16"),
    ({"bits": 8, "scale": -1.0}, "scale"),
    ({"bits": 8, "scale": float("nan")}, "scale"),
    ({"bits": 8, "scale": 0.0}, "scale"),
    ({"sigma": -0.5}, "sigma"),
    ({"sigma": float("nan")}, "sigma"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fxharden.harden(LeNetLike(), **kwargs)


def test_bad_model_and_bad_sigma_on_set_noise():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fxharden.harden(lambda x: x)
    hm = fxharden.harden(LeNetLike())
    with pytest.raises(TypeError, match="already hardened"):
        fxharden.harden(hm)
    with pytest.raises(ValueError, match="sigma"):
        fxharden.set_noise(hm, -1.0)
    with pytest.raises(TypeError, match="harden"):
        fxharden.noise_sites(LeNetLike())


def test_untraceable_submodule_becomes_opaque_layer():
    model = WithUntraceable().eval()
    hm = fxharden.harden(model, bits=None)
    report = fxharden.harden_report(hm)
    assert list(report.opaque) == ["odd"] and "odd" in fxharden.noise_sites(hm)
    assert "x.sum() > 0" in report.opaque["odd"] or "bool" in report.opaque["odd"]
    assert torch.equal(hm(X), model(X))


def test_untraceable_strict_error_names_module_and_fix():
    with pytest.raises(fxharden.UntraceableModelError) as err:
        fxharden.harden(WithUntraceable(), strict=True)
    msg = str(err.value)
    assert "'odd'" in msg and "DataDependent" in msg and "leaf_modules" in msg and "torch.fx.wrap" in msg
    assert "if x.sum() > 0" in msg  # the code line


def test_untraceable_root_is_one_opaque_layer():
    model = DataDependent()
    hm = fxharden.harden(model)
    assert fxharden.noise_sites(hm) == ["input", "model"]
    x = torch.randn(3, 5)
    assert torch.equal(hm(x), model(x))


def test_leaf_modules_option():
    hm = fxharden.harden(Residual(), leaf_modules=[nn.BatchNorm2d])
    assert "bn" in [s.name for s in fxharden.harden_report(hm).sites]
    hm = fxharden.harden(WithUntraceable(), leaf_modules=["odd"], strict=True)
    assert "odd" in fxharden.noise_sites(hm)


def test_dynamic_vs_constant_config_equivalence():
    a = fxharden.harden(LeNetLike(), bits=4, scale=None)
    b = fxharden.harden(LeNetLike(), config=HardenConfig(quant=QuantConfig(bits=4, scaling=Scaling.DYNAMIC, scale=None)))
    assert a.harden_config == b.harden_config


def test_configs_saved_by_the_flat_package_still_load():
    """Configs of fxharden 0.1 name classes by their old module paths (``fxharden.models``)."""
    from torch import nn as tnn

    from fxharden.core.config import LayerConfig, SiteRules, config_from_dict, config_to_dict
    from fxharden.zoo.networks import LeNet5

    data = config_to_dict(HardenConfig(rules=SiteRules(by_type={tnn.Linear: LayerConfig(noise=False)})))
    data["rules"]["by_type"] = [["fxharden.models:LeNet5", entry] for _, entry in data["rules"]["by_type"]]
    cfg = config_from_dict(data)
    assert dict(cfg.rules.by_type) == {LeNet5: LayerConfig(noise=False)}


def test_config_with_shorthand_is_refused_naming_what_was_given():
    cfg = HardenConfig(quant=QuantConfig(bits=8, scale=1.0))
    for kwargs, named in (({"scale": 2.0}, "scale"), ({"scale": 1.0}, "scale"), ({"sigma": 0.1}, "sigma"),
                          ({"bits": 4}, "bits"), ({"strict": True}, "strict")):
        with pytest.raises(ValueError, match=f"also {named}.*config.replace"):
            fxharden.harden(LeNetLike(), config=cfg, **kwargs)
    assert fxharden.harden(LeNetLike(), config=cfg).harden_config == cfg


class ModeDependent(nn.Module):
    """Its code differs between train and eval, so harden keeps one graph per mode."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.dropout(x, 0.5, self.training))


def test_layers_found_in_both_mode_graphs_are_reported_as_quantized():
    hm = fxharden.harden(ModeDependent(), bits=4, scale=1.0)
    assert hm.meta.get("fxharden_graphs") is not None  # the case under test: two graphs
    report = fxharden.harden_report(hm)
    assert report.skipped == {}
    assert {s.name: s.quantizer for s in report.sites}["fc"] == "weights bits=4, per-tensor"
    step = hm.fc.weight.abs().max() / 7  # reference: the per-tensor 4-bit grid
    k = hm.fc.hardened_weight().detach() / step
    assert torch.allclose(k, k.round(), atol=1e-4)


def test_pickled_hardened_model_loads_back_and_computes_the_same():
    import pickle

    model = ModeDependent()
    hm = fxharden.harden(model, bits=8, scale=0.05, sigma=0.1).eval()
    hm(torch.randn(6, 8))  # calibrates the input quantizer: its state must travel too
    buf = io.BytesIO()
    torch.save(hm, buf)
    buf.seek(0)
    for other in (pickle.loads(pickle.dumps(hm)), torch.load(buf, weights_only=False)):
        assert isinstance(other, fxharden.HardenedModule) and other.harden_config == hm.harden_config
        assert fxharden.noise_sites(other) == fxharden.noise_sites(hm) and not other.training
        ref = copy.deepcopy(hm)  # the reference never went through pickle (forwards below change state)
        x = torch.randn(6, 8)
        for mode in (False, True):  # both graphs: dropout only in train mode
            for m in (ref, other):
                m.train(mode)
                fxharden.seed_noise(m, 3)
            torch.manual_seed(0)
            expected = ref(x)
            torch.manual_seed(0)
            assert torch.equal(other(x), expected)


class ViTLikeBlock(nn.Module):
    """torchvision's ViT encoder block pattern: nn.MultiheadAttention called as a leaf."""

    def __init__(self, batch_first=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # x: (batch, sequence, features)
        if not self.attn.batch_first:
            x = x.transpose(0, 1)  # sequence-first attention
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y.mean(1 if self.attn.batch_first else 0))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_projections_are_quantized(batch_first):
    torch.manual_seed(0)
    model = ViTLikeBlock(batch_first).eval()
    keep_input = SiteRules(by_name={"input": LayerConfig(quantize=False)})  # so eager sees the same input
    hm = fxharden.harden(model, config=HardenConfig(quant=QuantConfig(bits=4), rules=keep_input)).eval()
    assert fxharden.harden_report(hm).skipped == {}
    assert {s.name: s.quantizer for s in fxharden.harden_report(hm).sites}["attn"] == "weights bits=4, per-tensor"
    # reference: the eager attention with its two projection weights replaced by their 4-bit grid values
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in (ref.attn.in_proj_weight, ref.attn.out_proj.weight, ref.head.weight):
            step = p.abs().max() / 7
            p.copy_(torch.round(p / step).clamp(-8, 7) * step)
    x = torch.randn(4, 5, 8)
    with torch.no_grad():
        assert torch.allclose(hm(x), ref(x), atol=1e-5)
        assert not torch.allclose(hm(x), model(x), atol=1e-3)
    # weight noise with one sigma per batch group: group 0 (sigma 0) is the noise-free output
    cfg = HardenConfig(quant=None, weight_noise=fxharden.WeightNoiseConfig(kind="additive", sigma=0.2))
    hn = fxharden.harden(model, config=cfg).eval()
    fxharden.set_weight_noise(hn, [0.0, 0.2])
    x2 = torch.cat([x, x])
    with torch.no_grad():
        out, clean = hn(x2), model(x)
    assert torch.allclose(out[:4], clean, atol=1e-6) and not torch.allclose(out[4:], clean, atol=1e-3)


def test_rules_that_match_no_site_are_refused_with_close_matches():
    model = WithUntraceable()  # sites: input, stem, odd, mean, head
    with pytest.raises(ValueError, match=r"by_name\['haed'\] matches no site.*'head'.*Fix or remove"):
        fxharden.harden(model, rules=SiteRules(by_name={"haed": LayerConfig(noise=False)}))
    with pytest.raises(ValueError, match=r"by_regex\['hea'\] matches no site.*fullmatch.*'head'"):
        fxharden.harden(model, rules=SiteRules(by_regex={"hea": None}))
    nested = nn.Sequential(LeNetLike())  # sites 0.conv1, 0.relu1, ...: "0" names a module, not a site
    with pytest.raises(ValueError, match=r"by_name\['0'\].*module holding sites.*by_regex"):
        fxharden.harden(nested, rules=SiteRules(by_name={"0": None}))
    fxharden.harden(nested, rules=SiteRules(by_regex={r"0\..*": None}, by_type={nn.GELU: None}))  # by_type may miss


def test_more_specific_rule_overrides_only_the_fields_it_sets():
    # the README's example on a LeNet: Linear layers unquantized with noise; fc2 by name: no noise
    rules = SiteRules(by_type={nn.Linear: LayerConfig(noise=True, quantize=False)},
                      by_name={"fc2": LayerConfig(noise=False)})
    hm = fxharden.harden(LeNetLike(), config=HardenConfig(quant=QuantConfig(bits=4), rules=rules))
    report = {s.name: s for s in fxharden.harden_report(hm).sites}
    assert "fc1" in fxharden.noise_sites(hm) and "fc2" not in fxharden.noise_sites(hm)
    assert report["fc2"].quantizer == "" and type(hm.get_submodule("fc2")) is nn.Linear  # quantize=False kept
    assert report["conv1"].quantizer.startswith("weights bits=4")  # untouched by any rule
    assert LayerConfig(noise=False).over(LayerConfig(noise=True, quantize=False)) == LayerConfig(False, False)
    with pytest.raises(TypeError, match="True, False or None"):
        LayerConfig(noise=1)


class MeanPool(nn.Module):
    def __init__(self, spelling):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)
        self.spelling = spelling

    def forward(self, x):
        return self.head(self.spelling(self.conv(x)).flatten(1))


MEANS = {
    "x.mean((2, 3))": lambda x: x.mean((2, 3)),
    "x.mean(dim=(-2, -1))": lambda x: x.mean(dim=(-2, -1)),
    "torch.mean(x, (2, 3))": lambda x: torch.mean(x, (2, 3)),
    "torch.mean(x, dim=[2, 3], keepdim=True)": lambda x: torch.mean(x, dim=[2, 3], keepdim=True),
    "x.flatten(2).mean(-1)": lambda x: x.flatten(2).mean(-1),
    "torch.flatten(x, 2).mean(2, keepdim=True)": lambda x: torch.flatten(x, 2).mean(2, keepdim=True),
}


@pytest.mark.parametrize("spelling", list(MEANS))
def test_global_average_written_as_mean_is_a_pooling_noise_site(spelling):
    torch.manual_seed(0)
    model = MeanPool(MEANS[spelling]).eval()
    hm = fxharden.harden(model, bits=None).eval()
    pools = [s.name for s in fxharden.harden_report(hm).sites if s.kind == "pool"]
    assert len(pools) == 1 and pools[0] in fxharden.noise_sites(hm)
    sigma, n = 0.3, 20000
    fxharden.set_noise(hm, sigma, sites=pools)
    x = torch.randn(1, 3, 6, 6).expand(n, -1, -1, -1)
    with torch.no_grad():
        diff = hm(x) - model(x)
    # hand computation: iid N(0, sigma^2) on the 4 pooled features, so head output j has std sigma * ||W_j||
    expected = sigma * model.head.weight.detach().norm(dim=1)
    assert torch.allclose(diff.mean(0), torch.zeros(3), atol=4 * expected.max() / n ** 0.5)
    assert torch.allclose(diff.std(0), expected, rtol=0.03)


@pytest.mark.parametrize("reduce", [lambda x: x.mean(1), lambda x: x.pow(2).mean(-1, keepdim=True), lambda x: x.mean()])
def test_other_means_are_not_pooling_sites(reduce):
    class Reduce(nn.Module):
        def forward(self, x):
            return reduce(x)

    hm = fxharden.harden(Reduce(), bits=None)
    kinds = [s.kind for s in fxharden.harden_report(hm).sites]
    assert kinds[-1] == "other" and "pool" not in kinds
