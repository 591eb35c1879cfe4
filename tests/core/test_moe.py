"""Mixture-of-experts layers: expert matrices (3-D parameters used through grouped matrix
products or a per-expert loop) and routers are hardened on both routes, and the expert
outputs are noise sites."""

import pickle

import pytest
import torch

import fxharden
from fxharden import LayerConfig, SiteRules, WeightNoiseConfig
from fxharden.core.trace import OPAQUE_ROOT

T = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[lm]')")

V = 64
SMALL = dict(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
             num_experts_per_tok=2, tie_word_embeddings=False)
GROUPED = r".*\.experts\.(grouped_mm_fallback|_grouped_mm)(_\d+)?"
"""The expert products' sites on the export route (CPU float32 exports transformers' fallback op)."""


def _model(name, impl=None):
    torch.manual_seed(0)
    if name == "mixtral":
        cfg = T.MixtralConfig(**SMALL, intermediate_size=48, num_local_experts=4)
        cls = T.MixtralForCausalLM
    else:
        cfg = T.Qwen2MoeConfig(**SMALL, intermediate_size=48, moe_intermediate_size=24,
                               shared_expert_intermediate_size=40, num_experts=4)
        cls = T.Qwen2MoeForCausalLM
    if impl is not None:
        cfg._experts_implementation = impl
    return cls(cfg).eval()


