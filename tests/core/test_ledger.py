"""The parameter ledger: after ``harden``, every parameter of the model is hardened at a named
site or listed in ``harden_report(hm).skipped`` with its reason; no weight matrix is left out
silently."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxharden
from fxharden import WeightNoiseConfig
from fxharden.core.harden import weight_noise_modules

V = 64


def _timm(name):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name, num_classes=10)


def _hf(name):
    T = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[lm]')")
    small = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2)
    return {
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**small)),
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=16,
                                                       bos_token_id=0, eos_token_id=0)),
        "mixtral": lambda: T.MixtralForCausalLM(T.MixtralConfig(**small, num_local_experts=4, num_experts_per_tok=2,
                                                                tie_word_embeddings=False)),
    }[name]


def _paper(name):
    from fxharden.zoo import networks

    return getattr(networks, name)


def _torchvision(name):
    tv = pytest.importorskip("torchvision")
    return lambda: getattr(tv.models, name)(num_classes=10)


IMAGE, SMALL_IMAGE = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)
IDS = {"input_ids": torch.randint(3, V, (2, 6))}
TOKENS = r"cls_token|pos_embed"
CASES = {
    # name: (source, builder name, example input, frontends, the matrices left as they are (regex, why))
    "test_vit": (_timm, "test_vit", IMAGE, ("fx", "export"), TOKENS),  # added to activations
    "test_resnet": (_timm, "test_resnet", IMAGE, ("fx",), None),
    "test_efficientnet": (_timm, "test_efficientnet", IMAGE, ("fx",), None),
    "resnet18": (_torchvision, "resnet18", SMALL_IMAGE, ("fx",), None),
    "lenet5": (_paper, "lenet5", SMALL_IMAGE, ("fx", "export"), None),
    "paper_resnet18": (_paper, "resnet18", SMALL_IMAGE, ("fx",), None),
    "llama": (_hf, "llama", IDS, ("fx",), None),  # its export route: as mixtral's, without experts
    "gpt2": (_hf, "gpt2", IDS, ("fx", "export"), None),
    "mixtral": (_hf, "mixtral", IDS, ("fx", "export"), None),
}


@pytest.mark.parametrize("name,frontend", [(n, f) for n, case in CASES.items() for f in case[3]])
def test_every_parameter_is_hardened_at_a_site_or_skipped_with_a_reason(name, frontend):
    source, builder, example, _, left = CASES[name]
    torch.manual_seed(0)
    model = source(builder)().eval()
    example = example if isinstance(example, dict) else (example,)
    hm = fxharden.harden(model, bits=8, weight_noise=WeightNoiseConfig("additive", 0.0), frontend=frontend,
                         example_inputs=example if frontend == "export" else None)
    report = fxharden.harden_report(hm)
    perturbed = set(weight_noise_modules(hm))
    params = dict(model.named_parameters())
    assert set(report.ledger) == set(params)
    unaccounted = []
    for pname, entry in report.ledger.items():
        if entry.startswith("hardened at "):
            site = entry[len("hardened at "):].removesuffix(" (with its layer)")
            assert f"{site}.weight" in perturbed, (pname, entry)  # the named site perturbs its weight
            assert pname not in report.skipped
        else:
            assert entry and report.skipped[pname] == entry
            if params[pname].dim() >= 2 and not (left and re.fullmatch(left, pname)):
                unaccounted.append((pname, entry))
    assert not unaccounted, unaccounted


class _BufferWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("w", torch.randn(4, 8))
        self.gate = nn.Parameter(torch.randn(4, 8))  # a matrix multiplied by hand: no weighted call

    def forward(self, x):
        return F.linear(self.fc(x), self.w) + (x @ self.gate.t())


def test_unhardened_matrices_and_buffer_weights_are_listed_with_their_reason():
    hm = fxharden.harden(_BufferWeight(), bits=8)
    report = fxharden.harden_report(hm)
    assert report.ledger["fc.weight"] == "hardened at fc"
    assert report.ledger["fc.bias"] == "hardened at fc (with its layer)"
    assert "matmul" in report.ledger["gate"] and report.skipped["gate"] == report.ledger["gate"]
    assert "buffer" in report.skipped["w"] and "linear" in report.skipped["w"]
    plain = fxharden.harden_report(fxharden.harden(_BufferWeight()))  # no weight is hardened: no list
    assert plain.skipped == {} and set(plain.ledger.values()) == {"the config neither quantizes nor perturbs weights"}
