"""Per-channel weight noise and the output noise of an analog matrix-vector product, against
their closed forms (aihwkit-lightning's definitions, ``fxharden.core.noise.mvm``):

- ``Additive(of_max=True, per_channel=True)``: ``w_ij + σ · max_k |w_ik| · ε``, row ``i`` an
  output channel; ``Additive(of_max=True)``: ``σ · max|W|`` for every element;
- ``OutNoise``: ``y_i + σ · input_range · max|W_i|`` (per channel) or ``· max|W|`` (per tensor).

Standard deviations are checked at 10^6 samples within 5 standard errors of the sample standard
deviation (relative error ``1 / sqrt(2 n)`` for ``n`` samples of a Gaussian)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxharden
from fxharden.core.config import Frontend, HardenConfig, NoiseConfig, SiteKind, WeightNoise
from fxharden.core.noise import Additive, Noise, OutNoise
from fxharden.core.noise.verbs import noise_modules, weight_noise_modules
from fxharden.core.noise_models import ConverterConfig

SIGMA = 0.1


def tolerance(n):
    """5 standard errors of a sample standard deviation of ``n`` Gaussian samples, relative."""
    return 5 / math.sqrt(2 * n)


def rows_of_different_range(rows, cols, seed=0):
    """A weight whose row ``i`` has max|w| about ``2^(i/2)``: per-channel and per-tensor ranges differ."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * (2.0 ** (torch.arange(rows) / 2)).unsqueeze(1)


@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_noise_std_is_sigma_times_the_row_or_tensor_max(per_channel):
    w = rows_of_different_range(16, 62_500)  # 10^6 elements, 62 500 per row
    n = Noise("fc.weight", kind=Additive(of_max=True, per_channel=per_channel))
    n.set_channel_dim(0)
    n.set_sigma(SIGMA)
    with torch.no_grad():
        std = (n(w.clone()) - w).double().std(1)
    ref = w.abs().amax(1) if per_channel else w.abs().amax().expand(16)
    torch.testing.assert_close(std / (SIGMA * ref.double()), torch.ones(16, dtype=torch.float64), rtol=0,
                               atol=tolerance(62_500))


def test_per_channel_weight_noise_follows_the_channel_axis():
    """A ``(in, out)`` weight (channel axis 1) gets the max of each column; a conv filter the max
    over its input channels and kernel."""
    w = rows_of_different_range(8, 125_000).t().contiguous()  # (in, out): channels are columns
    n = Noise("conv1d.weight", kind=Additive(of_max=True, per_channel=True))
    n.set_channel_dim(1)
    n.set_sigma(SIGMA)
    with torch.no_grad():
        std = (n(w.clone()) - w).double().std(0)
    torch.testing.assert_close(std / (SIGMA * w.abs().amax(0).double()), torch.ones(8, dtype=torch.float64),
                               rtol=0, atol=tolerance(125_000))
    f = rows_of_different_range(4, 250_000).view(4, 10, 125, 200)  # (out, in, kh, kw)
    n.set_channel_dim(0)
    with torch.no_grad():
        std = (n(f.clone()) - f).double().flatten(1).std(1)
    torch.testing.assert_close(std / (SIGMA * f.abs().flatten(1).amax(1).double()),
                               torch.ones(4, dtype=torch.float64), rtol=0, atol=tolerance(250_000))


@pytest.mark.parametrize("per_channel", [True, False])
def test_output_noise_std_is_sigma_times_input_range_times_weight_max(per_channel):
    w = rows_of_different_range(8, 32)
    model = OutNoise(per_channel=per_channel, input_range=2.5)
    n = Noise("fc", kind=model)
    n.set_out_scale(model.out_scale(w, 2.5))
    n.set_sigma(SIGMA)
    y = torch.randn(125_000, 8, generator=torch.Generator().manual_seed(3))  # 10^6 outputs, 125 000 per channel
    with torch.no_grad():
        std = (n(y.clone()) - y).double().std(0)
    wmax = w.abs().amax(1) if per_channel else w.abs().amax().expand(8)
    torch.testing.assert_close(std / (SIGMA * 2.5 * wmax.double()), torch.ones(8, dtype=torch.float64), rtol=0,
                               atol=tolerance(125_000))


