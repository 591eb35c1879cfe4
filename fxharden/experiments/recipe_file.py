"""Experiment TOML files (``recipes/*.toml``) -> ``Experiment``: every key checked, every error
naming the file and the key. The format is documented by example in ``recipes/quickstart.toml``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ..core.hardware import hardware_from_dict
from ..training.options import Augment
from .experiment import (Budget, BudgetSpec, DatasetKind, Experiment, ExperimentError, PaperValue, SweepSpec,
                         Variant)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

__all__ = ["load_experiment", "parse_experiment"]

PathLike = Union[str, os.PathLike]


def _floats(value: Any, where: str) -> Tuple[float, ...]:
    """A list of sigmas, or ``{min, max, points}`` for a log-spaced grid."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"min", "max", "points"}
        if unknown or not {"min", "max", "points"} <= set(value):
            raise ExperimentError(f"{where}: a grid table needs exactly min, max and points, got {sorted(value)}")
        lo, hi = _number(value["min"], f"{where}.min"), _number(value["max"], f"{where}.max")
        n = _int(value["points"], f"{where}.points", 2)
        if not lo < hi:
            raise ExperimentError(f"{where}: need 0 < min < max and points >= 2, got {dict(value)}")
        return tuple(float(f"{lo * (hi / lo) ** (i / (n - 1)):.4g}") for i in range(n))
    if not isinstance(value, list) or not value or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf") for v in value):
        raise ExperimentError(f"{where}: expected a non-empty list of sigmas > 0 or {{min, max, points}}, got {value!r}")
    return tuple(sorted(float(v) for v in value))


