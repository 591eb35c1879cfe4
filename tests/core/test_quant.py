"""The quantizer against the closed form of Eq. 3-5, and its properties."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import fxharden
from fxharden.core.quant import MIN_STEP, ActQuant, WeightQuant, fake_quantize, frozen_weights, qrange


def reference(x: np.ndarray, s: float, bits: int, signed: bool) -> np.ndarray:
    """Eq. 5 in float64 numpy: clamp(round(x/s), qmin, qmax) * s (zero point 0)."""
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return np.clip(np.rint(x / s), qmin, qmax) * s


def test_qrange_closed_form():
    assert qrange(8, True) == (-128, 127)
    assert qrange(8, False) == (0, 255)
    assert qrange(2, True) == (-2, 1)
    assert qrange(16, False) == (0, 65535)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("s", [0.25, 1.0, 8.0])  # powers of two: x/s is exact, no tie ambiguity
def test_matches_closed_form(bits, signed, s):
    x = torch.linspace(-3 * s * 2**bits, 3 * s * 2**bits, 5001)
    qmin, qmax = qrange(bits, signed)
    y = fake_quantize(x, torch.tensor(s), qmin, qmax)
    np.testing.assert_array_equal(y.numpy(), reference(x.double().numpy(), s, bits, signed).astype(np.float32))


def test_composite_path_equals_fused_path():
    x = torch.randn(10_000) * 5
    s = torch.tensor(0.37)
    fused = fake_quantize(x, s, -8, 7)
    learned = fake_quantize(x, s.clone().requires_grad_(), -8, 7)
    assert torch.equal(fused, learned.detach())


def test_per_channel_matches_per_tensor_rows():
    w = torch.randn(4, 3, 3, 3)
    scales = torch.tensor([0.01, 0.1, 0.5, 2.0])
    y = fake_quantize(w, scales, -128, 127, axis=0)
    for c in range(4):
        assert torch.equal(y[c], fake_quantize(w[c], scales[c], -128, 127))


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    xs=st.lists(finite, min_size=1, max_size=64),
    s=st.floats(min_value=2**-10, max_value=128.0, allow_nan=False, width=32),
    bits=st.integers(min_value=2, max_value=16),
    signed=st.booleans(),
)
def test_properties(xs, s, bits, signed):
    x = torch.tensor(xs, dtype=torch.float32)
    scale = torch.tensor(s, dtype=torch.float32)
    s = float(scale)
    qmin, qmax = qrange(bits, signed)
    y = fake_quantize(x, scale, qmin, qmax)
    k = y.double() / s
    # on the grid: an integer multiple of s within [qmin, qmax]
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert (k.round() >= qmin).all() and (k.round() <= qmax).all()
    # idempotent
    assert torch.equal(fake_quantize(y, scale, qmin, qmax), y)
    # rounding error <= s/2 inside the clipping range, clipped to the range edge outside
    lo, hi = qmin * s, qmax * s
    inside = (x >= lo) & (x <= hi)
    err = (y.double() - x.double()).abs()
    assert (err[inside] <= s / 2 * (1 + 1e-5) + 1e-6 * x.double().abs()[inside]).all()
    assert torch.allclose(y[x > hi + s / 2].double(), torch.tensor(hi, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(y[x < lo - s / 2].double(), torch.tensor(lo, dtype=torch.float64), rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(2, 16), signed=st.booleans(), learned=st.booleans())
def test_ste_gradient_is_one_inside_and_zero_outside(bits, signed, learned):
    s = 0.5
    qmin, qmax = qrange(bits, signed)
    inside = torch.tensor([qmin * s + 0.1, 0.3 * s, qmax * s - 0.1]) if signed else torch.tensor([0.1, qmax * s - 0.1])
    outside = torch.tensor([qmax * s + 3 * s, qmin * s - 3 * s])
    x = torch.cat([inside, outside]).requires_grad_()
    scale = torch.tensor(s, requires_grad=learned)
    fake_quantize(x, scale, qmin, qmax).sum().backward()
    expected = torch.cat([torch.ones_like(inside), torch.zeros_like(outside)])
    assert torch.equal(x.grad, expected)


def test_weight_quant_per_channel_step_from_range():
    w = torch.randn(8, 4, 3, 3)
    wq = WeightQuant(4, axis=0)
    expected_step = w.abs().amax(dim=(1, 2, 3)) / 7
    assert torch.allclose(wq.step(w), expected_step)
    out = wq(w)
    ref = np.stack([reference(w[c].double().numpy(), float(expected_step[c]), 4, True) for c in range(8)])
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)
    # the channel maximum is representable exactly: max |w| maps to qmax
    assert torch.allclose(out.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))


def test_weight_quant_caches_only_inside_frozen_weights():
    w = torch.nn.Parameter(torch.randn(5, 3))
    wq = WeightQuant(8, axis=None)
    with torch.no_grad(), frozen_weights(wq):
        first = wq(w)
        assert wq(w) is first  # cached
        w.mul_(2)  # in-place update bumps the version counter
        second = wq(w)
    assert torch.allclose(second, 2 * first, rtol=1e-6)
    assert wq._cache == {}  # dropped when the block ends


def test_in_place_weight_change_through_data_is_seen():
    """``weight.data.zero_()`` does not bump the version counter: outside a frozen block the
    next eval forward must still see it (reference: F.linear with a zero weight = the bias)."""
    hm = fxharden.harden(nn.Sequential(nn.Linear(4, 3)), bits=8, scale=1.0).eval()
    x = torch.randn(6, 4)
    with torch.no_grad():
        hm(x)
        hm.get_submodule("0").weight.data.zero_()
        out = hm(x)
    bias = hm.get_submodule("0").bias.detach()
    # the output passes no quantizer after the linear layer, so it is the bias exactly
    assert torch.equal(out, bias.expand(6, 3))


def test_inference_cache_is_never_used_by_a_training_forward():
    hm = fxharden.harden(nn.Sequential(nn.Linear(4, 3)), bits=8, scale=1.0)
    hm.get_submodule("0").weight.requires_grad_(False)  # a frozen layer
    x = torch.randn(6, 4)
    with frozen_weights(hm), torch.inference_mode():
        hm.eval()(x)
    with frozen_weights(hm):  # even inside one block: inference tensors stay in inference mode
        with torch.inference_mode():
            hm(x)
        x = x.clone().requires_grad_()
        hm.train()(x).sum().backward()
    w = hm.get_submodule("0").hardened_weight()
    assert torch.allclose(x.grad, w.sum(0).expand(6, 4))  # d(sum(x W^T))/dx = column sums of W


def test_act_quant_constant_step_never_changes():
    q = ActQuant(8, signed=False, step=2.0)
    q.train()
    for _ in range(5):
        q(torch.rand(100) * 1000)
    assert float(q.scale) == 2.0
    y = q(torch.tensor([0.9, 1.1, 3.0, 1000.0]))
    assert y.tolist() == [0.0, 2.0, 4.0, 510.0]


def test_act_quant_statistics_then_fixed():
    q = ActQuant(8, signed=True, step=None, calibration_steps=2)
    q.train()
    q(torch.tensor([1.0, -2.0]))
    assert math.isclose(float(q.scale), 2.0 / 127, rel_tol=1e-6)
    q(torch.tensor([5.0]))
    assert math.isclose(float(q.scale), 5.0 / 127, rel_tol=1e-6)
    q(torch.tensor([100.0]))  # calibration over: step fixed
    assert math.isclose(float(q.scale), 5.0 / 127, rel_tol=1e-6)


def test_act_quant_eval_calibrates_its_first_batches_when_never_trained():
    q = ActQuant(4, signed=False, step=None, calibration_steps=2).eval()
    q(torch.tensor([0.0, 3.0]))
    assert math.isclose(float(q.scale), 3.0 / 15, rel_tol=1e-6)
    q(torch.tensor([0.0, 6.0]))  # running max over the first calibration_steps batches
    assert math.isclose(float(q.scale), 6.0 / 15, rel_tol=1e-6)
    q(torch.tensor([0.0, 30.0]))  # then fixed
    assert math.isclose(float(q.scale), 6.0 / 15, rel_tol=1e-6)


def _peak(x: list, signed: bool) -> float:
    return max(abs(v) for v in x) if signed else max(max(x), 0.0)


def _real(x: list, signed: bool) -> bool:
    return _peak(x, signed) > 0 and min(x) != max(x)


batch = st.lists(st.floats(min_value=-100, max_value=100, allow_nan=False, width=32), min_size=2, max_size=16)


@settings(max_examples=100, deadline=None)
@given(
    smoke=st.lists(st.tuples(st.floats(min_value=-100, max_value=100, allow_nan=False, width=32),
                             st.integers(1, 8)), min_size=1, max_size=3),
    real=st.lists(batch, min_size=1, max_size=5),
    bits=st.integers(2, 16), signed=st.booleans(), training=st.booleans(), steps=st.integers(1, 4),
)
def test_degenerate_batches_never_count_as_calibration(smoke, real, bits, signed, training, steps):
    """Constant batches (zeros, a smoke test) before real data leave the step that the real
    data alone give: the hand count max(peak of the first ``steps`` real batches) / qmax."""
    real = [x for x in real if _real(x, signed)]
    assume(real)
    q = ActQuant(bits, signed, step=None, calibration_steps=steps).train(training)
    for value, n in smoke:
        q(torch.full((n,), value))
    assert q._observed == 0  # nothing counted
    for x in real:
        q(torch.tensor(x))
    qmax = qrange(bits, signed)[1]
    expected = max(_peak(x, signed) for x in real[:steps]) / qmax
    assert math.isclose(float(q.scale), max(expected, MIN_STEP), rel_tol=1e-6)
    assert q._observed == min(len(real), steps) == int(q.observed)


def test_dynamic_scale_is_learned():
    q = ActQuant(4, signed=False, step=None, learn=True, calibration_steps=1).train()
    x = torch.rand(1000) * 4
    q(x)
    assert isinstance(q.scale, torch.nn.Parameter)
    opt = torch.optim.SGD(q.parameters(), lr=0.01)
    before = float(q.scale.detach())
    for _ in range(5):
        opt.zero_grad()
        ((q(x) - x * 1.5) ** 2).mean().backward()
        assert q.scale.grad is not None and q.scale.grad != 0
        opt.step()
    assert float(q.scale) != before


def test_act_quant_state_dict_round_trip():
    a = ActQuant(8, signed=True, step=None, calibration_steps=3).train()
    a(torch.randn(10) * 3)
    b = ActQuant(8, signed=True, step=None, calibration_steps=3).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(50) * 10
    assert torch.equal(a.eval()(x), b(x))  # b does not re-calibrate: it has seen data


class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(500, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


def test_token_ids_are_never_quantized():
    torch.manual_seed(0)
    model = TokenModel().eval()
    ids = torch.tensor([[18, 358, 479], [1, 2, 499]])
    hm = fxharden.harden(model, bits=8, scale=1.0).eval()
    seen = {}
    hm.emb.register_forward_pre_hook(lambda m, a: seen.__setitem__("ids", a[0]))
    out = hm(ids)
    assert torch.equal(seen["ids"], ids)  # the ids reach the embedding as they are
    # reference: the rows of the quantized embedding table (an embedding is a weight layer),
    # then the quantized head
    rows = nn.functional.embedding(ids, hm.emb.hardened_weight())
    ref = nn.functional.linear(rows.mean(1), hm.head.hardened_weight(), model.head.bias)
    assert torch.allclose(out, ref, atol=1e-6)
    q = ActQuant(8, signed=True)
    assert torch.equal(q(ids), ids) and q._observed == 0  # no calibration on ids either


@settings(max_examples=100, deadline=None)
@given(
    xs=st.lists(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32), min_size=1, max_size=64),
    s=st.floats(min_value=2**-10, max_value=128.0, allow_nan=False, width=32),
    bits=st.integers(min_value=2, max_value=16),
    signed=st.booleans(),
    zero_point=st.integers(min_value=-3, max_value=3),
)
def test_bit_for_bit_like_pytorch_fused_kernel(xs, s, bits, signed, zero_point):
    """PyTorch's fused fake-quantize kernel is the reference: values and gradient mask agree
    exactly, with and without autograd, per tensor and per channel."""
    qmin, qmax = qrange(bits, signed)
    zero_point = min(max(zero_point, qmin), qmax)
    x = torch.tensor(xs, dtype=torch.float32)
    scale = torch.tensor(s, dtype=torch.float32)
    ref_x = x.clone().requires_grad_()
    ref = torch.fake_quantize_per_tensor_affine(ref_x, scale, torch.tensor(zero_point, dtype=torch.int32), qmin, qmax)
    ref.backward(torch.arange(len(xs), dtype=torch.float32))
    with torch.no_grad():
        assert torch.equal(fake_quantize(x, scale, qmin, qmax, zero_point), ref.detach())
    ours_x = x.clone().requires_grad_()
    ours = fake_quantize(ours_x, scale, qmin, qmax, zero_point)
    ours.backward(torch.arange(len(xs), dtype=torch.float32))
    assert torch.equal(ours.detach(), ref.detach()) and torch.equal(ours_x.grad, ref_x.grad)
    # per channel: two channels with steps s and 3s
    xc = torch.stack([x, x])
    scales = torch.tensor([s, 3 * s], dtype=torch.float32)
    zps = torch.full((2,), zero_point, dtype=torch.int32)
    refc = torch.fake_quantize_per_channel_affine(xc, scales, zps, 0, qmin, qmax)
    with torch.no_grad():
        assert torch.equal(fake_quantize(xc, scales, qmin, qmax, zero_point, axis=0), refc)
