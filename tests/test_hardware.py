"""Hardware configs and presets: what they map to, TOML files and recipe tables, the CLI's
``--hardware`` and ``--axis``, and training with the hardware's weight noise."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import fxharden
from fxharden.cli import app
from fxharden.core.config import DEFAULT_NOISE_KINDS, ConverterConfig, HardenConfig, QuantConfig, SiteKind
from fxharden.core.hardware import (PRESETS, HardwareConfig, Placement, hardware_from_dict, hardware_preset,
                                    hardware_to_dict, load_hardware, resolve_hardware)
from fxharden.core.noise import PCM, Additive
from fxharden.core.noise_models import WeightNoise
from fxharden.core.noise.verbs import weight_noise_modules
from fxharden.experiments.recipe_file import parse_experiment
from fxharden.measure.axis_result import load_axis_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def test_pcm_preset_is_pcm_weights_at_one_day_and_nothing_else():
    base = HardenConfig(quant=QuantConfig(bits=8))
    cfg = hardware_preset("pcm").harden_config(base)
    assert cfg.weight_noise == (WeightNoise(PCM(t=86400.0), 1.0, "pcm"),)
    assert cfg.quant == base.quant and cfg.noise == base.noise and cfg.adc is None and cfg.dac is None


def test_aihwkit_inference_preset():
    from fxharden.core.noise import OutNoise

    cfg = hardware_preset("aihwkit-inference").harden_config()
    assert cfg.weight_noise == (WeightNoise(PCM(t=86400.0), 1.0, "pcm"),)
    assert cfg.noise.model == OutNoise(per_channel=True) and cfg.noise.sigma == 0.04
    assert cfg.noise.kinds == {SiteKind.CONV, SiteKind.LINEAR}
    assert (cfg.dac.grid_levels, cfg.dac.bound, cfg.adc.grid_levels, cfg.adc.before_bias) == (255, 3.0, 255, True)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    hm = fxharden.harden(net, config=cfg)
    assert len(weight_noise_modules(hm)) == 2 and len(fxharden.noise_sites(hm)) == 2


def test_analog_tile_puts_noise_only_at_conv_and_linear_outputs():
    cfg = hardware_preset("analog-tile").harden_config()
    assert cfg.noise.kinds == {SiteKind.CONV, SiteKind.LINEAR}
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    hm = fxharden.harden(net, config=cfg)
    kinds = {s.name: s.kind for s in hm.report.sites}
    assert sorted(kinds[s] for s in fxharden.noise_sites(hm)) == ["conv", "linear"]
    assert Placement.PAPER.kinds == DEFAULT_NOISE_KINDS


def test_converter_config_saves_as_plain_values():
    """A converter's options are stored as plain values, so a checkpoint (``torch.load`` with
    ``weights_only``) and JSON read them back; the enum of its calibration was stored as is."""
    from fxharden.core.config import config_from_dict, config_to_dict
    adc = ConverterConfig(bits=6, calibration="percentile", percentile=99.0, bounds={"fc": 2.0})
    cfg = HardenConfig(quant=None, adc=adc)
    data = config_to_dict(cfg)
    assert data["adc"]["calibration"] == "percentile" and type(data["adc"]["calibration"]) is str
    assert config_from_dict(json.loads(json.dumps(data))) == cfg


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="unknown hardware preset 'rram'.*aihwkit-inference.*pcm.*analog-tile"):
        hardware_preset("rram")


def test_a_preset_whose_model_is_missing_fails_naming_it(monkeypatch):
    from fxharden.core.noise import models

    monkeypatch.delitem(models.MODELS, "pcm")
    with pytest.raises(ValueError, match="preset 'pcm' needs the noise model 'pcm'"):
        hardware_preset("pcm")


def test_every_preset_builds_or_names_what_it_misses():
    for name in PRESETS:
        try:
            hw = hardware_preset(name)
        except ValueError as err:
            assert f"hardware preset {name!r} needs" in str(err)
        else:
            assert hardware_from_dict(hardware_to_dict(hw)) == hw


def test_toml_file_and_dict_round_trip(tmp_path):
    hw = HardwareConfig(weight_noise=(WeightNoise(Additive(of_max=True), 0.02, "prog"),
                                      WeightNoise(PCM(t=3600.0, drift_scale=0.5), 1.0, "pcm")),
                        noise_sigma=0.1, placement="analog-tile", adc=ConverterConfig(bits=6, bound=4.0),
                        dac=ConverterConfig(bits=8))
    path = tmp_path / "chip.toml"
    path.write_text("""
