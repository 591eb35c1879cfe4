"""Start-up cost: importing the package and parsing the command line (``--help`` of every
command) load none of torch, timm, torchvision, ray or matplotlib; those load when a command
runs. Checked on ``sys.modules`` of a fresh interpreter (no timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "ray", "matplotlib")


def _loaded_after(code: str) -> list:
    """The heavy top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = (f"import sys\n{code}\n"
             f"sys.stderr.write('LOADED=' + ','.join(m for m in {HEAVY!r} if m in sys.modules) + '\\n')\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    line = [ln for ln in run.stderr.splitlines() if ln.startswith("LOADED=")][-1]
    return [m for m in line[len("LOADED="):].split(",") if m]


@pytest.mark.parametrize("module", ["fxharden", "fxharden.cli"])
def test_import_loads_no_heavy_package(module):
    assert _loaded_after(f"import {module}") == []


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["inspect", "--help"], ["train", "--help"],
                                  ["reproduce", "--help"]])
def test_help_loads_no_heavy_package(argv):
    code = ("from fxharden.cli import app\n"
            f"try:\n    app({argv!r}, prog_name='fxharden')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n")
    assert _loaded_after(code) == []


def test_probe_sees_a_heavy_import():
    """The probe itself: a command that imports torch is reported."""
    assert "torch" in _loaded_after("import fxharden.core.harden")


SPIN_PROBE = """
import os, sys
seen = []
class Watch:  # records GOMP_SPINCOUNT when torch is first imported (libgomp reads it then)
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("GOMP_SPINCOUNT"))
        return None
sys.meta_path.insert(0, Watch())
from fxharden.cli import app
try:
    app(["inspect", "lenet5"], prog_name="fxharden")
except SystemExit as e:
    assert e.code in (0, None), e.code
sys.stderr.write("SPIN=" + repr(seen) + "\\n")
"""


@pytest.mark.parametrize("given, expected", [(None, "1000"), ("7", "7")])
def test_a_command_sets_the_openmp_spin_count_before_torch_loads(given, expected):
    import os

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if given is not None:
        env["GOMP_SPINCOUNT"] = given  # the user's own setting is kept
    run = subprocess.run([sys.executable, "-c", SPIN_PROBE], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stderr
    line = [ln for ln in run.stderr.splitlines() if ln.startswith("SPIN=")][-1]
    assert line == f"SPIN={[expected]!r}"
