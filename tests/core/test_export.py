"""The torch.export frontend: checked against eager (no-op exactness), against the torch.fx
route on models both can capture (same sites, same 8-bit outputs), and on a zoo of Hugging Face
transformers families that torch.fx cannot trace at all."""

import pickle
import re

import pytest
import torch
import torchvision
from torch import nn

import fxharden
from fxharden import ExportError, Frontend, HardenConfig, WeightNoiseConfig
from fxharden.zoo.networks import LeNet5

X = torch.randn(4, 3, 32, 32)


def _paper(name):
    torch.manual_seed(0)
    if name == "lenet5":
        return LeNet5()
    return torchvision.models.get_model(name, weights=None, num_classes=10)


@pytest.mark.parametrize("name", ["lenet5", "vgg11", "resnet18"])
def test_export_matches_eager_and_the_fx_route(name):
    model = _paper(name)
    he = fxharden.harden(model, frontend="export", example_inputs=(X,))
    hf = fxharden.harden(model)
    assert fxharden.harden_report(he).frontend == "export"
    assert fxharden.noise_sites(he) == fxharden.noise_sites(hf)
    assert {s.route for s in fxharden.harden_report(he).sites} == {"export"}
    with torch.no_grad():
        for mode in (False, True):
            model.train(mode), he.train(mode)
            torch.manual_seed(1)
            ref = model(X)
            torch.manual_seed(1)
            assert torch.equal(he(X), ref)
    # 8-bit weights and activations: the same numbers as the fx route (itself checked against eager)
    q_e = fxharden.harden(model, bits=8, scale=1.0, frontend="export", example_inputs=(X,)).eval()
    q_f = fxharden.harden(model, bits=8, scale=1.0).eval()
    with torch.no_grad():
        assert torch.equal(q_e(X), q_f(X))
    # any batch size, gradients reach the model's parameters
    q_e.train()
    q_e(torch.randn(7, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in q_e.parameters() if p.requires_grad)


def test_timm_modules_of_known_kind_are_one_site_named_by_path():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_convnext", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    he = fxharden.harden(model, frontend="export", example_inputs=(x,))
    hf = fxharden.harden(model)
    fx_sites = fxharden.noise_sites(hf)
    # the documented mapping: torch.fx enters timm's activation module and names its call (act.gelu)
    assert fxharden.noise_sites(he) == [re.sub(r"\.act\.gelu$", ".act", s) for s in fx_sites]
    with torch.no_grad():
        assert torch.equal(he(x), model(x))


def test_weighted_calls_are_hardened_with_their_own_weight_noise():
    torch.manual_seed(0)
    model = _paper("lenet5").eval()
    cfg = HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind="additive", sigma=0.0), frontend="export")
    he = fxharden.harden(model, config=cfg, example_inputs=(X,))
    weight_sites = sorted(fxharden.core.harden.weight_noise_modules(he))
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert weight_sites == sorted(f"{n}.weight" for n in layers)
    with torch.no_grad():
        clean = model(X)
        assert torch.equal(he(X), clean)
        fxharden.set_weight_noise(he, 0.05)
        assert not torch.allclose(he(X), clean, atol=1e-4)
        # the perturbation is of the weight: with activation noise off, a linear model's output moves
        # by x @ dW, whose std over draws follows sigma * |x|
        lin = nn.Linear(16, 1, bias=False)
        hl = fxharden.harden(lin, config=cfg, example_inputs=(torch.randn(2, 16),))
        fxharden.set_weight_noise(hl, 0.1)
        x = torch.randn(1, 16)
        outs = torch.stack([hl(x) for _ in range(4000)]).flatten() - lin(x).flatten()
        assert abs(float(outs.std()) / (0.1 * float(x.norm())) - 1) < 0.05


def test_batch_of_one_example_still_gives_a_dynamic_batch():
    model = _paper("lenet5").eval()
    he = fxharden.harden(model, frontend="export", example_inputs=X[:1])
    with torch.no_grad():
        assert torch.equal(he(X), model(X))


def test_auto_keeps_fx_when_it_traces_everything():
    model = _paper("lenet5")
    hm = fxharden.harden(model, example_inputs=(X,))
    assert fxharden.harden_report(hm).frontend == "fx"
    assert HardenConfig().frontend is Frontend.AUTO


def test_bad_input_is_a_clear_error():
    model = _paper("lenet5")
    with pytest.raises(ValueError, match="needs example_inputs"):
        fxharden.harden(model, frontend="export")
    with pytest.raises(TypeError, match="tuple of positional arguments"):
        fxharden.harden(model, frontend="export", example_inputs=[X])
    with pytest.raises(ExportError, match=r"(?s)called with \(Tensor\(4, 7\) float32\).*example_inputs are what"):
        fxharden.harden(model, frontend="export", example_inputs=(torch.randn(4, 7),))
    with pytest.raises(ValueError, match="frontend must be one of"):
        HardenConfig(frontend="jit")


