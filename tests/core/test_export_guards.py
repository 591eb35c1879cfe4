"""The export route never computes a wrong number: the hardened model checks the input shapes
its exported graph was recorded for (``fxharden.core.input_guard``), and every capture starts
from the model as the caller gave it (torch.export leaves fake tensors in plain attributes)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

import fxharden
from fxharden.core.input_guard import InputShapeError


class BranchOnLength(nn.Module):
    """Takes another path for sequences longer than 8 tokens."""

    def __init__(self):
        super().__init__()
        self.emb, self.lin = nn.Embedding(16, 8), nn.Linear(8, 8)

    def forward(self, ids):
        h = self.emb(ids)
        if ids.shape[1] > 8:
            h = h * 2
        return self.lin(F.dropout(h, 0.5, self.training))


def _ids(batch, length):
    return torch.randint(0, 16, (batch, length))


def test_a_branch_on_the_length_is_checked_in_both_modes_and_after_pickling():
    torch.manual_seed(0)
    model = BranchOnLength().eval()
    hm = fxharden.harden(model, frontend="export", example_inputs=(_ids(2, 12),))
    assert "ids.shape[1] (the sequence length) limited to >= 9 (example: 12) by torch.export" in \
        fxharden.harden_report(hm).note
    x = _ids(3, 20)
    with torch.no_grad():
        assert torch.equal(hm(x), model(x))  # other lengths on the branch taken are exact
    message = r"takes ids.shape\[1\] \(the sequence length\) >= 9 only, got 5: .*frontend='fx'"
    for mode in (True, False):
        with pytest.raises(InputShapeError, match=message):
            hm.train(mode)(_ids(3, 5))
    buffer = io.BytesIO()
    torch.save(hm.eval(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for mode in (True, False):
        with pytest.raises(InputShapeError, match=message):
            loaded.train(mode)(_ids(3, 5))


def test_inputs_of_one_length_must_agree():
    """Two inputs of one recorded length (ids and mask) are checked against each other."""

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(16, 4)

        def forward(self, ids, mask):
            return self.emb(ids) * mask[..., None]

    model = Masked()
    example = {"ids": _ids(2, 6), "mask": torch.ones(2, 6, dtype=torch.long)}  # integer: any length
    hm = fxharden.harden(model, frontend="export", example_inputs=example)
    ids, mask = _ids(3, 9), torch.randint(0, 2, (3, 9))
    assert torch.equal(hm(ids=ids, mask=mask), model(ids, mask))
    with pytest.raises(InputShapeError, match=r"ids.shape\[1\] == mask.shape\[1\] only .* got 9 and 7"):
        hm(ids=ids, mask=mask[:, :7])


def test_a_recurrent_hugging_face_family_is_fixed_at_its_length_and_says_so():
    """Mamba's CPU scan is unrolled over the example's positions: the hardened model equals the
    plain one at that length and refuses the others, naming the length and the way out."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=32, hidden_size=8, state_size=4, num_hidden_layers=1, expand=2, conv_kernel=2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hm = fxharden.harden(model, example_inputs={"input_ids": torch.randint(0, 32, (2, 4))}).eval()
    report = fxharden.harden_report(hm)
    assert report.frontend == "export"
    assert "input_ids.shape[1] (the sequence length) fixed at 4 by torch.export" in report.note
    with torch.no_grad():
        x = torch.randint(0, 32, (3, 4))
        assert torch.equal(hm(input_ids=x).logits, model(input_ids=x, use_cache=False).logits)
        for length in (3, 6):
            with pytest.raises(InputShapeError, match=r"input_ids.shape\[1\] \(the sequence length\) = 4 only, "
                                                      rf"got {length}: .*example_inputs of the shape you will use"):
                hm(input_ids=torch.randint(0, 32, (3, length)))


def test_phi3_longrope_beyond_its_original_length_equals_the_plain_model():
    """LongRoPE keeps ``long_inv_freq`` in a plain attribute: each export must start without the
    fake tensor the one before left there, so both modes export and the long factors apply."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Phi3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=64, original_max_position_embeddings=16, pad_token_id=0, bos_token_id=0,
        eos_token_id=0, attn_implementation="eager",
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [3.0, 5.0, 7.0, 9.0]})
    model = transformers.Phi3ForCausalLM(config).eval()
    hm = fxharden.harden(model, example_inputs={"input_ids": torch.randint(1, 64, (2, 8))}).eval()
    assert fxharden.harden_report(hm).frontend == "export"
    with torch.no_grad():
        for length in (24, 5):  # beyond original_max_position_embeddings, then within
            x = torch.randint(1, 64, (2, length))
            assert torch.equal(hm(input_ids=x).logits, model(input_ids=x, use_cache=False).logits)


class LazyTable(nn.Module):
    """Builds a table on its first call and keeps it in a plain attribute."""

    def __init__(self, data_dependent=False):
        super().__init__()
        self.lin, self.data_dependent = nn.Linear(4, 4), data_dependent

    def forward(self, x):
        n = int(x.shape[-1])  # torch.fx cannot trace this
        if getattr(self, "table", None) is None:
            self.table = torch.linspace(0.5, 1.5, n)
        if self.data_dependent and bool(x.sum() > 0):  # torch.export cannot record this branch
            x = x + 1
        return self.lin(x * self.table)


def _fake_attributes(*models):
    return [(type(m).__name__, k) for model in models for m in model.modules()
            for k, v in vars(m).items() if isinstance(v, FakeTensor)]


@pytest.mark.parametrize("data_dependent", [False, True], ids=["exported", "export-fails"])
def test_a_plain_tensor_attribute_set_in_forward_leaves_no_fake_tensor(data_dependent):
    """Exported, the model is exact; when torch.export fails, the module route runs on a model
    the failed export did not touch."""
    torch.manual_seed(0)
    model, x = LazyTable(data_dependent).eval(), torch.rand(3, 4)
    hm = fxharden.harden(model, example_inputs=(x,)).eval()
    assert fxharden.harden_report(hm).frontend == ("fx" if data_dependent else "export")
    assert _fake_attributes(model, hm) == [] and not hasattr(model, "table")
    with torch.no_grad():
        assert torch.equal(hm(x), model(x))