def _ids(batch, length, seed=1):
    return torch.randint(3, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def _plain(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _experts(model):
    return [m for m in model.modules() if type(m).__name__.endswith("Experts")]


def _fake_quant_per_expert(w, bits=8):
    """Symmetric signed fake-quantization with one step max|w_e| / (2^(b-1) - 1) per expert e."""
    qmax = 2 ** (bits - 1) - 1
    step = w.abs().amax(dim=(1, 2), keepdim=True) / qmax
    return torch.round(w / step).clamp(-qmax, qmax) * step


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_export_noop_is_exact_expert_outputs_are_noise_sites_and_sigma_changes_the_output(name):
    model = _model(name)
    hm = fxharden.harden(model, example_inputs={"input_ids": _ids(2, 8)})
    report = fxharden.harden_report(hm)
    assert report.frontend == "export"
    experts = [s.name for s in report.sites if s.kind == "linear" and ".experts." in s.name]
    assert len(experts) == 2 and set(experts) <= set(fxharden.noise_sites(hm))  # gate/up and down products
    with torch.no_grad():
        for ids in (_ids(3, 5, 2), _ids(1, 11, 3)):  # other shapes than the example's
            assert torch.equal(hm(input_ids=ids).logits, _plain(model, ids))
        ids = _ids(3, 5, 2)
        fxharden.set_noise(hm, 0.1, sites=experts)
        assert not torch.allclose(hm(input_ids=ids).logits, _plain(model, ids), atol=1e-3)
        fxharden.set_noise(hm, [0.0, 0.1], sites=experts)  # one sigma per batch group: rows sorted by expert
        with pytest.raises(ValueError, match="regrouped by expert"):
            hm(input_ids=_ids(2, 5, 2))


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_export_quantizes_each_expert_with_its_own_step(name):
    model = _model(name)
    for e in _experts(model):  # experts of very different ranges: a step per tensor would be far off
        e.gate_up_proj.data[0] *= 50
        e.down_proj.data[1] *= 0.02
    rules = SiteRules(by_regex={f"(?!{GROUPED}).*": LayerConfig(quantize=False)})
    hm = fxharden.harden(model, bits=8, rules=rules, example_inputs={"input_ids": _ids(2, 8)})
    ref = _model(name)
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for e in _experts(ref):
            e.gate_up_proj.copy_(_fake_quant_per_expert(e.gate_up_proj))
            e.down_proj.copy_(_fake_quant_per_expert(e.down_proj))
        ids = _ids(3, 5, 2)
        out, want, plain = hm(input_ids=ids).logits, _plain(ref, ids), _plain(model, ids)
    scale = float(want.abs().max())
    assert float((out - want).abs().max()) <= 1e-5 * scale
    assert float((plain - want).abs().max()) > 1e-3 * scale  # the quantization is visible


def test_export_weight_noise_draws_each_expert_at_its_own_scale():
    model = _model("mixtral")
    expert = _experts(model)[0]
    expert.gate_up_proj.data[0] *= 100  # relative noise: sigma * max|w_e| of each expert's matrix
    sigma = 0.01
    hm = fxharden.harden(model, weight_noise=WeightNoiseConfig("additive", sigma, relative=True),
                         example_inputs={"input_ids": _ids(2, 8)})
    calls = [m for m in hm.modules() if getattr(m, "_per_expert", False)]
    assert len(calls) == 2
    used = []
    fn = calls[0].fn
    calls[0].fn = lambda x, w, *a, **k: used.append(w) or fn(x, w, *a, **k)
    with torch.no_grad():
        hm(input_ids=_ids(2, 8))
    w = expert.gate_up_proj.detach().transpose(-2, -1)  # as the grouped product takes it
    diff = used[0] - w
    for e in range(w.shape[0]):
        ratio = float(diff[e].std() / w[e].abs().max())
        assert 0.7 * sigma < ratio < 1.3 * sigma, (e, ratio)
    assert not torch.equal(diff[1], diff[2])  # a draw of its own
    fxharden.set_weight_noise(hm, [0.0, sigma])
    with pytest.raises(ValueError, match="grouped expert product sees its rows sorted by expert"):
        hm(input_ids=_ids(2, 8))


@pytest.mark.parametrize("impl", ["grouped_mm", "eager"])
def test_module_route_hardens_experts_and_router(impl):
    model = _model("mixtral", impl)
    ids = _ids(2, 6, 2)
    noop = fxharden.harden(model, frontend="fx")
    with torch.no_grad():
        assert torch.equal(noop(input_ids=ids).logits, _plain(model, ids))
    hm = fxharden.harden(model, bits=8, frontend="fx", weight_noise=WeightNoiseConfig("additive", 0.0))
    ledger = fxharden.harden_report(hm).ledger
    layer = "model.layers.0.mlp"
    assert ledger[f"{layer}.experts.gate_up_proj"] == ledger[f"{layer}.experts.down_proj"] \
        == f"hardened at {layer}.experts"
    assert ledger[f"{layer}.gate.weight"] == f"hardened at {layer}.gate"
    assert f"{layer}.experts" in fxharden.noise_sites(hm)
    assert isinstance(hm.get_submodule(f"{OPAQUE_ROOT}.{layer}.experts"), type(_experts(model)[0]))
    # the routing in full precision: only the expert and router matrices quantized
    rules = SiteRules(by_regex={rf"(?!{layer}\.(experts|gate)$).*": LayerConfig(quantize=False)})
    q = fxharden.harden(model, bits=8, frontend="fx", rules=rules)
    ref = _model("mixtral", impl)
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        e, gate = _experts(ref)[0], ref.model.layers[0].mlp.gate
        e.gate_up_proj.copy_(_fake_quant_per_expert(e.gate_up_proj))
        e.down_proj.copy_(_fake_quant_per_expert(e.down_proj))
        gate.weight.copy_(_fake_quant_per_expert(gate.weight[None])[0])
        assert torch.equal(q(input_ids=ids).logits, _plain(ref, ids))
        again = pickle.loads(pickle.dumps(q))
        assert torch.equal(again(input_ids=ids).logits, _plain(ref, ids))


def test_module_route_draws_expert_weights_per_batch_group():
    model = _model("mixtral")
    only_experts = SiteRules(by_regex={r"(?!model\.layers\.0\.mlp\.experts$).*": None})
    hm = fxharden.harden(model, frontend="fx", weight_noise=WeightNoiseConfig("additive", 0.0), rules=only_experts)
    assert fxharden.harden_report(hm).ledger["model.layers.0.mlp.gate.weight"].startswith("the weight of a layer")
    fxharden.set_weight_noise(hm, [0.0, 0.05])
    ids = torch.cat([_ids(1, 6, 4), _ids(1, 6, 5)])
    with torch.no_grad():
        out = hm(input_ids=ids).logits
        ref = _plain(model, ids)
    scale = float(ref.abs().max())
    assert float((out[0] - ref[0]).abs().max()) <= 1e-5 * scale  # sigma 0: the plain model
    assert float((out[1] - ref[1]).abs().max()) > 1e-2 * scale
