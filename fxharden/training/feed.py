"""The training data feed: batches made where the model runs, augmented there.

A ``TensorImageDataset`` (uint8 images in memory) is moved to a CUDA device once and stays
there: every batch is an index into it, augmented and normalised on the device, so a step
costs no host-to-device copy and no host work. On a CPU the data stay where they are.

Augmentation (``Augment.CROP_FLIP``) is what the fast CIFAR-10 trainers do: a random crop of
the image padded by ``PAD`` pixels of black on every side, and a horizontal flip with
probability 1/2, per image, drawn from torch's generator of the device (seeded per epoch by
the trainer, so a seeded run repeats). ``crop_flip`` is the pure transform of given offsets
and flips; ``random_crop_flip`` draws them.
"""

from __future__ import annotations

from typing import Any, Iterator, Tuple

import torch
from torch import Tensor

from ..zoo.data import TensorImageDataset, as_batches
from .options import Augment

__all__ = ["Augment", "PAD", "crop_flip", "random_crop_flip", "training_batches", "on_device"]

PAD = 4
"""Pixels of black padding around each image before its random crop."""


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, pad: int = PAD) -> Tensor:
    """Crop every image of ``images`` (N, C, H, W) out of its copy padded by ``pad`` zeros at
    ``offsets[i] = (row, col)`` (each in ``[0, 2 * pad]``), then mirror it left-right where
    ``flips[i]``. One gather for the whole batch, on the batch's device; same dtype."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_crop_flip(images: Tensor, pad: int = PAD) -> Tensor:
    """``crop_flip`` with offsets uniform in ``[0, 2 * pad]`` and flips with probability 1/2,
    drawn on the images' device from its default generator."""
    n = images.shape[0]
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), device=images.device)
    flips = torch.rand(n, device=images.device) < 0.5
    return crop_flip(images, offsets, flips, pad)


def on_device(data: Any, device: torch.device) -> Any:
    """``data`` moved once to a CUDA ``device`` when it is a ``TensorImageDataset`` (uint8:
    CIFAR-10's 50,000 training images take 150 MB), else unchanged."""
    if isinstance(data, TensorImageDataset) and device.type == "cuda" and data.images.device != device:
        return data.to(device)
    return data


def training_batches(data: Any, batch_size: int, device: torch.device, generator: torch.Generator,
                     augment: Augment = Augment.NONE) -> Iterator[Tuple[Tensor, Tensor]]:
    """One epoch of shuffled training batches ``(x, y)`` on ``device`` (the trailing partial
    batch dropped), augmented as ``augment`` says.

    Raises:
        ValueError: augmentation asked for data that are not uint8 images in memory.
    """
    augment = Augment(augment)
    if augment is Augment.NONE:
        yield from as_batches(data, batch_size, device, shuffle=True, generator=generator, drop_last=True)
        return
    if not isinstance(data, TensorImageDataset):
        raise ValueError(f"augment={augment.value!r} works on images held in memory (CIFAR-10, image folders "
                         f"decoded by fxharden), not on {type(data).__name__}; augment in your own DataLoader "
                         "instead, or train with augment='none'")
    yield from data.batches(batch_size, shuffle=True, generator=generator, device=device, drop_last=True,
                            transform=random_crop_flip)
