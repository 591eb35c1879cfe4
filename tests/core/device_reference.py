"""Float64 references for the device models over time, written from aihwkit's equations the
way aihwkit computes them (weights to conductances, noise on the conductances, back to
weights; IBM aihwkit ``src/aihwkit/inference/noise/pcm.py`` ``PCMLikeNoiseModel``,
``noise/reram.py`` ``ReRamCMONoiseModel``, ``converter/conductance.py``,
``compensation/drift.py`` ``GlobalDriftCompensation``), with the constants typed in here from
that source, not read from fxharden."""

import math

import torch


def pcm_device(g, e, s, m):
    """``(g_prog, g_t)`` of PCM devices with targets ``g`` (µS), normals ``e[0..2]``, scale ``s``."""
    gh = g / m.g_max
    sig_prog = (0.26348 + 1.9650 * gh - 1.1731 * gh ** 2) * m.g_max / 25.0
    g_prog = (g + s * m.prog_noise_scale * sig_prog * e[0]).clamp(min=0.0)
    if m.t == 0:
        return g_prog, g_prog
    gr = gh.clamp(min=1e-7)
    mu = (-0.0155 * torch.log(gr) + 0.0244).clamp(0.049, 0.1)
    sd = (-0.0125 * torch.log(gr) - 0.0059).clamp(0.008, 0.045)
    nu = (mu + sd * e[1]).abs() * m.drift_scale * s
    t = m.t + m.t0
    g_drift = g_prog * (t / m.t0) ** (-nu)
    q_s = (0.0088 / ((g_prog / m.g_max) ** 0.65).clamp(min=1e-3)).clamp(max=0.2)
    sig_read = q_s * math.sqrt(math.log((t + m.t_read) / (2 * m.t_read)))
    return g_prog, (g_drift + g_drift.abs() * m.read_noise_scale * s * sig_read * e[2]).clamp(min=0.0)


def compensate(w_prog, w_t, m):
    """Global drift compensation: ``w_t`` scaled by ``mean|w_prog| / mean|w_t|`` (t > 0)."""
    if not m.compensation or m.t == 0:
        return w_t
    return w_t * (w_prog.abs().mean() / w_t.abs().mean())


def pcm_reference(m, x, eps, s):
    """The PCM weight (single pair of devices) from ``x``, the six normals ``eps``, scale ``s``."""
    x, e = x.double(), [t.double() for t in eps]
    r = m.g_max / max(float(x.abs().max()), 1e-7)
    pp, pt = pcm_device((x * r).clamp(0.0, m.g_max), e[0:3], s, m)
    mp, mt = pcm_device((-x * r).clamp(0.0, m.g_max), e[3:6], s, m)
    return compensate((pp - mp) / r, (pt - mt) / r, m)


def cmo_reference(m, x, eps, s):
    """The CMO ReRAM weight (one device, offset mapping) from ``x``, three normals, scale ``s``."""
    x, e = x.double(), [t.double() for t in eps]
    lo = float(x.min())
    r = (m.g_max - m.g_min) / max(float(x.max()) - lo, 1e-7)
    g = (x - lo) * r + m.g_min
    c0, c1 = {0.2: (0.00081107, 0.00106879), 2.0: (0.0112185391, 0.01129027418)}[m.acceptance_range]
    g_prog = g + s * m.prog_noise_scale * (c0 + c1 * g) * e[0]
    g_t = g_prog
    if m.t > 0:
        lt = math.log(m.t)
        g_drift = g_prog + s * m.drift_scale * (-0.08900206 * lt + (0.04201137 * lt + 0.41183342) * e[1])
        sig_read = 0.0277316483 * torch.log10(g_drift) * math.sqrt(math.log((m.t + m.t_read) / (2 * m.t_read)))
        g_t = (g_drift + s * m.read_noise_scale * sig_read * e[2]).clamp(m.g_min, m.g_max)
    back = lambda gg: lo + (gg - m.g_min) / r  # noqa: E731
    return compensate(back(g_prog), back(g_t), m)
