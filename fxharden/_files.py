"""Atomic file writing: every file fxharden writes (checkpoints, results, tables, plots) goes
through ``atomic_write_bytes``, so a crash never leaves a truncated file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def atomic_write_bytes(path: Union[str, Path], write) -> Path:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it over
    ``path`` (atomic on POSIX): readers see the old file or the new one, never a partial one.
    The file is readable by all (0644), not only by its owner like a fresh temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: Union[str, Path], data: Any, indent: int = 1) -> Path:
    """``data`` as JSON at ``path``, atomically (see ``atomic_write_bytes``)."""
    text = json.dumps(data, indent=indent, allow_nan=True).encode()
    return atomic_write_bytes(path, lambda f: f.write(text))


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """``text`` (UTF-8) at ``path``, atomically (see ``atomic_write_bytes``)."""
    data = text.encode()
    return atomic_write_bytes(path, lambda f: f.write(data))
