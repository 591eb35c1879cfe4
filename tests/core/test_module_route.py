"""The module route: the layers inside parts torch.fx cannot trace are sites of their own."""

import pickle
import re

import pytest
import torch
from torch import nn

import fxharden
from fxharden.core.module_route import LayerSite


class Branchy(nn.Module):
    """Untraceable (data-dependent control flow), built from known layers."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        if x.shape[0] > 1:  # a data-dependent branch: torch.fx cannot trace it
            return self.act(self.fc(x))
        return self.drop(self.fc(x)) * 2


class WithBranchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(3, 6)
        self.mid = Branchy()
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.mid(self.stem(x)))


class DictOut(nn.Module):
    """The whole model is untraceable and returns a dict, like a Hugging Face model."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, ids):
        h = self.emb(ids)
        if h.abs().sum() > 0:
            h = self.body(h)
        return {"logits": h.mean(1)}


X = torch.randn(8, 3)
IDS = torch.randint(0, 10, (4, 5))


def test_layers_of_an_opaque_part_are_sites_on_the_module_route():
    model = WithBranchy().eval()
    hm = fxharden.harden(model, bits=8)
    report = fxharden.harden_report(hm)
    assert list(report.opaque) == ["mid"]
    routes = {s.name: s.route for s in report.sites}
    assert routes == {"input": "graph", "stem": "graph", "mid.fc": "module", "mid.act": "module", "head": "graph"}
    assert fxharden.noise_sites(hm) == ["input", "stem", "mid.fc", "mid.act", "head"] == report.noise_sites
    assert "mid" not in fxharden.noise_sites(hm)  # no second site on the part's own output
    assert isinstance(hm.mid.act.fxharden_site, LayerSite) and hm.mid.act.fxharden_site.quant is not None
    assert "weights bits=8" in next(s.quantizer for s in report.sites if s.name == "mid.fc")


def test_noop_module_route_is_exact_and_noise_changes_the_output():
    model = WithBranchy().eval()
    hm = fxharden.harden(model, bits=None)
    assert torch.equal(hm(X), model(X)) and torch.equal(hm(X[:1]), model(X[:1]))
    fxharden.set_noise(hm, 0.3, sites=["mid.fc"])
    assert not torch.equal(hm(X), model(X))
    fxharden.set_noise(hm, 0.0)
    assert torch.equal(hm(X), model(X))


def test_module_route_sites_seed_pickle_and_state_dict():
    hm = fxharden.harden(WithBranchy().eval(), bits=8, sigma=0.2)
    fxharden.seed_noise(hm, 3)
    first = hm(X)
    fxharden.seed_noise(hm, 3)
    assert torch.equal(hm(X), first)
    again = pickle.loads(pickle.dumps(hm))
    assert fxharden.noise_sites(again) == fxharden.noise_sites(hm)
    fxharden.seed_noise(again, 3)
    assert torch.equal(again(X), first)
    keys = hm.state_dict().keys()
    assert "mid.fc.weight" in keys and "mid.fc.fxharden_site.noise.sigma" in keys
    fresh = fxharden.harden(WithBranchy().eval(), bits=8)
    fresh.load_state_dict(hm.state_dict())
    assert float(fresh.mid.fc.fxharden_site.noise.sigma) == pytest.approx(0.2)


def test_calibrate_noise_and_weight_noise_reach_the_module_route():
    model = WithBranchy().eval()
    hm = fxharden.harden(model, weight_noise=fxharden.WeightNoiseConfig(kind="additive", sigma=0.0))
    rms = fxharden.calibrate_noise(hm, [X])
    assert {"mid.fc", "mid.act"} <= set(rms) and rms["mid.fc"] > 0
    from fxharden.core.harden import weight_noise_modules

    assert "mid.fc.weight" in weight_noise_modules(hm)
    fxharden.set_weight_noise(hm, 0.5)
    assert not torch.equal(hm(X), model(X))


