"""The verbs that act on the noise of a hardened model: ``noise_sites``, ``set_noise``,
``set_weight_noise``, ``seed_noise``, ``noise_off``, and ``noise_modules`` (the modules by
role). Training, calibration and the sweep use these, never the modules' private state.

Every verb refuses what would do nothing, and says what to do instead."""

from __future__ import annotations

import difflib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from torch import nn

from ..hardened import HardenedModule
from ..layers import HARDENED_LAYERS
from ..module_route import LayerSite
from ..quant import ActQuant
from ..recurrent import recurrent_noises
from .chain import DRIFT_SUFFIX, FAULTS_SUFFIX, noise_off
from .models import Role
from .module import Noise, SigmaLike

__all__ = ["noise_modules", "noise_sites", "set_noise", "set_weight_noise", "seed_noise", "noise_off",
           "check_sites", "check_hardened", "weight_noise_modules", "link_modules", "DRIFT_SUFFIX", "FAULTS_SUFFIX"]

def check_hardened(model: Any) -> HardenedModule:
    """``model`` itself, if ``harden`` made it; else a ``TypeError`` that says so."""
    if not isinstance(model, HardenedModule):
        raise TypeError(f"expected a model returned by fxharden.harden, got {type(model).__name__}; "
                        "call fxharden.harden(model, ...) first")
    return model


def _activation_modules(hm: HardenedModule) -> Dict[str, Noise]:
    """Activation noise modules by site name, in graph order; those of the layers inside an
    opaque part (the module route) and of recurrent layers where the graph calls them, in
    module order."""
    out: Dict[str, Noise] = {}
    for node in hm.graph.nodes:
        if node.op == "call_module":
            mod = hm.get_submodule(node.target)
            if isinstance(mod, Noise):
                out[mod.site] = mod
            elif isinstance(mod, HARDENED_LAYERS):
                out.update(recurrent_noises(mod))
            elif not isinstance(mod, ActQuant):
                for sub in mod.modules():  # layer_sites, and the recurrent layers, in module order
                    if isinstance(sub, LayerSite) and sub.noise is not None:
                        out.setdefault(sub.noise.site, sub.noise)
                    for name, noise in recurrent_noises(sub).items():
                        out.setdefault(name, noise)
    return out


def _weight_ids(model: nn.Module) -> set:
    """Ids of the noise modules that hardened layers hold as their ``weight_noise``."""
    return {id(x) for m in model.modules() if isinstance(getattr(m, "weight_noise", None), nn.Module)
            for x in m.weight_noise.modules()}


def noise_modules(model: nn.Module, role: Role = Role.ACTIVATIONS) -> Dict[str, Noise]:
    """The noise modules of ``model`` that act on ``role``, by site name. Weight noise is
    the one a hardened layer holds (``<layer>.weight``, and ``.weight.drift``,
    ``.weight.faults`` where configured), in module order; activation noise is every other
    noise module, in graph order for a hardened model (module order otherwise)."""
    weights = _weight_ids(model)
    if Role(role) is Role.WEIGHTS:
        return {m.site: m for m in model.modules() if isinstance(m, Noise) and id(m) in weights}
    if isinstance(model, HardenedModule):
        return _activation_modules(model)
    return {m.site: m for m in model.modules() if isinstance(m, Noise) and id(m) not in weights}


def weight_noise_modules(model: nn.Module) -> Dict[str, Noise]:
    """The weight-noise modules of a hardened model, by site (``noise_modules(model, Role.WEIGHTS)``)."""
    return noise_modules(check_hardened(model), Role.WEIGHTS)


def noise_sites(model: nn.Module) -> List[str]:
    """Dotted names of the (activation) noise sites of a hardened model, in graph order."""
    return list(noise_modules(check_hardened(model)))


