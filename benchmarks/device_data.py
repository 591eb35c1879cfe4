"""Ship the real CIFAR-10 to a device machine whose file transfer is limited, in parts.

A device call copies the working tree plus at most 8 git-ignored "carried" paths, 64 MiB in
all, and ignored paths already on the machine stay there while it is warm (about 30 s idle).
CIFAR-10 as npz is ~162 MiB, so it goes over in several calls: ``prepare`` cuts the two npz
files into byte ranges packed into part folders of at most ``--part-mib`` (default 56, leaving
room for the tree), one part per call; ``assemble`` joins them on the device into a folder
that ``fxharden.zoo.data.load_cifar10`` reads unchanged. Every part folder holds the same
``manifest.json``: the sha256 of every piece and of each whole file, so a missing or corrupt
part is named before anything is written. A piece that is a whole file keeps the file's name,
so a part folder holding all of ``cifar10_test.npz`` (the first one) already serves the test
split as it is.

Multi-call ship (the out folder must be git-ignored; the repository ignores ``.devdata/``)::

    python benchmarks/device_data.py prepare --data ../shared/data/cifar10 --out .devdata
    # it prints the calls; for the real CIFAR-10 they are three, made back to back:
    run(carry=[".devdata/part-01"], command="python benchmarks/device_data.py check --data .devdata/part-01")
    run(carry=[".devdata/part-02"], command="python benchmarks/device_data.py check --data .devdata/part-02")
    run(carry=[".devdata/part-03"], command="python benchmarks/device_data.py assemble "
        "--parts .devdata/part-01 .devdata/part-02 .devdata/part-03 --out .devdata/cifar10 && "
        "FXHARDEN_DATA=.devdata/cifar10 <your command>")
    # later calls while the machine stays warm: carry nothing; assemble again (it only verifies)

One-call fallback, when the machine went back between calls (the earlier parts are gone and
``assemble`` says which ones are missing): ``prepare`` also writes ``subset/``, a stratified
train subset (the first ``--subset-per-class`` images of each class, default 1000, in the
original order) plus the full test set, small enough for a single call::

    run(carry=[".devdata/subset"], command="python benchmarks/device_data.py assemble "
        "--parts .devdata/subset --out .devdata/cifar10-subset && "
        "FXHARDEN_DATA=.devdata/cifar10-subset <your command>")

``check --data DIR`` verifies a part folder, an assembled folder, or a prepare output folder
(each part in it) against its manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

NPZ_FILES = {"test": "cifar10_test.npz", "train": "cifar10_train.npz"}
"""The file names ``load_cifar10`` looks for (``fxharden.zoo.data.NPZ_FILES``); test first, so
the first part carries the whole test set."""
MANIFEST = "manifest.json"
FORMAT = "fxharden-devdata/1"
CARRY_LIMIT_MIB = 64
"""What one device call carries, the working tree included."""
MIB = 2 ** 20
_BUF = 4 * MIB


class DevDataError(Exception):
    """A folder is missing, incomplete or corrupt; the message says which part and what to do."""


def _sha256(path: Path, offset: int = 0, size: Optional[int] = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = os.path.getsize(path) - offset if size is None else size
        while left > 0:
            block = f.read(min(_BUF, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def _copy_range(src: Path, dst, offset: int, size: int) -> str:
    """Copy ``size`` bytes of ``src`` from ``offset`` into the open file ``dst``; their sha256."""
    h = hashlib.sha256()
    with open(src, "rb") as f:
        f.seek(offset)
        while size > 0:
            block = f.read(min(_BUF, size))
            if not block:
                raise DevDataError(f"{src}: ended {size} bytes early")
            h.update(block)
            dst.write(block)
            size -= len(block)
    return h.hexdigest()


def _show(path: Path) -> str:
    """``path`` relative to the working directory when under it (how ``carry`` names it)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


# --------------------------------------------------------------------------- prepare

def plan_parts(sizes: Dict[str, int], part_bytes: int) -> List[dict]:
    """Cut the files (in order) into pieces packed greedily into parts of <= ``part_bytes``."""
    parts: List[dict] = [{"name": "part-01", "size": 0, "pieces": []}]
    for name, size in sizes.items():
        offset, k = 0, 0
        while offset < size or (size == 0 and k == 0):
            part = parts[-1]
            if part["size"] >= part_bytes:
                part = {"name": f"part-{len(parts) + 1:02d}", "size": 0, "pieces": []}
                parts.append(part)
            n = min(size - offset, part_bytes - part["size"])
            whole = offset == 0 and n == size
            part["pieces"].append({"file": name, "offset": offset, "size": n,
                                   "chunk": name if whole else f"{name}.{k:03d}"})
            part["size"] += n
            offset, k = offset + n, k + 1
    return parts


