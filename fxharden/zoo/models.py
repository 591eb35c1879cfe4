"""One resolver from a model source to a model: the paper's networks, timm, torchvision,
the user's own factories, with weights, and checkpoints.

``build_model(source)`` builds with random weights (what checkpoints rebuild from);
``load_model(source, pretrained=..., weights=..., num_classes=...)`` adds weights and returns
the preprocessing the model expects; ``resolve_networks`` turns whatever the API accepts as a
model (module, checkpoint path, source string, lists of them) into hardened networks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from ..core.config import HardenConfig, config_to_dict
from ..core.harden import HardenedModule, harden, noise_sites

from .checkpoint import is_checkpoint, load_checkpoint
from .preprocess import NAMED_NONE, Preprocess
from .sources import ModelSource, ModelSourceError, SourceKind, build_model, build_source, parse_source, source_names

__all__ = ["build_model", "check_model_name", "load_model", "LoadedModel", "model_names", "resolve_networks",
           "ModelLike", "ModelSourceError"]

ModelLike = Union[nn.Module, str, os.PathLike]
"""A model, a hardened model, a checkpoint path, or a model source string (``timm:resnet18``)."""

CIFAR_PREPROCESS = Preprocess((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 1.0, "bilinear")
"""The paper's networks: CIFAR-10 images as they are (32x32, CIFAR-10 train mean/std)."""


def model_names() -> List[str]:
    """Every bare name ``build_model`` accepts: recipes, then timm, then torchvision models."""
    return source_names()


@dataclass
class LoadedModel:
    """A model built from a source, with its weights, and how its inputs are prepared."""

    model: nn.Module
    source: ModelSource
    preprocess: Preprocess
    arch_kwargs: Dict[str, Any]
    """``build_model(source.text, **arch_kwargs)`` rebuilds the architecture (checkpoints store it)."""
    weights: Optional[str] = None
    """Where the weights came from (``timm pretrained``, a torchvision enum, a path); ``None``: random."""
    preprocess_origin: str = ""
    """Where ``preprocess`` comes from (printed by the CLI and recorded in results)."""

    @property
    def names_preprocess(self) -> bool:
        """False when the model names no preprocessing and ``preprocess`` is timm's default."""
        return self.preprocess_origin != NAMED_NONE

    @property
    def example_inputs(self) -> Any:
        """``harden``'s ``example_inputs`` for a model torch.fx cannot trace (a Hugging Face
        model: token ids within its vocabulary), else ``None``."""
        from .sources import hf_example_inputs

        return hf_example_inputs(self.model) if self.source.kind is SourceKind.HF else None

    @property
    def num_classes(self) -> Optional[int]:
        """Outputs of the classifier head (``None`` when it has no recognisable head)."""
        from .weights import head_of

        n = getattr(self.model, "num_classes", None)
        if isinstance(n, int):
            return n
        head = head_of(self.model)
        return head[1].out_features if head and isinstance(head[1], nn.Linear) else None


def load_model(source: str, *, pretrained: bool = False, weights: Union[str, os.PathLike, None] = None,
               num_classes: Optional[int] = None, model_args: Optional[Mapping[str, Any]] = None) -> LoadedModel:
    """Build ``source`` and load its weights.

    Args:
        source: a source string (see ``build_model``).
        pretrained: timm's pretrained weights through timm (Hugging Face hub or its cache; the
            tag of ``timm:NAME.TAG`` picks which); for torchvision it means ``weights="DEFAULT"``.
        weights: a local weights file (state_dict / safetensors) for any source, or for
            torchvision ``DEFAULT`` or a weights enum name (``IMAGENET1K_V1``).
        num_classes: head size; ``None`` keeps the source's (or the weights file's must match).
            Given and different from the weights' head, the head is freshly initialised.
        model_args: keyword arguments for the builder (``--model-arg key=value``).

    Raises:
        ModelSourceError, fxharden.zoo.weights.WeightsError (ValueErrors), FileNotFoundError:
            the message says what was wrong and what to do.
    """
    from .weights import build_torchvision_pretrained, load_weights, torchvision_weights

    src = parse_source(source)
    kwargs = dict(model_args or {})
    if pretrained and weights is not None:
        raise ModelSourceError("give either --pretrained (the library's weights) or --weights (a file or a "
                               "torchvision weights name), not both")
    if src.kind is SourceKind.TORCHVISION and pretrained:
        weights = "DEFAULT"
    arch_kwargs = {**({} if num_classes is None else {"num_classes": int(num_classes)}), **kwargs}
    tv_enum, origin = None, None
    if src.kind is SourceKind.TORCHVISION and weights is not None and not Path(weights).is_file():
        tv_enum = torchvision_weights(src.name, str(weights))
        model = build_torchvision_pretrained(src.name, str(weights), num_classes, **kwargs)
        arch_kwargs["num_classes"] = int(num_classes or len(tv_enum.meta["categories"]))
        origin = str(tv_enum)
    else:
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"no weights file at {weights}" + (
                "" if src.kind is SourceKind.TORCHVISION else "; --weights takes a local file here"))
        model = build_source(src, num_classes, pretrained=pretrained and src.kind is not SourceKind.TORCHVISION,
                             **kwargs)
        if pretrained:
            origin = "timm pretrained"
        if src.kind is SourceKind.HF:
            origin = f"saved with the model ({src.name})"
        if weights is not None:
            load_weights(model, weights, num_classes_given=num_classes is not None)
            origin = str(weights)
    if src.kind is SourceKind.RECIPE:
        preprocess, how = CIFAR_PREPROCESS, "the paper's CIFAR-10 preprocessing"
    elif src.kind is SourceKind.TORCHVISION and tv_enum is None:
        import torchvision

        default = torchvision.models.get_model_weights(src.name).DEFAULT
        preprocess, how = Preprocess.for_model(model, default), f"torchvision {default} transforms()"
    else:
        preprocess = Preprocess.for_model(model, tv_enum)
        how = (f"torchvision {tv_enum} transforms()" if tv_enum is not None
               else "the model's pretrained config (timm)" if getattr(model, "pretrained_cfg", None)
               else NAMED_NONE)
    loaded = LoadedModel(model, src, preprocess, arch_kwargs, origin, how)
    if "num_classes" not in arch_kwargs and loaded.num_classes is not None and src.kind not in (SourceKind.FACTORY,
                                                                                                 SourceKind.HF):
        arch_kwargs["num_classes"] = loaded.num_classes
    return loaded


