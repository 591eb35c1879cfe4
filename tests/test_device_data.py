"""benchmarks/device_data.py: CIFAR-10 cut into carry-sized parts and joined again, on tiny npz files."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fxharden.zoo import data as zoo_data

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("device_data", ROOT / "benchmarks" / "device_data.py")
dd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dd)

PART_MIB = 0.05  # ~52 KB: the tiny files below make several parts
COUNTS = [7, 4, 5, 9, 4, 6, 4, 8, 5, 8]  # unequal classes: the subset must even them out


@pytest.fixture()
def cifar(tmp_path):
    """A folder like the real one (same names, keys, dtypes), tiny and incompressible."""
    rng = np.random.default_rng(0)
    y_train = rng.permutation(np.repeat(np.arange(10), COUNTS)).astype(np.uint8)
    arrays = {
        "train": {"x": rng.integers(0, 256, (len(y_train), 32, 32, 3), dtype=np.uint8), "y": y_train},
        "test": {"x": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
                 "y": (np.arange(20) % 10).astype(np.uint8), "exact": np.arange(20) < 5},
    }
    folder = tmp_path / "cifar10"
    folder.mkdir()
    for split, arr in arrays.items():
        np.savez_compressed(folder / zoo_data.NPZ_FILES[split], **arr)
    return folder, arrays


def _shipped(tmp_path, cifar, **kw):
    folder, _ = cifar
    kw = {"part_mib": PART_MIB, "subset_per_class": 0, **kw}
    manifest = dd.prepare(folder, tmp_path / "devdata", **kw)["parts"]
    return [tmp_path / "devdata" / p["name"] for p in manifest["parts"]]


def test_file_names_are_the_ones_load_cifar10_reads():
    assert dd.NPZ_FILES == zoo_data.NPZ_FILES


def test_round_trip_is_byte_identical_and_load_cifar10_reads_the_original_arrays(tmp_path, cifar, capsys):
    folder, arrays = cifar
    parts = _shipped(tmp_path, cifar)
    plan = capsys.readouterr().out
    assert len(parts) >= 4
    for i, part in enumerate(parts, 1):
        size = sum(f.stat().st_size for f in part.iterdir() if f.name != dd.MANIFEST)
        assert 0 < size <= PART_MIB * dd.MIB
        assert f"call {i}: carry" in plan and str(part) in plan

    out = tmp_path / "remote" / "cifar10"
    argv = ["assemble", "--parts", *map(str, parts), "--out", str(out)]
    assert dd.main(argv) == 0
    for name in zoo_data.NPZ_FILES.values():
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    for split, arr in arrays.items():
        ds = zoo_data.load_cifar10(split, out)
        np.testing.assert_array_equal(ds.images.permute(0, 2, 3, 1).numpy(), arr["x"])
        np.testing.assert_array_equal(ds.labels.numpy(), arr["y"])
    np.testing.assert_array_equal(zoo_data.load_cifar10("test", out).exact.numpy(), arrays["test"]["exact"])

    capsys.readouterr()
    assert dd.main(argv) == 0  # idempotent: only verifies
    assert dd.main(["assemble", "--parts", str(tmp_path / "gone"), "--out", str(out)]) == 0  # nothing carried
    assert capsys.readouterr().out.count("already complete, sha256 verified") == 4
    assert len(dd.check(out)) == 1 and len(dd.check(tmp_path / "devdata")) == len(parts)


def test_a_missing_part_is_named_and_nothing_is_written(tmp_path, cifar, capsys):
    parts = _shipped(tmp_path, cifar)
    out = tmp_path / "remote"
    with pytest.raises(dd.DevDataError, match=r"part-02 \(.* MiB\) is missing(.|\n)*subset"):
        dd.assemble([p for p in parts if p.name != "part-02"], out)
    assert not out.exists()
    assert dd.main(["assemble", "--parts", str(parts[0]), "--out", str(out)]) == 1
    assert "part-03" in capsys.readouterr().err


def test_a_corrupt_part_is_named(tmp_path, cifar):
    parts = _shipped(tmp_path, cifar)
    chunk = next(f for f in parts[2].iterdir() if f.name != dd.MANIFEST)
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    msg = rf"part-03 \(.*\) is corrupt: {chunk.name} has sha256"
    with pytest.raises(dd.DevDataError, match=msg):
        dd.assemble(parts, tmp_path / "remote")
    with pytest.raises(dd.DevDataError, match=msg):
        dd.check(parts[2])
    chunk.write_bytes(raw[:-1])
    with pytest.raises(dd.DevDataError, match=rf"{chunk.name} has {len(raw) - 1} bytes"):
        dd.assemble(parts, tmp_path / "remote")


def test_parts_of_two_prepare_runs_are_refused(tmp_path, cifar):
    parts = _shipped(tmp_path, cifar)
    other = tmp_path / "other"
    other.mkdir()
    (other / "cifar10_train.npz").write_bytes((cifar[0] / "cifar10_train.npz").read_bytes()[:-1] + b"!")
    (other / "cifar10_test.npz").write_bytes((cifar[0] / "cifar10_test.npz").read_bytes())
    manifest = dd.prepare(other, tmp_path / "devdata2", part_mib=PART_MIB, subset_per_class=0)["parts"]
    with pytest.raises(dd.DevDataError, match="part-02 .* is from another prepare run"):
        dd.assemble([parts[0], tmp_path / "devdata2" / manifest["parts"][1]["name"], *parts[2:]], tmp_path / "r")


def test_the_one_call_subset_is_stratified_and_holds_the_full_test_set(tmp_path, cifar):
    folder, arrays = cifar
    dd.prepare(folder, tmp_path / "devdata", part_mib=1, subset_per_class=3)
    subset = tmp_path / "devdata" / "subset"
    assert sum(f.stat().st_size for f in subset.iterdir()) <= 1 * dd.MIB
    out = tmp_path / "remote"
    dd.assemble([subset], out)
    train = zoo_data.load_cifar10("train", out)
    assert np.bincount(train.labels.numpy(), minlength=10).tolist() == [3] * 10
    y = arrays["train"]["y"]
    first3 = sorted(i for c in range(10) for i in [j for j in range(len(y)) if y[j] == c][:3])
    np.testing.assert_array_equal(train.images.permute(0, 2, 3, 1).numpy(), arrays["train"]["x"][first3])
    assert (out / "cifar10_test.npz").read_bytes() == (folder / "cifar10_test.npz").read_bytes()


def test_a_subset_over_the_part_size_is_refused(tmp_path, cifar):
    with pytest.raises(dd.DevDataError, match="over --part-mib 0.05; pass --subset-per-class"):
        dd.prepare(cifar[0], tmp_path / "devdata", part_mib=PART_MIB, subset_per_class=3)
    with pytest.raises(dd.DevDataError, match=r"--subset-per-class must be in 1\.\.4"):
        dd.prepare(cifar[0], tmp_path / "devdata", part_mib=1, subset_per_class=5)
