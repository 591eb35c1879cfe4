"""A pretrained recurrent model shipped inside a package: Resemblyzer's speaker encoder (a 3-layer
``nn.LSTM``, 256 hidden, on 40-band power mel spectrograms, then Linear + ReLU and an L2 norm;
its weights ship in the wheel). Install: ``pip install --no-deps resemblyzer webrtcvad-wheels``
(with ``librosa``); skipped without it.

The data are synthesized voices: a speaker is a glottal pulse train at its own pitch through
vowel formants scaled by its own vocal tract length; an utterance is a random sequence of vowels
(pitch vibrato, breath noise, pauses). The plain encoder tells these speakers apart (every
same-speaker pair of utterances is more similar than every different-speaker pair), which is
what the tests below measure the hardened encoder on.
"""

import copy

import numpy as np
import pytest
import torch
from scipy.signal import lfilter
from torch import nn

import fxharden
from fxharden import LayerConfig, SiteRules, calibrate_quantizers

resemblyzer = pytest.importorskip("resemblyzer", reason="pip install --no-deps resemblyzer webrtcvad-wheels")
from resemblyzer.audio import wav_to_mel_spectrogram  # noqa: E402

pytestmark = pytest.mark.slow  # the real encoder on 1.7 s utterances, and librosa's first call compiles

SR = 16000
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])
"""Formants F1-F3 (Hz) of /a/, /i/, /u/, /e/, /o/."""
SPEAKERS = [dict(f0=110.0, tract=1.2, tilt=0.95), dict(f0=170.0, tract=0.8, tilt=0.85),
            dict(f0=240.0, tract=1.0, tilt=0.9)]