def check_model_name(name: str) -> str:
    """Where ``build_model(name)`` finds ``name`` (``"recipe"``, ``"timm"``, ``"torchvision"``
    or ``"factory"``), without building anything.

    Raises:
        ModelSourceError (a ValueError): unknown name (close matches listed) or a malformed string.
    """
    return parse_source(name).kind.value


def _flat(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (to name the keys in which two configs differ)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def resolve_networks(model: Union[ModelLike, Sequence[ModelLike], Mapping[str, ModelLike]],
                     harden_config: Optional[HardenConfig] = None,
                     example_inputs: Any = None) -> List[Tuple[str, HardenedModule]]:
    """``(label, hardened model)`` for a model, a checkpoint path, a model source string
    (``"timm:resnet18"``, built by ``load_model`` with random weights; use ``load_model`` for
    weights), a list of them, or a ``{label: model}`` dict. Plain modules and sources are hardened with ``harden_config`` (default:
    noise sites only) and ``example_inputs`` (one batch's inputs: the torch.export frontend
    for models torch.fx cannot trace); hardened models and checkpoints are used as they are.

    Raises:
        TypeError: an entry is neither a module nor a path.
        ModelSourceError: a string that is neither a checkpoint file nor a model source.
        ValueError: ``harden_config`` given for a hardened model or a checkpoint, or
            networks that do not share their noise sites.
    """
    if isinstance(model, Mapping):
        entries = [(str(k), v) for k, v in model.items()]
    else:
        entries = [(None, m) for m in (model if isinstance(model, (list, tuple)) else [model])]
    if not entries:
        raise ValueError("no model given: pass a model, a checkpoint path, or a non-empty list of them")
    nets: List[Tuple[str, HardenedModule]] = []
    for label, entry in entries:
        if isinstance(entry, (str, os.PathLike)) and not is_checkpoint(entry) and _looks_like_source(entry):
            nets.append((label or str(entry), harden(load_model(str(entry)).model, example_inputs=example_inputs,
                                                     config=harden_config or HardenConfig(quant=None))))
        elif isinstance(entry, (str, os.PathLike)) or isinstance(entry, HardenedModule):
            if harden_config is not None:
                name = label or (type(entry).__name__ if isinstance(entry, nn.Module) else str(entry))
                raise ValueError(f"{name}: a checkpoint or hardened model keeps its own harden config; pass "
                                 "bits/scale/harden_config only with plain models")
            hm = entry if isinstance(entry, HardenedModule) else load_checkpoint(entry).model
            nets.append((label or (type(entry).__name__ if hm is entry else str(entry)), hm))
        elif isinstance(entry, nn.Module):
            nets.append((label or type(entry).__name__,
                         harden(entry, config=harden_config or HardenConfig(quant=None), example_inputs=example_inputs)))
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


def _looks_like_source(entry: Union[str, os.PathLike]) -> bool:
    """A string that is not a file path: no path separator and no checkpoint suffix."""
    text = str(entry)
    return isinstance(entry, str) and (text.startswith("hf:") or (not any(c in text for c in "/\\")
                                                                   and not text.endswith((".pt", ".pth"))))
