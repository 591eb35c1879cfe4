"""Writing output folders safely: every file fxharden writes (checkpoints, results, tables,
plots) goes through ``atomic_write_bytes``, so a crash never leaves a truncated file behind;
``check_writable`` fails before work starts when the folder cannot be written, and
``run_lock`` keeps two runs from writing into one folder at once. ``missing_path`` says that
a path the user typed does not exist and names the close ones beside it."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_writable", "run_lock", "LOCK",
           "missing_path"]


def missing_path(path: Union[str, Path], what: str, folders_only: bool = False) -> str:
    """``"<what> <path> does not exist"``, with the names in its parent folder close to its
    name (``difflib``; folders only when ``folders_only``), or the parent that is missing too."""
    p = Path(path).expanduser()
    parent = p.parent
    text = f"{what} {str(path)!r} does not exist"
    if not parent.is_dir():
        return f"{text} (nor does its folder {str(parent)!r})"
    names = sorted(c.name for c in parent.iterdir() if not c.name.startswith(".") and (c.is_dir() or not folders_only))
    close = difflib.get_close_matches(p.name, names, n=5, cutoff=0.6)
    if close:
        return f"{text}; close names in {str(parent)!r}: {', '.join(close)}"
    return f"{text}; nothing with a close name in {str(parent)!r}"


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


def check_writable(folder: Union[str, Path], option: str = "out") -> Path:
    """Create ``folder`` (and its parents) and make sure files can be written in it, before
    any work starts.

    Raises:
        PermissionError: the folder cannot be created or written; the message names it and
            ``option`` (the argument that chose it).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(f"cannot write to {folder} ({err.strerror or err}); choose a {option} folder you "
                              "can write to") from None
    return folder


LOCK = ".fxharden.lock"
"""Name of the lock file a run holds in its output folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def run_lock(folder: Union[str, Path], what: str = "run") -> Iterator[Path]:
    """Hold ``folder/.fxharden.lock`` (pid, host, start time) while a run writes into
    ``folder``, so that a second run on the same folder is refused instead of computing and
    writing the same files. A lock left by a dead process on this host (a killed driver) is
    taken over; a lock held by a live process, or by one on another host, is not.

    Raises:
        FileExistsError: another live run holds the folder (the message names its pid and host).
        PermissionError: ``folder`` cannot be written.
    """
    folder = check_writable(folder)
    path = folder / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):  # being written, or unreadable: treat as held
                holder = {}
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                    and not _pid_alive(holder["pid"]):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # stale: its process is gone
                continue
            raise FileExistsError(
                f"{folder} is in use by another {what} (pid {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it to finish or "
                f"choose another output folder. If that process is gone, delete {path}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise FileExistsError(f"could not take the lock {path}; delete it if no run uses {folder}")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
