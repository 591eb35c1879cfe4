"""The ``fxharden`` command line through typer's CliRunner: files written, tables printed,
clean errors (exit code 2, one message, no traceback)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fxharden.zoo.checkpoint import save_checkpoint
from fxharden.cli import app
from fxharden.core.harden import harden
from fxharden.zoo.networks import LeNet5
from fxharden.measure.results import load_result
from fxharden.measure.sensitivity import sensitivity_by_site

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()

FAST = ["--synthetic", "--max-images", "120", "--repeats", "1", "--batch-size", "60", "--device", "cpu",
        "--no-progress"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_sweep_writes_results_and_plots(tmp_path):
    out = tmp_path / "run"
    res = invoke("sweep", "lenet5", *FAST, "--sigmas", "0.05,0.5,5", "--bits", "8", "--out", out,
                 "--forward-images", "100", "--weight-draws", "forward")
    assert res.exit_code == 0, res.output
    assert "Robustness sweep" in res.stdout and "clean accuracy" in res.stdout
    for name in ("results.json", "results.csv", "accuracy_vs_sigma.png"):
        assert (out / name).is_file(), name
    assert (out / "accuracy_vs_sigma.png").read_bytes()[:8] == PNG_MAGIC
    result = load_result(out)
    assert [p.sigma for p in result.points] == [0.05, 0.5, 5.0] and result.num_images == 120
    assert result.networks == ["lenet5"] and result.harden_configs[0]["quant"]["bits"] == 8
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["adaptive"] is False and config["forward_images"] == 100 and config["weight_draws"] == "forward"
    assert (out / "results.csv").read_text().startswith("site,sigma,n,accuracy_mean")


def test_per_layer_sweep_ranks_sites_and_plots_them(tmp_path):
    res = invoke("sweep", "lenet5", *FAST, "--per-layer", "--sites", "conv.*,fc3", "--sigmas", "0.1,1,10",
                 "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "Per-layer μ" in res.stdout
    for site in ("conv1", "conv2", "fc3"):
        assert site in res.stdout
    assert (tmp_path / "per_layer_mu.png").read_bytes()[:8] == PNG_MAGIC
    result = load_result(tmp_path)
    assert set(result.per_site) == {"conv1", "conv2", "fc3"}
    table = (tmp_path / "per_layer_mu.md").read_text()
    assert [line.split("`")[1] for line in table.splitlines() if "`" in line] == ["conv1", "conv2", "fc3"]
    assert result.site_kinds == {"conv1": "conv", "conv2": "conv", "fc3": "linear"}
    shown = invoke("inspect", "lenet5", "--bits", "8", "--results", tmp_path)
    assert shown.exit_code == 0, shown.output
    conv1 = next(line for line in shown.stdout.splitlines() if "conv1" in line)
    row = sensitivity_by_site(result)["conv1"]
    assert row.text() in conv1 and result.per_site["conv1"].status.value in conv1
    other = invoke("inspect", "resnet18", "--results", tmp_path)
    assert other.exit_code == 2 and "sites this model does not have (conv2, fc3)" in other.output


def test_sweep_several_checkpoints(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"seed{seed}.pt"
        save_checkpoint(path, harden(LeNet5()), "lenet5")
        paths.append(path)
    res = invoke("sweep", *paths, *FAST, "--sigmas", "0.1,1", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    result = load_result(tmp_path / "run")
    assert result.networks == [str(p) for p in paths] and len(result.points[0].correct) == 2
    res = invoke("sweep", paths[0], *FAST, "--bits", "4", "--out", tmp_path / "other")
    assert res.exit_code == 2 and "carries its own harden config" in res.output


def test_sweep_reads_a_sigma_map_back(tmp_path):
    from fxharden.measure.options import Units
    from fxharden.measure.sigma_map import write_sigma_map

    write_sigma_map(tmp_path / "map.json", {"conv1": 0.2, "fc3": 0.0, "relu1": 0.05}, Units.RELATIVE)
    res = invoke("sweep", "lenet5", *FAST, "--sigma-map", tmp_path / "map.json", "--sigmas", "1",
                 "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "results.json").read_text())["config"]
    assert config["sigma_map"] == {"conv1": 0.2, "fc3": 0.0, "relu1": 0.05} and config["units"] == "relative"
    clash = invoke("sweep", "lenet5", *FAST, "--sigma-map", tmp_path / "map.json", "--units", "absolute",
                   "--out", tmp_path / "other")
    assert clash.exit_code == 2 and "relative units" in " ".join(clash.output.split())
    assert not (tmp_path / "other" / "results.json").exists()


def test_inspect_lists_sites():
    res = invoke("inspect", "lenet5", "--bits", "4", "--scale", "0.5")
    assert res.exit_code == 0, res.output
    for text in ("input", "conv1", "relu1", "pool2", "fc3", "bits=4"):
        assert text in res.stdout


def test_help_is_complete():
    res = invoke("--help")
    assert res.exit_code == 0 and "sweep" in res.stdout and "inspect" in res.stdout
    res = invoke("sweep", "--help")
    for option in ("--bits", "--scale", "--dynamic", "--sigmas", "--per-layer", "--sites", "--out", "--data",
                   "--download", "--synthetic", "auto|cpu|cuda"):
        assert option in res.stdout, option


@pytest.mark.parametrize("args, message", [
    (["sweep", "no_such_net", "--synthetic"], "unknown model 'no_such_net'"),
    (["sweep", "lenet5", "--synthetic", "--sigmas", "0.1,abc"], "comma-separated list of numbers"),
    (["sweep", "lenet5", "--synthetic", "--sigmas", "-1"], "noise levels > 0"),
    (["sweep", "lenet5", "--synthetic", "--scale", "0.5"], "--scale and --dynamic need --bits"),
    (["sweep", "lenet5", "--synthetic", "--sites", "nothing_here"], "matches no noise site"),
    (["sweep", "missing/ckpt.pt", "--synthetic"], "no checkpoint file at"),
    (["inspect", "no_such_net"], "unknown model"),
    (["sweep", "lenet5", "--synthetic", "--sigma-map", "missing.json"], "no sigma map at"),
    (["budget", "lenet5", "--synthetic", "--max-drop", "-0.1"], "max_drop is the allowed accuracy drop"),
    (["budget", "lenet5", "--synthetic", "--max-drop", "0.01", "--digital-sigma", "0"], "digital_sigma must be"),
])
def test_bad_input_gives_a_clean_error(args, message, tmp_path):
    res = invoke(*args, "--out", tmp_path) if args[0] in ("sweep", "budget") else invoke(*args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output and not isinstance(res.exception, (ValueError, TypeError))


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("FXHARDEN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no download cache either
    res = invoke("sweep", "lenet5", "--out", tmp_path / "run")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "CIFAR-10 test split not found" in text and "--download" in text and "Traceback" not in res.output
    res = invoke("sweep", "lenet5", "--data", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert f"--data '{tmp_path / 'nowhere'}' does not exist" in text and "--download" in text


def test_a_relative_data_env_reaches_child_processes_as_an_absolute_path(tmp_path, monkeypatch):
    """``FXHARDEN_DATA=../cifar fxharden ...``: the processes a command starts (cell workers, Ray
    tasks) inherit its environment but may run in another folder, so the command makes it absolute."""
    import os

    (tmp_path / "typed_here").mkdir()
    monkeypatch.chdir(tmp_path / "typed_here")
    monkeypatch.setenv("FXHARDEN_DATA", "../cifar")
    assert invoke("inspect", "lenet5").exit_code == 0
    assert os.environ["FXHARDEN_DATA"] == str(tmp_path / "cifar")


def test_changed_settings_in_the_same_out_dir_are_refused(tmp_path):
    args = ["sweep", "lenet5", *FAST, "--sigmas", "0.1,1", "--out", tmp_path]
    assert invoke(*args).exit_code == 0
    again = invoke(*args)
    assert again.exit_code == 0 and "2 (2 reused" in " ".join(again.stdout.split())
    res = invoke(*args, "--seed", "3")
    assert res.exit_code == 2 and "different settings" in " ".join(res.output.split())


def test_inspect_reports_what_was_left_out(monkeypatch):
    import fxharden.cli.inspect as cli
    from torch import nn

    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # untraceable: becomes one opaque layer

    model = nn.Sequential(nn.Conv2d(3, 4, 3), DataDependent(), nn.ReLU())
    monkeypatch.setattr(cli, "resolve_models", lambda names, config, *a, **k: ([("custom", harden(model))], None, {}))
    res = invoke("inspect", "custom")
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "Opaque modules" in text and "data-dependent control flow" in text and "DataDependent" in text


def test_warnings_are_plain_messages(tmp_path):
    from fxharden.zoo.models import load_model

    torch.save(load_model("timm:test_resnet", num_classes=3).model.state_dict(), tmp_path / "w.pth")
    res = runner.invoke(app, ["inspect", "timm:test_resnet", "--weights", str(tmp_path / "w.pth"),
                              "--num-classes", "5"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "Warning: " in text and "freshly initialised for 5 classes" in text
    assert "UserWarning" not in text and "weights.py" not in text and "warnings.warn" not in text


def test_sweep_metric_option(tmp_path):
    res = invoke("sweep", "lenet5", *FAST, "--sigmas", "0.1,10", "--metric", "loss", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "loss: clean" in text and "floor 2.303" in text  # ln 10
    assert load_result(tmp_path).metric == "loss"
    bad = invoke("sweep", "lenet5", *FAST, "--metric", "top3", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "top1" in bad.output and "perplexity" in bad.output
