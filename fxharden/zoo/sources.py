"""Where a model comes from: one source string -> one ``nn.Module`` with random weights.

Source strings (the same in the CLI's MODEL argument and the Python API):

* ``lenet5``, ``vgg11``, ``resnet18``: the paper's CIFAR-10 networks (case, ``-`` and ``_``
  ignored);
* ``timm:NAME`` or ``timm:NAME.TAG`` (a pretrained tag such as ``convnext_tiny.fb_in1k``), or a
  bare timm name;
* ``torchvision:NAME``, or a bare torchvision name that timm does not have;
* ``package.module:factory``: the user's own callable returning an ``nn.Module`` (keyword
  arguments from ``--model-arg key=value``);
* ``hf:PATH_OR_NAME``: a Hugging Face transformers model saved with ``save_pretrained`` (a
  folder) or in the local Hugging Face cache, with its saved weights, loaded offline; a causal
  LM, or a sequence classifier when its config says so or ``--num-classes`` is given.

``parse_source`` turns the string into a typed ``ModelSource``; ``build_source`` builds it;
``build_model`` does both from the string, with the default head.
Weights (``--pretrained``, ``--weights``) are loaded on top by ``fxharden.zoo.weights``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from enum import Enum
from typing import Any, Dict, List, Optional

from torch import nn

from .._files import missing_path
from .recipes import RECIPES, find_recipe

__all__ = ["SourceKind", "ModelSource", "ModelSourceError", "parse_source", "build_source", "build_model",
           "source_names", "parse_model_args", "hf_example_inputs"]

_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class ModelSourceError(ValueError):
    """A model source that cannot be resolved or built (the message says why and what to do)."""


class SourceKind(str, Enum):
    """Which library (or the user's code) builds the model."""

    RECIPE = "recipe"
    """One of the paper's networks (``fxharden.zoo.networks``)."""
    TIMM = "timm"
    TORCHVISION = "torchvision"
    FACTORY = "factory"
    """``package.module:callable`` returning an ``nn.Module``."""
    HF = "hf"
    """A Hugging Face transformers model (``hf:FOLDER`` or ``hf:NAME`` in the local cache)."""


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source string."""

    kind: SourceKind
    name: str
    """The name inside its library (``convnext_tiny.fb_in1k``), or ``package.module:factory``."""
    text: str
    """The string as given (stored in checkpoints as ``arch``)."""

    @property
    def tag(self) -> Optional[str]:
        """The timm pretrained tag (``fb_in1k`` of ``convnext_tiny.fb_in1k``), else ``None``."""
        if self.kind is SourceKind.TIMM and "." in self.name:
            return self.name.split(".", 1)[1]
        return None


def _timm_names() -> List[str]:
    try:
        import timm

        return list(timm.list_models())
    except Exception:  # pragma: no cover - suggestions must never crash
        return []


def _torchvision_names() -> List[str]:
    try:
        import torchvision

        return list(torchvision.models.list_models())
    except Exception:  # pragma: no cover
        return []


def source_names() -> List[str]:
    """Every bare name ``parse_source`` accepts: recipes, then timm, then torchvision models."""
    seen: Dict[str, None] = dict.fromkeys(RECIPES)
    seen.update(dict.fromkeys(_timm_names()))
    seen.update(dict.fromkeys(_torchvision_names()))
    return list(seen)


def _unknown(what: str, name: str, candidates: List[str], text: str) -> ModelSourceError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ModelSourceError(f"unknown {what} {text!r}.{hint} A model is one of the paper's networks "
                            f"({', '.join(RECIPES)}), a timm name (timm:NAME or timm:NAME.TAG), a torchvision name "
                            "(torchvision:NAME), your own factory (package.module:function), or a checkpoint file.")


def _check_timm(name: str, text: str) -> None:
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise _unknown("timm model", arch, _timm_names(), text)
    if tag:
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=5, cutoff=0.5)
            raise ModelSourceError(f"timm model {arch!r} has no pretrained tag {tag!r}; its tags are "
                                   f"{', '.join(map(repr, close or tags[:10])) or 'none'} "
                                   f"(timm.list_pretrained({arch + '.*'!r}))")


def parse_source(text: str) -> ModelSource:
    """The ``ModelSource`` of a source string (see the module docstring).

    A bare name is looked up as a recipe, then in timm, then in torchvision.

    Raises:
        ModelSourceError: unknown name (close matches listed) or a malformed string.
    """
    if not isinstance(text, str) or not text.strip():
        raise ModelSourceError(f"a model source must be a non-empty string, got {text!r}")
    text = text.strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix == "timm":
        _check_timm(rest, text)
        return ModelSource(SourceKind.TIMM, rest, text)
    if sep and prefix == "hf":
        if not rest.strip():
            raise ModelSourceError("hf: needs a folder or a model name, e.g. hf:./my_llama or hf:gpt2")
        return ModelSource(SourceKind.HF, rest.strip(), text)
    if sep and prefix == "torchvision":
        if rest not in _torchvision_names():
            raise _unknown("torchvision model", rest, _torchvision_names(), text)
        return ModelSource(SourceKind.TORCHVISION, rest, text)
    if sep:
        if not _FACTORY.match(text):
            raise ModelSourceError(f"{text!r} is not a model source: a factory is written package.module:function "
                                   "(a Python import path, a colon, a callable's name), e.g. mypkg.nets:small_cnn")
        return ModelSource(SourceKind.FACTORY, text, text)
    if find_recipe(text) is not None:
        return ModelSource(SourceKind.RECIPE, text, text)
    import timm

    if timm.is_model(text.partition(".")[0]):
        _check_timm(text, text)
        return ModelSource(SourceKind.TIMM, text, text)
    if text in _torchvision_names():
        return ModelSource(SourceKind.TORCHVISION, text, text)
    raise _unknown("model", text, source_names(), text)


def _import_hint(module_name: str, err: ImportError) -> str:
    """What makes ``module_name`` importable: the ``fxharden`` console script does not look in
    the current folder (``python -c`` and ``python -m`` do), so the folder goes on PYTHONPATH."""
    top = module_name.partition(".")[0]
    missing = getattr(err, "name", None)
    if missing and missing != top and (module_name == missing or module_name.startswith(missing + ".")):
        return f"Package {missing.rpartition('.')[0]!r} was found but has no module {missing!r}; check the name."
    if missing and missing != top:
        return (f"{module_name} itself was found, but it imports {missing!r}, which is not installed in this "
                "Python environment; install it.")
    return (f"The fxharden command does not look in the current folder: from the folder that holds {top}/ "
            f"(or {top}.py) run it as PYTHONPATH=. fxharden ..., or set PYTHONPATH to that folder, or install "
            f"the package into this environment (pip install -e . in its project).")


def _factory(source: ModelSource):
    module_name, _, attr = source.name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelSourceError(f"{source.text}: cannot import module {module_name!r} ({err}). "
                               + _import_hint(module_name, err)) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ModelSourceError(f"{source.text}: {module_name} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSourceError(f"{source.text}: {attr} is a {type(obj).__name__}, not a callable returning an nn.Module")
    return obj


def build_source(source: ModelSource, num_classes: Optional[int] = None, *, pretrained: bool = False,
                 **kwargs: Any) -> nn.Module:
    """Build ``source`` with random weights (or timm's pretrained ones with ``pretrained``).

    ``num_classes`` ``None`` keeps the source's own head (10 for the paper's networks, the
    pretrained head of timm/torchvision models); a factory gets ``num_classes`` only when it
    is given. ``kwargs`` go to the builder (``timm.create_model``,
    ``torchvision.models.get_model``, the recipe's network or the factory).

    Raises:
        ModelSourceError: the factory raised or did not return an ``nn.Module``; the builder
            rejected an argument.
        fxharden.zoo.weights.PretrainedUnavailableError: ``pretrained`` and timm could not get
            the weights (offline, not cached).
    """
    size = {} if num_classes is None else {"num_classes": int(num_classes)}
    if pretrained and source.kind is not SourceKind.TIMM:
        raise ModelSourceError(f"{source.text}: --pretrained loads timm weights; for torchvision use "
                               "--weights DEFAULT (or a weights name), for other models --weights PATH")
    try:
        if source.kind is SourceKind.RECIPE:
            return find_recipe(source.name).build(**size, **kwargs)
        if source.kind is SourceKind.TIMM:
            import timm

            if not pretrained:
                return timm.create_model(source.name, pretrained=False, **size, **kwargs)
            from .weights import timm_pretrained

            return timm_pretrained(source.name, **size, **kwargs)
        if source.kind is SourceKind.HF:
            return _hf_model(source, num_classes, **kwargs)
        if source.kind is SourceKind.TORCHVISION:
            import torchvision

            return torchvision.models.get_model(source.name, weights=None, **{"num_classes": 1000, **size}, **kwargs)
        factory = _factory(source)
    except (ModelSourceError, OSError):
        raise
    except TypeError as err:
        raise ModelSourceError(f"{source.text}: the builder rejected its arguments ({err}); check --model-arg / "
                               "--num-classes") from None
    try:
        model = factory(**size, **kwargs)
    except TypeError as err:
        raise ModelSourceError(f"{source.text}: calling {source.name.partition(':')[2]}"
                               f"({', '.join(f'{k}={v!r}' for k, v in {**size, **kwargs}.items())}) failed: {err}. "
                               "Pass its arguments with --model-arg key=value (num_classes via --num-classes)") from None
    except Exception as err:
        raise ModelSourceError(f"{source.text}: the factory raised {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"{source.text}: the factory returned a {type(model).__name__}, not an "
                               "nn.Module; it must return the model itself")
    return model


_IMAGE_CLASSES: Any = object()
"""``build_model``'s default head: 10 classes (CIFAR-10) for image models, the saved one for ``hf:``."""


def build_model(name: str, num_classes: Optional[int] = _IMAGE_CLASSES, **kwargs: Any) -> nn.Module:
    """A randomly initialised model from a source string (``parse_source``, then ``build_source``):
    ``lenet5``/``vgg11``/``resnet18`` (the paper's networks; case, ``-`` and ``_`` ignored),
    ``timm:NAME`` or a bare timm name, ``torchvision:NAME`` or a bare torchvision name,
    ``package.module:factory``; ``hf:FOLDER`` loads its saved weights. ``num_classes`` ``None``
    keeps the source's own head (default: 10, and the saved head of ``hf:`` models).

    Raises:
        ModelSourceError (a ValueError): unknown name (close matches listed), a factory that
            raises or returns no ``nn.Module``.
    """
    src = parse_source(name)
    if num_classes is _IMAGE_CLASSES:
        num_classes = None if src.kind is SourceKind.HF else 10
    return build_source(src, num_classes, **kwargs)


_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _hf_model(source: ModelSource, num_classes: Optional[int], **kwargs: Any) -> nn.Module:
    """A transformers model with its saved weights, offline: a sequence classifier when the
    saved architecture is one or ``num_classes`` is given (``num_labels``), else a causal LM."""
    try:
        import transformers
        from huggingface_hub import constants
    except ImportError:
        raise ModelSourceError(f"{source.text}: hf: models need transformers; install the lm extra "
                               "(pip install -e '.[lm]')") from None
    name, cache = source.name, constants.HF_HUB_CACHE
    folder = Path(name).expanduser()
    if _path_like(name) and not folder.is_dir():
        raise ModelSourceError(f"{source.text}: {missing_path(name, 'the folder', folders_only=True)}. Pass "
                               "hf:FOLDER, the folder of a model saved with model.save_pretrained(FOLDER)")
    where = (f"the folder {str(folder)!r}" if folder.is_dir()
             else f"the Hugging Face cache {cache} (no folder {name!r} here)")
    try:
        config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"{source.text}: no config.json in {where}; nothing is downloaded: save the model "
                               "with model.save_pretrained(FOLDER) and pass hf:FOLDER, or fetch it into the cache "
                               f"where there is internet (huggingface-cli download {name}) ({str(err).splitlines()[0]})"
                               ) from None
    arch = " ".join(config.architectures or [])
    if num_classes is not None or "ForSequenceClassification" in arch:
        auto = transformers.AutoModelForSequenceClassification
        if num_classes is not None:
            kwargs = {"num_labels": int(num_classes), **kwargs}
    else:
        auto = transformers.AutoModelForCausalLM
    try:
        return auto.from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"{source.text}: cannot load its weights from {where} (looked for "
                               f"{' or '.join(_HF_WEIGHTS)}): {str(err).splitlines()[0]}") from None


def _path_like(name: str) -> bool:
    """Whether an ``hf:`` name means a local folder rather than a Hub repo id (``org/name``):
    it starts with ``.``, ``/`` or ``~``, or holds a path separator after an existing folder."""
    if name.startswith((".", "/", "~")):
        return True
    return any(sep in name for sep in {"/", os.sep}) and Path(name).expanduser().parent.is_dir()


def hf_example_inputs(model: nn.Module, batch: int = 2, length: int = 8) -> Dict[str, Any]:
    """Token ids a transformers model takes (``decoder_input_ids`` too for an encoder-decoder):
    the example torch.export runs it on (batch and length stay dynamic)."""
    import torch

    config = model.config
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, **({"decoder_input_ids": ids} if getattr(config, "is_encoder_decoder", False) else {})}


def parse_model_args(pairs: Optional[List[str]]) -> Dict[str, Any]:
    """``["depth=4", "act=relu"]`` -> ``{"depth": 4, "act": "relu"}``: values are read as Python
    literals (numbers, booleans, None, tuples, quoted strings) and kept as strings otherwise."""
    import ast

    out: Dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ModelSourceError(f"--model-arg must be key=value with a Python identifier as key, got {pair!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out
