"""Stand-ins for what a user already has, so that every example runs anywhere in seconds:

* ``image_folder``: a small image folder (one subfolder per class, PNG files), written from
  CIFAR-10 test images when ``$FXHARDEN_DATA`` points at CIFAR-10, else from generated images;
* ``stand_in_weights``: a weights file (a ``state_dict``) from a model trained for a few steps
  on that folder, standing in for a downloaded pretrained checkpoint.

With your own data and weights, skip both: pass your folder and your ``.pth`` file instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from PIL import Image

from fxharden.zoo.data import load_cifar10, synthetic_dataset
from fxharden.zoo.folders import resolve_data
from fxharden.zoo.models import load_model

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def image_folder(root, classes: int = 4, per_class: int = 16, size: int = 32, seed: int = 0) -> Path:
    """Write ``classes * per_class`` PNG images into ``root/<class>/`` and return ``root``.

    The first images of the first ``classes`` CIFAR-10 classes when ``$FXHARDEN_DATA`` is set
    (``size`` is then 32), else ``fxharden.zoo.data.synthetic_dataset`` images of ``size`` pixels.
    """
    root = Path(root)
    if os.environ.get("FXHARDEN_DATA"):
        data, names = load_cifar10("test", root=os.environ["FXHARDEN_DATA"]), CIFAR_CLASSES
    else:
        data = synthetic_dataset(n=classes * per_class, num_classes=classes, image_size=size, seed=seed)
        names = tuple(f"class{c}" for c in range(classes))
    written = {c: 0 for c in range(classes)}
    for image, label in zip(data.images, data.labels.tolist()):
        if label >= classes or written[label] >= per_class:
            continue
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{written[label]:04d}.png")
        written[label] += 1
        if all(n >= per_class for n in written.values()):
            break
    return root


def stand_in_weights(source: str, folder, path, *, num_classes: int, input_size: Optional[int] = None,
                     steps: int = 30, lr: float = 3e-3, seed: int = 0) -> Path:
    """Train ``source`` (random weights) for ``steps`` Adam steps on ``folder`` with the model's own
    preprocessing (``input_size`` overriding its size) and save its ``state_dict`` to ``path``."""
    torch.manual_seed(seed)
    lm = load_model(source, num_classes=num_classes)
    data = resolve_data(folder, preprocess=lm.preprocess.override(input_size=input_size), workers=0)
    model, opt = lm.model.train(), torch.optim.Adam(lm.model.parameters(), lr=lr)
    gen, done = torch.Generator().manual_seed(seed), 0
    while done < steps:
        for x, y in data.batches(32, shuffle=True, generator=gen):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    torch.save(model.state_dict(), path)
    return Path(path)
