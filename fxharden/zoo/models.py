"""One name -> model resolver: the paper's networks, then every timm and torchvision model.

``build_model(name)`` tries the recipe names first, then ``timm.create_model`` (never
pretrained: nothing is downloaded), then ``torchvision.models.get_model``.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from ..core.config import HardenConfig, config_to_dict
from ..core.harden import HardenedModule, harden, noise_sites

from .recipes import RECIPES, find_recipe

__all__ = ["build_model", "check_model_name", "model_names", "resolve_networks", "ModelLike"]

ModelLike = Union[nn.Module, str, os.PathLike]
"""A model, a hardened model, or a checkpoint path."""


def _timm_names() -> List[str]:
    try:
        import timm

        return list(timm.list_models())
    except Exception:  # pragma: no cover - timm is a dependency, but suggestions must never crash
        return []


def _torchvision_names() -> List[str]:
    try:
        import torchvision

        return list(torchvision.models.list_models())
    except Exception:  # pragma: no cover
        return []


def model_names() -> List[str]:
    """Every name ``build_model`` accepts: recipes, then timm, then torchvision models."""
    seen: Dict[str, None] = dict.fromkeys(RECIPES)
    seen.update(dict.fromkeys(_timm_names()))
    seen.update(dict.fromkeys(_torchvision_names()))
    return list(seen)


def build_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """A randomly initialised model by name.

    Resolution order: a recipe name (``lenet5``, ``vgg11``, ``resnet18``; case, ``-`` and
    ``_`` ignored, so ``"LeNet-5"`` works), then any timm model
    (``timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)``), then any
    torchvision model (``torchvision.models.get_model(name, weights=None, ...)``).

    Raises:
        ValueError: unknown name; the message lists the recipes and close matches.
    """
    source = check_model_name(name)
    if source == "recipe":
        return find_recipe(name).build(num_classes=num_classes, **kwargs)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def check_model_name(name: str) -> str:
    """Where ``build_model(name)`` finds ``name``: ``"recipe"``, ``"timm"`` or ``"torchvision"``
    (nothing is built).

    Raises:
        ValueError: unknown name; the message lists the recipes and close matches.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if find_recipe(name) is not None:
        return "recipe"
    import timm

    if timm.is_model(name):
        return "timm"
    if name in _torchvision_names():
        return "torchvision"
    close = difflib.get_close_matches(name, model_names(), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} The paper's networks are {', '.join(RECIPES)}; any "
                     "timm.list_models() or torchvision.models.list_models() name also works.")


def _flat(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (to name the keys in which two configs differ)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def resolve_networks(model: Union[ModelLike, Sequence[ModelLike], Mapping[str, ModelLike]],
                     harden_config: Optional[HardenConfig] = None) -> List[Tuple[str, HardenedModule]]:
    """``(label, hardened model)`` for a model, a checkpoint path, a list of them, or a
    ``{label: model}`` dict. Plain modules are hardened with ``harden_config`` (default:
    noise sites only); hardened models and checkpoints are used as they are.

    Raises:
        TypeError: an entry is neither a module nor a path.
        ValueError: ``harden_config`` given for a hardened model or a checkpoint, or
            networks that do not share their noise sites.
    """
    from .checkpoint import load_checkpoint

    if isinstance(model, Mapping):
        entries = [(str(k), v) for k, v in model.items()]
    else:
        entries = [(None, m) for m in (model if isinstance(model, (list, tuple)) else [model])]
    if not entries:
        raise ValueError("no model given: pass a model, a checkpoint path, or a non-empty list of them")
    nets: List[Tuple[str, HardenedModule]] = []
    for label, entry in entries:
        if isinstance(entry, (str, os.PathLike)) or isinstance(entry, HardenedModule):
            if harden_config is not None:
                name = label or (type(entry).__name__ if isinstance(entry, nn.Module) else str(entry))
                raise ValueError(f"{name}: a checkpoint or hardened model keeps its own harden config; pass "
                                 "bits/scale/harden_config only with plain models")
            hm = entry if isinstance(entry, HardenedModule) else load_checkpoint(entry).model
            nets.append((label or (type(entry).__name__ if hm is entry else str(entry)), hm))
        elif isinstance(entry, nn.Module):
            nets.append((label or type(entry).__name__,
                         harden(entry, config=harden_config or HardenConfig(quant=None))))
        else:
            raise TypeError(f"expected an nn.Module, a HardenedModule or a checkpoint path, got {type(entry).__name__}")
    first = _flat(config_to_dict(nets[0][1].harden_config))
    for label, hm in nets[1:]:
        other = _flat(config_to_dict(hm.harden_config))
        diff = sorted(k for k in set(first) | set(other) if first.get(k, "-") != other.get(k, "-"))
        if diff:
            shown = "; ".join(f"{k}: {first.get(k, '-')!r} vs {other.get(k, '-')!r}" for k in diff[:4])
            raise ValueError(f"network {label!r} was hardened differently from {nets[0][0]!r} ({shown}"
                             f"{'; ...' if len(diff) > 4 else ''}); the networks of one sweep are repeats of one "
                             "network and must share their harden config: sweep each kind separately")
        if noise_sites(hm) != noise_sites(nets[0][1]):
            raise ValueError(f"network {label!r} has other noise sites than {nets[0][0]!r}; the networks of one "
                             "sweep must share an architecture and harden config")
    return nets