def test_output_scale_of_a_convolution_broadcasts_over_its_output_channels():
    conv = nn.Conv2d(3, 4, 3)
    model = OutNoise(per_channel=True)
    scale = model.out_scale(conv.weight, 0.5, channel_dim=0, trailing=2)
    assert scale.shape == (4, 1, 1)
    torch.testing.assert_close(scale.flatten(), 0.5 * conv.weight.detach().abs().flatten(1).amax(1))
    assert OutNoise().out_scale(conv.weight, 0.5).shape == ()


def test_sigma_zero_is_an_exact_no_op():
    w = rows_of_different_range(8, 100)
    n = Noise("fc.weight", kind=Additive(of_max=True, per_channel=True))
    n.set_channel_dim(0)
    n.set_sigma(0.0)
    assert torch.equal(n(w), w)
    o = Noise("fc", kind=OutNoise(per_channel=True))
    o.set_out_scale(OutNoise(per_channel=True).out_scale(w, 1.0))
    o.set_sigma(0.0)
    assert torch.equal(o(w.t()), w.t())


def test_bad_values_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match=r"input_range must be a finite number > 0"):
        OutNoise(input_range=0.0)
    n = Noise("fc", kind=OutNoise())
    with pytest.raises(ValueError, match=r"output scale must be finite and >= 0"):
        n.set_out_scale(torch.tensor([1.0, -1.0]))


# ---------------------------------------------------------------- hardened models, both frontends

FRONTENDS = ["fx", "export"]