def check_sites(mods: Mapping[str, Noise], sites: Sequence[str], context: str = "") -> List[str]:
    """``sites`` as a list, each checked to be a key of ``mods``; an unknown one raises a
    ``ValueError`` (``context`` first) that lists close matches."""
    sites = list(sites)
    for s in sites:
        if s not in mods:
            close = difflib.get_close_matches(s, list(mods), n=5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{context}unknown noise site {s!r}{hint} "
                             f"(fxharden.noise_sites(model) lists all {len(mods)})")
    return sites


def set_noise(model: nn.Module, sigma: Union[SigmaLike, Mapping[str, SigmaLike]],
              sites: Optional[Iterable[str]] = None) -> None:
    """Set the noise strength.

    Args:
        model: a hardened model.
        sigma: a float >= 0, or one float per batch group (see ``Noise``), or a per-site map
            ``{site: sigma}`` (a noise allocation): each listed site gets its own value and
            every other site gets 0.
        sites: ``None`` sets every site (global injection); otherwise only these sites get
            ``sigma`` and every other site gets 0 (per-layer injection). Not with a map.

    Raises:
        ValueError: negative/NaN sigma, or a site name that does not exist (the message
            lists close matches).
    """
    mods = noise_modules(check_hardened(model))
    if isinstance(sigma, Mapping):
        if sites is not None:
            raise ValueError("set_noise: pass either a per-site sigma map or sites, not both")
        check_sites(mods, list(sigma))
        for name, mod in mods.items():
            mod.set_sigma(sigma.get(name, 0.0))
        return
    chosen = set(mods) if sites is None else set(check_sites(mods, [sites] if isinstance(sites, str) else sites))
    for name, mod in mods.items():
        mod.set_sigma(sigma if name in chosen else 0.0)


def seed_noise(model: nn.Module, seed: int) -> None:
    """Restart every noise stream (activations and weights) from base seed ``seed``; each
    site draws from its own stream ``stream_seed(seed, site name)`` (see ``fxharden.noise``)."""
    check_hardened(model)
    for mod in model.modules():
        if isinstance(mod, Noise):
            mod.reseed(seed)


def set_weight_noise(model: nn.Module, sigma: SigmaLike, link: str = "") -> None:
    """Set the strength of one link of the weight-noise chain (``HardenConfig.weight_noise``;
    ``harden`` set it to the link's ``sigma``) in every layer that has it: a float, or one
    float per batch group (one weight draw per group, see ``fxharden.layers``). 0 turns that
    link off; the other links keep their settings.

    Args:
        link: the link's name (``WeightNoise.name``): ``""``, the default, is the first link
            left unnamed (what ``WeightNoiseConfig`` configures); ``"drift"`` and ``"faults"``
            those of ``weight_drift`` and ``weight_faults``.

    Raises:
        ValueError: the model has no weight noise, or no link of that name: setting it would
            change nothing.
    """
    for mod in link_modules(model, link, "set_weight_noise").values():
        mod.set_sigma(sigma)


def link_modules(model: nn.Module, link: str = "", verb: str = "this") -> Dict[str, Noise]:
    """The weight-noise modules of one link of the chain (``WeightNoise.name``; site
    ``<layer>.weight.<link>``, ``<layer>.weight`` for ``""``), by site.

    Raises:
        ValueError: the model has no weight noise, or no link of that name (``verb`` says
            what asked, in the message)."""
    mods = noise_modules(check_hardened(model), Role.WEIGHTS)
    chosen = {site: m for site, m in mods.items() if site.endswith(f".weight.{link}" if link else ".weight")}
    if not chosen:
        names = sorted({site.rsplit(".weight", 1)[-1].lstrip(".") for site in mods})
        if names:
            raise ValueError(f"{verb}: this model has no weight-noise link named {link!r}; its links are "
                             f"{', '.join(repr(n) for n in names)} (pass link=<name>)")
        raise ValueError(
            f"{verb}: this model has no weight noise to set (it was hardened without "
            "HardenConfig(weight_noise=...), or no layer has weights it perturbs); harden the original model "
            "with e.g. weight_noise=WeightNoise('additive', 0.1) (or WeightNoiseConfig(kind='additive', "
            "sigma=0.1)), or use fxharden.set_noise for activation noise")
    return chosen
