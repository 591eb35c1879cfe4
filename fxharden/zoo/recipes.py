"""How the paper trains its networks: optimizer, learning rates, epochs, and the paper's
Table II row for each network. ``fxharden.training`` reads these recipes; they import nothing
from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from torch import nn

from .networks import lenet5, resnet18, vgg11
from .options import Optimizer

__all__ = ["Optimizer", "Recipe", "RECIPES", "recipe_key", "find_recipe", "TrainingDefaults", "training_defaults"]


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

def recipe_key(name: str) -> str:
    """The registry key of a recipe name: lower case, ``-`` and ``_`` dropped (``"LeNet-5"`` -> ``"lenet5"``)."""
    return name.lower().replace("-", "").replace("_", "")


def find_recipe(name: str) -> Optional[Recipe]:
    """The recipe of the paper network ``name`` (any spelling ``recipe_key`` accepts), or ``None``."""
    return RECIPES.get(recipe_key(name))


@dataclass(frozen=True)
class TrainingDefaults:
    """The training settings a model gets when the user does not set them."""

    epochs: int
    lr: float
    batch_size: int
    optimizer: Optimizer


def training_defaults(model: str, quantized: bool, paper_budget: bool = False) -> TrainingDefaults:
    """Defaults for training ``model``: its recipe's (CPU-sized epochs, or the paper's 500 with
    ``paper_budget``; the QAT learning rate when ``quantized``), else 1 epoch of Adam at 1e-3,
    batch 128. The one place both the CLI and experiment files take their defaults from."""
    recipe = find_recipe(model)
    if recipe is None:
        return TrainingDefaults(epochs=1, lr=1e-3, batch_size=128, optimizer=Optimizer.ADAM)
    return TrainingDefaults(epochs=recipe.paper_epochs if paper_budget else recipe.cpu_epochs,
                            lr=recipe.lr_for(quantized), batch_size=recipe.batch_size, optimizer=recipe.optimizer)