def conv_linear(seed=0):
    """conv(2->4, 3x3, padding 1) - relu - linear(64->8), output channels of very different ranges."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 8)).eval()
    with torch.no_grad():
        model[0].weight.mul_((2.0 ** torch.arange(4.0)).view(4, 1, 1, 1))
        model[3].weight.mul_((2.0 ** (torch.arange(8.0) / 2)).view(8, 1))
    return model


def weight_config(per_channel, sigma=0.0):
    return HardenConfig(quant=None,
                        weight_noise=(WeightNoise(Additive(of_max=True, per_channel=per_channel), sigma=sigma),))


def out_config(per_channel, sigma=0.0, **params):
    return HardenConfig(quant=None, noise=NoiseConfig(sigma=sigma, kinds={SiteKind.CONV, SiteKind.LINEAR},
                                          model=OutNoise(per_channel=per_channel, **params)))


def harden(model, config, frontend, x):
    return fxharden.harden(model, config=config.replace(frontend=Frontend(frontend)), example_inputs=(x,))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_sigma_zero_hardened_models_equal_the_plain_model(frontend):
    model, x = conv_linear(), torch.randn(5, 2, 4, 4)
    for config in (weight_config(True), out_config(True, input_range=2.0), out_config(False, input_range=2.0)):
        hm = harden(model, config, frontend, x)
        with torch.no_grad():
            assert torch.equal(hm(x), model(x))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_per_channel_weight_noise_of_a_linear_layer_scales_each_output_row(frontend):
    """Only the linear layer noisy, one input: output ``i`` deviates by ``Σ_j n_ij h_j``, std
    ``σ · max|w_i| · ||h||`` (``h`` the clean input of the layer); 400 draws (one per batch
    group: 400 copies of the input, one sigma each)."""
    model, x = conv_linear(), torch.randn(1, 2, 4, 4)
    hm = harden(model, weight_config(True), frontend, x)
    fxharden.set_weight_noise(hm, [SIGMA] * 400)
    weight_noise_modules(hm)["0.weight"].set_sigma(0.0)
    with torch.no_grad():
        clean, h = model(x), model[:3](x)
        dev = (hm(x.expand(400, -1, -1, -1)) - clean).double()
    ref = SIGMA * model[3].weight.abs().amax(1) * h.norm()
    torch.testing.assert_close(dev.std(0) / ref.double(), torch.ones(8, dtype=torch.float64), rtol=0,
                               atol=tolerance(400))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_per_channel_weight_noise_of_a_convolution_scales_each_filter(frontend):
    """Only the convolution noisy: its output (read at the activation site that follows it) at
    position p of channel c deviates with std ``σ · max|w_c| · ||patch_p||``; 300 draws (batch
    groups)."""
    model, x = conv_linear(), torch.randn(1, 2, 4, 4)
    hm = harden(model, weight_config(True), frontend, x)
    fxharden.set_weight_noise(hm, [SIGMA] * 300)
    weight_noise_modules(hm)["3.weight"].set_sigma(0.0)
    seen = []
    noise_modules(hm)["0"].register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        hm(x.expand(300, -1, -1, -1))
        clean = model[0](x)
    patch = F.unfold(x, 3, padding=1).norm(dim=1).view(1, 1, 4, 4)  # ||patch_p||, shared by the channels
    dev = (torch.cat(seen) - clean) / patch
    ref = SIGMA * model[0].weight.abs().flatten(1).amax(1)
    torch.testing.assert_close(dev.double().transpose(0, 1).flatten(1).std(1) / ref.double(),
                               torch.ones(4, dtype=torch.float64), rtol=0, atol=tolerance(300))


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("per_channel", [True, False])
def test_output_noise_at_conv_and_linear_outputs(frontend, per_channel):
    """Output noise at each conv/linear output: std ``σ · input_range · max|W|`` per channel
    (or of the tensor), read at the conv's noise site and at the model's output."""
    model, x = conv_linear(), torch.randn(1, 2, 4, 4).expand(2000, -1, -1, -1)
    hm = harden(model, out_config(per_channel, input_range=2.0), frontend, x[:2])
    conv_site = noise_modules(hm)["0"]
    seen = []
    conv_site.register_forward_hook(lambda m, a, out: seen.append(out.detach() - a[0]))
    fxharden.set_noise(hm, {"0": SIGMA})
    with torch.no_grad():
        hm(x)
    fxharden.set_noise(hm, {"3": SIGMA})
    with torch.no_grad():
        dev_fc = (hm(x) - model(x)).double()
    for dev, w in ((seen[0].double().transpose(0, 1).flatten(1), model[0].weight), (dev_fc.t(), model[3].weight)):
        w = w.detach().flatten(1).abs()
        wmax = w.amax(1) if per_channel else w.amax().expand(w.shape[0])
        torch.testing.assert_close(dev.std(1) / (SIGMA * 2.0 * wmax.double()),
                                   torch.ones(w.shape[0], dtype=torch.float64), rtol=0,
                                   atol=tolerance(2000))


def test_output_noise_takes_the_dac_bound_as_input_range_and_refuses_what_it_cannot_scale():
    model = conv_linear()
    config = out_config(True).replace(dac=ConverterConfig(bits=16, bound=3.0))
    hm = fxharden.harden(model, config=config)
    torch.testing.assert_close(noise_modules(hm)["3"].out_scale, 3.0 * model[3].weight.detach().abs().amax(1))
    own = fxharden.harden(model, config=out_config(True).replace(dac=ConverterConfig(bits=16, bound=3.0,
                                                                                      bounds={"3": 1.5})))
    torch.testing.assert_close(noise_modules(own)["3"].out_scale, 1.5 * model[3].weight.detach().abs().amax(1))
    with pytest.raises(ValueError, match=r"scales with the layer's input range .* OutNoise\(input_range=\.\.\.\)"):
        fxharden.harden(model, config=out_config(True))
    wide = HardenConfig(quant=None, noise=NoiseConfig(model=OutNoise(input_range=1.0)))  # every default site kind
    with pytest.raises(ValueError, match=r"site 'input' has no layer weight \(its kind is input\): "
                                         r".*kinds=\{SiteKind.CONV, SiteKind.LINEAR\}\)"):
        fxharden.harden(model, config=wide)


# ---------------------------------------------------------------- the output-channel axis of other weighted layers

def column_ratio(noisy, w, axis):
    """Per output channel (the slices of ``w`` along ``axis``): the std of ``noisy - w`` over
    its elements and draws (``noisy`` stacked along a new dim 0), over ``SIGMA · max|w|``."""
    dev = (noisy - w).movedim(axis + 1, 0).flatten(1).double()
    return dev.std(1) / (SIGMA * w.abs().movedim(axis, 0).flatten(1).amax(1).double())


def per_channel_draws(layer, name, draws=200):
    """``draws`` hardened draws of ``layer``'s weight ``name``, stacked."""
    return torch.stack([layer.hardened_weights()[name].detach() for _ in range(draws)])