def _int(value: Any, where: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (not a float, bool or string)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ExperimentError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(value: Any, where: str, zero: bool = False) -> float:
    """A finite number > 0 (>= 0 with ``zero``; not a bool or string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value != value + 1) or \
            not (value >= 0 if zero else value > 0):
        raise ExperimentError(f"{where} must be a number {'>=' if zero else '>'} 0, got {value!r}")
    return float(value)


def _table(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ExperimentError(f"{where} must be a table ([...] section), got {value!r}")
    return value


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _bits(value: Any, where: str) -> Optional[int]:
    if value == "fp32":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ExperimentError(f"{where}: bits must be \"fp32\" or an integer 2..16, got {value!r}")


def _scaling(value: Any, where: str) -> Optional[float]:
    if value == "dynamic":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ExperimentError(f"{where}: scaling must be \"dynamic\" or a constant step s > 0, got {value!r}")


def _training(value: Any, where: str) -> Tuple[float, bool]:
    if value == "matched":
        return 0.0, True
    if value == "off":
        return 0.0, False
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value), False
    raise ExperimentError(f"{where}: train_sigma entries must be \"off\", \"matched\" or a sigma >= 0, got {value!r}")


def _check_keys(table: Mapping, allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ExperimentError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(allowed)}")


def _model(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ExperimentError(f"{where} must be a model name such as \"lenet5\", got {value!r}")
    return value


def _variants(group: Mapping, where: str) -> List[Variant]:
    _check_keys(_table(group, where), ("models", "bits", "scaling", "train_sigma", "lr", "warm_start"), where)
    if "models" not in group:
        raise ExperimentError(f"{where}: needs models = [\"lenet5\", ...]")
    lr = _number(group["lr"], f"{where}.lr") if "lr" in group else None
    warm = group.get("warm_start", False)
    if not isinstance(warm, bool):
        raise ExperimentError(f"{where}.warm_start must be true or false, got {warm!r}")
    out = []
    for model in (_model(m, f"{where}.models") for m in _as_list(group["models"])):
        for b in _as_list(group.get("bits", "fp32")):
            bits = _bits(b, f"{where}.bits")
            scalings = [None] if bits is None else [_scaling(s, f"{where}.scaling")
                                                    for s in _as_list(group.get("scaling", "dynamic"))]
            for scale in scalings:
                for t in _as_list(group.get("train_sigma", "off")):
                    sigma, matched = _training(t, f"{where}.train_sigma")
                    try:  # warm_start applies to the group's matched curves; its other curves train as usual
                        out.append(Variant(model, bits, scale, sigma, matched, lr, warm and matched))
                    except (TypeError, ValueError) as err:
                        raise ExperimentError(f"{where}: {err}") from None
    if warm and not any(v.matched for v in out):
        raise ExperimentError(f"{where}: warm_start = true needs a matched curve (train_sigma = \"matched\"); "
                              "it chains the networks of successive sigmas")
    return out


def _budget(table: Mapping, where: str) -> BudgetSpec:
    _check_keys(_table(table, where), [f.name for f in BudgetSpec.__dataclass_fields__.values()], where)
    kw = dict(table)
    for key, value in kw.items():
        if key == "curves":
            if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
                raise ExperimentError(f"{where}.curves must be a non-empty list of curve keys such as "
                                      f"\"lenet5-b8-s8\", got {value!r}")
            kw[key] = tuple(dict.fromkeys(value))
        elif key == "augment":
            choices = [a.value for a in Augment]
            if value not in choices:
                raise ExperimentError(f"{where}.augment must be one of {list(choices)}, got {value!r}")
        else:
            kw[key] = _floats(value, f"{where}.{key}") if key in ("sigmas", "matched_sigmas") else \
                _int(value, f"{where}.{key}")
    return BudgetSpec(**kw)


def parse_experiment(data: Mapping[str, Any], source: str = "<experiment>") -> Experiment:
    """Turn the dict of an experiment TOML file into an ``Experiment`` (see ``recipes/``).

    Raises:
        ExperimentError: a missing or unknown key or a bad value; the message names it.
    """
    _check_keys(data, ("name", "description", "dataset", "budget", "architectures", "sweep", "grid", "paper",
                       "hardware"), source)
    for key in ("name", "sweep", "grid", "budget"):
        if key not in data:
            raise ExperimentError(f"{source}: missing [{key}]" if key != "name" else f"{source}: missing name = \"...\"")
    if not isinstance(data["name"], str) or not data["name"].strip():
        raise ExperimentError(f"{source}: name must be a non-empty string, got {data['name']!r}")
    if not isinstance(data.get("description", ""), str):
        raise ExperimentError(f"{source}: description must be a string, got {data['description']!r}")
    if not isinstance(data.get("architectures", False), bool):
        raise ExperimentError(f"{source}: architectures must be true or false, got {data['architectures']!r}")
    sweep = _table(data["sweep"], f"{source} [sweep]")
    _check_keys(sweep, ("sigmas", "matched_sigmas", "repeats", "batch_size"), f"{source} [sweep]")
    grid = _floats(sweep.get("sigmas"), f"{source} [sweep].sigmas")
    matched = _floats(sweep["matched_sigmas"], f"{source} [sweep].matched_sigmas") if "matched_sigmas" in sweep else ()
    repeats = _int(sweep.get("repeats", 5), f"{source} [sweep].repeats")
    batch_size = _int(sweep.get("batch_size", 256), f"{source} [sweep].batch_size")
    budgets = _table(data["budget"], f"{source} [budget]")
    default = budgets.get("default", Budget.CPU.value)
    try:
        default, dataset = Budget(default), DatasetKind(data.get("dataset", "cifar10"))
        named = {Budget(k): _budget(v, f"{source} [budget.{k}]") for k, v in budgets.items() if k != "default"}
        if default not in named:
            raise ExperimentError(f"{source} [budget]: default = {default.value!r} has no [budget.{default.value}] "
                                  f"section; it defines {[b.value for b in named]}")
    except ValueError as err:
        if isinstance(err, ExperimentError):
            raise
        raise ExperimentError(f"{source}: {err}; budgets are {[b.value for b in Budget]}, datasets "
                              f"{[d.value for d in DatasetKind]}") from None
    variants: Dict[str, Variant] = {}
    for i, group in enumerate(_as_list(data["grid"])):
        for v in _variants(group, f"{source} [[grid]] #{i + 1}"):
            variants.setdefault(v.key, v)
    if not variants:
        raise ExperimentError(f"{source}: [[grid]] defines no curve")
    for budget, spec in named.items():
        unknown = [c for c in spec.curves or () if c not in variants]
        if unknown:
            raise ExperimentError(f"{source} [budget.{budget.value}].curves: {unknown} not in the grid; its curves "
                                  f"are {list(variants)}")
    paper = []
    for i, row in enumerate(_as_list(data.get("paper", []))):
        where = f"{source} [[paper]] #{i + 1}"
        _check_keys(_table(row, where), ("model", "bits", "scaling", "train_sigma", "accuracy", "mu", "mu_err_pct",
                                         "source"), where)
        if "model" not in row:
            raise ExperimentError(f"{where}: needs model = \"...\" (the curve these numbers belong to)")
        bits = _bits(row.get("bits", "fp32"), f"{where}.bits")
        sigma, is_matched = _training(row.get("train_sigma", "off"), f"{where}.train_sigma")
        scale = _scaling(row.get("scaling", "dynamic"), f"{where}.scaling") if bits is not None else None
        try:
            key = Variant(_model(row["model"], f"{where}.model"), bits, scale, sigma, is_matched).key
        except ValueError as err:
            raise ExperimentError(f"{where}: {err}") from None
        numbers = [row.get(k) if row.get(k) is None else _number(row[k], f"{where}.{k}", zero=True)
                   for k in ("accuracy", "mu", "mu_err_pct")]
        if not isinstance(row.get("source", ""), str):
            raise ExperimentError(f"{where}.source must be a string, got {row['source']!r}")
        paper.append((key, PaperValue(*numbers, row.get("source", ""))))
    hardware = None
    if "hardware" in data:
        try:
            hardware = hardware_from_dict(data["hardware"], f"{source} [hardware]")
        except (TypeError, ValueError) as err:
            raise ExperimentError(str(err)) from None
    return Experiment(name=data["name"], variants=tuple(variants.values()), hardware=hardware,
                      sweep=SweepSpec(grid, matched, repeats, batch_size),
                      budgets=tuple(named.items()), paper=tuple(paper), dataset=dataset, default_budget=default,
                      description=data.get("description", ""), architectures=data.get("architectures", False),
                      source=source)


def load_experiment(path: PathLike) -> Experiment:
    """Read an experiment TOML file.

    Raises:
        FileNotFoundError: no such file.
        ExperimentError: invalid TOML or an invalid experiment (the message says where).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no experiment file at {path}; the paper's experiments are in recipes/*.toml")
    if tomllib is None:
        raise ImportError("reading experiment files on Python 3.10 needs tomli: pip install tomli")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"{path}: not valid TOML ({err})") from None
    return parse_experiment(data, str(path))
