"""The GPU test set: every test here runs on CUDA and is skipped where there is none.

Each test checks the device against an independent reference: the same computation on the
CPU, a closed form or a known statistic. ``FXHARDEN_GPU_TESTS=cpu`` runs the set on the CPU
as a dry run (the references then agree trivially, but every code path of the tests runs),
so the set is known to work before a GPU is at hand:

    python -m pytest -m gpu -q                       # on a machine with CUDA
    FXHARDEN_GPU_TESTS=cpu python -m pytest -m gpu -q   # dry run on the CPU
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
DRY_RUN_ENV = "FXHARDEN_GPU_TESTS"


def _device() -> torch.device | None:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get(DRY_RUN_ENV) == "cpu":
        return torch.device("cpu")
    return None


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs CUDA (FXHARDEN_GPU_TESTS=cpu runs the GPU tests on the CPU)")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if _device() is None:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    dev = _device()
    assert dev is not None
    return dev


@pytest.fixture(autouse=True)
def _exact_kernels():
    """Deterministic cuDNN algorithms and no TF32, so device and CPU compute the same
    float32 arithmetic up to rounding (restored afterwards)."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved
