"""Experiment files: TOML -> cells, the recipes, curve assembly, and reproduce end to end."""

import json
import math
import shutil
from pathlib import Path

import pytest

from fxharden.experiments.experiment import Budget, DataSpec, DatasetKind, ExperimentError, Variant
from fxharden.experiments.recipe_file import load_experiment, parse_experiment
from fxharden.experiments.curves import merge_curve
from fxharden.experiments.reproduce import RESULT, reproduce
from fxharden.measure.results import load_result
from fxharden.zoo.summary import architecture_summary

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

TINY = (Path(__file__).resolve().parents[1] / "fixtures" / "tiny_recipe.toml").read_text()


def tiny(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def test_grid_expands_to_curves_and_cells():
    exp = parse_experiment({
        "name": "grid", "sweep": {"sigmas": [0.1, 1.0], "matched_sigmas": [0.5, 1.0, 2.0]},
        "budget": {"cpu": {"seeds": 2, "epochs": 1}, "paper": {"seeds": 10}},
        "grid": [{"models": ["lenet5"], "bits": ["fp32", 8, 4], "scaling": ["dynamic", 1],
                  "train_sigma": ["off", 0.2, "matched"]}],
    })
    # fp32 ignores scaling: (1 + 2 + 2) quantization settings x 3 trainings
    assert len(exp.variants) == 15
    assert {v.key for v in exp.variants} >= {"lenet5-fp32", "lenet5-b8-dyn-nt0.2", "lenet5-b4-s1-matched"}
    cells = exp.cells(Budget.CPU)
    matched = [c for c in cells if c.variant.key == "lenet5-b4-s1-matched"]
    ordinary = [c for c in cells if c.variant.key == "lenet5-b8-dyn-nt0.2"]
    # every point of a matched curve is its own network (per seed), evaluated at its own sigma only
    assert sorted((c.train_sigma, c.seed) for c in matched) == [(s, k) for s in (0.5, 1.0, 2.0) for k in (0, 1)]
    assert all(c.eval_sigmas == (c.train_sigma,) and c.train.noise.sigma == c.train_sigma for c in matched)
    # an ordinary curve: one network per seed, swept over the whole grid
    assert [(c.seed, c.eval_sigmas, c.train.noise.sigma) for c in ordinary] == [(0, (0.1, 1.0), 0.2),
                                                                               (1, (0.1, 1.0), 0.2)]
    assert len({c.key for c in cells}) == len(cells) == 2 * (5 * 2 + 5 * 3)
    assert len(exp.cells(Budget.PAPER)) == 10 * (5 * 2 + 5 * 3)
    assert all(c.train.epochs == 500 for c in exp.cells(Budget.PAPER))  # the recipe's paper schedule
    lrs = {c.variant.bits: c.train.lr for c in cells}
    assert lrs == {None: 1e-3, 8: 1e-3, 4: 1e-3}  # LeNet-5: Adam 1e-3 (paper Sec. IV-A)


def test_cell_keys_change_with_their_settings():
    base = parse_experiment({"name": "a", "sweep": {"sigmas": [0.1, 1.0]}, "budget": {"cpu": {"epochs": 1}},
                             "grid": {"models": "lenet5"}})
    other = parse_experiment({"name": "b", "sweep": {"sigmas": [0.1, 1.0]}, "budget": {"cpu": {"epochs": 2}},
                              "grid": {"models": "lenet5"}})
    assert base.cells()[0].key != other.cells()[0].key
    assert base.cells()[0].key == base.cells(data=DataSpec(root="/elsewhere"))[0].key  # data location is no identity


def test_a_budget_can_run_a_stated_part_of_the_grid():
    grid = [{"models": ["lenet5"], "bits": ["fp32", 8], "scaling": ["dynamic", 1, 8]}]
    exp = parse_experiment({"name": "part", "sweep": {"sigmas": [0.1, 1.0]}, "grid": grid,
                            "budget": {"cpu": {"seeds": 2, "curves": ["lenet5-b8-s8", "lenet5-fp32"]},
                                       "paper": {"seeds": 3}}})
    assert len(exp.variants) == 4  # the file keeps the whole grid
    assert [(c.variant.key, c.seed) for c in exp.cells(Budget.CPU)] == [
        ("lenet5-fp32", 0), ("lenet5-fp32", 1), ("lenet5-b8-s8", 0), ("lenet5-b8-s8", 1)]
    assert len(exp.cells(Budget.PAPER)) == 4 * 3
    with pytest.raises(ExperimentError, match=r"\[budget.cpu\].curves: \['lenet5-b8-s2'\] not in the grid; "
                                              r"its curves are \['lenet5-fp32', 'lenet5-b8-dyn'"):
        parse_experiment({"name": "part", "sweep": {"sigmas": [0.1]}, "grid": grid,
                          "budget": {"cpu": {"curves": ["lenet5-b8-s2"]}}}, "x.toml")
    with pytest.raises(ExperimentError, match="curves must be a non-empty list of curve keys"):
        parse_experiment({"name": "part", "sweep": {"sigmas": [0.1]}, "grid": grid,
                          "budget": {"cpu": {"curves": "lenet5-fp32"}}}, "x.toml")


@pytest.mark.parametrize("change, match", [
    ({"grid": [{"models": ["lenet5"], "bits": ["int8"]}]}, "bits must be \"fp32\" or an integer"),
    ({"grid": [{"models": ["lenet5"], "bits": [8], "scaling": ["static"]}]}, "scaling must be \"dynamic\""),
    ({"grid": [{"models": ["lenet5"], "bitz": [8]}]}, r"unknown key\(s\) \['bitz'\]"),
    ({"grid": [{"models": ["lenet5"], "train_sigma": ["sometimes"]}]}, "\"off\", \"matched\" or a sigma"),
    ({"sweep": {"sigmas": [0.0, 1.0]}}, "sigmas > 0"),
    ({"sweep": {"sigmas": {"min": 1, "max": 0.1, "points": 3}}}, "0 < min < max"),
    ({"budget": {"tpu": {}}}, "budgets are \\['paper', 'cpu', 'gpu'\\]"),
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
])
def test_bad_experiment_files_name_the_problem(change, match):
    data = {"name": "x", "sweep": {"sigmas": [0.1, 1.0]}, "budget": {"cpu": {}}, "grid": [{"models": ["lenet5"]}]}
    with pytest.raises(ExperimentError, match=match):
        parse_experiment({**data, **change}, "x.toml")


def test_missing_budget_and_file(tmp_path):
    exp = load_experiment(tiny(tmp_path, TINY.replace("[budget.paper]\nepochs = 500\nseeds = 10\n", "")))
    with pytest.raises(ExperimentError, match=r"no \[budget.paper\] section"):
        exp.cells(Budget.PAPER)
    with pytest.raises(FileNotFoundError, match="recipes/"):
        load_experiment(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(ExperimentError, match="not valid TOML"):
        load_experiment(tmp_path / "bad.toml")


def test_variant_rules():
    with pytest.raises(ValueError, match="fp32 has no quantization step"):
        Variant("lenet5", None, 1.0)
    with pytest.raises(ValueError, match="drop train_sigma"):
        Variant("lenet5", train_sigma=0.1, matched=True)
    assert Variant("lenet5", 8, None).harden_config().quant.scaling.value == "dynamic"
    assert Variant("lenet5", 4, 0.5).harden_config().quant.scale == 0.5
    assert Variant("lenet5").harden_config().quant is None


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.stem)
def test_recipes_parse_and_cover_the_paper(path):
    exp = load_experiment(path)
    keys = {v.key for v in exp.variants}
    assert all(key in keys for key, _ in exp.paper), "every paper value belongs to a curve"
    assert {Budget.PAPER, Budget.CPU} <= {b for b, _ in exp.budgets}  # gpu is optional
    for budget, _ in exp.budgets:
        cells = exp.cells(budget)
        assert cells and len({c.key for c in cells}) == len(cells)
    assert all(c.train.epochs == 500 for c in exp.cells(Budget.PAPER))


def test_table1_values_line_up_with_the_paper():
    exp = load_experiment(RECIPES / "table1_vgg11_resnet18.toml")
    paper = dict(exp.paper)
    assert len(exp.variants) == len(paper) == 24
    assert (paper["vgg11-b8-s2"].accuracy, paper["vgg11-b8-s2"].mu) == (76.8, 0.222)
    assert (paper["vgg11-b4-dyn"].accuracy, paper["vgg11-b4-dyn"].mu) == (86.5, 0.031)
    assert (paper["resnet18-b4-s8"].accuracy, paper["resnet18-b4-s8"].mu) == (86.5, 0.665)
    assert (paper["resnet18-b8-s10"].accuracy, paper["resnet18-b8-s10"].mu) == (10.0, 0.05)
    lrs = {(c.variant.model, c.variant.bits is None): c.train.lr for c in exp.cells(Budget.PAPER)}
    assert lrs == {("vgg11", True): 1e-3, ("vgg11", False): 1e-4, ("resnet18", True): 1e-2, ("resnet18", False): 1e-2}


def test_architecture_summary_of_lenet5_matches_table2():
    s = architecture_summary("lenet5")
    assert s["noisy_layers"] == 12 and s["params"] == 62006 and round(s["mflops"], 2) == 0.66


def _record(cell, correct, clean=0.9):
    return {"key": cell.key, "points": [{"sigma": s, "correct": list(correct[s]), "total": 100}
                                        for s in cell.eval_sigmas],
            "clean_accuracy": clean, "chance": 0.1, "num_images": 100, "sites": ["input"], "harden": {}}


def test_matched_curve_is_assembled_from_one_network_per_point():
    exp = parse_experiment({"name": "m", "sweep": {"sigmas": [0.1], "matched_sigmas": [0.5, 1, 2, 4, 8]},
                            "budget": {"cpu": {"seeds": 2}}, "grid": {"models": "lenet5", "train_sigma": "matched"}})
    cells = exp.cells()
    # network (sigma, seed) scores 90 - 10 * log2(sigma / 0.5) - seed correct at its own sigma
    acc = {(c.train_sigma, c.seed): 90 - 10 * math.log2(c.train_sigma / 0.5) - c.seed for c in cells}
    done = {c.key: _record(c, {c.train_sigma: [acc[c.train_sigma, c.seed]] * 2}) for c in cells}
    curve = merge_curve(exp.variants[0], cells, done)
    points = curve.result.site_points()
    assert [p.sigma for p in points] == [0.5, 1, 2, 4, 8]
    for p in points:
        assert p.correct == ((acc[p.sigma, 0],) * 2, (acc[p.sigma, 1],) * 2)  # networks = seeds at that sigma
    assert curve.peak_accuracy == pytest.approx(0.895)
    assert len(curve.cells) == 10
    del done[cells[-1].key]  # a failed cell: the curve keeps equal numbers of networks per point
    assert {len(p.correct) for p in merge_curve(exp.variants[0], cells, done).result.site_points()} == {1}


def test_reproduce_writes_tables_and_plots_and_never_recomputes(tmp_path):
    path, out = tiny(tmp_path), tmp_path / "out"
    first = reproduce(path, out, progress=False)
    assert len(first.computed) == 2 and not first.reused and not first.failed
    for name in ("results.md", "results.csv", "experiment.json", "plots/pareto.png",
                 "plots/accuracy_vs_sigma_lenet5.png", "curves/lenet5-b8-s1/results.json"):
        assert (out / name).is_file(), name
    table = (out / "results.md").read_text()
    assert "| lenet5-b8-s1 | lenet5 | 8 | s=1 | off | 1 |" in table and "| 70 | 0.9 |" in table
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("curve,model,bits")
    results = sorted(out.glob(f"cells/*/{RESULT}"))
    assert len(results) == 2
    record = json.loads(results[0].read_text())
    assert "points" not in record, "swept points are stored once, in the cell's sweep results"
    assert len(load_result(results[0].parent / record["sweep"]).site_points()) == 7
    assert (results[0].parent / "checkpoint.pt").is_file()
    stamps = [p.stat().st_mtime_ns for p in results]

    second = reproduce(path, out, progress=False)
    assert second.computed == [] and sorted(second.reused) == sorted(first.computed)
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert (out / "results.md").read_text() == table
    assert [c.result.fit.status for c in second.curves] == [c.result.fit.status for c in first.curves]

    # a folder written by fxharden 0.1 (points inline in result.json, no sweep results) is reused as it is
    for cell_result in results:
        record = json.loads(cell_result.read_text())
        swept = load_result(cell_result.parent / record.pop("sweep"))
        record["points"] = [{"sigma": q.sigma, "correct": list(q.correct[0]), "total": q.total}
                            for q in swept.site_points()]
        cell_result.write_text(json.dumps(record))
        shutil.rmtree(cell_result.parent / "sweep")
    third = reproduce(path, out, progress=False)
    assert third.computed == [] and (out / "results.md").read_text() == table


def _contents(out: Path) -> dict:
    """Every file under ``out`` (the lock aside) by relative path, with its bytes' digest."""
    import hashlib

    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".fxharden.lock"}


