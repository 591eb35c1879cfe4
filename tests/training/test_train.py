"""train(): QAT and noisy training, checkpoints, deterministic resume, real CIFAR-10."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxharden
from fxharden.zoo.checkpoint import load_checkpoint
from fxharden.zoo.data import DATA_ENV, TensorImageDataset, synthetic_dataset
from fxharden.zoo.networks import lenet5
from fxharden.core.noise import Noise
from fxharden.core.quant import ActQuant
from fxharden.training.train import CHECKPOINT, LOG, NoiseSchedule, TrainConfig, train

DATA = synthetic_dataset(512, seed=3)
TRAIN, TEST = DATA.subset(range(128, 512)), DATA.subset(128)


class SmallNet(nn.Module):
    """Conv net with dropout, so resume must also restore the dropout random stream."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.pool(self.relu(self.conv(x))), 1)))


def hardened(kind, seed=0, model=lenet5):
    torch.manual_seed(seed)
    shorthand = {"fp32": {}, "noisy": {}, "constant": {"bits": 8, "scale": 1.0}, "dynamic": {"bits": 8, "scale": None}}
    return fxharden.harden(model(), **shorthand[kind])


@torch.no_grad()
def dataset_loss(model, data):
    """Independent oracle: mean cross-entropy over the data, clean, in eval mode."""
    model.eval()
    losses = [F.cross_entropy(model(x), y, reduction="sum") for x, y in data.batches(256)]
    return float(sum(losses)) / len(data)


