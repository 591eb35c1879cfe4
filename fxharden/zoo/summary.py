"""Table II columns of a model: FLOPs (the paper's counting convention), parameters and the
number of noisy layers (noise sites of the default hardening)."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
from torch import nn

__all__ = ["count_params", "count_flops", "model_summary", "architecture_summary"]


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


def architecture_summary(model: Any, input_shape: Tuple[int, ...] = (1, 3, 32, 32)) -> Dict[str, Any]:
    """The Table II columns of a model (a name or an ``nn.Module``): FLOPs and parameters
    (``model_summary``) and the number of noisy layers, i.e. the noise sites of
    ``fxharden.harden(model)`` with the default (paper) placement."""
    from ..core.harden import harden, noise_sites
    from .models import build_model

    module = build_model(model) if isinstance(model, str) else model
    return {**model_summary(module, input_shape), "noisy_layers": len(noise_sites(harden(module)))}
