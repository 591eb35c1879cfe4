"""The paper's networks (LeNet-5, VGG-11, ResNet-18), their training recipes, and a
name -> model registry that also reaches every timm and torchvision model.

``build_model(name)`` tries the recipe names first, then ``timm.create_model`` (never
pretrained: nothing is downloaded), then ``torchvision.models.get_model``.
``count_flops`` / ``count_params`` reproduce the paper's Table II (see ``count_flops`` for
the counting convention and which numbers match).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "LeNet5", "lenet5", "vgg11", "resnet18", "Optimizer", "Recipe", "RECIPES", "build_model", "model_names",
    "count_params", "count_flops", "model_summary",
]


class LeNet5(nn.Module):
    """LeNet-5 for 3x32x32 inputs: conv 6@5x5, ReLU, maxpool 2, conv 16@5x5, ReLU, maxpool 2,
    flatten, fc 120, ReLU, fc 84, ReLU, fc ``num_classes``. Every ReLU and pool is its own
    module (``relu1``..``relu4``, ``pool1``, ``pool2``) so each is a separate layer; no batch
    norm. 62,006 parameters with 10 classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, kernel_size=5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of images (N, 3, 32, 32)."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


def lenet5(num_classes: int = 10) -> LeNet5:
    """``LeNet5(num_classes)``."""
    return LeNet5(num_classes)


def vgg11(num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """torchvision VGG-11 without batch norm, random init (``weights=None``); its classifier
    has 50% dropout. On 32x32 inputs the features end at 1x1 and the adaptive pool repeats
    them to 7x7, as in the paper's setup."""
    import torchvision

    return torchvision.models.vgg11(weights=None, num_classes=num_classes, **kwargs)


def resnet18(num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """torchvision ResNet-18, random init (``weights=None``), ImageNet stem (7x7/2 + maxpool)."""
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=num_classes, **kwargs)


class Optimizer(str, Enum):
    """Optimizer of a recipe (values match ``fxharden.train.Optimizer``)."""

    ADAM = "adam"
    SGD = "sgd"


@dataclass(frozen=True)
class Recipe:
    """How the paper trains one network.

    ``paper`` holds the network's Table II row: ``mflops`` (M), ``mparams`` (M),
    ``noisy_layers``, ``peak_accuracy`` (%), ``mu`` (midpoint noise level without noisy
    training) and ``mu_noisy_training`` (with it).
    """

    name: str
    title: str
    builder: Callable[..., nn.Module]
    lr: float
    """Adam learning rate for float32 training."""
    lr_quantized: float
    """Learning rate for quantized (QAT) training."""
    cpu_epochs: int
    """A CPU-sized default number of epochs."""
    batch_size: int = 128
    optimizer: Optimizer = Optimizer.ADAM
    schedule: str = "cosine"
    paper_epochs: int = 500
    paper: Dict[str, float] = field(default_factory=dict, compare=False, hash=False)

    def lr_for(self, quantized: bool) -> float:
        """``lr_quantized`` when training a quantized model, else ``lr``."""
        return self.lr_quantized if quantized else self.lr

    def build(self, num_classes: int = 10, **kwargs: Any) -> nn.Module:
        """A fresh, randomly initialised model."""
        return self.builder(num_classes=num_classes, **kwargs)


def _paper(mflops: float, mparams: float, noisy_layers: int, peak_accuracy: float, mu: float,
           mu_noisy_training: float) -> Dict[str, float]:
    return dict(mflops=mflops, mparams=mparams, noisy_layers=noisy_layers, peak_accuracy=peak_accuracy, mu=mu,
                mu_noisy_training=mu_noisy_training)


RECIPES: Dict[str, Recipe] = {
    "lenet5": Recipe("lenet5", "LeNet-5", lenet5, lr=1e-3, lr_quantized=1e-3, cpu_epochs=25,
                     paper=_paper(0.66, 0.06, 12, 75.0, 0.286, 2.59)),
    "vgg11": Recipe("vgg11", "VGG-11", vgg11, lr=1e-3, lr_quantized=1e-4, cpu_epochs=2,
                    paper=_paper(276.56, 132.86, 27, 87.7, 0.154, 2.957)),
    "resnet18": Recipe("resnet18", "ResNet-18", resnet18, lr=0.01, lr_quantized=0.01, cpu_epochs=2,
                       paper=_paper(37.53, 11.69, 33, 86.9, 0.494, 3.023)),
}
"""The paper's three networks by name."""


def _recipe_key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


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
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    recipe = RECIPES.get(_recipe_key(name))
    if recipe is not None:
        return recipe.build(num_classes=num_classes, **kwargs)
    import timm

    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    import torchvision

    if name in _torchvision_names():
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    close = difflib.get_close_matches(name, model_names(), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} The paper's networks are {', '.join(RECIPES)}; any "
                     "timm.list_models() or torchvision.models.list_models() name also works.")


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _model_device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32), *, include_bias: bool = True) -> int:
    """FLOPs of ONE input in the paper's Table II convention: multiply-accumulates (MACs) of the
    conv and linear layers, plus one addition per output element of layers with a bias.

    * conv: ``out_elements * in_channels/groups * kernel_numel`` (+ ``out_elements`` if bias);
      transposed conv: ``in_elements * out_channels/groups * kernel_numel`` (+ bias as above);
    * linear: ``out_features * in_features`` per output row (+ ``out_features`` if bias).

    Other operations (ReLU, pooling, batch norm, residual adds, functional matmuls such as
    attention scores) are not counted. Counted with forward hooks on one forward pass of zeros
    of ``input_shape`` (in eval mode, no grad; the model's mode is restored), divided by the
    batch size. Works on a model on the ``meta`` device (no memory needed).

    Against Table II (values in M): LeNet-5 0.658 (paper 0.66); VGG-11 with the 1000-class
    ImageNet head 276.559 (paper 276.56; 272.50 with 10 classes); ResNet-18 with 1000
    classes 37.524 (paper 37.53; 37.017 with 10 classes). MACs without bias give 0.652,
    276.40 and 37.523, which miss LeNet-5 and VGG-11.
    ``include_bias=False`` gives plain MACs.
    """
    batch = int(input_shape[0])
    if batch < 1:
        raise ValueError(f"input_shape must start with a batch size >= 1, got {tuple(input_shape)}")
    total = 0

    def hook(module: nn.Module, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            kernel = module.weight[0, 0].numel()
            total += inputs[0].numel() * (module.out_channels // module.groups) * kernel
        elif isinstance(module, nn.modules.conv._ConvNd):
            kernel = module.weight[0, 0].numel()
            total += output.numel() * (module.in_channels // module.groups) * kernel
        else:  # nn.Linear
            total += output.numel() * module.in_features
        if include_bias and getattr(module, "bias", None) is not None:
            total += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    device, dtype = _model_device_dtype(model)
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total // batch


def model_summary(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> Dict[str, Any]:
    """``{"flops", "params", "mflops", "mparams", "input_shape"}``: ``count_flops`` (per input,
    Table II convention) and ``count_params``, plus both in millions."""
    flops, params = count_flops(model, input_shape), count_params(model)
    return {"flops": flops, "params": params, "mflops": flops / 1e6, "mparams": params / 1e6,
            "input_shape": tuple(input_shape)}