def test_rerun_on_a_finished_folder_changes_nothing(tmp_path):
    """The README's promise: a rerun reuses every cell. With nothing left to run, no executor is
    made, yet the live display (on by default, as in the CLI) must not ask one for its file system."""
    import socket
    import subprocess
    import sys

    from typer.testing import CliRunner

    from fxharden.cli import app
    from fxharden.experiments.progress import LiveProgress

    path, out = tiny(tmp_path), tmp_path / "out"
    reproduce(path, out, progress=False)
    finished = _contents(out)
    cells = {p: p.stat().st_mtime_ns for p in out.glob(f"cells/*/{RESULT}")}
    assert len(cells) == 2

    for executor in ("local", None):  # a kind by name (the CLI passes ExecutorKind.LOCAL) or the default
        res = reproduce(path, out, executor=executor, progress=LiveProgress())
        assert res.computed == [] and not res.failed and sorted(res.reused) == sorted(c.parent.name for c in cells)
    cli = CliRunner().invoke(app, ["reproduce", str(path), "--out", str(out)])  # progress on by default
    assert cli.exit_code == 0, cli.output
    assert "lenet5-b8-s1" in cli.output and "0 cells run, 2 reused" in cli.output
    assert _contents(out) == finished, "a rerun rewrites the tables with the same bytes and trains nothing"
    assert {p: p.stat().st_mtime_ns for p in cells} == cells

    # a driver killed (-9) after its last cell, before the tables: its lock stays, the tables are missing
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".fxharden.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    for name in ("results.md", "results.csv", "curves", "plots"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()
    cli = CliRunner().invoke(app, ["reproduce", str(path), "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    assert _contents(out) == finished and not (out / ".fxharden.lock").exists()
    assert {p: p.stat().st_mtime_ns for p in cells} == cells


def test_reproduce_without_data_says_where_to_put_it(tmp_path, monkeypatch):
    from fxharden.zoo.data import DATA_ENV, DataNotFoundError

    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="--data"):
        reproduce(tiny(tmp_path, TINY.replace('"synthetic"', '"cifar10"')), tmp_path / "out", progress=False)
    assert DatasetKind("synthetic") is DatasetKind.SYNTHETIC


def test_cli_reproduce(tmp_path):
    from typer.testing import CliRunner

    from fxharden.cli import app

    result = CliRunner().invoke(app, ["reproduce", str(tiny(tmp_path)), "--out", str(tmp_path / "out"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "lenet5-b8-s1" in result.output and (tmp_path / "out" / "results.md").is_file()
    assert "epoch" not in result.output and "cells (" not in result.output  # --no-progress: nothing live
    missing = CliRunner().invoke(app, ["reproduce", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "recipes/" in missing.output


def test_a_gpu_budget_with_augmentation_and_the_precision_of_reproduce(tmp_path):
    """``[budget.gpu]`` may set ``augment``; it becomes part of the cells' training (and keys),
    while ``precision`` like ``device`` is not; the default (no augmentation) keeps the keys
    cells had before the option existed."""
    text = TINY.replace("[budget.paper]", "[budget.gpu]\nepochs = 2\naugment = \"crop_flip\"\n\n[budget.paper]")
    exp = load_experiment(tiny(tmp_path, text))
    gpu = exp.cells("gpu", precision="bf16")
    cpu = exp.cells("cpu", precision="bf16")
    assert {c.train.augment.value for c in gpu} == {"crop_flip"} and {c.train.precision.value for c in gpu} == {"bf16"}
    assert "augment" not in cpu[0].identity()["train"]
    assert [c.key for c in cpu] == [c.key for c in exp.cells("cpu", precision="fp32")]
    assert gpu[0].identity()["train"]["augment"] == "crop_flip"
    with pytest.raises(ExperimentError, match=r"\[budget.gpu\].augment must be one of \['none', 'crop_flip'\]"):
        load_experiment(tiny(tmp_path, text.replace('"crop_flip"', '"mixup"')))
