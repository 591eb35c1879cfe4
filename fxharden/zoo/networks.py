"""The paper's three networks: LeNet-5 (defined here), VGG-11 and ResNet-18 (torchvision's,
randomly initialised)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LeNet5", "lenet5", "vgg11", "resnet18"]


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
