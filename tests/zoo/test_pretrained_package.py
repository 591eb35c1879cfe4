"""A real pretrained model that ships its weights inside its package: torchcrepe's ``tiny`` pitch
tracker (``torchcrepe/assets/tiny.pth``). Checked on synthesized tones framed as torchcrepe
frames audio, against the known f0 of the synthesis: raw pitch accuracy (the share of frames
whose predicted f0 lies within 50 cents of the truth) is the independent reference."""

import math
import os

import numpy as np
import pytest
import torch

import fxharden
from fxharden import FitStatus, SweepMode

torchcrepe = pytest.importorskip("torchcrepe", reason="torchcrepe is not installed (pip install -e '.[pretrained]')")

pytestmark = [pytest.mark.zoo, pytest.mark.slow]

SAMPLE_RATE = torchcrepe.SAMPLE_RATE
HOP = SAMPLE_RATE // 100  # torchcrepe's default hop: 10 ms
CENTS_BIN0 = 1997.3794084376191  # the centre of bin 0 in cents above 10 Hz (torchcrepe.convert)
SIGMAS = [0.03, 0.1, 0.2, 0.3, 0.5, 1.0, 3.0]


def _crepe() -> torch.nn.Module:
    model = torchcrepe.Crepe("tiny")
    weights = os.path.join(os.path.dirname(torchcrepe.__file__), "assets", "tiny.pth")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def _tones(n: int = 16, seconds: float = 0.1, seed: int = 0):
    """Sine tones at f0 log-uniform in 80..1000 Hz with random phase, as torchcrepe frames them
    (1024-sample windows every 10 ms, mean-centred, unit variance); the truth in cents."""
    g = torch.Generator().manual_seed(seed)
    f0 = 80 * (1000 / 80) ** torch.rand(n, generator=g)
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    frames, cents = [], []
    for f in f0.tolist():
        audio = 0.5 * torch.sin(2 * math.pi * f * t + 2 * math.pi * float(torch.rand(1, generator=g)))
        for chunk in torchcrepe.preprocess(audio[None], SAMPLE_RATE, HOP, pad=False):
            frames.append(chunk)
            cents.append(torch.full((len(chunk),), 1200 * math.log2(f / 10)))
    return torch.cat(frames), torch.cat(cents)


def pitch_hits(probabilities: torch.Tensor, cents: torch.Tensor) -> torch.Tensor:
    """Per frame: 1 when the most probable bin's pitch is within 50 cents of the truth."""
    predicted = torchcrepe.CENTS_PER_BIN * probabilities.argmax(-1) + CENTS_BIN0
    return ((predicted - cents).abs() <= 50).float()


@pytest.fixture(scope="module")
def crepe():
    model = _crepe()
    frames, cents = _tones()
    with torch.no_grad():
        plain = model(frames)
    return model, frames, cents, plain


def test_plain_model_tracks_the_synthesized_pitch(crepe):
    model, frames, cents, plain = crepe
    assert plain.shape == (len(frames), torchcrepe.PITCH_BINS)
    assert float(pitch_hits(plain, cents).mean()) >= 0.95


def test_no_op_is_exact(crepe):
    model, frames, _, plain = crepe
    hm = fxharden.harden(model, bits=None, frontend="auto", example_inputs=(frames[:2],))
    assert fxharden.harden_report(hm).opaque == {}
    assert len(fxharden.noise_sites(hm)) >= 8  # six conv layers, the classifier, activations
    with torch.no_grad():
        assert torch.equal(hm(frames), plain)
        fxharden.set_noise(hm, 0.2)
        assert not torch.allclose(hm(frames), plain, atol=1e-3)


def test_8_bits_keeps_the_pitch_accuracy(crepe):
    """8-bit weights and activations, steps from statistics (``scale=None``): raw pitch accuracy
    within 1 point of the plain model's."""
    model, frames, cents, plain = crepe
    hm = fxharden.harden(model, bits=8, scale=None).eval()
    with torch.no_grad():
        quantized = hm(frames)
    assert not torch.equal(quantized, plain)
    assert float(pitch_hits(quantized, cents).mean()) >= float(pitch_hits(plain, cents).mean()) - 0.01


def _sweep(model, frames, cents, **kwargs):
    data = [(frames[i:i + 32], cents[i:i + 32]) for i in range(0, len(frames), 32)]
    return fxharden.sweep(model, data, metric=pitch_hits, bits=None, device="cpu", **kwargs)


def test_global_sweep_on_pitch_accuracy_resolves_mu(crepe):
    model, frames, cents, _ = crepe
    result = _sweep(model, frames, cents, sigmas=SIGMAS, repeats=2)
    assert result.metric_info["clean_values"][0] == pytest.approx(float(pitch_hits(crepe[3], cents).mean()))
    assert result.fit.status is FitStatus.OK
    assert SIGMAS[0] < result.fit.mu < SIGMAS[-1]


def test_per_layer_sweep_on_pitch_accuracy_gives_each_site_a_curve(crepe):
    model, frames, cents, _ = crepe
    sites = ("conv1", "classifier")
    result = _sweep(model, frames, cents, sigmas=SIGMAS[1::2], repeats=1, mode=SweepMode.PER_LAYER, sites=sites)
    assert result.clean_accuracy >= 0.9  # in the fit's scale: 1 at the clean score, 0 at the floor
    assert set(result.per_site) == set(sites)
    for site, fit in result.per_site.items():
        assert fit.status is not FitStatus.AT_CHANCE, site


def test_torchcrepe_runs_the_hardened_model_in_place_of_its_own(crepe, monkeypatch):
    model, _, _, _ = crepe
    g = torch.Generator().manual_seed(1)
    audio = 0.5 * torch.sin(2 * math.pi * 220.0 * torch.arange(SAMPLE_RATE // 5) / SAMPLE_RATE)[None]
    audio = audio + 0.01 * torch.randn(audio.shape, generator=g)

    def predict(net):
        monkeypatch.setattr(torchcrepe.infer, "model", net, raising=False)
        monkeypatch.setattr(torchcrepe.infer, "capacity", "tiny", raising=False)
        np.random.seed(0)  # torchcrepe dithers the decoded pitch with numpy's global generator
        return torchcrepe.predict(audio, SAMPLE_RATE, HOP, model="tiny", decoder=torchcrepe.decode.argmax)

    plain = predict(model)
    hardened = predict(fxharden.harden(model, bits=None).eval())
    assert torch.equal(hardened, plain)
