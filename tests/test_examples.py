"""Every script in examples/ runs as a user would run it (a subprocess, in an empty folder) and
prints what its docstring promises and writes its files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fxharden.zoo.options import DATA_ENV, data_env

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# what fit.quote().text() prints: "0.321 ± 0.0061" (an ok fit), "~0.61 ± 0.02 (poor_fit)",
# "> 32 (beyond_grid)" or "- (at_chance)"; never a raw fit.mu such as "nan (at_chance)"
NUM = r"\d[\d.e+-]*"
QUOTE = rf"({NUM}( ± {NUM})?|~{NUM}( ± {NUM})? \([\w ,]+\)|> {NUM} \(\w+\)|- \(\w+\))"

# script: (lines that must appear (regular expressions), files it must write in its output folder)
EXPECTED = {
    "robustness_report.py": ([r"clean accuracy: (0\.\d+|1\.000) \(chance 0\.25, 64 images\)",
                              r"sigma 0\.03: accuracy \d\.\d{3}", r"sigma 3: accuracy \d\.\d{3}", rf"mu = {QUOTE}"],
                             ["results.json", "results.csv", "accuracy_vs_sigma.png", "weights.pth"]),
    "per_layer_profile.py": ([r"clean accuracy: \d\.\d{3} \(chance 0\.25\)", r"\d+ layers measured", rf"features\.\S+: mu = {QUOTE}"],
                             ["results.json", "per_layer_mu.png"]),
    "noisy_finetune.py": ([rf"before: clean accuracy \d\.\d{{3}}, mu = {QUOTE}",
                           r"fine-tuned 1 epoch\(s\) with sigma 0\.1: .*checkpoint\.pt",
                           rf"after: clean accuracy \d\.\d{{3}}, mu = {QUOTE}"],
                          ["train/checkpoint.pt", "sweep_before/results.json", "sweep_after/results.json"]),
    "lm_robustness.py": ([r"trained 2000 steps in \d+ s: clean perplexity \d+\.\d\d", rf"mu \(perplexity\) = {QUOTE}",
                          rf"model\.layers\.0\.self_attn\.q_proj: mu = {QUOTE}", rf"lm_head: mu = {QUOTE}",
                          rf"noisy fine-tune \(sigma_train 0\.1, 300 steps\): mu \(perplexity\) = {QUOTE}",
                          r"sites: 18 \(export frontend\)"],
                         ["corpus.txt", "sweep_before/results.json", "sweep_per_layer/results.json",
                          "sweep_after/results.json"]),
    "own_model.py": ([r"head linear noise=no quantizer=-", r"pool pool noise=no quantizer=-",
                      r"mean pool noise=yes quantizer=-",
                      r"conv1 conv noise=yes quantizer=weights bits=8.*", r"clean accuracy: \d\.\d{3}", rf"mu = {QUOTE}"],
                     ["results.json"]),
    "pcm_drift.py": ([r"plain: clean accuracy \d\.\d{3} \(1 epoch\(s\), \d+ s\)",
                      r"hardware-aware \(PCM at 1 day\): clean accuracy \d\.\d{3} \(1 epoch\(s\), \d+ s\)",
                      *(rf"{t}: plain \d\.\d{{3}} ± \d\.\d{{3}}, hardware-aware \d\.\d{{3}} ± \d\.\d{{3}}"
                        for t in ("1 s", "1 h", "1 day", "1 month", "1 yr")),
                      rf"plain: half-way time {QUOTE}", rf"hardware-aware: half-way time {QUOTE}"],
                     ["results.json", "accuracy_vs_time.png", "plain/axis_results.json",
                      "hardware-aware/axis_results.json"]),
}


def _example_env() -> dict:
    """This environment, with fxharden importable and ``$FXHARDEN_DATA`` absolute: the examples
    run in another folder than the one a relative value was typed in."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if data_env() is not None:
        env[DATA_ENV] = str(data_env())
    return env


def test_every_example_is_checked():
    assert {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")} == set(EXPECTED)


def test_examples_print_the_quoted_mu():
    """The README: only a fit with status ok is shown as μ, through fit.quote()."""
    for script in EXPECTED:
        source = (EXAMPLES / script).read_text()
        assert ".quote()" in source and not re.search(r"fit\.(mu|mu_lower|mu_err)\b", source), script


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script, tmp_path):
    lines, files = EXPECTED[script]
    run = subprocess.run([sys.executable, str(EXAMPLES / script), "out"], cwd=tmp_path, env=_example_env(),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout.splitlines()
    for pattern in lines:
        assert any(re.fullmatch(pattern, line) for line in printed), f"no line matching {pattern!r} in:\n{run.stdout}"
    for name in files:
        assert (tmp_path / "out" / name).is_file(), f"{script} did not write out/{name}"


def test_a_relative_data_path_reaches_the_examples(tmp_path, monkeypatch):
    """``FXHARDEN_DATA=../../data pytest``: the stand-in image folder of the examples, written in
    another folder, holds CIFAR-10 images (class names, pixels) from that data, not generated ones."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), np.arange(12, dtype=np.uint8) % 3
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "cifar10_test.npz", x=x, y=y)
    (tmp_path / "typed" / "here").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "typed" / "here")
    monkeypatch.setenv(DATA_ENV, "../../data")  # from the examples' folder, this names no data
    code = (f"import sys; sys.path.insert(0, {str(EXAMPLES)!r}); import _stand_ins; "
            "_stand_ins.image_folder('images', classes=3, per_class=2)")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "run", env=_example_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for label, name in enumerate(("airplane", "automobile", "bird")):
        written = sorted((tmp_path / "run" / "images" / name).glob("*.png"))
        assert len(written) == 2, name
        # the first two images of that class, in order
        for png, i in zip(written, np.flatnonzero(y == label)[:2]):
            assert np.array_equal(np.asarray(Image.open(png)), x[i])