@pytest.mark.parametrize("kind", ["fp32", "constant", "dynamic", "noisy"])
def test_training_reduces_loss(kind):
    hm = hardened(kind)
    fxharden.set_noise(hm, 0.0)
    before = dataset_loss(hm, TRAIN)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, train_sigma=0.1 if kind == "noisy" else 0.0)
    result = train(hm, TRAIN, TEST, cfg)
    after = dataset_loss(result.model, TRAIN)
    assert after < 0.7 * before, (before, after)
    assert result.test_accuracy > 0.3  # synthetic classes are easy; chance is 0.1
    assert [h.epoch for h in result.history] == [1, 2]
    assert result.steps == 2 * (len(TRAIN) // 32)


def _scales(hm):
    return {name: (m.scale.detach().clone(), m.learn, m.calibration_steps)
            for name, m in hm.named_modules() if isinstance(m, ActQuant)}


def test_dynamic_steps_are_learned_constant_steps_stay_fixed():
    dyn = fxharden.harden(lenet5(), config=fxharden.HardenConfig(quant=fxharden.QuantConfig(
        bits=8, scaling="dynamic", scale=None, calibration_steps=2)))
    train(dyn, TRAIN, config=TrainConfig(max_steps=2, batch_size=32))  # calibration only
    calibrated = _scales(dyn)
    train(dyn, TRAIN, config=TrainConfig(epochs=2, batch_size=32, lr=1e-2))
    learned = _scales(dyn)
    assert all(learn for _, learn, _ in calibrated.values())
    assert all(not torch.equal(calibrated[n][0], learned[n][0]) for n in calibrated)

    const = hardened("constant")
    before = _scales(const)
    train(const, TRAIN, config=TrainConfig(epochs=2, batch_size=32, lr=1e-2))
    after = _scales(const)
    post_activation = [n for n, (_, learn, calib) in before.items() if calib == 0]
    assert len(post_activation) == 4  # the four ReLUs of LeNet-5
    for n in post_activation:
        assert float(after[n][0]) == 1.0 and not after[n][1]
    assert not any(isinstance(p, nn.Parameter) and p.requires_grad for n, p in const.named_parameters()
                   if n.endswith(".scale"))


def _record_noise(hm):
    """Forward hooks on every noise site: (sigma, output is input) per call."""
    seen = []
    for m in hm.modules():
        if isinstance(m, Noise):
            m.register_forward_hook(lambda mod, inp, out: seen.append((float(mod.sigma), out is inp[0])))
    return seen


def test_noise_is_injected_in_training_only_when_asked():
    hm = hardened("fp32")
    seen = _record_noise(hm)
    train(hm, TRAIN, TEST, TrainConfig(max_steps=3, batch_size=32))
    assert seen and all(sigma == 0.0 and identity for sigma, identity in seen)

    hm = hardened("fp32")
    seen = _record_noise(hm)
    train(hm, TRAIN, config=TrainConfig(max_steps=3, batch_size=32, train_sigma=0.25, eval_each_epoch=False))
    assert len(seen) == 3 * len(fxharden.noise_sites(hm))
    assert all(sigma == 0.25 and not identity for sigma, identity in seen)
    assert all(float(m.sigma) == 0.0 for m in hm.modules() if isinstance(m, Noise))  # caller's setting back


def test_ramp_and_per_site_schedules():
    hm = hardened("fp32")
    sites = fxharden.noise_sites(hm)
    seen = []
    target = next(m for m in hm.modules() if isinstance(m, Noise) and m.site == sites[1])
    target.register_forward_pre_hook(lambda mod, inp: seen.append(float(mod.sigma)))  # returns None
    per_epoch = len(TRAIN) // 64
    cfg = TrainConfig(epochs=3, batch_size=64, train_sigma=NoiseSchedule(0.4, ramp_epochs=2), eval_each_epoch=False)
    result = train(hm, TRAIN, config=cfg)
    assert seen[::per_epoch] == pytest.approx([0.0, 0.2, 0.4])
    assert [h.sigma for h in result.history] == pytest.approx([0.0, 0.2, 0.4])

    hm = hardened("fp32")
    recorded = {}

    def record(mod, inp):
        recorded.setdefault(mod.site, float(mod.sigma))

    for m in hm.modules():
        if isinstance(m, Noise):
            m.register_forward_pre_hook(record)
    train(hm, TRAIN, config=TrainConfig(max_steps=1, batch_size=64, train_sigma={sites[2]: 0.3}))
    assert recorded == pytest.approx({s: (0.3 if s == sites[2] else 0.0) for s in sites})
    with pytest.raises(ValueError, match="unknown noise site 'conv9'"):
        train(hm, TRAIN, config=TrainConfig(max_steps=1, train_sigma={"conv9": 0.3}))


@pytest.mark.parametrize("kind", ["fp32", "constant", "dynamic"])
def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, kind):
    hm = hardened(kind)
    result = train(hm, TRAIN, TEST, TrainConfig(epochs=1, batch_size=32), tmp_path, arch="lenet5",
                   arch_kwargs={"num_classes": 10})
    loaded = load_checkpoint(tmp_path / CHECKPOINT)
    assert loaded.arch == "lenet5" and loaded.config == hm.harden_config
    assert loaded.state["epoch"] == 1 and loaded.state["finished"]
    x, _ = next(TEST.batches(128))
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), result.model.eval()(x))
    log = json.loads((tmp_path / LOG).read_text())
    assert log["epoch"] == 1 and log["history"][0]["steps"] == len(TRAIN) // 32