[hardware]
weight_noise = [{model = {name = "additive", of_max = true}, sigma = 0.02, name = "prog"},
                {model = {name = "pcm", t = 3600.0, drift_scale = 0.5}, sigma = 1.0, name = "pcm"}]
noise_sigma = 0.1
placement = "analog-tile"
adc = {bits = 6, bound = 4.0}
dac = {bits = 8}
""")
    assert load_hardware(path) == hw == resolve_hardware(str(path))
    assert hardware_from_dict(json.loads(json.dumps(hardware_to_dict(hw)))) == hw
    over = hardware_from_dict({"preset": "pcm", "noise_sigma": 0.05})
    assert over.weight_noise == hardware_preset("pcm").weight_noise and over.noise_sigma == 0.05


@pytest.mark.parametrize("table, message", [
    ({"wieght_noise": []}, r"unknown key\(s\) \['wieght_noise'\]"),
    ({"placement": "everywhere"}, "placement must be one of"),
    ({"noise_model": "pcm"}, "does not act on activations"),
    ({"adc": {"bits": 1}}, "converter bits"),
])
def test_bad_hardware_tables(table, message):
    with pytest.raises(ValueError, match=message):
        hardware_from_dict(table)


RECIPE = """
name = "hw"
[sweep]
sigmas = [0.1, 1.0]
[budget]
default = "cpu"
[budget.cpu]
seeds = 1
epochs = 1
[[grid]]
models = ["lenet5"]
"""


def test_recipe_hardware_table_reaches_every_cell():
    import tomllib

    data = tomllib.loads(RECIPE + '\n[hardware]\npreset = "pcm"\nnoise_sigma = 0.02\n')
    exp = parse_experiment(data, "hw.toml")
    assert exp.hardware == hardware_from_dict({"preset": "pcm", "noise_sigma": 0.02})
    again = parse_experiment({**tomllib.loads(RECIPE), "hardware": hardware_to_dict(exp.hardware)}, "again.toml")
    assert again.hardware == exp.hardware
    cell = exp.cells()[0]
    assert cell.harden.weight_noise == hardware_preset("pcm").weight_noise and cell.harden.noise.sigma == 0.02
    plain = parse_experiment(tomllib.loads(RECIPE), "plain.toml").cells()[0]
    assert plain.key != cell.key and plain.harden.weight_noise == ()


def test_recipe_refuses_a_bad_hardware_table():
    import tomllib

    from fxharden.experiments.experiment import ExperimentError

    with pytest.raises(ExperimentError, match=r"hw.toml \[hardware\]: unknown hardware preset"):
        parse_experiment(tomllib.loads(RECIPE + '\n[hardware]\npreset = "nope"\n'), "hw.toml")


def test_training_draws_the_hardware_weight_noise_in_every_step():
    """Every training forward draws new weights from the hardware's weight model (train mode)."""
    from fxharden.training.train import TrainConfig, train

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    hm = fxharden.harden(net, config=hardware_preset("pcm").harden_config())
    (mod,) = weight_noise_modules(hm).values()
    drawn = []
    mod.register_forward_hook(lambda m, args, out: drawn.append(out.detach().clone()) if m.training else None)
    x, y = torch.randn(48, 3, 4), torch.randint(0, 4, (48,))
    data = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 48, 8)]
    train(hm, data, data[:1], TrainConfig(epochs=1, batch_size=8, lr=1e-3, device="cpu", check_exact=False))
    training = drawn
    assert len(training) == len(data)  # one draw per training step (the evaluations run in eval mode)
    clean = net[1].weight.detach()
    assert all(not torch.equal(w, clean) for w in training)  # PCM at one day moves every weight
    assert all(not torch.equal(a, b) for a, b in zip(training, training[1:]))  # a new draw each step


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


