"""The measured points of a sweep and their resampling for the bootstrap of μ.

:class:`SweepPoint` holds one noise setting's correct counts per network and repeat and the
errors derived from them. :func:`draw_replicas` (and its public form
:func:`bootstrap_curves`) redraws the three samples behind a curve: the networks, the noise
draws (repeats) and the images. The points keep only correct counts, so the image term is
modelled rather than resampled: a threshold model of per-image difficulty (an image wrong at
one σ stays wrong at larger σ; ``midpoint.errors.image_sampling_shifts``) moves every point
and the clean accuracy together, each point by the share of its Bernoulli variance that its
repeats show to lie between images (:func:`image_share`). Storing per-image correctness per
point would allow a plain resampling, at one bit per image, point and repeat; the model needs
nothing beyond the counts already kept. numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .midpoint import image_sampling_shifts

__all__ = ["SweepPoint", "bootstrap_curves", "draw_replicas", "image_share"]


@dataclass(frozen=True)
class SweepPoint:
    """One noise setting, measured on every network and repeat.

    ``correct[n][r]`` is the number of correctly classified images (out of ``total``) of
    network ``n`` in repeat ``r``.
    """

    site: Optional[str]
    """The noise site (per-layer mode), or ``None`` for global injection."""
    sigma: float
    correct: Tuple[Tuple[int, ...], ...]
    total: int
    scores: Optional[Tuple[Tuple[float, ...], ...]] = None
    """Sweeps of another metric than top-1 (``correct`` is empty): the score the fit sees,
    in ``[0, 1]`` (``fxharden.measure.scores``), per network and repeat."""
    values: Optional[Tuple[Tuple[float, ...], ...]] = None
    """... and the metric's own value (loss, perplexity, ...), per network and repeat."""

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracies (other metrics: their fit scores), shape (networks, repeats)."""
        if self.scores is not None:
            return np.asarray(self.scores, dtype=np.float64)
        return np.asarray(self.correct, dtype=np.float64) / max(self.total, 1)

    @property
    def fit_scores(self) -> np.ndarray:
        """The scores the midpoint fit sees, shape (networks, repeats): accuracies for top-1
        (and top-5, token accuracy), otherwise the metric's values mapped to ``[0, 1]`` (0 at the
        floor). The same as ``accuracy``, named for what it is."""
        return self.accuracy

    @property
    def raw_values(self) -> np.ndarray:
        """The metric's own values (loss, perplexity, a callable's mean score; top-1: the
        accuracy), shape (networks, repeats)."""
        if self.scores is not None:
            return np.asarray(self.values or (), dtype=np.float64)
        return self.accuracy

    @property
    def raw_mean(self) -> float:
        """Mean of ``raw_values`` over networks and repeats (``mean`` is on the fit scale)."""
        return float(self.raw_values.mean())

    @property
    def samples(self) -> np.ndarray:
        """The values the uncertainty is taken over: one per network (its mean over
        repeats) when there are several networks, else one per repeat."""
        acc = self.accuracy
        return acc.mean(axis=1) if acc.shape[0] > 1 else acc[0]

    @property
    def mean(self) -> float:
        """Mean accuracy (other metrics: fit score) over networks and repeats; see ``raw_mean``."""
        return float(self.accuracy.mean())

    @property
    def std(self) -> float:
        """Standard deviation of ``samples`` (0 for a single sample)."""
        s = self.samples
        return float(s.std(ddof=1)) if len(s) > 1 else 0.0

    @property
    def dy(self) -> float:
        """Δy of the fits: with several networks the spread (standard deviation) of their
        accuracies, as the paper does; with one network the standard error over its repeats
        (noise draws). Floored at the binomial error of one network's mean over repeats."""
        n_nets, reps = self.accuracy.shape
        if n_nets < 2:
            return self.err
        a = min(max(self.mean, 0.0), 1.0)
        floor = math.sqrt(max(a * (1 - a), 1.0 / max(self.total, 1)) / max(self.total, 1) / reps)
        return max(self.std, floor)

    @property
    def err(self) -> float:
        """Standard error of the mean over ``samples``, floored at the binomial standard
        error of that mean, so points whose repeats agree exactly keep a finite weight."""
        n = len(self.samples)
        a = min(max(self.mean, 0.0), 1.0)
        floor = math.sqrt(max(a * (1 - a), 1.0 / max(self.total, 1)) / max(self.total, 1) / n)
        return max(self.std / math.sqrt(n), floor)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict, with the derived mean/std/err for readers of the file."""
        out = {"site": self.site, "sigma": self.sigma, "correct": [list(c) for c in self.correct],
               "total": self.total, "mean": self.mean, "std": self.std, "err": self.err}
        if self.scores is not None:
            out.update(scores=[list(c) for c in self.scores], values=[list(c) for c in self.values or ()])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepPoint":
        """Inverse of ``to_dict`` (the derived fields are recomputed)."""
        floats = lambda key: tuple(tuple(float(v) for v in c) for c in data[key]) if key in data else None  # noqa
        return cls(data["site"], float(data["sigma"]), tuple(tuple(int(v) for v in c) for c in data["correct"]),
                   int(data["total"]), floats("scores"), floats("values"))


def bootstrap_curves(pts: Sequence[SweepPoint], n: int, seed: int = 0, images: bool = True) -> Optional[np.ndarray]:
    """``n`` bootstrap curves of ``pts``, shape ``(n, points)``; ``None`` if ``n <= 0`` or there
    are no points. Networks are resampled (the same draw at every σ), then each drawn
    network's repeats per point; with ``images`` the images too (:func:`image_share`,
    ``fxharden.measure.midpoint.image_sampling_shifts``)."""
    out = draw_replicas(pts, n, seed, images=images)
    return None if out is None else out[0]


def image_share(point: SweepPoint) -> float:
    """The fraction of the Bernoulli variance ``a (1 - a) / N`` of a point's accuracy that lies
    between images rather than between noise draws of the same image.

    For one network, the variance of its accuracy between repeats on the same images is
    ``Σ_i p_i (1 - p_i) / N²`` (``p_i``: image i's chance of being right at this σ), and
    ``a (1 - a) / N`` is that plus the image term ``Var_i(p_i) / N``; so the share is
    ``1 - N · (variance between repeats) / (a (1 - a))``, averaged over networks and clipped to
    [0, 1]. With one repeat there is no estimate and the share is 1 (the whole Bernoulli
    variance: conservative)."""
    acc = point.accuracy
    if acc.shape[1] < 2:
        return 1.0
    bern = float(np.mean(acc * (1.0 - acc)))
    if not bern > 0:
        return 0.0
    v_rep = float(np.mean(acc.var(axis=1, ddof=1)))
    return float(np.clip(1.0 - point.total * v_rep / bern, 0.0, 1.0))


def draw_replicas(pts: Sequence[SweepPoint], n: int, seed: int, images: bool = True,
              clean: Optional[Tuple[float, int]] = None) -> Optional[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """``n`` bootstrap curves ``(n, points)`` and, with ``clean = (accuracy, images)``, the clean
    accuracy of each replica ``(n,)``.

    Three samples are redrawn: the networks (the same draw at every σ), each drawn network's
    repeats per point (the noise draws), and, with ``images``, the images, which are a
    sample of the data as well: the same image draw moves every point and the clean accuracy
    together (``image_sampling_shifts``, scaled per point by :func:`image_share`; the clean
    evaluation is deterministic, share 1). Without it the errors of μ cover only the networks
    and the noise, and disjoint image subsets disagree by several quoted errors.
    """
    if n <= 0 or not pts:
        return None
    rng = np.random.default_rng(seed)
    accs = [p.accuracy for p in pts]
    n_nets, reps = accs[0].shape
    out = np.empty((n, len(pts)))
    for b in range(n):
        nets = rng.integers(n_nets, size=n_nets) if n_nets > 1 else np.zeros(1, dtype=int)
        for j, acc in enumerate(accs):
            out[b, j] = acc[nets[:, None], rng.integers(reps, size=(len(nets), reps))].mean()
    plateaus = None if clean is None else np.full(n, float(clean[0]))
    if images:
        img_rng = np.random.default_rng([seed, 1])  # its own stream: the draws above are unchanged
        level = np.array([p.mean for p in pts] + ([clean[0]] if clean is not None else []))
        share = np.array([image_share(p) for p in pts] + ([1.0] if clean is not None else []))
        if clean is not None and clean[1] != pts[0].total:
            raise ValueError(f"clean accuracy on {clean[1]} images but the points on {pts[0].total}")
        shifts = image_sampling_shifts(level, pts[0].total, share, n, img_rng)
        out = np.clip(out + shifts[:, :len(pts)], 0.0, 1.0)
        if clean is not None:
            plateaus = np.clip(plateaus + shifts[:, -1], 0.0, 1.0)
    return out, plateaus
