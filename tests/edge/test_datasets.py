"""Tests of ``pyro_nf.datasets``.

Tests that read the real files skip cleanly when ``default_data_dir()`` is ``None`` or the file is
absent; the format, error and split-procedure tests build small fake files under ``tmp_path`` and
always run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_nf import datasets as ds
from pyro_nf.datasets import (
    CALTECH_SILHOUETTES_FILE,
    FREY_FACES_FILE,
    GERMAN_CREDIT_FILE,
    MNIST_FILE,
    SHA256,
    SONAR_FILE,
    LabelledSplits,
    Splits,
    TabularData,
    default_data_dir,
    load_caltech_silhouettes,
    load_digits,
    load_frey_faces,
    load_german_credit,
    load_sonar,
    load_static_mnist,
    seeded_split_indices,
)

LOADERS = {
    MNIST_FILE: load_static_mnist,
    FREY_FACES_FILE: load_frey_faces,
    CALTECH_SILHOUETTES_FILE: load_caltech_silhouettes,
    GERMAN_CREDIT_FILE: load_german_credit,
    SONAR_FILE: load_sonar,
}
NPZ_FILES = [MNIST_FILE, FREY_FACES_FILE, CALTECH_SILHOUETTES_FILE]
TEXT_FILES = [GERMAN_CREDIT_FILE, SONAR_FILE]

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None


def real_file(name: str) -> Path:
    """Path of a canonical file in the shared data directory, or skip the test."""
    data_dir = default_data_dir()
    if data_dir is None:
        pytest.skip("no data directory (set PYRO_NF_DATA or provide ../shared/data)")
    file = data_dir / name
    if not file.is_file():
        pytest.skip(f"{name} not found in {data_dir}")
    return file


def is_binary(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def rows_as_set(*ts: torch.Tensor) -> list[set[bytes]]:
    return [{r.tobytes() for r in t.numpy()} for t in ts]


# --------------------------------------------------------------------------------------------
# default_data_dir and path resolution
# --------------------------------------------------------------------------------------------


def test_default_data_dir_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_NF_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_default_data_dir_without_env_var(monkeypatch):
    monkeypatch.delenv("PYRO_NF_DATA", raising=False)
    d = default_data_dir()
    expected = Path(ds.__file__).resolve().parents[3] / "shared" / "data"
    assert d == (expected if expected.is_dir() else None)


def test_path_none_uses_env_var(monkeypatch):
    file = real_file(SONAR_FILE)
    monkeypatch.setenv("PYRO_NF_DATA", str(file.parent))
    assert load_sonar().x.shape == (208, 60)


def test_path_may_be_file_or_directory():
    file = real_file(SONAR_FILE)
    a, b = load_sonar(file), load_sonar(str(file.parent))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_renamed_copy_is_accepted(tmp_path):
    file = real_file(SONAR_FILE)
    copy = tmp_path / "my_sonar.csv"
    shutil.copyfile(file, copy)
    assert torch.equal(load_sonar(copy).x, load_sonar(file).x)


# --------------------------------------------------------------------------------------------
# Checksums of the real files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOADERS))
def test_checksum_of_real_file(name):
    file = real_file(name)
    assert hashlib.sha256(file.read_bytes()).hexdigest() == SHA256[name]


# --------------------------------------------------------------------------------------------
# Static MNIST
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist() -> Splits:
    return load_static_mnist(real_file(MNIST_FILE), verify=True)


def test_mnist_shapes_and_values(mnist):
    assert isinstance(mnist, Splits)
    assert mnist.train.shape == (50000, 784)
    assert mnist.valid.shape == (10000, 784)
    assert mnist.test.shape == (10000, 784)
    assert mnist.sizes == (50000, 10000, 10000)
    for t in (mnist.train, mnist.valid, mnist.test):
        assert t.dtype == torch.float32
        assert is_binary(t)
    # about 13% of binarized MNIST pixels are on; the image is upright (border pixels are off)
    assert 0.10 < float(mnist.train.mean()) < 0.16
    img = mnist.train[:1000].view(-1, 28, 28)
    assert float(img[:, :2].mean()) < 0.01 and float(img[:, 12:16, 12:16].mean()) > 0.2


def test_mnist_matches_file(mnist):
    with np.load(real_file(MNIST_FILE)) as z:
        valid = np.unpackbits(z["valid"], axis=1)[:, :784]
    assert np.array_equal(mnist.valid.numpy().astype(np.uint8), valid)


# --------------------------------------------------------------------------------------------
# Frey faces
# --------------------------------------------------------------------------------------------


def test_frey_shapes_values_and_split():
    file = real_file(FREY_FACES_FILE)
    s = load_frey_faces(file)
    assert s.sizes == (1565, 200, 200)
    assert all(t.shape[1] == 560 and t.dtype == torch.float32 for t in (s.train, s.valid, s.test))
    assert 0.0 <= float(s.train.min()) and float(s.train.max()) <= 1.0
    with np.load(file) as z:
        x = z["x"].reshape(1965, 560)
    tr, va, te = seeded_split_indices(1965, (1565, 200, 200), seed=0)
    assert np.allclose(s.train.double().numpy(), x[tr] / 255.0, atol=1e-7)
    assert np.allclose(s.test.double().numpy(), x[te] / 255.0, atol=1e-7)
    raw = load_frey_faces(file, scale=False, dtype=torch.uint8)
    assert raw.train.dtype == torch.uint8 and np.array_equal(raw.valid.numpy(), x[va])
    raw_f = load_frey_faces(file, scale=False)
    assert raw_f.train.dtype == torch.float32 and float(raw_f.train.max()) > 1
    assert torch.equal(raw_f.train, raw_f.train.round())


def test_frey_seed_determinism():
    file = real_file(FREY_FACES_FILE)
    a, b, c = load_frey_faces(file, seed=1), load_frey_faces(file, seed=1), load_frey_faces(file)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)


# --------------------------------------------------------------------------------------------
# Caltech 101 silhouettes
# --------------------------------------------------------------------------------------------


def test_caltech_shapes_values_labels():
    file = real_file(CALTECH_SILHOUETTES_FILE)
    s = load_caltech_silhouettes(file)
    assert isinstance(s, LabelledSplits)
    assert s.sizes == (4100, 2264, 2307)
    for x, y in ((s.train, s.train_labels), (s.valid, s.valid_labels), (s.test, s.test_labels)):
        assert x.shape[1] == 784 and x.dtype == torch.float32 and is_binary(x)
        assert y.shape == (x.shape[0],) and y.dtype == torch.int64
    labels = torch.cat([s.train_labels, s.valid_labels, s.test_labels])
    assert int(labels.min()) == 0 and int(labels.max()) == 100
    assert len(torch.unique(labels)) == 101 and len(s.classnames) == 101
    assert s.classnames[0] == "Airplanes Side 2"
    # foreground = 1: the object sits in the middle, the image border is background
    img = s.train.view(-1, 28, 28)
    assert float(img[:, 0].mean()) < 0.1 and float(img[:, 12:16, 12:16].mean()) > 0.5


def test_caltech_matches_documented_transformation():
    file = real_file(CALTECH_SILHOUETTES_FILE)
    s = load_caltech_silhouettes(file, seed=3)
    with np.load(file) as z:
        bits = np.unpackbits(z["x_packbits"], axis=1)[:, :784]
        y = z["y"].astype(np.int64)
    x = 1 - bits.reshape(-1, 28, 28, order="F").reshape(-1, 784)
    tr, va, te = seeded_split_indices(8671, (4100, 2264, 2307), seed=3)
    assert np.array_equal(s.valid.numpy(), x[va].astype(np.float32))
    assert np.array_equal(s.test_labels.numpy(), y[te] - 1)
    assert np.array_equal(s.train_labels.numpy(), y[tr] - 1)


def test_caltech_seed_determinism():
    file = real_file(CALTECH_SILHOUETTES_FILE)
    a = load_caltech_silhouettes(file, seed=5)
    b = load_caltech_silhouettes(file, seed=5)
    c = load_caltech_silhouettes(file, seed=6)
    assert torch.equal(a.train, b.train) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train, c.train)


# --------------------------------------------------------------------------------------------
# Digits (scikit-learn, no file)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn is not installed")
def test_digits_no_path():
    s = load_digits()
    assert isinstance(s, LabelledSplits)
    assert s.sizes == (1197, 300, 300)
    assert s.train.shape == (1197, 64) and s.train.dtype == torch.float32
    assert float(s.train.min()) == 0.0 and float(s.train.max()) == 1.0
    assert not is_binary(s.train)
    assert torch.equal(s.train * 16, (s.train * 16).round())
    labels = torch.cat([s.train_labels, s.valid_labels, s.test_labels])
    assert sorted(torch.unique(labels).tolist()) == list(range(10))
    assert s.classnames == tuple("0123456789")


@pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn is not installed")
def test_digits_binarize_and_seeds():
    grey = load_digits(seed=0)
    bin_ = load_digits(binarize=True, seed=0)
    assert is_binary(bin_.train)
    assert torch.equal(bin_.train, (grey.train > 0.5).float())
    assert torch.equal(bin_.train_labels, grey.train_labels)
    sto = load_digits(binarize=True, stochastic=True, seed=0)
    assert is_binary(sto.train) and not torch.equal(sto.train, bin_.train)
    assert torch.equal(sto.train, load_digits(binarize=True, stochastic=True, seed=0).train)
    other = load_digits(seed=1)
    assert not torch.equal(other.train_labels, grey.train_labels)
    assert load_digits(dtype=torch.float64).valid.dtype == torch.float64
    with pytest.raises(ValueError, match="binarize=True"):
        load_digits(stochastic=True)


def test_digits_missing_sklearn_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install pyro-nf\[examples\]"):
        load_digits()


# --------------------------------------------------------------------------------------------
# German credit and sonar
# --------------------------------------------------------------------------------------------


def test_german_credit_raw():
    d = load_german_credit(real_file(GERMAN_CREDIT_FILE))
    assert isinstance(d, TabularData)
    assert d.x.shape == (1000, 24) and d.y.shape == (1000,)
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.float32
    assert set(d.y.unique().tolist()) == {0.0, 1.0} and int(d.y.sum()) == 300
    assert len(d.feature_names) == 24
    # raw, badly scaled: the first row of the file
    assert d.x[0, :4].tolist() == [1.0, 6.0, 4.0, 12.0]
    assert float(d.x.std(0).max() / d.x.std(0).min()) > 50


def test_german_credit_standardized_with_intercept():
    file = real_file(GERMAN_CREDIT_FILE)
    d = load_german_credit(file, standardize=True, intercept=True, dtype=torch.float64)
    assert d.x.shape == (1000, 25) and d.x.dtype == torch.float64
    assert d.feature_names[-1] == "intercept" and len(d.feature_names) == 25
    assert torch.equal(d.x[:, -1], torch.ones(1000, dtype=torch.float64))
    feats = d.x[:, :-1]
    assert torch.allclose(feats.mean(0), torch.zeros(24, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(feats.std(0, correction=0), torch.ones(24, dtype=torch.float64))
    only_std = load_german_credit(file, standardize=True)
    assert only_std.x.shape == (1000, 24)
    only_int = load_german_credit(file, intercept=True)
    raw = load_german_credit(file)
    assert torch.equal(only_int.x[:, :-1], raw.x) and torch.equal(only_int.y, raw.y)


def test_sonar():
    d = load_sonar(real_file(SONAR_FILE))
    assert d.x.shape == (208, 60) and d.y.shape == (208,) and d.x.dtype == torch.float32
    assert int(d.y.sum()) == 111  # 111 M (mine) = 1, 97 R (rock) = 0
    assert 0.0 <= float(d.x.min()) and float(d.x.max()) <= 1.0
    assert len(d.feature_names) == 60
    assert float(d.y[-1]) == 1.0 and float(d.y[0]) == 0.0  # file starts with R, ends with M


# --------------------------------------------------------------------------------------------
# Split procedure (no data needed)
# --------------------------------------------------------------------------------------------


def test_seeded_split_indices_procedure():
    tr, va, te = seeded_split_indices(100, (60, 25, 15), seed=7)
    perm = np.random.default_rng(7).permutation(100)
    assert np.array_equal(np.concatenate([tr, va, te]), perm)
    assert (len(tr), len(va), len(te)) == (60, 25, 15)
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    again = seeded_split_indices(100, (60, 25, 15), seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again, strict=True))
    other = seeded_split_indices(100, (60, 25, 15), seed=8)
    assert not np.array_equal(tr, other[0])
    with pytest.raises(ValueError, match="summing to 100"):
        seeded_split_indices(100, (60, 25, 10))
    with pytest.raises(ValueError, match="seed"):
        seeded_split_indices(100, (60, 25, 15), seed=-1)


def fake_frey(tmp_path: Path) -> Path:
    x = np.zeros((1965, 28, 20), dtype=np.int64)
    x[:, 0, 0], x[:, 0, 1] = np.divmod(np.arange(1965), 256)  # every row is distinct
    file = tmp_path / FREY_FACES_FILE
    np.savez(file, x=x.astype(np.uint8))
    return file


def test_fake_frey_split_is_disjoint_and_complete(tmp_path):
    # rows of the fake file are all distinct, so disjointness of rows <=> disjointness of indices
    file = fake_frey(tmp_path)
    s = load_frey_faces(tmp_path, verify=False, scale=False, dtype=torch.int64)
    tr, va, te = rows_as_set(s.train, s.valid, s.test)
    assert not (tr & va or tr & te or va & te)
    assert len(tr | va | te) == 1965
    with pytest.raises(ValueError, match="checksum"):
        load_frey_faces(file)


def test_fake_caltech_transformation(tmp_path):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(8671, 784), dtype=np.uint8)
    y = rng.integers(1, 102, size=8671).astype(np.int16)
    names = np.array([f"class {k}" for k in range(1, 102)])
    np.savez(
        tmp_path / CALTECH_SILHOUETTES_FILE,
        x_packbits=np.packbits(bits, axis=1),
        y=y,
        classnames=names,
    )
    s = load_caltech_silhouettes(tmp_path, verify=False, seed=2)
    tr, _, _ = seeded_split_indices(8671, (4100, 2264, 2307), seed=2)
    i = tr[0]
    upright = 1 - bits[i].reshape(28, 28, order="F")
    assert np.array_equal(s.train[0].view(28, 28).numpy(), upright.astype(np.float32))
    assert int(s.train_labels[0]) == int(y[i]) - 1
    assert s.classnames[int(s.train_labels[0])] == f"class {y[i]}"


# --------------------------------------------------------------------------------------------
# Errors: missing, corrupt and malformed files (no data needed)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOADERS))
def test_missing_file(tmp_path, name):
    with pytest.raises(FileNotFoundError) as info:
        LOADERS[name](tmp_path)
    msg = str(info.value)
    assert name in msg and str(tmp_path) in msg and "get the file from" in msg
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        LOADERS[name](tmp_path / "does-not-exist")


def test_missing_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_NF_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="sonar.all-data"):
        load_sonar()


@pytest.mark.parametrize("name", list(LOADERS))
def test_garbage_fails_checksum(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00garbage\xff" * 100)
    with pytest.raises(ValueError, match="checksum") as info:
        LOADERS[name](tmp_path)
    assert name in str(info.value) and SHA256[name] in str(info.value)


@pytest.mark.parametrize("name", list(LOADERS))
@pytest.mark.parametrize("content", [b"\x00garbage\xff" * 100, b"not a data file\n", b""])
def test_garbage_without_verify_is_a_format_error(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match="malformed file") as info:
        LOADERS[name](tmp_path, verify=False)
    assert name in str(info.value)


@pytest.mark.parametrize("name", list(LOADERS))
def test_truncated_real_file(tmp_path, name):
    data = real_file(name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="checksum"):
        LOADERS[name](tmp_path)
    with pytest.raises(ValueError, match="malformed file"):
        LOADERS[name](tmp_path, verify=False)


def test_npz_wrong_keys(tmp_path):
    np.savez(tmp_path / MNIST_FILE, train=np.zeros((50000, 98), np.uint8))
    with pytest.raises(ValueError, match=r"expected keys \['test', 'train', 'valid'\]"):
        load_static_mnist(tmp_path, verify=False)


def test_npz_wrong_shape_and_dtype(tmp_path):
    np.savez(tmp_path / FREY_FACES_FILE, x=np.zeros((1965, 20, 28), np.uint8))
    with pytest.raises(ValueError, match=r"expected dtype uint8 and shape \(1965, 28, 20\)"):
        load_frey_faces(tmp_path, verify=False)
    np.savez(tmp_path / FREY_FACES_FILE, x=np.zeros((1965, 28, 20), np.float32))
    with pytest.raises(ValueError, match="found dtype float32"):
        load_frey_faces(tmp_path, verify=False)


def test_npy_instead_of_npz(tmp_path):
    with open(tmp_path / FREY_FACES_FILE, "wb") as f:
        np.save(f, np.zeros((1965, 28, 20), np.uint8))
    with pytest.raises(ValueError, match="single .npy array"):
        load_frey_faces(tmp_path, verify=False)


def test_text_wrong_rows_columns_labels(tmp_path):
    file = tmp_path / GERMAN_CREDIT_FILE
    file.write_text("1 2 3\n" * 1000)
    with pytest.raises(ValueError, match="expected 25 whitespace-separated"):
        load_german_credit(tmp_path, verify=False)
    file.write_text(" ".join(["1"] * 24 + ["3"]) + "\n" + (" ".join(["1"] * 25) + "\n") * 999)
    with pytest.raises(ValueError, match="labels 1 or 2"):
        load_german_credit(tmp_path, verify=False)
    file.write_text((" ".join(["x"] * 24 + ["1"]) + "\n") * 1000)
    with pytest.raises(ValueError, match="expected numbers"):
        load_german_credit(tmp_path, verify=False)
    sonar = tmp_path / SONAR_FILE
    sonar.write_text(("0.1," * 60 + "X\n") * 208)
    with pytest.raises(ValueError, match="'R' or 'M'"):
        load_sonar(tmp_path, verify=False)
    sonar.write_text(("0.1," * 60 + "R\n") * 207)
    with pytest.raises(ValueError, match="expected 208 non-empty rows, found 207"):
        load_sonar(tmp_path, verify=False)


def test_fake_tabular_files_load_without_verify(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.integers(0, 50, (1000, 24)), rng.integers(1, 3, 1000)])
    np.savetxt(tmp_path / GERMAN_CREDIT_FILE, rows, fmt="%4d")
    d = load_german_credit(tmp_path, verify=False)
    assert torch.equal(d.y, torch.from_numpy((rows[:, -1] == 2).astype(np.float32)))
    with pytest.raises(ValueError, match="checksum"):
        load_german_credit(tmp_path)


def test_bad_dtype_argument():
    with pytest.raises(ValueError, match="dtype"):
        load_sonar("/nonexistent", dtype=torch.int64)
    with pytest.raises(ValueError, match="dtype"):
        load_frey_faces("/nonexistent", dtype=torch.uint8)


def test_random_subset_is_seeded_without_replacement_and_validated():
    from pyro_nf.datasets import random_subset

    x = torch.arange(1000).unsqueeze(-1)
    a, b = random_subset(x, 100, seed=3), random_subset(x, 100, seed=3)
    assert torch.equal(a, b) and a.shape == (100, 1)
    assert len(set(a.flatten().tolist())) == 100  # no repeats
    assert not torch.equal(a, x[:100])  # not the first rows
    assert not torch.equal(a, random_subset(x, 100, seed=4))
    assert random_subset(x, 5000) is x
    with pytest.raises(ValueError, match="n: expected None or a positive integer, got 0"):
        random_subset(x, 0)
    with pytest.raises(ValueError, match="seed: expected a non-negative integer"):
        random_subset(x, 10, seed=-1)
