"""TOML experiment files -> typed ``Experiment`` -> cells, the work units of ``reproduce``.

An experiment is a set of *curves* (``Variant``: model, bit width, scaling, noisy training),
a sweep grid, training budgets (the paper's and a CPU-sized one) and the paper's reported
numbers. A *cell* is one network to train and evaluate:

* ordinary curve (``train_sigma`` fixed, 0 = no noisy training): one cell per seed; each
  network is swept over the whole grid and the uncertainty of a point is taken across seeds;
* matched curve (``train_sigma = "matched"``, the paper's noisy training, Fig. 3 and
  Table II): sigma_train = sigma_inference, so every sigma point is its own network, trained
  at that sigma and evaluated at that sigma only; one cell per (sigma, seed).
* warm-started matched curve (``warm_start = true``; not in the paper, which trains every
  sigma from scratch): the network of the k-th sigma of a seed starts from the trained
  network of the (k-1)-th sigma of the same seed (``Cell.init_from``), so networks at high
  sigma leave chance within a CPU budget. Its cells depend on each other: ``reproduce`` runs
  them in sigma order within a seed.

``fxharden.reproduce.reproduce`` runs the cells through an executor (one result file per
cell) and assembles curves, tables and plots. Experiment files are read by
``recipe_file.load_experiment``; the TOML format is documented by example in
``recipes/quickstart.toml``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple, Union

from ..core.config import HardenConfig, check_bits, check_scale, check_sigma, config_to_dict
from ..core.hardware import HardwareConfig
from ..training.train import TrainConfig
from ..zoo.data import DatasetKind, load_splits
from .options import Budget

__all__ = ["Budget", "DatasetKind", "Variant", "BudgetSpec", "SweepSpec", "PaperValue", "DataSpec", "Cell",
           "Experiment", "ExperimentError"]

PathLike = Union[str, os.PathLike]


class ExperimentError(ValueError):
    """An experiment file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Variant:
    """One curve of an experiment."""

    model: str
    bits: Optional[int] = None
    """Bit width of weights and activations; ``None`` = fp32 (no quantization)."""
    scale: Optional[float] = None
    """Constant step ``s`` of the activation quantizers; ``None`` (with ``bits``) = dynamic."""
    train_sigma: float = 0.0
    """Noise during training for an ordinary curve (0 = no noisy training)."""
    matched: bool = False
    """Noisy training with sigma_train = sigma_inference: one network per sigma point."""
    lr: Optional[float] = None
    """Learning rate; ``None``: the model recipe's (``lr`` or ``lr_quantized``)."""
    warm_start: bool = False
    """Matched curves only: the network of each sigma starts from the trained network of the
    next lower sigma of the same seed (the lowest sigma from a fresh initialisation). The paper
    trains every sigma from scratch; this is a CPU-budget departure from it."""

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_scale(self.scale)
        check_sigma(self.train_sigma)
        if self.bits is None and self.scale is not None:
            raise ValueError(f"{self.model}: fp32 has no quantization step; drop scale={self.scale}")
        if self.matched and self.train_sigma:
            raise ValueError("a matched curve trains each network at its own sigma; drop train_sigma")
        if self.warm_start and not self.matched:
            raise ValueError("warm_start chains the networks of a matched curve (train_sigma = \"matched\"); "
                             "drop warm_start or make the curve matched")

    @property
    def scaling(self) -> str:
        return "-" if self.bits is None else ("dynamic" if self.scale is None else f"s={self.scale:g}")

    @property
    def training(self) -> str:
        return "matched" if self.matched else ("off" if not self.train_sigma else f"σ={self.train_sigma:g}")

    @property
    def key(self) -> str:
        """File-name-safe identifier, e.g. ``lenet5-b8-s1``, ``lenet5-fp32-matched``."""
        q = "fp32" if self.bits is None else f"b{self.bits}-" + ("dyn" if self.scale is None else f"s{self.scale:g}")
        t = ("-matched-warm" if self.warm_start else "-matched") if self.matched else (f"-nt{self.train_sigma:g}" if self.train_sigma else "")
        return f"{self.model}-{q}{t}" + (f"-lr{self.lr:g}" if self.lr is not None else "")

    @property
    def label(self) -> str:
        q = "fp32" if self.bits is None else f"{self.bits}-bit {self.scaling}"
        t = (", noisy training σ_train=σ" + (" (warm-started)" if self.warm_start else "")) if self.matched else (f", trained at σ={self.train_sigma:g}"
                                                             if self.train_sigma else "")
        return f"{self.model} {q}{t}"

    def harden_config(self) -> HardenConfig:
        return HardenConfig.from_shorthand(bits=self.bits, scale=self.scale)


