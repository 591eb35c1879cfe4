"""Per-layer sensitivity map: the μ of every site of a per-layer ("walking noise") sweep in
network order, as rows, a markdown table and (in ``plots``) a bar figure.

Each row shows the fit's one quoted value (``MidpointFit.quote``): the fitted μ and its error
when the fit is OK; otherwise the model-free crossing estimate (when accuracy does fall half
way); otherwise a lower bound (accuracy never fell half way inside the grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .midpoint import MidpointFit, QuoteKind, format_quote
from .options import SweepMode
from .results import SweepResult

__all__ = ["Estimate", "SiteSensitivity", "estimate_text", "quoted_mu", "sensitivity", "sensitivity_by_site", "sensitivity_markdown",
           "PER_LAYER_MD"]

PER_LAYER_MD = "per_layer_mu.md"


class Estimate:
    """How a row's μ was obtained."""

    FIT = "fit"
    CROSSING = "crossing"
    LOWER_BOUND = "lower bound"
    NONE = "none"


@dataclass(frozen=True)
class SiteSensitivity:
    """One site of the map."""

    index: int
    """Position in network (graph) order, from 1."""
    site: str
    kind: str
    """``SiteKind`` value (``conv``, ``activation``, ...); ``""`` when the result does not say."""
    mu: float
    """The quoted μ (see ``estimate``); NaN when there is none."""
    mu_err: float
    """Its 1-σ error (fit) or grid-interval width (crossing); NaN for a bound."""
    estimate: str
    """``fit``, ``crossing``, ``lower bound`` (μ exceeds ``mu``) or ``none``."""
    status: str
    """The fit's status value."""

    def text(self) -> str:
        """``0.42 ± 0.03``, ``~0.42 ± 0.05 (crossing)``, ``> 10``, or ``-`` (``estimate_text``)."""
        return estimate_text(self.estimate, self.mu, self.mu_err)


_ESTIMATE = {QuoteKind.MU: Estimate.FIT, QuoteKind.CROSSING: Estimate.CROSSING,
             QuoteKind.LOWER_BOUND: Estimate.LOWER_BOUND, QuoteKind.NONE: Estimate.NONE}
_KIND = {v: k for k, v in _ESTIMATE.items()}


def estimate_text(estimate: str, mu: float, mu_err: float = math.nan) -> str:
    """A per-site μ as every per-site table prints it (``format_quote``): the value with its
    error for a fit, ``~value (crossing)``, ``> bound`` for a site beyond the grid (never the
    bound as if it were μ) and ``-`` where there is no estimate."""
    return format_quote(_KIND[estimate], mu, mu_err, "crossing" if estimate == Estimate.CROSSING else "")


def quoted_mu(fit: Optional[MidpointFit]) -> Tuple[float, float, str]:
    """``(mu, err, estimate)`` of a fit, from its one quoted value (``MidpointFit.quote``):
    the fitted μ when the fit is OK, else the crossing when the accuracy falls half way,
    else the lower bound, else NaNs."""
    if fit is None:
        return math.nan, math.nan, Estimate.NONE
    q = fit.quote()
    return q.value, q.err, _ESTIMATE[q.kind]


def sensitivity(result: SweepResult) -> List[SiteSensitivity]:
    """The rows of the map, in network order.

    Raises:
        ValueError: ``result`` is not a per-layer sweep.
    """
    if result.mode is not SweepMode.PER_LAYER:
        raise ValueError("a sensitivity map needs a per-layer sweep (mode=SweepMode.PER_LAYER / --per-layer)")
    rows = []
    for i, site in enumerate(result.sites, 1):
        fit = result.per_site.get(site)
        mu, err, how = quoted_mu(fit)
        rows.append(SiteSensitivity(i, site, result.site_kinds.get(site, ""), mu, err, how,
                                    fit.status.value if fit is not None else "not measured"))
    return rows


def sensitivity_by_site(result: SweepResult) -> Dict[str, SiteSensitivity]:
    """``sensitivity(result)`` keyed by site name."""
    return {row.site: row for row in sensitivity(result)}


def sensitivity_markdown(result: SweepResult) -> str:
    """A markdown table of the map: network order, with the most sensitive sites ranked."""
    rows = sensitivity(result)
    ranked = sorted((r for r in rows if r.estimate in (Estimate.FIT, Estimate.CROSSING)), key=lambda r: r.mu)
    rank = {r.site: i for i, r in enumerate(ranked, 1)}
    lines = [f"Per-layer μ: noise at one site, 0 elsewhere; {result.num_images} images, "
             f"{len(result.networks)} network(s), clean accuracy {result.clean_accuracy:.4f}, chance "
             f"{result.chance:.3g}. Rank 1 = most sensitive.", "",
             "| # | site | kind | μ | estimate | fit status | rank |", "|---:|---|---|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r.index} | `{r.site}` | {r.kind or '-'} | {r.text()} | {r.estimate} | {r.status} | "
                     f"{rank.get(r.site, '-')} |")
    return "\n".join(lines) + "\n"
