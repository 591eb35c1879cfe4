"""Weight statistics of the device models over time (PCM, CMO ReRAM) against IBM aihwkit.

For a Gaussian weight matrix (``--rows`` × ``--cols``) it prints, at t = 1 s, 1 h, 1 day and
1 year after programming, three statistics of the weight the devices hold: the mean |w(t)|
over the mean |w| without drift compensation (how far drift has shrunk the weights), and the
error std(w(t) - w) / max|w| without and with global drift compensation. Columns:

- ``fxharden``: ``fxharden.core.noise.PCM`` / ``ReRamCMO`` through a ``Noise`` module (σ = 1);
- ``formula``: the published equations written again here in numpy (float64, numpy's own
  random numbers) from aihwkit's source (``inference/noise/pcm.py`` ``PCMLikeNoiseModel``,
  ``noise/reram.py`` ``ReRamCMONoiseModel``, ``converter/conductance.py``,
  ``compensation/drift.py`` ``GlobalDriftCompensation``), converting weights to conductances
  and back as aihwkit does;
- ``aihwkit``: aihwkit's own ``PCMLikeNoiseModel`` / ``ReRamCMONoiseModel``
  (``apply_programming_noise`` then ``apply_drift_noise``, compensation as its tile computes
  it), when the full aihwkit is importable. It is a C++/CUDA build that does not install on
  this project's machines (aihwkit-lightning, which does, has no PCM or ReRAM model): there
  the column reads ``unmeasured`` and only the formula comparison stands.

    python benchmarks/pcm_vs_aihwkit.py [--rows 512 --cols 512 --seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np
import torch

from fxharden.core.noise import PCM, Noise, ReRamCMO

TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 365 * 86400.0}


def pcm_device(g, rng, m):
    gh = g / m.g_max
    sig = (0.26348 + 1.9650 * gh - 1.1731 * gh ** 2) * m.g_max / 25.0
    g_prog = np.maximum(g + sig * rng.standard_normal(g.shape), 0.0)
    gr = np.maximum(gh, 1e-7)
    mu = np.clip(-0.0155 * np.log(gr) + 0.0244, 0.049, 0.1)
    sd = np.clip(-0.0125 * np.log(gr) - 0.0059, 0.008, 0.045)
    nu = np.abs(mu + sd * rng.standard_normal(g.shape))
    t = m.t + m.t0
    g_drift = g_prog * (t / m.t0) ** (-nu)
    q_s = np.minimum(0.0088 / np.maximum((g_prog / m.g_max) ** 0.65, 1e-3), 0.2)
    sig_read = q_s * math.sqrt(math.log((t + m.t_read) / (2 * m.t_read)))
    return g_prog, np.maximum(g_drift + np.abs(g_drift) * sig_read * rng.standard_normal(g.shape), 0.0)


def pcm_formula(w, m, rng):
    """``(w_prog, w_t)`` of the PCM pair (``SinglePairConductanceConverter``)."""
    r = m.g_max / max(np.abs(w).max(), 1e-7)
    pp, pt = pcm_device(np.clip(w * r, 0.0, m.g_max), rng, m)
    mp, mt = pcm_device(np.clip(-w * r, 0.0, m.g_max), rng, m)
    return (pp - mp) / r, (pt - mt) / r


def cmo_formula(w, m, rng):
    """``(w_prog, w_t)`` of the CMO device (``SingleDeviceConductanceConverter``)."""
    lo = w.min()
    r = (m.g_max - m.g_min) / (w.max() - lo)
    g = (w - lo) * r + m.g_min
    g_prog = g + (0.00081107 + 0.00106879 * g) * rng.standard_normal(g.shape)
    lt = math.log(m.t)
    g_drift = g_prog - 0.08900206 * lt + (0.04201137 * lt + 0.41183342) * rng.standard_normal(g.shape)
    sig_read = 0.0277316483 * np.log10(g_drift) * math.sqrt(math.log((m.t + m.t_read) / (2 * m.t_read)))
    g_t = np.clip(g_drift + sig_read * rng.standard_normal(g.shape), m.g_min, m.g_max)
    return lo + (g_prog - m.g_min) / r, lo + (g_t - m.g_min) / r


def aihwkit_weights(w, name, t):
    """``(w_prog, w_t)`` from aihwkit itself, or ``None`` where it is not importable."""
    try:
        from aihwkit.inference import PCMLikeNoiseModel, ReRamCMONoiseModel  # type: ignore
    except ImportError:
        return None
    model = PCMLikeNoiseModel() if name == "pcm" else ReRamCMONoiseModel()
    wt = torch.as_tensor(w, dtype=torch.float32)
    w_prog, nu = model.apply_programming_noise(wt)
    return w_prog.double().numpy(), model.apply_drift_noise(w_prog, nu, t).double().numpy()


def stats(w, w_prog, w_t):
    top = np.abs(w).max()
    alpha = np.abs(w_prog).mean() / np.abs(w_t).mean()
    return (np.abs(w_t).mean() / np.abs(w).mean(), (w_t - w).std() / top, (alpha * w_t - w).std() / top)


def fx_stats(w, model, seed):
    wt = torch.as_tensor(w, dtype=torch.float32)
    outs = []
    for comp in (False, True):
        n = Noise("layer.weight", seed=seed, kind=dataclasses.replace(model, compensation=comp))
        n.set_sigma(1.0)
        with torch.no_grad():
            outs.append(n(wt.clone()).double().numpy())
    top = np.abs(w).max()
    return (np.abs(outs[0]).mean() / np.abs(w).mean(), (outs[0] - w).std() / top, (outs[1] - w).std() / top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    w = rng.standard_normal((args.rows, args.cols)) * 0.05
    names = ("mean|w(t)|/mean|w|", "err std / max|w|", "err std, compensated")
    print(f"{'model':<10} {'t':<7} {'statistic':<22} {'fxharden':>10} {'formula':>10} {'aihwkit':>10}")
    for name, cls, formula in (("pcm", PCM, pcm_formula), ("reram_cmo", ReRamCMO, cmo_formula)):
        for label, t in TIMES.items():
            model = cls(t=t)
            fx = fx_stats(w, model, args.seed)
            ref = stats(w, *formula(w, model, rng))
            ai = aihwkit_weights(w, name, t)
            ai = stats(w, *ai) if ai is not None else None
            for k, what in enumerate(names):
                other = f"{ai[k]:10.4f}" if ai is not None else f"{'unmeasured':>10}"
                print(f"{name:<10} {label:<7} {what:<22} {fx[k]:10.4f} {ref[k]:10.4f} {other}")


if __name__ == "__main__":
    main()