class RunsCode:
    """An object whose unpickling runs code: a checkpoint holding it must be refused unread."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    RunsCode.ran = True
    return {}


def test_checkpoints_are_read_without_running_code(tmp_path):
    train(hardened("constant"), TRAIN, config=TrainConfig(max_steps=1, batch_size=32), out=tmp_path,
          arch="lenet5", arch_kwargs={"num_classes": 10})
    path = tmp_path / CHECKPOINT
    payload = torch.load(path, weights_only=True)  # what fxharden writes is plain data
    assert load_checkpoint(path).state["step"] == 1
    payload["state"]["extra"] = RunsCode()
    torch.save(payload, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        train(hardened("constant"), TRAIN, config=TrainConfig(max_steps=1, batch_size=32), out=tmp_path,
              resume=True)
    assert not RunsCode.ran


class Interrupt(Exception):
    pass


class FailingData(TensorImageDataset):
    """The same images; raises after ``n`` batches in total (a crash mid-epoch)."""

    def __init__(self, data, n):
        super().__init__(data.images, data.labels, mean=data.mean, std=data.std)
        self.left = n

    def batches(self, *args, **kwargs):
        for batch in super().batches(*args, **kwargs):
            if self.left == 0:
                raise Interrupt()
            self.left -= 1
            yield batch


RESUME_CFG = TrainConfig(epochs=3, batch_size=32, lr=3e-3, train_sigma=NoiseSchedule(0.2, ramp_epochs=1), seed=5)


def _resume_model():
    return hardened("dynamic", seed=1, model=SmallNet)


def test_resume_after_a_crash_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    reference = train(_resume_model(), TRAIN, config=RESUME_CFG).model.state_dict()

    per_epoch = len(TRAIN) // 32
    with pytest.raises(Interrupt):  # dies in the middle of the second epoch
        train(_resume_model(), FailingData(TRAIN, per_epoch + 4), config=RESUME_CFG, out=tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=False)["state"]
    assert state["epoch"] == 1 and state["step"] == per_epoch and not state["finished"]

    resumed = train(_resume_model(), TRAIN, config=RESUME_CFG, out=tmp_path, resume=True)
    assert resumed.resumed_from == 1 and [h.epoch for h in resumed.history] == [1, 2, 3]
    final = resumed.model.state_dict()
    assert final.keys() == reference.keys()
    for k in reference:
        assert torch.equal(final[k], reference[k]), k

    again = train(_resume_model(), TRAIN, config=RESUME_CFG, out=tmp_path, resume=True)  # finished: no work
    assert again.resumed_from == 3 and all(torch.equal(again.model.state_dict()[k], reference[k]) for k in reference)


def test_resume_guards(tmp_path):
    train(hardened("fp32"), TRAIN, config=TrainConfig(max_steps=2, batch_size=32), out=tmp_path)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(hardened("fp32"), TRAIN, config=TrainConfig(max_steps=2, batch_size=32), out=tmp_path)
    with pytest.raises(ValueError, match="lr"):
        train(hardened("fp32"), TRAIN, config=TrainConfig(max_steps=2, batch_size=32, lr=0.5), out=tmp_path,
              resume=True)
    with pytest.raises(ValueError, match="needs out="):
        train(hardened("fp32"), TRAIN, resume=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0.0}, "lr must be"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"optimizer": "adamw"}, r"optimizer must be one of \['adam', 'sgd'\]"),
    ({"train_sigma": -1.0}, "sigma must be a finite number >= 0"),
])
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
    with pytest.raises(ValueError, match="either sigma"):
        NoiseSchedule(0.1, per_site={"conv1": 0.1})


def test_fp16_on_cpu_says_what_to_do():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(hardened("fp32"), TRAIN, config=TrainConfig(max_steps=1, device="cpu", precision="fp16"))


def test_sgd_and_plain_model():
    torch.manual_seed(0)
    result = train(lenet5(), TRAIN, TEST, TrainConfig(epochs=2, batch_size=32, lr=0.05, optimizer="sgd"))
    assert isinstance(result.model, fxharden.HardenedModule)
    assert result.test_accuracy > 0.3


@pytest.mark.cifar
@pytest.mark.skipif(not os.environ.get(DATA_ENV), reason=f"real CIFAR-10 needs ${DATA_ENV}")
def test_lenet5_learns_cifar10_and_has_a_finite_midpoint():
    from fxharden.zoo.data import load_cifar10
    from fxharden.measure.sweep import sweep

    train_set, test_set = load_cifar10("train").subset(10_000), load_cifar10("test").subset(1000)
    torch.manual_seed(0)
    result = train(fxharden.harden(lenet5()), train_set, test_set, TrainConfig(epochs=1, lr=2e-3))
    assert result.test_accuracy > 0.25  # chance is 0.10
    grid = [0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5, 2.5, 4.0, 8.0]
    swept = sweep(result.model, test_set, sigmas=grid, repeats=2)
    fit = swept.fit
    mu = fit.mu if fit.ok else fit.mu_crossing
    assert math.isfinite(mu) and grid[0] < mu < grid[-1], fit


def test_cli_train_writes_a_checkpoint_and_refuses_to_overwrite(tmp_path):
    from typer.testing import CliRunner

    from fxharden.cli import app

    args = ["train", "lenet5", "--bits", "8", "--dynamic", "--train-sigma", "0.1", "--epochs", "1", "--synthetic",
            "--batch-size", "64", "--out", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "clean test accuracy" in result.output and (tmp_path / CHECKPOINT).is_file()
    assert load_checkpoint(tmp_path / CHECKPOINT).config.quant.bits == 8
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    assert CliRunner().invoke(app, args + ["--resume"]).exit_code == 0  # finished: nothing left to do


def test_more_epochs_extend_a_finished_run_with_a_fresh_cosine(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, seed=2)
    first = train(hardened("fp32"), TRAIN, config=cfg, out=tmp_path)
    per_epoch = len(TRAIN) // 32
    assert first.steps == per_epoch and first.history[-1].lr == pytest.approx(0.0, abs=1e-12)
    lrs = []
    original = torch.optim.Adam.step

    def record(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    torch.optim.Adam.step = record
    try:
        longer = train(hardened("fp32"), TRAIN, config=replace_epochs(cfg, 3), out=tmp_path, resume=True)
    finally:
        torch.optim.Adam.step = original
    assert longer.resumed_from == 1 and [h.epoch for h in longer.history] == [1, 2, 3]
    assert longer.steps == 3 * per_epoch and len(lrs) == 2 * per_epoch
    # the schedule restarts: cosine from lr to 0 over the added steps (closed form)
    n = 2 * per_epoch
    expected = [1e-3 * (1 + math.cos(math.pi * i / n)) / 2 for i in range(n)]
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)
    with pytest.raises(ValueError, match="give epochs >= 3"):
        train(hardened("fp32"), TRAIN, config=replace_epochs(cfg, 2), out=tmp_path, resume=True)


def replace_epochs(cfg, epochs):
    from dataclasses import replace

    return replace(cfg, epochs=epochs)


def test_resume_refuses_another_model_other_bits_and_a_truncated_file(tmp_path):
    cfg = TrainConfig(max_steps=1, batch_size=32)
    train(hardened("fp32"), TRAIN, config=cfg, out=tmp_path, arch="lenet5")
    with pytest.raises(ValueError, match="hardened with another config .*quant.*fp32 there, 8-bit now"):
        train(hardened("constant"), TRAIN, config=cfg, out=tmp_path, resume=True, arch="lenet5")
    with pytest.raises(ValueError, match="holds a lenet5 network, not resnet18"):
        train(hardened("fp32"), TRAIN, config=cfg, out=tmp_path, resume=True, arch="resnet18")
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="the file cannot be read"):
        train(hardened("fp32"), TRAIN, config=cfg, out=tmp_path, resume=True, arch="lenet5")


def test_evaluate_calibrates_a_fresh_model_on_its_data_first():
    """A smoke-test forward of zeros, then ``evaluate``: the input step is the hand count
    max|x| / 127 of the data (clean, noise off), and the accuracy is that of an eager loop."""
    from fxharden.training.train import evaluate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(256, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    hm = fxharden.harden(model, bits=8, scale=0.05, sigma=0.5).eval()
    with torch.no_grad():
        hm(torch.zeros(1, 16))
    fxharden.set_noise(hm, 0.0)
    acc = evaluate(hm, (x, y), batch_size=64)
    assert float(hm.get_submodule("fxharden.input__quant").scale) == pytest.approx(float(x.abs().max()) / 127, rel=1e-6)
    with torch.no_grad():
        eager = float((torch.cat([hm(x[i:i + 64]) for i in range(0, 256, 64)]).argmax(1) == y).float().mean())
    assert acc == eager > 0.9
