"""Bad command-line input, one case per row: each ends with a clear message naming the problem
and an exit code != 0, without a traceback or a hang, and writes nothing into the output folder.

Cases run in-process through typer's CliRunner on generated data and tiny settings."""

import json
import os
import socket
import stat
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fxharden.cli import app
from fxharden.core.harden import harden
from fxharden.zoo.checkpoint import save_checkpoint
from fxharden.zoo.networks import LeNet5

runner = CliRunner()
CUDA = torch.cuda.is_available()
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False

RECIPE = """
name = "bad"
dataset = "synthetic"

[sweep]
sigmas = [0.1, 1.0]
repeats = 1
batch_size = 32

[budget]
default = "cpu"

[budget.cpu]
epochs = 1
seeds = 1
max_steps = 1
batch_size = 32

[[grid]]
models = ["lenet5"]
bits = ["fp32"]
"""

SWEEP = ["sweep", "lenet5", "--synthetic", "--max-images", "64", "--repeats", "1", "--batch-size", "32",
         "--device", "cpu", "--no-progress", "--sigmas", "0.1,1"]
TRAIN = ["train", "lenet5", "--synthetic", "--train-images", "64", "--test-images", "32", "--batch-size", "32",
         "--device", "cpu", "--no-progress", "--epochs", "1", "--max-steps", "1"]
REPRO = ["reproduce", "{recipe}", "--synthetic", "--device", "cpu", "--no-progress"]


def recipe(edit=lambda text: text):
    return ("recipe", edit(RECIPE))


def replace(old, new):
    return lambda text: text.replace(old, new) if old in text else pytest.fail(f"{old!r} not in the recipe")


def append(extra):
    return lambda text: text + extra