@dataclass(frozen=True)
class BudgetSpec:
    """How much training one budget spends."""

    epochs: Optional[int] = None
    """``None``: the model recipe's ``paper_epochs`` / ``cpu_epochs``."""
    seeds: int = 1
    """Networks per point (the paper: 10)."""
    train_images: Optional[int] = None
    """Use the first N training images (``None``: all)."""
    test_images: Optional[int] = None
    repeats: Optional[int] = None
    """Noise draws per point and network; ``None``: the sweep's."""
    sigmas: Optional[Tuple[float, ...]] = None
    """Override of the sweep grid for this budget."""
    matched_sigmas: Optional[Tuple[float, ...]] = None
    max_steps: Optional[int] = None
    batch_size: Optional[int] = None
    """Training batch size; ``None``: the model recipe's (128)."""
    augment: Optional[str] = None
    """Training data augmentation (``none`` or ``crop_flip``, see ``fxharden.training.feed``);
    ``None``: none, as the paper."""
    curves: Optional[Tuple[str, ...]] = None
    """Train only these curves of the grid (their keys, e.g. ``"lenet5-b8-s8"``); ``None``: all. A CPU-sized
    budget can so keep the paper's grid in the file and run a stated part of it."""


@dataclass(frozen=True)
class SweepSpec:
    """The noise grid every curve is measured on."""

    sigmas: Tuple[float, ...]
    """Grid of the ordinary curves (each network swept over all of it)."""
    matched_sigmas: Tuple[float, ...] = ()
    """Grid of the matched curves (one network per point); empty = ``sigmas``."""
    repeats: int = 5
    batch_size: int = 256


@dataclass(frozen=True)
class PaperValue:
    """A number the paper reports for a curve (accuracy in percent)."""

    accuracy: Optional[float] = None
    mu: Optional[float] = None
    mu_err_pct: Optional[float] = None
    """Relative error of μ in percent, as printed in Table I."""
    source: str = ""


@dataclass(frozen=True)
class DataSpec:
    """Which data a cell trains and evaluates on (loaded inside the worker)."""

    kind: DatasetKind = DatasetKind.CIFAR10
    root: Optional[str] = None
    """CIFAR-10 folder; ``None``: ``$FXHARDEN_DATA`` (never part of a cell's identity)."""
    train_images: Optional[int] = None
    test_images: Optional[int] = None
    synthetic_images: int = 512
    """Synthetic only: images generated in total (a quarter is the test split)."""

    def load(self):
        """``(train, test)`` ``TensorImageDataset``s (``fxharden.zoo.data.load_splits``)."""
        return load_splits(self.kind, self.root, train_images=self.train_images, test_images=self.test_images,
                           synthetic_images=self.synthetic_images)

    def identity(self) -> Dict[str, Any]:
        return {"kind": self.kind.value, "train_images": self.train_images, "test_images": self.test_images,
                "synthetic_images": self.synthetic_images if self.kind is DatasetKind.SYNTHETIC else None}


