"""Weights on top of a built model: timm's pretrained mechanism, torchvision weights enums,
and local files (a state_dict, a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper, or
safetensors).

Loading a file compares its keys and shapes with the model's and says what does not fit:
weights of another architecture (keys listed), missing keys, keys the model does not have
(a larger variant of the architecture; only batch-norm counters are ignored), or a classifier
head of another size (with the fix: ``--num-classes N``). When ``num_classes`` was given and
differs from the file's head, the head is left freshly initialised (fine-tuning on new classes).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["WeightsError", "PretrainedUnavailableError", "WeightsReport", "timm_pretrained", "torchvision_weights",
           "read_state_dict", "load_weights", "head_of", "resize_head", "cache_hint"]


class WeightsError(ValueError):
    """Weights that do not fit the model (the message lists the keys) or an unreadable file."""


class PretrainedUnavailableError(WeightsError):
    """Pretrained weights could not be fetched (offline and not in the local cache)."""


@dataclass
class WeightsReport:
    """What loading a weights file did."""

    path: str
    loaded: int
    """Tensors copied into the model."""
    unexpected: List[str] = field(default_factory=list)
    """Keys in the file that the model does not have and that carry no weights
    (``num_batches_tracked``; ignored). Any other such key is an error."""
    head_reset: List[str] = field(default_factory=list)
    """Head keys left freshly initialised because ``num_classes`` differs from the file's head."""


def cache_hint() -> str:
    """Where timm/torchvision look for downloaded weights, and the variables that move them."""
    hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    torch_home = os.environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))
    offline = os.environ.get("HF_HUB_OFFLINE", "unset")
    return (f"looked in the Hugging Face cache HF_HOME={hf_home} (hub files under $HF_HOME/hub) and the torch "
            f"cache TORCH_HOME={torch_home} (files under $TORCH_HOME/hub/checkpoints); HF_HUB_OFFLINE={offline}" + (
                "" if offline == "1" else " (set it to 1 to fail at once instead of retrying the network)"))


def timm_pretrained(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=True, **kwargs)``: timm finds the weights in its
    cache or downloads them (Hugging Face hub); a ``num_classes`` other than the pretrained
    one gets a new head from timm.

    Raises:
        PretrainedUnavailableError: the weights are neither cached nor downloadable.
    """
    import timm

    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as err:  # huggingface_hub's errors are OSErrors; urllib's too
        if isinstance(err, RuntimeError) and "size mismatch" in str(err):
            raise
        raise PretrainedUnavailableError(
            f"timm could not get the pretrained weights of {name!r} ({type(err).__name__}: {str(err)[:200]}). "
            f"It {cache_hint()}. Without network access copy the weights into that cache on a connected machine, "
            "or load a local file with --weights PATH (weights=PATH in Python).") from None


def torchvision_weights(name: str, weights: str):
    """The torchvision weights enum member of model ``name`` for ``DEFAULT`` or a member name
    (``IMAGENET1K_V1``, or ``ResNet18_Weights.IMAGENET1K_V1``).

    Raises:
        WeightsError: no such weights for that model (the names it has are listed).
    """
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    member = weights.rpartition(".")[2] if weights.startswith(enum.__name__ + ".") else weights
    if member == "DEFAULT":
        return enum.DEFAULT
    if member in enum.__members__:
        return enum[member]
    raise WeightsError(f"{weights!r} is neither a file nor a weights name of torchvision model {name!r}; its weights "
                       f"are DEFAULT, {', '.join(k for k in enum.__members__ if k != 'DEFAULT')}")


def build_torchvision_pretrained(name: str, weights: str, num_classes: Optional[int], **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, weights=...)`` (downloaded into ``$TORCH_HOME`` when
    missing); ``num_classes`` other than the weights' categories gets a new head."""
    import torchvision

    member = torchvision_weights(name, weights)
    try:
        model = torchvision.models.get_model(name, weights=member, **kwargs)
    except (OSError, RuntimeError) as err:
        file = member.url.rpartition("/")[2]
        raise PretrainedUnavailableError(
            f"torchvision could not get {member} ({type(err).__name__}: {str(err)[:200]}). It {cache_hint()}; the file "
            f"is {file}. Without network access copy it to $TORCH_HOME/hub/checkpoints/{file}, or pass --weights "
            "PATH (weights=PATH in Python) with a local state_dict.") from None
    if num_classes is not None and num_classes != len(member.meta.get("categories", ())):
        resize_head(model, num_classes)
    return model