def test_config_round_trips_the_frontend():
    from fxharden.core.config import config_from_dict, config_to_dict

    cfg = HardenConfig(frontend="export")
    assert config_from_dict(config_to_dict(cfg)).frontend is Frontend.EXPORT
    legacy = config_to_dict(HardenConfig())
    del legacy["frontend"]
    assert config_from_dict(legacy).frontend is Frontend.AUTO


def test_pickle_round_trip():
    model = _paper("lenet5").eval()
    he = fxharden.harden(model, bits=8, frontend="export", example_inputs=(X,), sigma=0.0)
    back = pickle.loads(pickle.dumps(he))
    with torch.no_grad():
        assert torch.equal(back(X), he(X))
    assert fxharden.noise_sites(back) == fxharden.noise_sites(he)


# ---------------------------------------------------------------------- Hugging Face transformers

V = 64


def _hf_zoo():
    T = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[lm]')")
    small = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return {
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**small, num_key_value_heads=2)),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**small, num_key_value_heads=2)),
        "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**small, num_key_value_heads=2)),
        "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(**small, num_key_value_heads=2, head_dim=8)),
        "phi": lambda: T.PhiForCausalLM(T.PhiConfig(**small)),
        "gpt_neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**small)),
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                       bos_token_id=0, eos_token_id=0)),
        "opt": lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=V, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                                    num_attention_heads=4, word_embed_proj_dim=32)),
        "bloom": lambda: T.BloomForCausalLM(T.BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=4)),
        "falcon": lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                             num_attention_heads=4)),
        "bert": lambda: T.BertForSequenceClassification(T.BertConfig(**small, num_labels=3)),
        "roberta": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**small, num_labels=3)),
        "distilbert": lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
            vocab_size=V, dim=32, hidden_dim=64, n_layers=2, n_heads=4, num_labels=3)),
        "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=V, d_model=32, d_ff=64, num_layers=2,
                                                              num_heads=4, d_kv=8)),
    }


HF_FAMILIES = ["llama", "mistral", "qwen2", "gemma", "phi", "gpt_neox", "gpt2", "opt", "bloom", "falcon", "bert",
               "roberta", "distilbert", "t5"]
BLOCK = re.compile(r"^(.*?\.(?:layers|layer|h|block)\.\d+)\.")


def _inputs(name, batch, length):
    ids = torch.randint(3, V, (batch, length))
    return {"input_ids": ids, "decoder_input_ids": ids} if name == "t5" else {"input_ids": ids}


@pytest.mark.zoo
@pytest.mark.parametrize("name", HF_FAMILIES)
def test_hugging_face_zoo_is_hardened_per_layer(name):
    torch.manual_seed(0)
    model = _hf_zoo()[name]().eval()
    hm = fxharden.harden(model, example_inputs=_inputs(name, 2, 8))
    report = fxharden.harden_report(hm)
    assert report.frontend == "export" and report.opaque == {} and "torch.export" in report.note
    per_block: dict = {}
    for site in report.noise_sites:
        m = BLOCK.match(site)
        if m:
            per_block[m.group(1)] = per_block.get(m.group(1), 0) + 1
    assert len(per_block) >= 2 and min(per_block.values()) >= 4, per_block
    x = _inputs(name, 3, 5)  # another batch size and length than the example
    with torch.no_grad():
        ref = model(**x, **({"use_cache": False} if name != "bert" and name != "roberta"
                            and name != "distilbert" else {})).logits
        out = hm(**x)
        assert type(out).__name__ == type(model(**x)).__name__
        scale = float(ref.abs().max())
        assert float((out.logits - ref).abs().max()) <= 1e-5 * scale
        fxharden.set_noise(hm, 0.2)
        assert float((hm(**x).logits - ref).abs().max()) > 1e-2 * scale


def test_llama_export_equals_the_module_route_at_8_bits():
    """Both routes quantize the same layers' weights (dynamic 8-bit) and put noise at the same
    layers: with noise off, the same logits."""
    torch.manual_seed(0)
    model = _hf_zoo()["llama"]().eval()
    x = _inputs("llama", 2, 8)
    he = fxharden.harden(model, bits=8, scale=None, example_inputs=x).eval()
    hm = fxharden.harden(model, bits=8, scale=None, frontend="fx").eval()
    assert fxharden.harden_report(hm).frontend == "fx"
    module_sites = [s for s in fxharden.noise_sites(hm)]
    assert set(module_sites) <= set(fxharden.noise_sites(he))  # module order vs execution order
    with torch.no_grad():
        assert torch.allclose(he(**x).logits, hm(**x).logits, atol=1e-6)


def test_a_shared_module_is_named_as_torch_fx_names_it():
    """A module reached under two attribute names is one layer called twice: the same site
    names as torch.fx (its first path, then ``_1``), exact at no-op."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4)
            self.act2 = self.act

        def forward(self, x):
            return self.act2(self.b(self.act(self.a(x))))

    model, x = Shared().eval(), torch.randn(2, 4)
    he = fxharden.harden(model, frontend="export", example_inputs=(x,))
    assert fxharden.noise_sites(he) == fxharden.noise_sites(fxharden.harden(model)) == ["input", "a", "act", "b",
                                                                                        "act_1"]
    with torch.no_grad():
        assert torch.equal(he(x), model(x))