FAST = ["--synthetic", "--max-images", "16", "--repeats", "2", "--batch-size", "8", "--device", "cpu",
        "--no-progress"]


def test_cli_time_sweep_writes_results_and_a_plot(tmp_path):
    out = tmp_path / "time"
    res = invoke("sweep", "lenet5", *FAST, "--hardware", "pcm", "--axis", "time", "--values", "1,3600,31557600",
                 "--out", out)
    assert res.exit_code == 0, res.output
    assert "Sweep along time after programming" in res.stdout and "1 yr" in res.stdout
    assert (out / "accuracy_vs_axis.png").read_bytes()[:8] == PNG_MAGIC
    result = load_axis_result(out)
    assert result.values == [1.0, 3600.0, 31557600.0] and result.num_images == 16
    assert result.harden_configs[0]["weight_noise"][0]["model"] == {"name": "pcm", "t": 86400.0}
    assert result.points[0].accuracy.shape == (1, 2)  # one network, two chips


@pytest.mark.parametrize("args, message", [
    (["--hardware", "nope"], "unknown hardware preset 'nope'"),
    (["--hardware", "missing.toml"], "no hardware file at missing.toml"),
    (["--axis", "time"], "needs weight noise whose model has a time field"),
    (["--axis", "time", "--hardware", "pcm", "--per-layer"], "--per-layer belong to the sigma axis"),
    (["--values", "1,2"], "--values and --link go with --axis"),
    (["--axis", "volts"], "volts"),
])
def test_cli_hardware_and_axis_errors(args, message):
    res = invoke("sweep", "lenet5", *FAST, *args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())


def test_cli_train_with_hardware_keeps_it_in_the_checkpoint(tmp_path):
    from fxharden.zoo.checkpoint import load_checkpoint

    out = tmp_path / "train"
    res = invoke("train", "lenet5", "--hardware", "aihwkit-inference", "--synthetic", "--train-images", "64",
                 "--test-images", "32", "--batch-size", "32", "--epochs", "1", "--max-steps", "2", "--device", "cpu",
                 "--no-progress", "--out", out)
    assert res.exit_code == 0, res.output
    assert "training noise σ │ 0.04" in res.stdout.replace("  ", " ") or "0.04" in res.stdout
    cfg = load_checkpoint(out / "checkpoint.pt").model.harden_config
    assert cfg == hardware_preset("aihwkit-inference").harden_config()


def test_cli_hardware_file_and_weight_sigma_axis(tmp_path):
    chip = tmp_path / "chip.toml"
    chip.write_text('[hardware]\nweight_noise = [{model = {name = "additive", of_max = true}, sigma = 0.01, '
                    'name = "prog"}]\nplacement = "analog-tile"\n')
    out = tmp_path / "w"
    res = invoke("sweep", "lenet5", *FAST, "--hardware", chip, "--axis", "weight-sigma", "--link", "prog",
                 "--values", "0.1,1", "--out", out)
    assert res.exit_code == 0, res.output
    result = load_axis_result(out)
    assert result.link == "prog" and result.values == [0.0, 0.1, 1.0]
    cfg = result.harden_configs[0]
    assert cfg["weight_noise"] == [{"model": {"name": "additive", "of_max": True}, "sigma": 0.01, "name": "prog"}]
    assert cfg["noise"]["kinds"] == ["conv", "linear"]