def utterance(speaker: dict, seed: int, seconds: float = 1.7) -> np.ndarray:
    """A synthesized utterance of ``speaker`` (see the module doc), 16 kHz float32."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < seconds * SR:
        n = int(rng.uniform(0.12, 0.3) * SR)
        t = np.arange(n) / SR
        f0 = speaker["f0"] * (1 + 0.04 * np.sin(2 * np.pi * rng.uniform(3, 6) * t) + rng.normal(0, 0.01))
        source = (np.mod(2 * np.pi * np.cumsum(f0) / SR, 2 * np.pi) < 0.6).astype(float)
        y = lfilter([1.0], [1.0, -speaker["tilt"]], source) + 0.05 * rng.normal(size=n)
        for f, bandwidth in zip(VOWELS[rng.integers(len(VOWELS))] * speaker["tract"], (80, 100, 120)):
            r = np.exp(-np.pi * bandwidth / SR)
            y = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / SR), r * r], y)
        parts += [y * np.hanning(n)] + ([np.zeros(int(0.05 * SR))] if rng.random() < 0.3 else [])
        total += n
    wav = np.concatenate(parts)
    return (0.3 * wav / np.abs(wav).max()).astype(np.float32)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return resemblyzer.VoiceEncoder("cpu", verbose=False).eval()


@pytest.fixture(scope="module")
def voices():
    """Two preprocessed utterances per speaker (the library's own ``preprocess_wav``)."""
    return [[resemblyzer.preprocess_wav(utterance(s, 100 * i + j), source_sr=SR) for j in range(2)]
            for i, s in enumerate(SPEAKERS)]


def partials(encoder, wav):
    """The mel spectrograms of an utterance's partial windows, as ``embed_utterance`` makes them."""
    wav_slices, mel_slices = encoder.compute_partial_slices(len(wav), 1.3, 0.75)
    mel = wav_to_mel_spectrogram(np.pad(wav, (0, max(0, wav_slices[-1].stop - len(wav)))))
    return [mel[s] for s in mel_slices]


@pytest.fixture(scope="module")
def batch(encoder, voices):
    """``(mels, speaker)`` of every partial window of every utterance."""
    mels, labels = [], []
    for k, wavs in enumerate(voices):
        for wav in wavs:
            windows = partials(encoder, wav)
            mels += windows
            labels += [k] * len(windows)
    return torch.from_numpy(np.array(mels)), torch.tensor(labels)


def separation(embeddings: np.ndarray) -> float:
    """The fraction of (same-speaker pair, different-speaker pair) combinations in which the
    same-speaker utterances are the more similar (the area under the verification ROC)."""
    flat = embeddings.reshape(-1, embeddings.shape[-1])
    labels = np.repeat(np.arange(embeddings.shape[0]), embeddings.shape[1])
    sims = flat @ flat.T
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    different = labels[:, None] != labels[None]
    return float((sims[same][:, None] > sims[different][None]).mean())


def test_noop_is_exact_through_the_librarys_own_functions(encoder, voices, batch):
    hm = fxharden.harden(encoder)
    assert type(hm.lstm).__name__ == "HardenedLSTM"
    assert {"lstm.l0.ih", "lstm.l2.hh", "lstm"} <= set(fxharden.noise_sites(hm))
    mels, _ = batch
    with torch.no_grad():
        assert torch.equal(hm(mels), encoder(mels))
    plain = np.array([[encoder.embed_utterance(w) for w in wavs] for wavs in voices])
    hardened = np.array([[hm.embed_utterance(w) for w in wavs] for wavs in voices])
    assert np.array_equal(hardened, plain)
    assert np.array_equal(hm.embed_speaker(voices[0]), encoder.embed_speaker(voices[0]))
    assert hm.device == encoder.device
    assert separation(plain) == 1.0  # the plain encoder tells the synthetic speakers apart


def _grid(t: torch.Tensor, levels: int, per_row: bool = False) -> torch.Tensor:
    """The closed-form grid of step ``max|t| / levels`` (THE quantizer's arithmetic: ``x * (1/s)``),
    with ``per_row`` one step per row of a weight matrix (the LSTM's gate rows)."""
    peak = t.abs().amax(dim=-1, keepdim=True) if per_row else t.abs().amax()
    step = peak / levels
    return torch.round(t * (1.0 / step)) * step


def test_8bit_is_the_closed_form_grid_on_the_real_weights(encoder, batch):
    mels, _ = batch
    hm = fxharden.harden(encoder, bits=8, rules=SiteRules(by_type={nn.ReLU: LayerConfig(quantize=False)}))
    calibrate_quantizers(hm, [mels])
    assert "unsigned (calibration data >= 0)" in next(s.quantizer for s in hm.report.sites if s.name == "input")
    reference = copy.deepcopy(encoder)
    with torch.no_grad():
        for name, w in reference.named_parameters():
            if "weight" in name:
                w.copy_(_grid(w, 127, per_row=name.startswith("lstm.")))
        expected = reference(_grid(mels, 255))  # power mels are never negative: the unsigned grid
        out = hm(mels)
    assert torch.allclose(out, expected, atol=1e-4)


def test_mu_resolves_on_speaker_identification(encoder, batch):
    """μ of the noise at the LSTM's products and output, the linear layer and the ReLU (σ relative
    to each site's clean RMS) on the encoder's own task: each partial window goes to the speaker
    whose clean centroid its embedding is closest to (chance: 1 in 3). The input gets no noise:
    on a power spectrogram it makes negative power, which the encoder never saw."""
    mels, labels = batch
    with torch.no_grad():
        clean = encoder(mels)
    centroids = torch.stack([nn.functional.normalize(clean[labels == k].mean(0), dim=0) for k in range(3)])
    identified = fxharden.Metric("speaker_id", lambda out, t: ((out @ centroids.T).argmax(1) == t).float(),
                                 higher_is_better=True, ideal=1.0, floor=1.0 / 3)
    hm = fxharden.harden(encoder, rules=SiteRules(by_name={"input": LayerConfig(noise=False)}))
    result = fxharden.sweep(hm, [(mels, labels)], metric=identified, units="relative", repeats=4, device="cpu",
                            sigmas=[0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5])
    assert result.clean_raw == 1.0
    assert {"lstm.l0.hh", "lstm.l2.ih", "lstm", "linear"} <= set(result.sites)
    assert result.fit is not None and result.fit.ok, result.fit
    assert 0.005 < result.fit.mu < 0.5


def test_8bit_keeps_the_speakers_apart(encoder, voices, batch):
    """8-bit weights (one step per gate row) and activations (statistics-based steps, the input
    on the unsigned grid) on the encoder's own task: its library's ``embed_utterance`` still
    tells the synthetic speakers apart (same/different-speaker AUC of the plain encoder: 1)."""
    mels, _ = batch
    hm = fxharden.harden(encoder, bits=8, scale=None)
    calibrate_quantizers(hm, [mels])
    hardened = np.array([[hm.embed_utterance(w) for w in wavs] for wavs in voices])
    assert separation(hardened) >= 0.97
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(hm(mels), encoder(mels)).mean()
    assert cosine > 0.7  # the embeddings move (the input's 8-bit grid costs most), the speakers stay apart
