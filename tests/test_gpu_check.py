"""benchmarks/gpu_check.sh runs end to end on the CPU (tiny sizes) and prints its table."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_and_prints_one_table():
    env = {k: v for k, v in os.environ.items() if k != "FXHARDEN_DATA"}  # generated images: fast
    env["PYTHON"] = sys.executable
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    sections = {line.split("|")[1].strip() for line in table[1:]}
    assert {"noise", "overhead", "bf16", "compiled", "sweep", "train", "total"} <= sections, run.stdout
    # LeNet-5 and ResNet-18, eval and train; ResNet-50 and ViT-S eval
    assert sum(line.startswith("| overhead") for line in table) == 6
    assert sum(line.startswith("| compiled") for line in table) == 2
    assert any("fxharden.train vs bare loop" in line for line in table)
    assert sum("per (sigma, repeat) point" in line for line in table) == 4
    train_row = next(line for line in table if line.startswith("| train"))
    assert "finite" in train_row and "NOT FINITE" not in train_row
