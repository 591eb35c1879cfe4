"""Resume of interrupted sweeps: the append-only record of finished chunks and the identity
check that keeps points of different configurations apart."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Union

from .._files import atomic_write_bytes

__all__ = ["FORMAT", "POINTS_FILE", "HEADER_FILE", "SweepMismatchError", "PointStore", "fingerprint"]

FORMAT = "fxharden-sweep-v1"
POINTS_FILE, HEADER_FILE = "points.jsonl", "sweep.json"

PathLike = Union[str, os.PathLike]


class SweepMismatchError(ValueError):
    """The output directory holds a sweep with other settings; it is never mixed in."""


def fingerprint(identity: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``identity``."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _flat(data: Any, prefix: str = "") -> Dict[str, Any]:
    items = data.items() if isinstance(data, Mapping) else enumerate(data) if isinstance(data, list) else None
    if items is None:
        return {prefix.rstrip("."): data}
    out: Dict[str, Any] = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}{k}."))
    return out


class PointStore:
    """The append-only record of finished chunks in a sweep directory.

    Args:
        out: the sweep directory (created if missing).
        identity: everything that determines the measured values; its fingerprint is
            stored in ``sweep.json`` on first use and compared on every later use.

    Raises:
        SweepMismatchError: ``out`` holds a sweep with a different identity (the message
            names what changed).
    """

    def __init__(self, out: PathLike, identity: Mapping[str, Any]) -> None:
        self.dir = Path(out)
        self.path = self.dir / POINTS_FILE
        self.fingerprint = fingerprint(identity)
        header = self.dir / HEADER_FILE
        if header.is_file():
            try:
                stored = json.loads(header.read_text())
            except json.JSONDecodeError:
                stored = {}
            if stored.get("fingerprint") != self.fingerprint:
                old = _flat(stored.get("identity", {}))
                new = _flat(json.loads(json.dumps(identity, sort_keys=True, default=str)))
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["(unreadable)"]
                shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
                raise SweepMismatchError(
                    f"{self.dir} already holds a sweep with different settings (changed: {shown}). "
                    "Its points are never mixed with another configuration: rerun with the original "
                    "settings to resume it, or choose another output directory (or delete this one).")
        else:
            payload = json.dumps({"format": FORMAT, "fingerprint": self.fingerprint, "identity": identity},
                                 indent=1, sort_keys=True, default=str).encode()
            atomic_write_bytes(header, lambda f: f.write(payload))

    def load(self) -> Dict[str, Dict[str, Any]]:
        """The finished chunk records by key. A torn last line is cut off the file."""
        if not self.path.is_file():
            return {}
        raw = self.path.read_bytes()
        records: Dict[str, Dict[str, Any]] = {}
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            records[rec["key"]] = rec
            good += len(line)
        if good != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record (a single write, then fsync)."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
