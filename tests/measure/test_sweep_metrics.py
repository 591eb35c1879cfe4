"""Sweeps of other metrics than top-1: closed forms on a model with known logits, bad input,
and inputs that are not one tensor."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxharden
from fxharden.measure.scores import resolve_metric


class Logits(nn.Module):
    """Its input is its logits: every metric of the clean model has a closed form."""

    def forward(self, x):
        return x * 1.0


torch.manual_seed(0)
N, V = 64, 10
LOGITS = torch.randn(N, V) * 3
LABELS = torch.where(torch.rand(N) < 0.7, LOGITS.argmax(1), torch.randint(0, V, (N,)))  # mostly right
FAST = dict(sigmas=[0.3, 3.0, 30.0], repeats=2, batch_size=32, device="cpu")


def _clean(metric):
    res = fxharden.sweep(Logits(), (LOGITS, LABELS), metric=metric, **FAST)
    return res, res.metric_info.get("clean_values", [res.clean_accuracy])[0]


@pytest.mark.parametrize("metric, expected", [
    ("top5", lambda: (LOGITS.topk(5, 1).indices == LABELS[:, None]).any(1).double().mean().item()),
    ("loss", lambda: F.cross_entropy(LOGITS.double(), LABELS).item()),
    ("perplexity", lambda: math.exp(F.cross_entropy(LOGITS.double(), LABELS).item())),
    ("token_accuracy", lambda: (LOGITS.argmax(1) == LABELS).double().mean().item()),
])
def test_metrics_of_known_logits_match_their_closed_form(metric, expected):
    res, clean = _clean(metric)
    assert res.metric == metric and clean == pytest.approx(expected(), rel=1e-5)
    assert res.fit is not None and len(res.points) == 3
    if metric in ("loss", "perplexity"):  # lower is better: fit scores 1 - loss / ln V, floor (chance) 0
        assert res.chance == 0.0 and res.metric_info["floor"] == pytest.approx(
            math.log(V) if metric == "loss" else V)
        assert res.clean_accuracy == pytest.approx(1 - F.cross_entropy(LOGITS.double(), LABELS).item() / math.log(V))
    else:
        assert res.chance == pytest.approx(min(5, V) / V if metric == "top5" else 1 / V)
    means = [p.mean for p in res.site_points()]
    assert means[-1] < means[0]  # noise degrades the score the fit sees, whatever the direction


def test_top1_is_the_classic_sweep():
    res = fxharden.sweep(Logits(), (LOGITS, LABELS), **FAST)
    assert res.metric == "top1" and "metric" not in res.to_dict()
    assert res.clean_accuracy == pytest.approx((LOGITS.argmax(1) == LABELS).double().mean().item())
    assert all(p.scores is None and isinstance(p.correct[0][0], int) for p in res.points)


def test_callable_metric_with_a_measured_floor():
    def hits(out, y):
        return (out.argmax(1) == y).float()

    res, clean = _clean(hits)
    assert res.metric == "hits" and clean == pytest.approx((LOGITS.argmax(1) == LABELS).float().mean().item())
    assert res.metric_info["floor_measured"] and 0 <= res.metric_info["floor"] < clean


def test_torchmetrics_metric():
    torchmetrics = pytest.importorskip("torchmetrics", reason="torchmetrics is not installed")
    res, clean = _clean(torchmetrics.classification.MulticlassAccuracy(num_classes=V, average="micro"))
    assert clean == pytest.approx((LOGITS.argmax(1) == LABELS).float().mean().item(), rel=1e-6)


def test_unknown_metric_lists_the_choices():
    with pytest.raises(ValueError, match="unknown metric 'top3'; choose one of top1, top5, loss, perplexity"):
        fxharden.sweep(Logits(), (LOGITS, LABELS), metric="top3", **FAST)


def test_callable_returning_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"must return one score per sample, a tensor of shape \(32,\)"):
        fxharden.sweep(Logits(), (LOGITS, LABELS), metric=lambda out, y: (out.argmax(1) == y).float().mean(),
                       **FAST)
    with pytest.raises(ValueError, match="do not match"):
        resolve_metric("loss").sums(LOGITS, LABELS[:3])


# ---------------------------------------------------------------------- inputs that are not one tensor

class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 8)
        self.head = nn.Linear(8, V)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask[..., None]
        return {"logits": self.head(h)}


def test_batches_of_dicts_are_replicated_per_group():
    torch.manual_seed(1)
    model = TwoInputs().eval()
    ids = torch.randint(0, V, (8, 6))
    mask = torch.ones_like(ids)
    batches = [({"input_ids": ids[:4], "attention_mask": mask[:4]}, ids[:4]),
               ({"input_ids": ids[4:], "attention_mask": mask[4:]}, ids[4:])]
    res = fxharden.sweep(model, batches, metric="loss", sigmas=[0.1, 10.0], repeats=2, device="cpu",
                         points_per_forward=4)
    logits = model(ids, mask)["logits"]
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, V).double(), ids[:, 1:].reshape(-1)).item()
    assert res.metric_info["clean_values"][0] == pytest.approx(expected, rel=1e-5)
    assert res.site_points()[-1].values[0][0] > res.metric_info["clean_values"][0]


def test_perplexity_sweep_of_a_causal_lm():
    tf = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[lm]')")
    torch.manual_seed(0)
    llama = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=64)).eval()
    with torch.no_grad():
        llama.lm_head.weight.mul_(40)  # a confident model: its own greedy text has a low perplexity
        ids = torch.randint(0, 128, (16, 1))
        for _ in range(11):
            ids = torch.cat([ids, llama(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    res = fxharden.sweep(llama, [(ids[:8], ids[:8]), (ids[8:], ids[8:])], metric="perplexity", bits=8, scale=None,
                         sigmas=[0.01, 0.1, 1.0, 10.0], repeats=2, device="cpu")
    info = res.metric_info
    assert res.metric == "perplexity" and info["floor"] == pytest.approx(128)
    assert info["clean_values"][0] < 10 < res.site_points()[-1].values[0][0]
    assert res.fit is not None and res.fit.status is not None
