"""The package's layers import only downwards: core < zoo < measure < training < experiments
< cli. Checked on the source (every import statement, function-local ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fxharden"
ORDER = ["core", "zoo", "measure", "training", "experiments", "cli"]
BASE = {"_files", "devices"}
"""Modules beside the layers that any layer may use; they import no fxharden module."""


def _layer(module: str) -> str:
    """``fxharden.measure.sweep`` -> ``measure``; ``fxharden.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """Absolute fxharden module names imported by ``path`` (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "fxharden":  # ``from .. import __version__`` or a submodule by name
                for alias in node.names:
                    yield node.lineno, f"fxharden.{alias.name}" if alias.name != "__version__" else "fxharden"
            elif target.startswith("fxharden."):
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fxharden."):
                    yield node.lineno, alias.name


def _violations():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _layer(_module_name(path))
        for line, target in _imports(path):
            dst = _layer(target)
            if dst in ("", src):
                continue  # the package root (version, lazy surface) or the same layer
            if src in BASE:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {target} (base modules import nothing)")
            elif dst in BASE:
                continue
            elif src == "":
                continue  # fxharden/__init__.py: the public surface may name any layer
            elif ORDER.index(dst) > ORDER.index(src):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} ({src}) imports {target} ({dst}), a higher layer")
    return bad


def test_every_module_belongs_to_a_layer():
    top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
           if (p.is_file() and p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert top - {"__init__"} == set(ORDER) | BASE, "new top-level module: add it to ORDER or BASE"


def test_layers_import_only_downwards():
    assert _violations() == []


def test_checker_sees_an_upward_import(tmp_path):
    """The check itself: an upward import written into a copy of a core module is reported."""
    fake = tmp_path / "fxharden"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "bad.py").write_text("from ..measure.sweep import sweep\n")
    (fake / "core" / "good.py").write_text("from .config import HardenConfig\nfrom .._files import atomic_write_text\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, fake
    try:
        found = _violations()
    finally:
        PACKAGE = saved
    assert len(found) == 1 and "core/bad.py:1" in found[0] and "measure" in found[0]


@pytest.mark.parametrize("module", ["fxharden", "fxharden.core.config", "fxharden.measure.midpoint.fit"])
def test_light_modules_do_not_import_torch_fx_stack(module):
    """``import fxharden`` and the pure-numpy parts do not pull in timm or torchvision."""
    import subprocess
    import sys

    code = (f"import sys, {module}; bad = [m for m in ('timm', 'torchvision', 'ray', 'matplotlib') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == ""

