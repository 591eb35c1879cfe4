"""Checkpoints that carry everything needed to rebuild the hardened graph.

A checkpoint is a ``torch.save`` dict: the model name and builder arguments, the harden
config (as ``config_to_dict``), the hardened model's ``state_dict`` and free-form training
state. ``load_checkpoint`` rebuilds the model with ``sources.build_model``, hardens it with
the stored config and loads the weights, so ``fxharden sweep ckpt.pt`` sees the same graph
that was trained. Writes are atomic: a crash never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

import torch

from ..core.config import HardenConfig, config_from_dict, config_to_dict
from .._files import atomic_write_bytes
from ..core.export import example_from_spec
from ..core.harden import HardenedModule, harden
from .sources import build_model

if TYPE_CHECKING:
    from .preprocess import Preprocess

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "read_payload", "is_checkpoint", "FORMAT"]

FORMAT = "fxharden-checkpoint-v1"


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    model: HardenedModule
    arch: str
    arch_kwargs: Dict[str, Any]
    config: HardenConfig
    state: Dict[str, Any] = field(default_factory=dict)
    """Training state: epoch, optimizer, scheduler, RNG, metrics (whatever was saved)."""
    inputs: Dict[str, Any] = field(default_factory=dict)
    """How its training data were prepared and split (``fxharden.zoo.inputs.inputs_record``):
    ``{"preprocess": Preprocess.to_dict(), "data": {...}}``; text: ``{"data":
    fxharden.zoo.text.split_record(...)}``; empty in older checkpoints."""
    vocab: Optional[int] = None
    """Rows of a language model's input embedding (``fxharden.zoo.text.input_vocab``), else ``None``."""

    @property
    def preprocess(self) -> Optional["Preprocess"]:
        """The preprocessing it was trained with (``None``: not recorded)."""
        from .preprocess import Preprocess

        stored = self.inputs.get("preprocess")
        return Preprocess(**stored) if stored else None


def save_checkpoint(
    path: Union[str, Path],
    model: HardenedModule,
    arch: str,
    arch_kwargs: Optional[Dict[str, Any]] = None,
    state: Optional[Dict[str, Any]] = None,
    inputs: Optional[Dict[str, Any]] = None,
) -> None:
    """Save ``model`` (hardened from ``build_model(arch, **arch_kwargs)``), training state and
    ``inputs`` (the preprocessing and split of its data, ``Checkpoint.inputs``)."""
    payload = {
        "inputs": dict(inputs or {}),
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "config": config_to_dict(model.harden_config),
        "example": model.meta["fxharden"].get("example"),  # the export route's inputs, to export it again
        "model": model.state_dict(),
        "state": dict(state or {}),
    }
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def is_checkpoint(path: Union[str, Path]) -> bool:
    """Whether ``path`` names an existing file (the CLI then treats MODEL as a checkpoint)."""
    return Path(path).is_file()


def read_payload(path: Union[str, Path], map_location: Any = "cpu") -> Dict[str, Any]:
    """The raw dict of an fxharden checkpoint, read with ``torch.load(weights_only=True)``:
    tensors, numbers, strings and containers only, so reading a file never runs code from it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an fxharden checkpoint (corrupt, another format, or
            holding objects other than tensors and plain data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); "
                         "was it written by fxharden train?") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an fxharden checkpoint (expected format {FORMAT!r}); "
                         "plain state_dicts can be loaded with model.load_state_dict after fxharden.harden")
    return payload


def load_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> Checkpoint:
    """Rebuild the hardened model stored at ``path``, on the device ``map_location`` names
    (a device string or ``torch.device``; default the CPU), whatever device saved it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an fxharden checkpoint (corrupt or another format).
    """
    from .text import input_vocab

    payload = read_payload(path, map_location)
    config = config_from_dict(payload["config"])
    base = build_model(payload["arch"], **payload["arch_kwargs"])
    example = payload.get("example")
    model = harden(base, config=config, example_inputs=example_from_spec(example) if example else None)
    model.load_state_dict(payload["model"])
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)  # the model where its tensors were mapped, not only its state
    return Checkpoint(model=model, arch=payload["arch"], arch_kwargs=payload["arch_kwargs"], config=config,
                      state=payload["state"], inputs=dict(payload.get("inputs") or {}), vocab=input_vocab(base))
