"""Tests for fxharden.zoo.data: npz and torchvision-format roots, errors, batching, synthetic data."""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fxharden.zoo import data as D
from fxharden.zoo.data import (
    CIFAR10_MEAN, CIFAR10_STD, DATA_ENV, CorruptDataError, DataNotFoundError, TensorImageDataset, as_batches,
    load_cifar10, synthetic_dataset,
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No real $FXHARDEN_DATA and an empty home (download cache) unless a test sets them."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def _write_npz(root: Path, n_train=20, n_test=12):
    root.mkdir(parents=True, exist_ok=True)
    xtr, ytr = _arrays(n_train, 1)
    xte, yte = _arrays(n_test, 2)
    exact = np.arange(n_test) < 5
    np.savez(root / "cifar10_train.npz", x=xtr, y=ytr)
    np.savez_compressed(root / "cifar10_test.npz", x=xte, y=yte, exact=exact)
    return (xtr, ytr), (xte, yte, exact)


# --------------------------------------------------------------------------- npz roots

def test_npz_root_loads_both_splits(tmp_path):
    (xtr, ytr), (xte, yte, exact) = _write_npz(tmp_path)
    tr = load_cifar10("train", tmp_path)
    te = load_cifar10("test", str(tmp_path))
    assert tr.images.dtype == torch.uint8 and tr.images.shape == (20, 3, 32, 32)
    # independent oracle: CHW image i channel c == HWC array[i, :, :, c]
    for i, c in [(0, 0), (7, 2), (19, 1)]:
        assert np.array_equal(tr.images[i, c].numpy(), xtr[i, :, :, c])
    assert tr.labels.dtype == torch.int64 and tr.labels.tolist() == ytr.tolist()
    assert tr.exact is None and tr.num_classes == 10 and tr.mean == CIFAR10_MEAN and tr.std == CIFAR10_STD
    assert te.exact.dtype == torch.bool and te.exact.tolist() == exact.tolist()
    assert len(te) == 12 and te.labels.tolist() == yte.tolist()


def test_env_var_is_used_and_root_wins(tmp_path, monkeypatch):
    _write_npz(tmp_path / "env", n_train=8)
    _write_npz(tmp_path / "explicit", n_train=6)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert len(load_cifar10("train")) == 8
    assert len(load_cifar10("train", tmp_path / "explicit")) == 6
    # a path to the npz file itself means its folder
    assert len(load_cifar10("train", tmp_path / "explicit" / "cifar10_train.npz")) == 6


def test_relative_env_path_means_the_folder_it_was_typed_in(tmp_path, monkeypatch):
    from fxharden.zoo.options import data_env, make_data_env_absolute

    _write_npz(tmp_path / "cifar", n_train=7)
    for folder in ("typed_here", "elsewhere"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "typed_here")
    monkeypatch.setenv(DATA_ENV, "../cifar")
    assert data_env() == tmp_path / "cifar" and len(load_cifar10("train")) == 7
    assert make_data_env_absolute() == tmp_path / "cifar" and os.environ[DATA_ENV] == str(tmp_path / "cifar")
    monkeypatch.chdir(tmp_path / "elsewhere")  # once absolute, any folder finds the same data
    assert len(load_cifar10("train")) == 7
    # a relative value read later means the folder of that moment, and the error says which
    monkeypatch.setenv(DATA_ENV, "../nowhere")
    with pytest.raises(DataNotFoundError, match=re.escape(str(tmp_path / "nowhere" / "cifar10_train.npz"))):
        load_cifar10("train")
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv(DATA_ENV)
        else:
            monkeypatch.setenv(DATA_ENV, unset)
        assert make_data_env_absolute() is None and os.environ.get(DATA_ENV) == unset


def test_bad_split_lists_choices(tmp_path):
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_cifar10("valid", tmp_path)


def test_missing_data_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "from_env"))
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10("test", tmp_path / "nowhere")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in [tmp_path / "nowhere" / "cifar10_test.npz", tmp_path / "nowhere" / "cifar-10-batches-py",
                  tmp_path / "from_env" / "cifar10_test.npz", tmp_path / "from_env" / "cifar-10-batches-py",
                  tmp_path / "home" / ".cache" / "fxharden" / "cifar10_test.npz"]:
        assert str(place) in msg
    for hint in ("--data PATH", f"{DATA_ENV}=", "--download"):
        assert hint in msg