def _write_part(folder: Path, part: dict, sources: Dict[str, Path], manifest: dict) -> None:
    """Write the part's chunks and its manifest into ``folder``, atomically through a temp folder."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{part['name']}.", dir=folder.parent))
    try:
        for piece in part["pieces"]:
            with open(tmp / piece["chunk"], "wb") as out:
                if _copy_range(sources[piece["file"]], out, piece["offset"], piece["size"]) != piece["sha256"]:
                    raise DevDataError(f"{sources[piece['file']]} changed while prepare read it; run prepare again")
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "part": part["name"]}, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _ship(out: Path, sources: Dict[str, Path], part_bytes: int, kind: str, extra: Optional[dict] = None) -> dict:
    """Hash the files and their pieces, then write every part folder with the same manifest."""
    files = {name: {"size": p.stat().st_size, "sha256": _sha256(p)} for name, p in sources.items()}
    parts = plan_parts({n: f["size"] for n, f in files.items()}, part_bytes)
    if kind == "subset":  # one part, by construction
        parts[0]["name"] = "subset"
    for part in parts:
        for piece in part["pieces"]:
            piece["sha256"] = _sha256(sources[piece["file"]], piece["offset"], piece["size"])
    set_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    manifest = {"format": FORMAT, "kind": kind, "set": set_id, "files": files, "parts": parts, **(extra or {})}
    for part in parts:
        _write_part(out / part["name"], part, sources, manifest)
    return manifest


def _subset_sources(data: Path, out: Path, per_class: int) -> Dict[str, Path]:
    """The stratified train subset (first ``per_class`` of each class, original order) as npz."""
    with np.load(data / NPZ_FILES["train"], allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    classes, counts = np.unique(y, return_counts=True)
    if per_class < 1 or per_class > counts.min():
        raise DevDataError(f"--subset-per-class must be in 1..{counts.min()} (the smallest class), got {per_class}")
    idx = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in classes]))
    train = out / f".subset-{NPZ_FILES['train']}"
    np.savez_compressed(train, x=x[idx], y=y[idx])
    return {NPZ_FILES["test"]: data / NPZ_FILES["test"], NPZ_FILES["train"]: train}


def _warn_if_not_ignored(out: Path) -> None:
    try:
        run = subprocess.run(["git", "check-ignore", "-q", str(out.resolve())], cwd=out.parent,
                             capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return
    if run.returncode == 1:  # in a repository and not ignored (128: not a repository)
        print(f"WARNING: {_show(out)} is not ignored by git, so every device call would ship it as an "
              "untracked file; add it to .gitignore", file=sys.stderr)


def prepare(data: Path, out: Path, part_mib: float = 56, subset_per_class: int = 1000) -> dict:
    """Write the part folders (and ``subset/`` unless ``subset_per_class`` is 0) under ``out``;
    print what to carry per call. Returns ``{"parts": manifest, "subset": manifest or None}``."""
    data, out = Path(data), Path(out)
    sources = {name: data / name for name in NPZ_FILES.values()}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise DevDataError(f"not found: {', '.join(missing)} (--data must hold {' and '.join(NPZ_FILES.values())})")
    if part_mib <= 0:
        raise DevDataError(f"--part-mib must be positive, got {part_mib}")
    if part_mib > CARRY_LIMIT_MIB:
        print(f"WARNING: --part-mib {part_mib} is over the {CARRY_LIMIT_MIB} MiB a call carries", file=sys.stderr)
    part_bytes = max(1, int(part_mib * MIB))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*"):  # parts of an earlier prepare (maybe more of them)
        if (old / MANIFEST).is_file():
            shutil.rmtree(old)
    shipped = {"parts": _ship(out, sources, part_bytes, "parts"), "subset": None}
    if subset_per_class:
        subset_sources = _subset_sources(data, out, subset_per_class)
        try:
            size = sum(p.stat().st_size for p in subset_sources.values())
            if size > part_bytes:
                train = subset_sources[NPZ_FILES["train"]].stat().st_size
                fits = int(subset_per_class * (part_bytes - (size - train)) / train)
                raise DevDataError(f"the subset is {_mib(size)}, over --part-mib {part_mib}; pass "
                                   f"--subset-per-class {max(fits, 0)} or less (or 0 for no subset)")
            rule = (f"train: the first {subset_per_class} images of each class in the original order "
                    "(kept in that order); test: the full test set")
            shipped["subset"] = _ship(out, subset_sources, size, "subset",
                                      {"subset": {"per_class": subset_per_class, "rule": rule}})
        finally:
            subset_sources[NPZ_FILES["train"]].unlink()
    _warn_if_not_ignored(out)
    _print_plan(out, shipped)
    return shipped


def _print_plan(out: Path, shipped: dict) -> None:
    me = "python benchmarks/device_data.py"
    parts = shipped["parts"]["parts"]
    total = sum(p["size"] for p in parts)
    dest = _show(out / "cifar10")
    print(f"wrote {len(parts)} parts ({_mib(total)}) to {_show(out)}. Carry one part per call, the calls back "
          f"to back (the machine keeps them only while warm, ~30 s idle):")
    for i, part in enumerate(parts, 1):
        path = _show(out / part["name"])
        last = i == len(parts)
        cmd = (f"{me} assemble --parts {' '.join(_show(out / p['name']) for p in parts)} --out {dest}" if last
               else f"{me} check --data {path}")
        print(f"  call {i}: carry [\"{path}\"]  {_mib(part['size'])}  then run: {cmd}")
    print(f"  then: FXHARDEN_DATA={dest} (later calls carry nothing; assemble again only verifies)")
    sub = shipped["subset"]
    if sub is not None:
        path = _show(out / "subset")
        size = sub["parts"][0]["size"]
        print(f"one-call fallback (the machine went back between calls): carry [\"{path}\"]  {_mib(size)}  "
              f"then run: {me} assemble --parts {path} --out {_show(out / 'cifar10-subset')}\n"
              f"  ({sub['subset']['rule']})")
    if Path(_show(out)).is_absolute():
        print(f"NOTE: carry takes paths inside the repository; run prepare from the repository root with a "
              f"relative --out (e.g. .devdata) rather than {out}")


# --------------------------------------------------------------------------- assemble / check

def _read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DevDataError(f"{folder}: no {MANIFEST} (not a part folder made by `prepare`)") from None
    except (OSError, ValueError) as err:
        raise DevDataError(f"{path}: unreadable ({err}); carry this folder again") from None
    if manifest.get("format") != FORMAT:
        raise DevDataError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def _file_ok(path: Path, want: dict) -> bool:
    return path.is_file() and path.stat().st_size == want["size"] and _sha256(path) == want["sha256"]


def _piece_problem(folder: Path, piece: dict) -> Optional[str]:
    path = folder / piece["chunk"]
    if not path.is_file():
        return f"{piece['chunk']} is missing"
    if path.stat().st_size != piece["size"]:
        return f"{piece['chunk']} has {path.stat().st_size} bytes, the manifest says {piece['size']}"
    got = _sha256(path)
    if got != piece["sha256"]:
        return f"{piece['chunk']} has sha256 {got[:12]}…, the manifest says {piece['sha256'][:12]}…"
    return None


_FIX = ("What to do: carry the named parts again (prepare printed the calls), back to back while the machine "
        "is warm. If the machine went back between calls, the earlier parts are gone: ship all parts again, "
        "or use the one-call fallback (carry the `subset` folder and assemble it).")


def assemble(part_dirs: Sequence[Path], out: Path) -> dict:
    """Join the parts into ``out`` (``cifar10_train.npz``, ``cifar10_test.npz``, manifest), checking
    every sha256 first. Files already complete in ``out`` are only verified. Returns the manifest.

    Raises:
        DevDataError: a part is missing, corrupt or from another ``prepare``; nothing is written.
    """
    out = Path(out)
    problems: List[str] = []
    given: Dict[str, Path] = {}
    manifest: Optional[dict] = None
    for folder in map(Path, part_dirs):
        if not (folder / MANIFEST).is_file():
            problems.append(f"{folder}: not found or not a part folder (no {MANIFEST})")
            continue
        m = _read_manifest(folder)
        if manifest is None:
            manifest = m
        elif m["set"] != manifest["set"]:
            problems.append(f"{m['part']} ({folder}) is from another prepare run (set {m['set']}, not "
                            f"{manifest['set']}): carry the parts of one run")
            continue
        given[m["part"]] = folder
    if manifest is None and (out / MANIFEST).is_file():
        manifest = _read_manifest(out)  # a second call carrying nothing: verify what is there
    if manifest is None:
        raise DevDataError("cannot assemble: no part folder found among --parts:\n  " + "\n  ".join(problems)
                           + "\n" + _FIX)
    files = manifest["files"]
    todo = [name for name, want in files.items() if not _file_ok(out / name, want)]
    needed = [p for p in manifest["parts"] if any(pc["file"] in todo for pc in p["pieces"])]
    for part in needed:
        folder = given.get(part["name"])
        if folder is None:
            problems.append(f"{part['name']} ({_mib(part['size'])}) is missing: not among --parts")
            continue
        bad = [msg for msg in (_piece_problem(folder, pc) for pc in part["pieces"] if pc["file"] in todo) if msg]
        problems += [f"{part['name']} ({folder}) is corrupt: {msg}" for msg in bad]
    if todo and problems:
        raise DevDataError(f"cannot assemble CIFAR-10 into {out} ({', '.join(todo)} incomplete):\n  "
                           + "\n  ".join(problems) + "\n" + _FIX)
    out.mkdir(parents=True, exist_ok=True)
    for name in todo:
        tmp = out / f".{name}.tmp"
        with open(tmp, "wb") as dst:
            for part in manifest["parts"]:
                for pc in part["pieces"]:
                    if pc["file"] == name:
                        _copy_range(given[part["name"]] / pc["chunk"], dst, 0, pc["size"])
        if not _file_ok(tmp, files[name]):
            tmp.unlink()
            raise DevDataError(f"{name}: the joined pieces do not match its sha256; prepare again and reship")
        os.replace(tmp, out / name)
    kept = {k: v for k, v in manifest.items() if k != "part"}
    if not (out / MANIFEST).is_file() or _read_manifest(out).get("set") != manifest["set"]:
        (out / MANIFEST).write_text(json.dumps(kept, indent=1) + "\n")
    for name in files:
        print(f"{out / name}: {'assembled' if name in todo else 'already complete'}, sha256 verified")
    return kept


def check(data: Path) -> List[str]:
    """Verify a part folder, an assembled folder, or a prepare output folder (every part in it)
    against its manifest. Returns the lines printed.

    Raises:
        DevDataError: naming the first folder with a missing or corrupt file.
    """
    data = Path(data)
    if not (data / MANIFEST).is_file():
        subs = sorted(p for p in data.glob("*") if (p / MANIFEST).is_file()) if data.is_dir() else []
        if not subs:
            raise DevDataError(f"{data}: no {MANIFEST} in it or in its subfolders (nothing made by prepare/assemble)")
        return [line for sub in subs for line in check(sub)]
    manifest = _read_manifest(data)
    if "part" in manifest:
        part = next(p for p in manifest["parts"] if p["name"] == manifest["part"])
        bad = [msg for msg in (_piece_problem(data, pc) for pc in part["pieces"]) if msg]
        if bad:
            raise DevDataError(f"{manifest['part']} ({data}) is corrupt: " + "; ".join(bad) + "\n" + _FIX)
        line = f"{data}: {manifest['part']} of {len(manifest['parts'])} ({_mib(part['size'])}), sha256 verified"
    else:
        bad = [name for name, want in manifest["files"].items() if not _file_ok(data / name, want)]
        if bad:
            raise DevDataError(f"{data}: {', '.join(bad)} missing or not matching the manifest; run assemble again")
        line = f"{data}: {', '.join(manifest['files'])} sha256 verified"
    print(line)
    return [line]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="cut the npz files into part folders (and a one-call subset)")
    p.add_argument("--data", type=Path, required=True, help="folder holding cifar10_train.npz and cifar10_test.npz")
    p.add_argument("--out", type=Path, required=True, help="a git-ignored folder, e.g. .devdata")
    p.add_argument("--part-mib", type=float, default=56, help="largest part, MiB (default 56; a call carries 64)")
    p.add_argument("--subset-per-class", type=int, default=1000,
                   help="train images per class in subset/ (default 1000; 0: no subset)")
    a = sub.add_parser("assemble", help="join parts into a folder load_cifar10 reads; verify every sha256")
    a.add_argument("--parts", type=Path, nargs="+", required=True, help="the part folders (or subset/)")
    a.add_argument("--out", type=Path, required=True, help="the CIFAR-10 folder to write (FXHARDEN_DATA)")
    c = sub.add_parser("check", help="verify a folder against its manifest")
    c.add_argument("--data", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args.data, args.out, args.part_mib, args.subset_per_class)
        elif args.command == "assemble":
            assemble(args.parts, args.out)
        else:
            check(args.data)
    except DevDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
