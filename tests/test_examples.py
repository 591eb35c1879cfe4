"""Every script in examples/ runs as a user would run it (a subprocess, in an empty folder) and
prints what its docstring promises and writes its files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# script: (lines that must appear (regular expressions), files it must write in its output folder)
EXPECTED = {
    "robustness_report.py": ([r"clean accuracy: (0\.\d+|1\.000) \(chance 0\.25, 64 images\)",
                              r"sigma 0\.03: accuracy \d\.\d{3}", r"sigma 3: accuracy \d\.\d{3}", r"mu = .+"],
                             ["results.json", "results.csv", "accuracy_vs_sigma.png", "weights.pth"]),
    "per_layer_profile.py": ([r"clean accuracy: \d\.\d{3} \(chance 0\.25\)", r"\d+ layers measured", r"features\.\S+: mu = .+"],
                             ["results.json", "per_layer_mu.png"]),
    "noisy_finetune.py": ([r"before: clean accuracy \d\.\d{3}, mu = .+",
                           r"fine-tuned 1 epoch\(s\) with sigma 0\.1: .*checkpoint\.pt",
                           r"after: clean accuracy \d\.\d{3}, mu = .+"],
                          ["train/checkpoint.pt", "sweep_before/results.json", "sweep_after/results.json"]),
    "own_model.py": ([r"head linear noise=no quantizer=-", r"pool pool noise=no quantizer=-",
                      r"conv1 conv noise=yes quantizer=weights bits=8.*", r"clean accuracy: \d\.\d{3}", r"mu = .+"],
                     ["results.json"]),
}


def test_every_example_is_checked():
    assert {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")} == set(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script, tmp_path):
    lines, files = EXPECTED[script]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(EXAMPLES / script), "out"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout.splitlines()
    for pattern in lines:
        assert any(re.fullmatch(pattern, line) for line in printed), f"no line matching {pattern!r} in:\n{run.stdout}"
    for name in files:
        assert (tmp_path / "out" / name).is_file(), f"{script} did not write out/{name}"