def read_state_dict(path: os.PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file: a state_dict, a dict wrapping one under ``state_dict`` /
    ``model`` / ``state_dict_ema``, or a ``.safetensors`` file. A ``module.`` prefix
    (DataParallel) is removed.

    Raises:
        WeightsError: unreadable file, no tensors in it, or an fxharden checkpoint (pass that as the model).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: not a readable weights file ({type(err).__name__}: {str(err)[:200]}); expected a "
                           "torch.save'd state_dict or a .safetensors file") from None
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("fxharden-checkpoint"):
        raise WeightsError(f"{path} is an fxharden checkpoint; pass it as the model itself (fxharden sweep {path})")
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors ({type(obj).__name__}); save weights with "
                           "torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def head_of(model: nn.Module) -> Optional[Tuple[str, nn.Module]]:
    """``(name, module)`` of the classifier head: timm's ``get_classifier()``, else the last
    ``nn.Linear`` (``None`` when there is none)."""
    modules = dict(model.named_modules())
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        for name, m in modules.items():
            if m is head and isinstance(m, (nn.Linear, nn.Conv2d)):
                return name, m
    last = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    return last[-1] if last else None


def resize_head(model: nn.Module, num_classes: int) -> None:
    """Replace the classifier head by a freshly initialised one with ``num_classes`` outputs
    (timm: ``reset_classifier``; otherwise the last ``nn.Linear``)."""
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return
    found = head_of(model)
    if found is None:
        raise WeightsError(f"{type(model).__name__} has no nn.Linear head to resize to {num_classes} classes")
    name, old = found
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


_TOLERATED_EXTRA = ("num_batches_tracked",)
"""Keys a file may hold that the model lacks: batch-norm step counters (a model built with
``momentum=None`` or from a library version without them has none); they carry no weights."""


def _listing(keys: List[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_weights(model: nn.Module, path: os.PathLike, *, num_classes_given: bool = False) -> WeightsReport:
    """Copy the tensors of the file at ``path`` into ``model`` (in place).

    With ``num_classes_given`` a head whose size differs from the file's is kept as built
    (fresh) and the rest is loaded; without it that mismatch is an error naming the fix.

    Raises:
        WeightsError: another architecture (few keys in common), missing keys, keys the model
            does not have (a larger variant: resnet34 weights for resnet18), or a head of
            another size; the message counts and lists the keys and shapes.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head = head_of(model)
    head_keys = {f"{head[0]}.{k}" for k in head[1].state_dict()} if head else set()
    common = [k for k in own if k in state]
    if len(common) < max(1, len(own) // 2):
        raise WeightsError(
            f"{path}: these weights are for another architecture than {type(model).__name__}: only {len(common)} of "
            f"its {len(own)} keys are in the file. Model keys: {_listing(list(own))}. File keys: "
            f"{_listing(list(state))}. Pick the model the file was saved from.")
    shape_bad = [k for k in common if tuple(own[k].shape) != tuple(state[k].shape)]
    head_bad = [k for k in shape_bad if k in head_keys]
    other_bad = [k for k in shape_bad if k not in head_keys]
    if other_bad:
        raise WeightsError(f"{path}: shapes differ from the model's at {len(other_bad)} keys: " + "; ".join(
            f"{k} file {tuple(state[k].shape)} model {tuple(own[k].shape)}" for k in other_bad[:6])
            + ". These weights are for another variant of the architecture.")
    if head_bad and not num_classes_given:
        k = head_bad[0]
        file_classes, model_classes = state[k].shape[0], own[k].shape[0]
        raise WeightsError(f"{path}: its classifier head has {file_classes} classes ({k} {tuple(state[k].shape)}) but "
                           f"the model was built with {model_classes}. Pass --num-classes {file_classes} "
                           f"(num_classes={file_classes}) to load it as it is, or --num-classes N for a new head "
                           "with N classes (fine-tuning).")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    missing_head = [k for k in missing if k in head_keys] if num_classes_given else []
    missing = [k for k in missing if k not in missing_head]
    if missing:
        raise WeightsError(f"{path}: the file lacks {len(missing)} of the model's keys: {_listing(missing)}; "
                           "they would stay random. Check that it was saved from this model.")
    unexpected = [k for k in state if k not in own]
    foreign = [k for k in unexpected if not k.endswith(_TOLERATED_EXTRA)]
    if foreign:
        raise WeightsError(
            f"{path}: the file has {len(foreign)} keys that {type(model).__name__} does not have: {_listing(foreign)}; "
            f"the model's {len(own)} keys were all found, so the file is probably from a larger variant of the "
            "architecture (resnet34 weights for resnet18, say). Pick the model the file was saved from, or save "
            "only the keys this model has: torch.save({k: v for k, v in sd.items() if k in model.state_dict()}, "
            "path).")
    load = {k: v for k, v in state.items() if k in own and k not in head_bad}
    model.load_state_dict(load, strict=False)
    reset = head_bad + missing_head
    if reset:
        warnings.warn(f"{path}: the classifier head ({_listing(reset)}) is freshly initialised for "
                      f"{own[reset[0]].shape[0]} classes; fine-tune before measuring", stacklevel=2)
    return WeightsReport(str(path), loaded=len(load), unexpected=unexpected, head_reset=reset)