def test_untraceable_model_with_a_non_tensor_output_has_noise_at_its_layers():
    model = DictOut().eval()
    hm = fxharden.harden(model, bits=8)
    report = fxharden.harden_report(hm)
    assert list(report.opaque) == ["model"]
    # named as in the caller's model; the input site passes the integer ids through untouched
    assert report.noise_sites == ["input", "emb", "body.0", "body.1", "body.2"]
    assert all(s.route == "module" for s in report.sites if s.name != "input")
    noop = fxharden.harden(model)
    assert torch.equal(noop(IDS)["logits"], model(IDS)["logits"])
    fxharden.set_noise(hm, 0.5)
    assert not torch.equal(hm(IDS)["logits"], model(IDS)["logits"])


def test_rules_select_module_route_sites_by_name():
    hm = fxharden.harden(WithBranchy().eval(), rules=fxharden.SiteRules(by_regex={r"mid\..*": None}))
    report = fxharden.harden_report(hm)
    assert [s.name for s in report.sites if s.route == "module" and s.noise] == []
    assert not hasattr(hm.mid.fc, "fxharden_site")
    names = [s.name for s in fxharden.harden_report(fxharden.harden(WithBranchy().eval())).sites if s.route == "module"]
    one = fxharden.harden(WithBranchy().eval(), rules=fxharden.SiteRules(by_name={names[0]: None}))
    assert names[0] not in fxharden.noise_sites(one) and names[1:] and set(names[1:]) <= set(fxharden.noise_sites(one))
    with pytest.raises(ValueError, match=rf"by_name\['{re.escape(names[0])}x'\] matches no site.*did you mean"):
        fxharden.harden(WithBranchy().eval(), rules=fxharden.SiteRules(by_name={names[0] + "x": None}))


def test_a_part_that_returns_no_tensor_warns_instead_of_dropping_noise_silently():
    class NoLayers(nn.Module):
        def forward(self, x):
            return (x * 2,) if x.sum() > 0 else (x,)

    hm = fxharden.harden(nn.Sequential(nn.Linear(3, 3), NoLayers()), sigma=0.1)
    with pytest.warns(RuntimeWarning, match=re.escape("received a tuple, not a tensor")):
        hm(X)


# ---------------------------------------------------------------------- Hugging Face transformers

def _hf_models():
    tf = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[lm]')")
    torch.manual_seed(0)
    return {
        "llama": (tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=4, intermediate_size=64)),
                  r"model\.layers\.(\d+)\."),
        "gpt2": (tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                                   bos_token_id=0, eos_token_id=0)),
                 r"transformer\.h\.(\d+)\."),
        "bert": (tf.BertForSequenceClassification(tf.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                                                 num_attention_heads=4, intermediate_size=64,
                                                                 num_labels=3)),
                 r"bert\.encoder\.layer\.(\d+)\."),
    }


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_hugging_face_models_get_noise_at_their_layers(name):
    model, block = _hf_models()[name]
    model.eval()
    ids = torch.randint(0, 128, (2, 12))
    hm = fxharden.harden(model, bits=8)
    report = fxharden.harden_report(hm)
    per_block: dict = {}
    for site in report.noise_sites:
        m = re.match(block, site)
        if m:
            per_block[m.group(1)] = per_block.get(m.group(1), 0) + 1
    assert sorted(per_block) == ["0", "1"] and min(per_block.values()) >= 4, per_block
    linear = [s for s in report.sites if s.op in ("Linear", "Conv1D")]
    assert linear and all(s.route == "module" and s.quantizer.startswith("weights bits=8") for s in linear)
    with torch.no_grad():
        clean = model(ids).logits
        noop = fxharden.harden(model)
        assert torch.equal(noop(ids).logits, clean)
        fxharden.set_noise(hm, 0.5)
        assert not torch.allclose(hm(ids).logits, clean, atol=1e-3)
