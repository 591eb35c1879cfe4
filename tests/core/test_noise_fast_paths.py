"""The noise module's fast paths change nothing but speed: draws split over threads (lanes),
noise added in place to tensors nobody else reads, draws into reused buffers."""

import math
import multiprocessing

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxharden
from fxharden.core.noise import LANE_MIN, LANES, Noise
from fxharden.zoo.models import build_model


def _draw(threads: int, n: int) -> torch.Tensor:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mod = Noise("x", seed=5)
        mod.set_sigma(1.0)
        with torch.inference_mode():
            return torch.cat([mod(torch.zeros(n)), mod(torch.zeros(n))])  # two calls: the streams advance
    finally:
        torch.set_num_threads(saved)


def test_lane_draws_do_not_depend_on_the_thread_count():
    n = LANES * LANE_MIN + 3  # parts of unequal size
    one, two = _draw(1, n), _draw(2, n)
    assert torch.equal(one, two)
    assert not torch.equal(one[:n], one[n:])


def test_lanes_are_independent_streams():
    """The LANES parts of one draw are uncorrelated with each other (and not shifted copies):
    sample correlation of every pair within 5 standard errors of 0."""
    n = LANES * 1_000_000
    z = _draw(2, n)[:n].double().view(LANES, -1)
    m = z.shape[1]
    for a in range(LANES):
        for b in range(a + 1, LANES):
            assert abs(float((z[a] * z[b]).mean())) < 5 / math.sqrt(m)
            assert abs(float((z[a, 1:] * z[b, :-1]).mean())) < 5 / math.sqrt(m)


def _child(queue) -> None:
    # only the draw: torch's own parallel ops (a large add) can hang in a forked child of a
    # process that used OpenMP, with or without fxharden
    eps = Noise("x", seed=2)._draw((LANES * LANE_MIN,), torch.device("cpu"), torch.float32)
    queue.put(float(eps.numpy().std()))


def test_a_forked_process_can_draw_after_the_parent_did():
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    _draw(2, LANES * LANE_MIN)  # the parent's thread pool exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0, "the forked child hung or failed drawing noise"
    assert abs(queue.get(timeout=5) - 1.0) < 0.02


class _Tricky(nn.Module):
    """An in-place ReLU whose input is read again, an in-place add, a view, the model input
    read after its site: no noise may leak into a value that another node reads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        y = self.bn(self.conv(x))
        z = self.act(y)
        z = z + y  # y is z (in-place ReLU)
        z += F.relu(z)
        return self.fc(z.flatten(1)) + x.mean()


@pytest.mark.parametrize("name", ["tricky", "lenet5"])
@pytest.mark.parametrize("bits", [None, 8])
def test_no_grad_forward_equals_the_autograd_forward(name, bits):
    """Without autograd, noise goes in place where the module owns its input; with autograd
    it never does. Same seed, same numbers: the two forwards agree exactly."""
    torch.manual_seed(0)
    model, x = (_Tricky(), torch.randn(6, 3, 8, 8)) if name == "tricky" else (build_model("lenet5"),
                                                                              torch.randn(6, 3, 32, 32))
    hm = fxharden.harden(model.eval(), bits=bits, sigma=0.3).eval()
    with torch.no_grad():
        hm(x)  # calibration of statistics-based steps
    fxharden.seed_noise(hm, 3)
    with torch.inference_mode():
        fast = hm(x.clone())
    fxharden.seed_noise(hm, 3)
    slow = hm(x.clone().requires_grad_())
    assert torch.equal(fast, slow.detach())
    owned = {m.site: m.owns_input for m in hm.modules() if isinstance(m, Noise)}
    assert owned["input"] is (bits is not None)  # the caller's tensor; a quantizer's output is new
    if name == "tricky":
        assert owned["act"] is (bits is not None)  # in-place ReLU: its result is bn's output, read again
        assert owned["conv"] and owned["relu"] and owned["fc"]


def test_a_forward_hook_on_the_layer_sees_its_clean_output():
    """A hook that keeps a layer's output (no copy) still holds the clean value afterwards."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    hm = fxharden.harden(model, bits=None, sigma=1.0).eval()
    kept = {}
    handle = hm.get_submodule("0").register_forward_hook(
        lambda m, i, o: kept.update(out=o, copy=o.clone(), input=i[0].clone()))
    with torch.inference_mode():
        hm(torch.randn(2, 3, 8, 8))
    handle.remove()
    assert torch.equal(kept["out"], kept["copy"])
    with torch.inference_mode():
        assert torch.allclose(kept["copy"], model[0](kept["input"]), atol=1e-6)


def test_the_noise_module_never_overwrites_an_input_it_does_not_own():
    mod = Noise("x", seed=1)
    mod.set_sigma(0.5)
    x = torch.zeros(LANE_MIN)
    with torch.inference_mode():
        y = mod(x)
    assert not mod.owns_input and torch.count_nonzero(x) == 0 and torch.count_nonzero(y) > 0


def test_scratch_slots_do_not_alias_within_one_grouped_call():
    """Independent draws for several groups use several reused buffers: each group's noise is
    its own (no group sees another's draw), and the next call leaves earlier outputs alone."""
    mod = Noise("x", seed=4)
    mod.set_sigma([1.0, 1.0, 1.0])
    with torch.inference_mode():
        a = mod(torch.zeros(3 * LANE_MIN))
        first = a.clone()
        mod(torch.zeros(3 * LANE_MIN))
    assert torch.equal(a, first)
    g = a.view(3, -1).double()
    for i in range(3):
        for j in range(i + 1, 3):
            assert abs(float((g[i] * g[j]).mean())) < 5 / math.sqrt(LANE_MIN)
    # a draw shared by groups 0 and 2 survives the draw of group 1 in between (own buffer each)
    mod.set_sigma([1.0, 1.0, 1.0], [0, 1, 0])
    with torch.inference_mode():
        g = mod(torch.zeros(3 * LANE_MIN)).view(3, -1)
    assert torch.equal(g[0], g[2]) and not torch.equal(g[0], g[1])


class _Functional(nn.Module):
    def forward(self, x):
        a = F.relu(x)  # new tensor
        b = F.relu(a, inplace=True)  # a's storage
        c = F.relu6(b, True)  # b's storage, in place by position
        d = c.relu_()
        e = torch.tanh(d)  # new tensor
        f = torch.einsum("ij->ji", e)  # a view of e
        return torch.matmul(f, e).add_(1.0)  # new tensor


def test_function_sites_in_place_by_keyword_or_position_are_not_owned():
    kinds = fxharden.NoiseConfig().kinds | {fxharden.SiteKind.MATMUL}
    hm = fxharden.harden(_Functional(), config=fxharden.HardenConfig(
        quant=None, noise=fxharden.NoiseConfig(sigma=0.1, kinds=kinds)))
    owned = {m.site: m.owns_input for m in hm.modules() if isinstance(m, Noise)}
    assert owned["relu"] and owned["tanh"] and owned["matmul"]
    assert not owned["relu_1"] and not owned["relu6"] and not owned["relu_"] and not owned["input"]
    assert not owned["einsum"]
    x = torch.randn(5, 5)
    with torch.no_grad():  # the view is overwritten by nobody: e, read by matmul, stays clean
        fxharden.seed_noise(hm, 1)
        fast = hm(x)
    fxharden.seed_noise(hm, 1)
    assert torch.equal(fast, hm(x.clone().requires_grad_()).detach())