def test_recurrent_and_hf_conv1d_and_embedding_weights_are_perturbed_per_output_channel():
    """LSTM gate rows (axis 0), transformers' ``Conv1D`` ``(in, out)`` columns and embedding
    columns (axis 1): each at the max of its own output channel."""
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D(8, 50)
    model = nn.ModuleDict({"lstm": nn.LSTM(50, 4), "hf": conv1d, "emb": nn.Embedding(50, 8)})
    with torch.no_grad():
        model["lstm"].weight_ih_l0.mul_((2.0 ** (torch.arange(16.0) / 4)).view(16, 1))
        conv1d.weight.mul_((2.0 ** (torch.arange(8.0) / 2)).view(1, 8))
        model["emb"].weight.mul_((2.0 ** (torch.arange(8.0) / 2)).view(1, 8))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, ids):
            e = self.m["emb"](ids)
            return self.m["hf"](self.m["lstm"](e)[0].repeat(1, 1, 13)[..., :50])

    config = weight_config(True).replace(frontend=Frontend.FX, leaf_modules=(type(conv1d),))
    hm = fxharden.harden(Net(), config=config)
    fxharden.set_weight_noise(hm, SIGMA)
    for path, name, axis in (("m.lstm", "weight_ih_l0", 0), ("m.hf", "weight", 1), ("m.emb", "weight", 1)):
        layer = hm.get_submodule(path)
        w = layer.get_parameter(name).detach()
        ratio = column_ratio(per_channel_draws(layer, name), w, axis)
        n = 200 * w.numel() // w.shape[axis]
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=tolerance(n), msg=path)


def test_export_grouped_expert_products_are_perturbed_per_output_column():
    """A grouped expert product takes each expert's matrix as ``(in, out)``: its output channels
    are the columns (``WeightArg.out_axis`` 1)."""
    T = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[lm]')")
    torch.manual_seed(0)
    cfg = T.MixtralConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, num_experts_per_tok=2, tie_word_embeddings=False,
                          intermediate_size=48, num_local_experts=4)
    model = T.MixtralForCausalLM(cfg).eval()
    expert = next(m for m in model.modules() if type(m).__name__.endswith("Experts"))
    with torch.no_grad():  # (E, out, in): output channels of very different ranges
        expert.gate_up_proj.mul_((2.0 ** (torch.arange(96.0) / 16)).view(1, 96, 1))
    ids = torch.randint(3, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    hm = fxharden.harden(model, config=weight_config(True, SIGMA).replace(frontend=Frontend.EXPORT),
                         example_inputs={"input_ids": ids})
    call = next(m for m in hm.modules() if getattr(m, "_per_expert", False))
    used, fn = [], call.fn
    call.fn = lambda x, w, *a, **k: used.append(w.detach()) or fn(x, w, *a, **k)
    with torch.no_grad():
        for _ in range(5):
            hm(input_ids=ids)
    w = expert.gate_up_proj.detach().transpose(-2, -1)  # (E, in, out), as the grouped product takes it
    noisy = torch.stack(used[::len(used) // 5])  # the first product of each forward
    for e in range(w.shape[0]):
        ratio = column_ratio(noisy[:, e], w[e], 1)
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=tolerance(5 * 32))