def test_missing_data_without_env_says_unset(tmp_path):
    with pytest.raises(DataNotFoundError, match=f"{DATA_ENV} is not set"):
        load_cifar10("train")


@pytest.mark.parametrize("problem, writer, match", [
    ("not a zip", lambda p: p.write_bytes(b"this is not a zip file at all"), "not a readable npz"),
    ("truncated", lambda p: (np.savez(p, x=_arrays(4)[0], y=_arrays(4)[1]),
                             p.write_bytes(p.read_bytes()[:200])), "not a readable npz|could not read"),
    ("missing y", lambda p: np.savez(p, x=_arrays(4)[0]), r"missing array\(s\) \['y'\]"),
    ("wrong dtype", lambda p: np.savez(p, x=_arrays(4)[0].astype(np.float32), y=_arrays(4)[1]), "'x' must be uint8"),
    ("CHW not HWC", lambda p: np.savez(p, x=_arrays(4)[0].transpose(0, 3, 1, 2), y=_arrays(4)[1]), r"\(N, 32, 32, 3\)"),
    ("label count", lambda p: np.savez(p, x=_arrays(4)[0], y=_arrays(5)[1]), "'y' must be integer labels of shape"),
    ("label range", lambda p: np.savez(p, x=_arrays(4)[0], y=np.array([0, 1, 2, 11], np.uint8)), "0..9"),
    ("bad exact", lambda p: np.savez(p, x=_arrays(4)[0], y=_arrays(4)[1], exact=np.ones(4, np.uint8)), "'exact'"),
    ("single npy", lambda p: p.write_bytes(_npy_bytes()), "single array"),
])
def test_corrupt_npz_names_file_and_problem(tmp_path, problem, writer, match):
    path = tmp_path / "cifar10_train.npz"
    writer(path)
    assert path.is_file()
    with pytest.raises(CorruptDataError, match=match) as info:
        load_cifar10("train", tmp_path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def _npy_bytes():
    import io

    buf = io.BytesIO()
    np.save(buf, _arrays(2)[0])
    return buf.getvalue()


# --------------------------------------------------------------------------- torchvision roots

def _write_torchvision_root(root: Path, n_per_batch=3):
    """A tiny ``cifar-10-batches-py`` in the real pickle format (data uint8 (N, 3072) in CHW
    row-major order, ``labels`` a list). Returns the expected HWC train/test arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        chw = rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        entry = {"batch_label": name, "labels": labels, "data": chw.reshape(n_per_batch, 3072),
                 "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry))
        out[name] = (chw.transpose(0, 2, 3, 1), labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(D.CIFAR10_CLASSES)}))
    train_x = np.concatenate([out[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_y = sum((out[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    return (train_x, train_y), out["test_batch"]


def test_torchvision_root_through_torchvision_parser(tmp_path, monkeypatch):
    # torchvision.datasets.CIFAR10 checks every file's md5 against the official archive, which a
    # fake root cannot pass; only that check is patched out, the real torchvision parser runs.
    import torchvision.datasets.cifar as tv_cifar

    (train_x, train_y), (test_x, test_y) = _write_torchvision_root(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    tr = load_cifar10("train", tmp_path)
    te = load_cifar10("test", tmp_path / "cifar-10-batches-py")  # the folder itself also works
    assert tr.images.shape == (15, 3, 32, 32) and te.images.shape == (3, 3, 32, 32)
    assert np.array_equal(tr.images.permute(0, 2, 3, 1).numpy(), train_x)
    assert tr.labels.tolist() == train_y and te.labels.tolist() == test_y
    assert np.array_equal(te.images.permute(0, 2, 3, 1).numpy(), test_x)
    assert tr.exact is None


def test_torchvision_root_failing_md5_is_corrupt(tmp_path):
    _write_torchvision_root(tmp_path)
    with pytest.raises(CorruptDataError, match="md5") as info:
        load_cifar10("train", tmp_path)
    assert "cifar-10-batches-py" in str(info.value) and "--download" in str(info.value)


class _FakeCIFAR10:
    calls = []

    def __init__(self, root, train=True, download=False):
        type(self).calls.append((root, train, download))
        if not download:
            raise RuntimeError("Dataset not found or corrupted.")
        self.data = np.zeros((4, 32, 32, 3), np.uint8)
        self.targets = [1, 2, 3, 4]


def test_download_goes_to_cache_and_is_logged(tmp_path, monkeypatch, caplog):
    import torchvision

    _FakeCIFAR10.calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeCIFAR10)
    with caplog.at_level(logging.WARNING, logger="fxharden.zoo.data"):
        ds = load_cifar10("test", download=True)
    cache = tmp_path / "home" / ".cache" / "fxharden"
    assert _FakeCIFAR10.calls == [(str(cache), False, True)] and cache.is_dir()
    assert ds.labels.tolist() == [1, 2, 3, 4]
    assert "downloading" in caplog.text and str(cache) in caplog.text
    _FakeCIFAR10.calls = []
    load_cifar10("train", tmp_path / "mine", download=True)
    assert _FakeCIFAR10.calls == [(str(tmp_path / "mine"), True, True)]


def test_failed_download_explains(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataNotFoundError, match="network is unreachable.*--data PATH"):
        load_cifar10("train", tmp_path, download=True)


# --------------------------------------------------------------------------- TensorImageDataset

def _small_dataset(n=10):
    x, y = _arrays(n, 5)
    return TensorImageDataset(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y),
                              mean=CIFAR10_MEAN, std=CIFAR10_STD), x, y


def test_batches_normalise_like_independent_formula():
    ds, x, y = _small_dataset(10)
    # oracle in numpy float64, HWC -> CHW
    expected = ((x.astype(np.float64) / 255 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)).transpose(0, 3, 1, 2)
    got = list(ds.batches(4))
    assert [len(b[0]) for b in got] == [4, 4, 2]
    xb = torch.cat([b[0] for b in got])
    assert xb.dtype == torch.float32 and got[0][1].dtype == torch.int64
    np.testing.assert_allclose(xb.numpy(), expected, rtol=0, atol=1e-5)
    assert torch.cat([b[1] for b in got]).tolist() == y.tolist()
    img, label = ds[3]
    np.testing.assert_allclose(img.numpy(), expected[3], atol=1e-5)
    assert label == int(y[3]) and isinstance(label, int) and len(ds) == 10


def test_shuffle_seeded_is_deterministic_permutation():
    ds, _, y = _small_dataset(10)
    ds.labels = torch.arange(10)  # labels reveal the order
    runs = [torch.cat([b[1] for b in ds.batches(3, shuffle=True, generator=torch.Generator().manual_seed(7))])
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert sorted(runs[0].tolist()) == list(range(10)) and runs[0].tolist() != list(range(10))
    other = torch.cat([b[1] for b in ds.batches(3, shuffle=True, generator=torch.Generator().manual_seed(8))])
    assert not torch.equal(runs[0], other)
    # images travel with their labels
    for xb, yb in ds.batches(4, shuffle=True, generator=torch.Generator().manual_seed(1)):
        for img, i in zip(xb, yb):
            assert torch.allclose(img, ds[int(i)][0])


def test_drop_last_and_num_batches():
    ds, _, _ = _small_dataset(10)
    assert [len(b[0]) for b in ds.batches(4, drop_last=True)] == [4, 4]
    assert ds.num_batches(4, drop_last=True) == 2 and ds.num_batches(4) == 3
    assert [len(b[0]) for b in ds.batches(32, drop_last=True)] == [10]  # never an empty epoch
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(0))


def test_subset_and_validation():
    ds, x, y = _small_dataset(10)
    first = ds.subset(4)
    assert len(first) == 4 and first.labels.tolist() == y[:4].tolist() and first.mean == ds.mean
    picked = ds.subset([9, 0, 2])
    assert picked.labels.tolist() == [int(y[9]), int(y[0]), int(y[2])]
    assert torch.equal(picked.images[0], ds.images[9])
    with pytest.raises(ValueError, match="between 0 and 10"):
        ds.subset(11)
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2), mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match="one value per channel"):
        TensorImageDataset(ds.images, ds.labels, mean=(0.5,), std=(0.5,))


def test_is_a_torch_dataset_for_dataloader():
    ds, _, y = _small_dataset(6)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 32, 32) and yb.tolist() == y[:4].tolist()


# --------------------------------------------------------------------------- synthetic + as_batches

def test_synthetic_is_deterministic_and_learnable():
    a, b, c = synthetic_dataset(200, seed=3), synthetic_dataset(200, seed=3), synthetic_dataset(200, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.dtype == torch.uint8 and a.images.shape == (200, 3, 32, 32) and a.num_classes == 10
    assert torch.bincount(a.labels, minlength=10).tolist() == [20] * 10
    x = torch.cat([xb for xb, _ in a.batches(64)])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05  # own mean/std
    means = torch.stack([x[a.labels == k].mean(0) for k in range(10)])
    # class means differ, and nearest class mean classifies most images (learnable)
    assert torch.cdist(means.flatten(1), means.flatten(1)).add(torch.eye(10) * 1e9).min() > 5
    pred = torch.cdist(x.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == a.labels).float().mean() > 0.9
    small = synthetic_dataset(8, num_classes=2, image_size=8, channels=1)
    assert small.images.shape == (8, 1, 8, 8) and len(small.mean) == 1


def test_as_batches_accepts_everything():
    ds = synthetic_dataset(10, seed=1)
    reference = [(x, y) for x, y in ds.batches(4)]
    for source in (ds, torch.utils.data.DataLoader(ds, batch_size=4)):
        got = list(as_batches(source, 4, device="cpu"))
        assert len(got) == 3
        for (x, y), (rx, ry) in zip(got, reference):
            assert torch.allclose(x, rx) and torch.equal(y, ry)
    # a plain Dataset of (x, y) items is wrapped in a DataLoader
    plain = torch.utils.data.TensorDataset(torch.randn(10, 2), torch.arange(10))
    assert [yb.tolist() for _, yb in as_batches(plain, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    x, y = torch.randn(10, 5), torch.arange(10)
    got = list(as_batches((x, y), 3))
    assert torch.equal(torch.cat([b[0] for b in got]), x) and [len(b[1]) for b in got] == [3, 3, 3, 1]
    shuffled = torch.cat([b[1] for b in as_batches((x, y), 3, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(shuffled.tolist()) == list(range(10))
    with pytest.raises(TypeError, match="TensorImageDataset"):
        list(as_batches([1, 2, 3], 2))


# --------------------------------------------------------------------------- real CIFAR-10

_REAL = os.environ.get(DATA_ENV)  # read at import: the autouse fixture unsets it inside tests


@pytest.mark.cifar
@pytest.mark.skipif(not _REAL, reason=f"set {DATA_ENV} to a folder with CIFAR-10 to run")
def test_real_cifar10():
    train, test = load_cifar10("train", _REAL), load_cifar10("test", _REAL)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(train.labels, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    assert train.labels[:5].tolist() == [6, 9, 9, 4, 1]
    assert test.labels[:5].tolist() == [3, 8, 8, 0, 6]
    # normalised training batches are ~zero-mean, unit-std per channel (published mean/std)
    x = train.normalize(train.images[::10])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.02 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.02
    if test.exact is not None:
        assert test.exact.dtype == torch.bool and len(test.exact) == 10000
