"""The package's layers import only downwards: core < zoo < measure < training < experiments
< cli, and no module imports itself back through others (no import cycle). Checked on the
source (every import statement, function-local ones included)."""

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


def _is_module(name: str) -> bool:
    """Whether the dotted ``name`` is a module or package of the package's source."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


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
                subs = [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")]
                for sub in subs or [target]:  # ``from .noise import verbs``: the submodule
                    yield node.lineno, sub
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


def _cycles():
    """Each import cycle among the package's modules, as ``a -> b -> a``: the strongly
    connected components of the graph of every import statement (a module imported from a
    function body counts as much as one imported at the top)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, found = _module_name(path), set()
        for _, target in _imports(path):
            while target and not _is_module(target):
                target = target.rpartition(".")[0]  # ``import fxharden.core.harden.x``: its module
            if target and target != name:
                found.add(target)
        graph[name] = sorted(found)
    order, low, stack, cycles = {}, {}, [], []

    def visit(v):  # Tarjan: ``low[v] == order[v]`` closes a component
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            part = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(part) > 1:
                cycles.append(_cycle_path(sorted(part), graph))

    for v in graph:
        if v not in order:
            visit(v)
    return cycles


def _cycle_path(part, graph) -> str:
    """One cycle through the first module of the component ``part``, as ``a -> b -> a``."""
    start, members = part[0], set(part)
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first, inside the component: the shortest way back to ``start``
        v = queue.pop(0)
        for w in graph[v]:
            if w == start:
                return " -> ".join(paths[v] + [start])
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return " -> ".join(part)


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


MIDPOINT = PACKAGE / "measure" / "midpoint"
MIDPOINT_DEPENDS_ON = {"numpy", "scipy"}
"""The only third-party packages the midpoint fit may import; it imports no other fxharden module."""


def _midpoint_violations(folder: Path):
    """Imports in ``folder`` of anything but the standard library, numpy, scipy and its own modules."""
    import sys

    bad = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                names = [] if node.level == 1 else [f"{'.' * node.level}{node.module or ''}"]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if name.startswith(".") or (root not in sys.stdlib_module_names and root not in MIDPOINT_DEPENDS_ON):
                    bad.append(f"{path.name}:{node.lineno} imports {name}")
    return bad


def test_midpoint_fit_imports_only_numpy_scipy_and_itself():
    assert _midpoint_violations(MIDPOINT) == []


def test_midpoint_checker_sees_a_foreign_import(tmp_path):
    """The check itself: an import of torch and one of another measure module are reported."""
    (tmp_path / "ok.py").write_text("import math\nimport numpy as np\nfrom scipy.stats import f\n"
                                    "from .models import x\n")
    (tmp_path / "bad.py").write_text("import torch\nfrom ..results import SweepResult\n")
    assert _midpoint_violations(tmp_path) == ["bad.py:1 imports torch", "bad.py:2 imports ..results"]


def test_no_import_cycle():
    assert _cycles() == []


def test_checker_sees_an_import_cycle(tmp_path):
    """The check itself: two modules that import each other, one of them inside a function, and
    a submodule imported by name from its package, are reported; a one-way import is not."""
    fake = tmp_path / "fxharden"
    (fake / "zoo" / "sub").mkdir(parents=True)
    (fake / "zoo" / "__init__.py").write_text("")
    (fake / "zoo" / "sub" / "__init__.py").write_text("")
    (fake / "zoo" / "a.py").write_text("from .b import f\n")
    (fake / "zoo" / "b.py").write_text("def f():\n    from .a import g\n")
    (fake / "zoo" / "c.py").write_text("from .sub import d\n")
    (fake / "zoo" / "sub" / "d.py").write_text("from .. import c\n")
    (fake / "zoo" / "e.py").write_text("from .a import g\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, fake
    try:
        found = _cycles()
    finally:
        PACKAGE = saved
    assert sorted(found) == ["fxharden.zoo.a -> fxharden.zoo.b -> fxharden.zoo.a",
                             "fxharden.zoo.c -> fxharden.zoo.sub.d -> fxharden.zoo.c"]