@dataclass(frozen=True)
class Cell:
    """One network to train and evaluate: the unit of work, of resume and of parallelism."""

    variant: Variant
    seed: int
    train_sigma: float
    """The sigma this network is trained at."""
    eval_sigmas: Tuple[float, ...]
    """The sigmas it is swept at (a matched cell: its own sigma only)."""
    train: TrainConfig
    harden: HardenConfig
    data: DataSpec
    repeats: int
    sweep_batch_size: int = 256
    init_from: Optional[str] = None
    """Key of the cell whose trained network this one starts from (warm start), or ``None``:
    a fresh initialisation seeded by ``seed``."""

    def identity(self) -> Dict[str, Any]:
        """Everything that determines the cell's result (not where data or devices are)."""
        t = {k: v for k, v in self.train.to_dict().items() if k not in ("device", "precision", "deterministic")}
        if t.get("augment") == "none":
            del t["augment"]  # the default: cells trained before the option existed keep their keys
        ident = {"model": self.variant.model, "seed": self.seed, "train_sigma": self.train_sigma,
                 "eval_sigmas": list(self.eval_sigmas), "train": t, "harden": config_to_dict(self.harden),
                 "data": self.data.identity(), "repeats": self.repeats, "sweep_batch_size": self.sweep_batch_size}
        if self.init_from is not None:  # the predecessor's key hashes its whole chain
            ident["init_from"] = self.init_from
        return ident

    @property
    def key(self) -> str:
        """Directory name: readable prefix + hash of the identity (changed settings = new cell)."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        t = f"-at{self.train_sigma:g}" if self.variant.matched else ""
        return f"{self.variant.key}{t}-seed{self.seed}-{digest}"


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment file."""

    name: str
    variants: Tuple[Variant, ...]
    sweep: SweepSpec
    budgets: Tuple[Tuple[Budget, BudgetSpec], ...]
    paper: Tuple[Tuple[str, PaperValue], ...] = ()
    """``(variant key, value)`` pairs."""
    dataset: DatasetKind = DatasetKind.CIFAR10
    default_budget: Budget = Budget.CPU
    description: str = ""
    architectures: bool = False
    """Also write the Table II columns (FLOPs, parameters, noise sites) of every model."""
    source: str = ""
    hardware: Optional[HardwareConfig] = None
    """The ``[hardware]`` table: every cell's harden config gets this hardware
    (``HardwareConfig.harden_config``); ``None``: none."""

    def budget(self, budget: Optional[Budget] = None) -> BudgetSpec:
        budget = Budget(budget or self.default_budget)
        found = dict(self.budgets).get(budget)
        if found is None:
            raise ExperimentError(f"{self.source or self.name}: no [budget.{budget.value}] section; "
                                  f"it defines {[b.value for b, _ in self.budgets]}")
        return found

    def check(self, budget: Optional[Budget] = None, device: Optional[str] = None) -> None:
        """Everything about running this experiment that is knowable before any cell starts:
        the budget exists, every model name resolves, the device is there.

        Raises:
            ExperimentError: the first problem found, naming the file and the key.
        """
        from ..devices import resolve_device
        from ..zoo.models import check_model_name

        self.budget(budget)
        for model in dict.fromkeys(v.model for v in self.variants):
            try:
                check_model_name(model)
            except ValueError as err:
                raise ExperimentError(f"{self.source or self.name} [[grid]]: {err}") from None
        try:
            resolve_device(device)
        except (RuntimeError, ValueError) as err:
            raise ExperimentError(f"{self.source or self.name}: {err}") from None

    def harden_config(self, variant: Variant) -> HardenConfig:
        """The harden config of ``variant``'s networks: its quantization, with the experiment's hardware."""
        base = variant.harden_config()
        return base if self.hardware is None else self.hardware.harden_config(base)

    def paper_value(self, variant: Variant) -> Optional[PaperValue]:
        return dict(self.paper).get(variant.key)

    def cells(self, budget: Optional[Budget] = None, data: Optional[DataSpec] = None,
              device: Optional[str] = None, precision: str = "auto") -> List[Cell]:
        """Every cell of the experiment under ``budget``, curve by curve, seed by seed
        (``device`` and ``precision``: where and in which arithmetic they train; neither is
        part of a cell's identity)."""
        from ..zoo.recipes import training_defaults

        spec = self.budget(budget)
        data = replace(data or DataSpec(self.dataset), train_images=spec.train_images, test_images=spec.test_images)
        grid = spec.sigmas or self.sweep.sigmas
        matched = spec.matched_sigmas or self.sweep.matched_sigmas or grid
        repeats = spec.repeats if spec.repeats is not None else self.sweep.repeats
        paper_budget = Budget(budget or self.default_budget) is Budget.PAPER
        cells = []
        for v in self.variants:
            if spec.curves is not None and v.key not in spec.curves:
                continue
            d = training_defaults(v.model, v.bits is not None, paper_budget)
            train = TrainConfig(epochs=spec.epochs or d.epochs, lr=v.lr or d.lr, batch_size=spec.batch_size or d.batch_size,
                                optimizer=d.optimizer.value, max_steps=spec.max_steps, device=device,
                                eval_each_epoch=False, precision=precision, augment=spec.augment or "none")
            previous: Dict[int, str] = {}  # warm start: seed -> key of the cell at the next lower sigma
            for sigma in (sorted(matched) if v.matched else (v.train_sigma,)):
                for seed in range(spec.seeds):
                    cell = Cell(v, seed, sigma, (sigma,) if v.matched else tuple(grid),
                                replace(train, seed=seed, train_sigma=sigma), self.harden_config(v), data,
                                repeats, self.sweep.batch_size, init_from=previous.get(seed) if v.warm_start else None)
                    previous[seed] = cell.key
                    cells.append(cell)
        return cells
