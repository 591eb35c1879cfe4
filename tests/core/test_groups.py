"""Batch groups: one forward pass with one sigma per group must equal separate forward passes."""

import math

import pytest
import torch
from torch import nn

import fxharden
from fxharden.core.config import HardenConfig, WeightNoiseConfig, WeightNoiseKind


class SequenceFirst(nn.Module):
    """Takes (N, L, E), works sequence-first (L, N, E) inside, like older NLP code."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.act(self.fc(x.transpose(0, 1)))  # (L, N, E): the batch is dim 1 here
        return self.head(h.transpose(0, 1).mean(1))


def test_sequence_first_site_splits_the_batch_not_the_sequence():
    torch.manual_seed(0)
    model = SequenceFirst().eval()
    hm = fxharden.harden(model, bits=None).eval()
    x = torch.randn(6, 4, 4)  # 6 = 2 groups of 3 images; L = 4 would also split in 2
    fxharden.set_noise(hm, [0.0, 0.5])
    with torch.no_grad():
        out, clean = hm(x), model(x)
    assert hm.get_submodule("fxharden.act").batch_dim == 1
    assert torch.equal(out[:3], clean[:3])  # group 0 (sigma 0) is exactly the eager output
    assert not torch.allclose(out[3:], clean[3:], atol=1e-3)  # group 1 is noisy


class NoBatchAtSite(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc(x.mean(0)).sum()  # fc sees a tensor without the batch, summed over: no broadcast


def test_site_without_batch_dimension_refuses_groups_with_a_clear_message():
    hm = fxharden.harden(NoBatchAtSite(), bits=None).eval()
    fxharden.set_noise(hm, [0.0, 0.1])
    with pytest.raises(ValueError, match=r"noise site 'fc'.*batch dimension.*--points-per-forward 1"):
        hm(torch.randn(4, 4))
    fxharden.set_noise(hm, 0.1)
    hm(torch.randn(4, 4))  # one sigma: fine


class SharedPositions(nn.Module):
    """Token embeddings plus two tensors the batch shares, as in GPT-2 and BERT: a position
    embedding of ``(1, L)`` position ids (``(1, L, E)``) and a projected table (``(L, E)``)."""

    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(16, 8), nn.Embedding(5, 8)
        self.table = nn.Parameter(torch.randn(5, 8))
        self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 16)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        return self.head(self.wte(ids) + self.wpe(pos) + self.proj(self.table))


def test_a_site_the_batch_shares_gets_each_groups_own_sigma_as_if_the_group_ran_alone():
    """Reference: each group on its own rows with a single sigma, from the same seed; groups
    share one draw index, so each one consumes the very draw its lone run does."""
    from fxharden.core.noise import BatchBroadcast, Noise

    torch.manual_seed(0)
    model = SharedPositions().eval()
    hm = fxharden.harden(model, bits=None).eval()
    ids = torch.randint(0, 16, (2, 5)).repeat(3, 1)  # 3 groups of the same 2 sequences
    sigmas = [0.3, 0.0, 0.7]
    for m in hm.modules():
        if isinstance(m, Noise):
            m.set_sigma(sigmas, draws=[0, 0, 0])
    fxharden.seed_noise(hm, 5)
    with torch.no_grad():
        grouped = hm(ids)
    assert hm.get_submodule("fxharden.wpe").broadcast is BatchBroadcast.LEADING_ONE
    assert hm.get_submodule("fxharden.proj").broadcast is BatchBroadcast.NO_BATCH_DIM
    for r, s in enumerate(sigmas):
        fxharden.set_noise(hm, s)
        fxharden.seed_noise(hm, 5)
        with torch.no_grad():
            alone = hm(ids[:2])
        assert torch.allclose(grouped[2 * r:2 * r + 2], alone, atol=1e-6), r
    with torch.no_grad():
        assert torch.equal(grouped[2:4], model(ids[:2]))  # sigma 0: the plain model


def test_a_shared_site_draws_per_group_and_shares_the_draw_within_a_group():
    """Only ``wpe`` is noisy: the output moves by ``head.weight @ noise``, one noise per group
    (N(0, sigma^2) entries, independent between groups) and the same on every row of a group."""
    torch.manual_seed(0)
    model = SharedPositions().eval()
    hm = fxharden.harden(model, bits=None).eval()
    ids = torch.randint(0, 16, (3, 5)).repeat(4, 1)  # 4 groups of 3 rows
    fxharden.set_noise(hm, {"wpe": [0.5, 0.5, 0.5, 0.5]})
    with torch.no_grad():
        delta = (hm(ids) - model(ids)).double()
    w = model.head.weight.detach().double()
    noise = torch.linalg.lstsq(w, delta.reshape(-1, 16).T).solution.T.reshape(4, 3, 5, 8)
    assert torch.allclose(noise, noise[:, :1].expand_as(noise), atol=1e-5)  # the group's rows: one draw
    per_group = noise[:, 0]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.allclose(per_group[a], per_group[b], atol=1e-2)
    assert abs(float(per_group.std()) - 0.5) < 0.5 * 5 / math.sqrt(2 * per_group.numel())


def weight_noisy(model, sigma, kind=WeightNoiseKind.ADDITIVE):
    cfg = HardenConfig(quant=None, weight_noise=WeightNoiseConfig(kind=kind, sigma=sigma))
    return fxharden.harden(model, config=cfg).eval()


def test_grouped_weight_noise_draws_one_weight_per_group():
    """Reference: solve each group's outputs for the weight that produced them (least squares)."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 5, bias=False)
    hm = weight_noisy(nn.Sequential(layer), 0.1)
    groups, n = 4, 40
    fxharden.set_weight_noise(hm, [0.1, 0.1, 0.0, 0.1])
    x = torch.randn(groups * n, 6, dtype=torch.float64).float()
    with torch.no_grad():
        y = hm(x)
    w = layer.weight.detach().double()
    effective = [torch.linalg.lstsq(x[r * n:(r + 1) * n].double(), y[r * n:(r + 1) * n].double()).solution.T
                 for r in range(groups)]
    assert torch.allclose(effective[2], w, atol=1e-5)  # sigma 0: the weight itself
    deltas = [effective[r] - w for r in (0, 1, 3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(deltas[a], deltas[b], atol=1e-3)  # independent draws per group
    d = torch.cat([t.flatten() for t in deltas])
    assert abs(float(d.std()) - 0.1) < 0.1 * 5 / math.sqrt(2 * d.numel())  # N(0, 0.1^2) entries


class Attend(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("sigmas", [0.1, [0.1, 0.0, 0.1]], ids=["one group", "three groups"])
def test_held_weight_draws_serve_every_forward_of_the_block(sigmas):
    """Within ``weight_draws_held`` every forward uses the first forward's weights (per group);
    outside, and after the block, every forward draws anew."""
    from fxharden.core.layers import weight_draws_held
    torch.manual_seed(0)
    layer = nn.Linear(6, 5, bias=False)
    hm = weight_noisy(nn.Sequential(layer), 0.1)
    attn = weight_noisy(Attend().eval(), 0.1)
    fxharden.set_weight_noise(hm, sigmas)
    fxharden.set_weight_noise(attn, sigmas)
    groups = 1 if isinstance(sigmas, float) else len(sigmas)
    w = layer.weight.detach().double()

    def effective(n):  # the weight each group computed with, solved from its outputs
        x = torch.randn(groups * n, 6)
        with torch.no_grad():
            y = hm(x)
        return [torch.linalg.lstsq(x[r * n:(r + 1) * n].double(), y[r * n:(r + 1) * n].double()).solution.T
                for r in range(groups)]

    q = torch.randn(groups * 3, 4, 8)
    with torch.no_grad(), weight_draws_held(hm), weight_draws_held(attn):
        first, again = effective(40), effective(20)  # another batch size: the same chips
        a1, a2 = attn(q), attn(q)
    after = effective(40)
    with torch.no_grad():
        a3 = attn(q)
    for r, s in enumerate([sigmas] if groups == 1 else sigmas):
        assert torch.allclose(first[r], again[r], atol=1e-5), r
        if s == 0:
            assert torch.allclose(first[r], w, atol=1e-5) and torch.allclose(after[r], w, atol=1e-5)
        else:
            assert not torch.allclose(first[r], w, atol=1e-3)  # noisy ...
            assert not torch.allclose(first[r], after[r], atol=1e-3)  # ... and drawn again after the block
    assert torch.equal(a1, a2) and not torch.allclose(a1, a3, atol=1e-4)
    assert "_held" not in hm.get_submodule("0").__dict__  # dropped: the next forward draws