# (id, command line, message the output must contain, setup) -- "{out}", "{recipe}", "{ckpt}",
# "{run}" are filled in per case; setup names a fixture file the case needs
CASES = [
    # ---------------------------------------------------------------- sweep
    ("sweep-unknown-model", ["sweep", "no_such_net", "--synthetic"], "unknown model 'no_such_net'", None),
    ("sweep-sigmas-text", SWEEP + ["--sigmas", "0.1,abc"], "comma-separated list of numbers", None),
    ("sweep-sigmas-negative", SWEEP + ["--sigmas", "-1"], "noise levels > 0", None),
    ("sweep-sigmas-zero", SWEEP + ["--sigmas", "0"], "noise levels > 0", None),
    ("sweep-sigmas-nan", SWEEP + ["--sigmas", "nan"], "noise levels > 0", None),
    ("sweep-sigmas-inf", SWEEP + ["--sigmas", "inf"], "noise levels > 0", None),
    ("sweep-sigmas-empty", SWEEP + ["--sigmas", ","], "noise levels > 0", None),
    ("sweep-scale-without-bits", SWEEP + ["--scale", "0.5"], "--scale and --dynamic need --bits", None),
    ("sweep-dynamic-without-bits", SWEEP + ["--dynamic"], "--scale and --dynamic need --bits", None),
    ("sweep-scale-and-dynamic", SWEEP + ["--bits", "8", "--scale", "1", "--dynamic"], "not both", None),
    ("sweep-bits-1", SWEEP + ["--bits", "1"], "--bits", None),
    ("sweep-bits-17", SWEEP + ["--bits", "17"], "--bits", None),
    ("sweep-bits-text", SWEEP + ["--bits", "eight"], "--bits", None),
    ("sweep-scale-zero", SWEEP + ["--bits", "8", "--scale", "0"], "scale", None),
    ("sweep-repeats-0", SWEEP + ["--repeats", "0"], "--repeats", None),
    ("sweep-batch-size-0", SWEEP + ["--batch-size", "0"], "--batch-size", None),
    ("sweep-max-images-0", SWEEP + ["--max-images", "0"], "--max-images", None),
    ("sweep-points-per-forward-0", SWEEP + ["--points-per-forward", "0"], "--points-per-forward", None),
    ("sweep-forward-images-0", SWEEP + ["--forward-images", "0"], "--forward-images", None),
    ("sweep-unknown-site", SWEEP + ["--sites", "nothing_here"], "matches no noise site", None),
    ("sweep-bad-site-regex", SWEEP + ["--sites", "conv(["], "neither a site name nor a regular expression", None),
    ("sweep-sigma-min-zero", SWEEP[:-2] + ["--sigma-min", "0"], "sigma_min must be > 0", None),
    ("sweep-sigma-min-above-max", SWEEP[:-2] + ["--sigma-min", "10", "--sigma-max", "1"], "must be below", None),
    ("sweep-chance-2", SWEEP + ["--chance", "2"], "chance must be in [0, 1)", None),
    ("sweep-missing-checkpoint", ["sweep", "missing/ckpt.pt", "--synthetic"], "no checkpoint file at", None),
    ("sweep-garbage-checkpoint", ["sweep", "{garbage}", "--synthetic"], "not a readable checkpoint", "garbage"),
    ("sweep-truncated-checkpoint", ["sweep", "{truncated}", "--synthetic"], "not a readable checkpoint",
     "truncated"),
    ("sweep-checkpoint-with-bits", ["sweep", "{ckpt}", "--synthetic", "--bits", "4"],
     "carries its own harden config", "ckpt"),
    ("sweep-fp32-and-8bit-checkpoints", ["sweep", "{ckpt}", "{ckpt8}", "--synthetic", "--sigmas", "0.1"],
     "must share their harden config", "ckpt"),
    ("sweep-synthetic-and-data", SWEEP + ["--data", "somewhere"], "--synthetic generates its own data", None),
    ("sweep-synthetic-and-download", SWEEP + ["--download"], "--synthetic generates its own data", None),
    ("sweep-no-data", ["sweep", "lenet5", "--data", "{out}/nowhere", "--no-progress"],
     "nowhere' does not exist", None),
    ("sweep-device-gpu", SWEEP + ["--device", "gpu"], "--device", None),
    ("sweep-split-val", SWEEP + ["--split", "val"], "--split", None),
    ("sweep-read-only-out", SWEEP + ["--out", "{readonly}/run"], "cannot write to", "readonly"),
    ("sweep-unknown-option", SWEEP + ["--sigma", "1"], "No such option", None),
    # ---------------------------------------------------------------- inspect
    ("inspect-unknown-model", ["inspect", "no_such_net"], "unknown model", None),
    ("inspect-bits-1", ["inspect", "lenet5", "--bits", "1"], "--bits", None),
    ("inspect-scale-without-bits", ["inspect", "lenet5", "--scale", "2"], "need --bits", None),
    ("inspect-garbage-file", ["inspect", "{garbage}"], "not a readable checkpoint", "garbage"),
    ("inspect-missing-path", ["inspect", "runs/x/checkpoint.pt"], "no checkpoint file at", None),
    # ---------------------------------------------------------------- train
    ("train-unknown-model", ["train", "no_such_net", "--synthetic"], "unknown model", None),
    ("train-epochs-0", TRAIN + ["--epochs", "0"], "--epochs", None),
    ("train-epochs-text", TRAIN + ["--epochs", "one"], "--epochs", None),
    ("train-lr-0", TRAIN + ["--lr", "0"], "lr must be a finite number > 0", None),
    ("train-lr-negative", TRAIN + ["--lr", "-1"], "lr must be a finite number > 0", None),
    ("train-lr-nan", TRAIN + ["--lr", "nan"], "lr must be a finite number > 0", None),
    ("train-sigma-negative", TRAIN + ["--train-sigma", "-1"], "--train-sigma", None),
    ("train-ramp-negative", TRAIN + ["--ramp-epochs", "-1"], "--ramp-epochs", None),
    ("train-batch-size-0", TRAIN + ["--batch-size", "0"], "--batch-size", None),
    ("train-optimizer-rmsprop", TRAIN + ["--optimizer", "rmsprop"], "--optimizer", None),
    ("train-synthetic-and-data", TRAIN + ["--data", "x"], "--synthetic generates its own data", None),
    ("train-existing-run-without-resume", TRAIN + ["--out", "{run}"], "pass resume=True (CLI: --resume)", "run"),
    ("train-resume-truncated", TRAIN + ["--out", "{truncated_run}", "--resume"], "the file cannot be read",
     "truncated_run"),
    ("train-resume-other-model", ["train", "resnet18"] + TRAIN[2:] + ["--out", "{run}", "--resume"],
     "holds a lenet5 network, not resnet18", "run"),
    ("train-resume-changed-bits", TRAIN + ["--bits", "8", "--out", "{run}", "--resume"],
     "hardened with another config", "run"),
    ("train-resume-changed-lr", TRAIN + ["--lr", "0.5", "--out", "{run}", "--resume"], "lr differ", "run"),
    ("train-read-only-out", TRAIN + ["--out", "{readonly}/run"], "cannot write to", "readonly"),
    # ---------------------------------------------------------------- reproduce: the recipe
    ("recipe-missing-file", ["reproduce", "no/such.toml"], "no experiment file at", None),
    ("recipe-not-toml", REPRO, "not valid TOML", recipe(append("\n[[[ nope\n"))),
    ("recipe-epochs-text", REPRO, "epochs must be an integer >= 1, got 'one'",
     recipe(replace("epochs = 1", 'epochs = "one"'))),
    ("recipe-epochs-float", REPRO, "epochs must be an integer >= 1, got 2.5",
     recipe(replace("epochs = 1", "epochs = 2.5"))),
    ("recipe-seeds-text", REPRO, "seeds must be an integer >= 1, got '2'", recipe(replace("seeds = 1", 'seeds = "2"'))),
    ("recipe-seeds-0", REPRO, "seeds must be an integer >= 1", recipe(replace("seeds = 1", "seeds = 0"))),
    ("recipe-sweep-repeats-0", REPRO, "[sweep].repeats must be an integer >= 1, got 0",
     recipe(replace("repeats = 1", "repeats = 0"))),
    ("recipe-budget-repeats-0", REPRO, "[budget.cpu].repeats must be an integer >= 1, got 0",
     recipe(replace("seeds = 1", "seeds = 1\nrepeats = 0"))),
    ("recipe-paper-without-model", REPRO, "[[paper]] #1: needs model", recipe(append("\n[[paper]]\nbits = 8\n"))),
    ("recipe-paper-accuracy-text", REPRO, "[[paper]] #1.accuracy must be a number >= 0",
     recipe(append('\n[[paper]]\nmodel = "lenet5"\naccuracy = "high"\n'))),
    ("recipe-unknown-model", REPRO, "unknown model 'no_such_net'",
     recipe(replace('models = ["lenet5"]', 'models = ["no_such_net"]'))),
    ("recipe-model-number", REPRO, "[[grid]] #1.models must be a model name",
     recipe(replace('models = ["lenet5"]', "models = [3]"))),
    ("recipe-without-grid", REPRO, "missing [grid]", recipe(lambda t: t[:t.index("[[grid]]")])),
    ("recipe-without-budget-paper", REPRO + ["--budget", "paper"], "no [budget.paper] section", recipe()),
    ("recipe-default-budget-missing", REPRO, "has no [budget.paper] section",
     recipe(replace('default = "cpu"', 'default = "paper"'))),
    ("recipe-unknown-budget-key", REPRO, "[budget.cpu]: unknown key(s) ['epoch']",
     recipe(replace("epochs = 1", "epoch = 1"))),
    ("recipe-unknown-sweep-key", REPRO, "[sweep]: unknown key(s) ['sigma']",
     recipe(replace("sigmas = [0.1, 1.0]", "sigmas = [0.1, 1.0]\nsigma = 1"))),
    ("recipe-unknown-budget-name", REPRO, "'tpu' is not a valid Budget",
     recipe(append("\n[budget.tpu]\nepochs = 1\n"))),
    ("recipe-bits-1", REPRO, "bits", recipe(replace('bits = ["fp32"]', "bits = [1]"))),
    ("recipe-bits-text", REPRO, 'bits must be "fp32" or an integer', recipe(replace('bits = ["fp32"]', 'bits = ["8"]'))),
    ("recipe-scaling-zero", REPRO, "scaling must be", recipe(replace('bits = ["fp32"]', "bits = [8]\nscaling = [0]"))),
    ("recipe-train-sigma-text", REPRO, "train_sigma entries must be",
     recipe(replace('bits = ["fp32"]', 'bits = ["fp32"]\ntrain_sigma = ["sometimes"]'))),
    ("recipe-lr-zero", REPRO, "lr must be a number > 0", recipe(replace('bits = ["fp32"]', 'bits = ["fp32"]\nlr = 0'))),
    ("recipe-sigmas-empty", REPRO, "expected a non-empty list of sigmas",
     recipe(replace("sigmas = [0.1, 1.0]", "sigmas = []"))),
    ("recipe-sigmas-text", REPRO, "expected a non-empty list of sigmas",
     recipe(replace("sigmas = [0.1, 1.0]", 'sigmas = ["0.1"]'))),
    ("recipe-grid-min-above-max", REPRO, "need 0 < min < max",
     recipe(replace("sigmas = [0.1, 1.0]", "sigmas = {min = 1.0, max = 0.1, points = 3}"))),
    ("recipe-grid-points-text", REPRO, "points must be an integer >= 2",
     recipe(replace("sigmas = [0.1, 1.0]", 'sigmas = {min = 0.1, max = 1.0, points = "3"}'))),
    ("recipe-batch-size-negative", REPRO, "batch_size must be an integer >= 1",
     recipe(replace("batch_size = 32\n\n[budget]", "batch_size = -1\n\n[budget]"))),
    ("recipe-name-number", REPRO, "name must be a non-empty string", recipe(replace('name = "bad"', "name = 3"))),
    ("recipe-dataset-imagenet", REPRO, "'imagenet' is not a valid DatasetKind",
     recipe(replace('dataset = "synthetic"', 'dataset = "imagenet"'))),
    ("recipe-architectures-text", REPRO, "architectures must be true or false",
     recipe(replace('dataset = "synthetic"', 'dataset = "synthetic"\narchitectures = "yes"'))),
    ("recipe-sweep-not-a-table", REPRO, "[sweep] must be a table", recipe(
        lambda t: t.replace("[sweep]\nsigmas = [0.1, 1.0]\nrepeats = 1\nbatch_size = 32\n", "").replace(
            'dataset = "synthetic"', 'dataset = "synthetic"\nsweep = 3'))),
    # ---------------------------------------------------------------- reproduce: the command
    ("reproduce-jobs-0", REPRO + ["--jobs", "0"], "--jobs", recipe()),
    ("reproduce-address-without-ray", REPRO + ["--address", "head:6379"], "only used with --executor ray", recipe()),
    ("reproduce-synthetic-and-data", REPRO + ["--data", "x"], "--synthetic generates its own data", recipe()),
    ("reproduce-unknown-executor", REPRO + ["--executor", "slurm"], "--executor", recipe()),
    ("reproduce-read-only-out", REPRO + ["--out", "{readonly}/run"], "cannot write to", "readonly"),
    ("reproduce-no-data", ["reproduce", "{recipe}", "--data", "{out}/nowhere", "--no-progress"],
     "--download", recipe(replace('dataset = "synthetic"', 'dataset = "cifar10"'))),
    ("reproduce-locked-out", REPRO, "is in use by another reproduce", "locked"),
    ("reproduce-ray-nobody-answers", REPRO + ["--executor", "ray", "--address", "{dead_address}",
                                              "--connect-timeout", "2"], "no Ray cluster answers at", recipe()),
]
if not CUDA:
    CASES += [
        ("sweep-cuda-without-cuda", SWEEP + ["--device", "cuda"], "CUDA is not available", None),
        ("train-cuda-without-cuda", TRAIN + ["--device", "cuda"], "CUDA is not available", None),
        ("reproduce-cuda-without-cuda", REPRO + ["--device", "cuda"], "CUDA is not available", recipe()),
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints and a finished training run that the cases misuse."""
    base = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    save_checkpoint(base / "fp32.pt", harden(LeNet5()), "lenet5")
    save_checkpoint(base / "b8.pt", harden(LeNet5(), bits=8, scale=1.0), "lenet5")
    (base / "garbage.pt").write_bytes(b"this is not a checkpoint")
    (base / "truncated.pt").write_bytes((base / "fp32.pt").read_bytes()[:2000])
    res = runner.invoke(app, TRAIN + ["--out", str(base / "run")])
    assert res.exit_code == 0, res.output
    return base


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_with_a_clear_message_and_writes_nothing(case, files, tmp_path, monkeypatch):
    name, args, message, setup = case
    monkeypatch.delenv("FXHARDEN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no download cache
    out = tmp_path / "out"
    fill = {"out": str(out), "ckpt": str(files / "fp32.pt"), "ckpt8": str(files / "b8.pt"),
            "garbage": str(files / "garbage.pt"), "truncated": str(files / "truncated.pt")}
    fill["recipe"] = str(tmp_path / "r.toml")
    Path(fill["recipe"]).write_text(setup[1] if isinstance(setup, tuple) else RECIPE)
    if isinstance(setup, tuple):
        pass
    elif setup == "run" or setup == "truncated_run":
        run = tmp_path / "run"
        run.mkdir()
        for f in (files / "run").iterdir():
            (run / f.name).write_bytes(f.read_bytes())
        if setup == "truncated_run":
            ckpt = run / "checkpoint.pt"
            ckpt.write_bytes(ckpt.read_bytes()[:3000])
        fill["run"] = fill["truncated_run"] = str(run)
    elif setup == "readonly":
        ro = tmp_path / "ro"
        if ROOT:  # root writes into read-only folders: a path below a regular file cannot be written either
            ro.write_text("a file, not a folder")
        else:
            ro.mkdir()
            ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        fill["readonly"] = str(ro)
    elif setup == "locked":
        out.mkdir()
        # a live process on this host holds the folder (this test's own parent process)
        (out / ".fxharden.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                        "started": "now"}))
        args = args + ["--out", "{out}"]
    if "{dead_address}" in args:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        fill["dead_address"] = f"127.0.0.1:{port}"
    if args[0] in ("sweep", "train", "reproduce") and "--out" not in args:
        args = args + ["--out", "{out}"]
    argv = [a.format(**fill) for a in args]
    before = _listing(out) | _listing(Path(fill.get("run", tmp_path / "none")))

    res = runner.invoke(app, argv)

    text = " ".join(res.output.split())
    assert res.exit_code not in (0, None), f"{name}: accepted\n{res.output}"
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert message in text, f"{name}: expected {message!r} in\n{res.output}"
    after = _listing(out) | _listing(Path(fill.get("run", tmp_path / "none")))
    assert after == before, f"{name}: files written or changed: {set(after.items()) ^ set(before.items())}"
    if setup == "readonly" and not ROOT:
        Path(fill["readonly"]).chmod(stat.S_IRWXU)


def test_the_list_is_long_enough():
    assert len(CASES) >= 60
