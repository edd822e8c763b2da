"""The loaders read the upstream files as their authors distribute them (no conversion step):
Larochelle's ``.amat`` MNIST splits, Roweis' ``frey_rawface.mat`` and Marlin's Caltech 101
silhouettes ``.mat`` files. Small files are written in those formats here; where the canonical
files of ``../shared/data`` exist, upstream copies written from them must load to exactly the
same tensors as the canonical loaders give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

scipy_io = pytest.importorskip("scipy.io")

from pyro_nf.datasets import (  # noqa: E402
    CALTECH_SILHOUETTES_FILE,
    FREY_FACES_FILE,
    MNIST_FILE,
    default_data_dir,
    load_caltech_silhouettes,
    load_frey_faces,
    load_static_mnist,
)
from pyro_nf.datasets.upstream import (  # noqa: E402
    CALTECH_FULL_MAT,
    CALTECH_SPLIT1_MAT,
    FREY_MAT,
    MNIST_AMAT,
)

DATA = default_data_dir()


def _real(name):
    if DATA is None or not (DATA / name).is_file():
        pytest.skip(f"{name} not found in ../shared/data")
    return DATA / name


def _write_amat(path, bits):
    path.write_text("\n".join(" ".join(str(int(v)) for v in row) for row in bits) + "\n")


def _classnames():
    return np.array([f"class{k}" for k in range(101)], dtype=object)


def test_amat_splits_load(tmp_path):
    rng = np.random.default_rng(0)
    bits = {
        s: rng.integers(0, 2, size=(n, 784)) for s, n in (("train", 5), ("valid", 3), ("test", 2))
    }
    for split, b in bits.items():
        _write_amat(tmp_path / MNIST_AMAT[split], b)
    s = load_static_mnist(tmp_path, verify=False)
    assert s.sizes == (5, 3, 2)
    for split in bits:
        assert torch.equal(getattr(s, split), torch.tensor(bits[split], dtype=torch.float32))
    with pytest.raises(ValueError, match="published sizes"):
        load_static_mnist(tmp_path)  # verify=True wants 50000 / 10000 / 10000


def test_amat_matches_canonical_rows(tmp_path):
    canonical = load_static_mnist(_real(MNIST_FILE))
    for split in ("train", "valid", "test"):
        _write_amat(tmp_path / MNIST_AMAT[split], getattr(canonical, split)[:50].int().numpy())
    s = load_static_mnist(tmp_path / MNIST_AMAT["train"], verify=False, dtype=torch.float64)
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(s, split), getattr(canonical, split)[:50].double())


def test_amat_errors(tmp_path):
    (tmp_path / MNIST_AMAT["train"]).write_text("0 1 x\n")
    with pytest.raises(FileNotFoundError, match="binarized_mnist_valid.amat"):
        load_static_mnist(tmp_path, verify=False)
    for split in ("valid", "test"):
        _write_amat(tmp_path / MNIST_AMAT[split], np.zeros((1, 784), dtype=int))
    with pytest.raises(ValueError, match="0/1 pixels"):
        load_static_mnist(tmp_path, verify=False)
    (tmp_path / MNIST_AMAT["train"]).write_text("0 1 0\n")
    with pytest.raises(ValueError, match="784 pixels"):
        load_static_mnist(tmp_path, verify=False)


def test_canonical_file_wins_over_upstream(tmp_path):
    real = _real(FREY_FACES_FILE)
    (tmp_path / FREY_FACES_FILE).write_bytes(real.read_bytes())
    (tmp_path / FREY_MAT).write_bytes(b"not a mat file")  # ignored: the canonical file is there
    assert load_frey_faces(tmp_path).sizes == (1565, 200, 200)


def test_frey_mat_matches_canonical(tmp_path):
    canonical = load_frey_faces(_real(FREY_FACES_FILE), seed=3)
    faces = np.load(_real(FREY_FACES_FILE))["x"]  # (1965, 28, 20)
    scipy_io.savemat(tmp_path / FREY_MAT, {"ff": faces.reshape(1965, 560).T})
    s = load_frey_faces(tmp_path, seed=3)  # verify=True: the published size 1965
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(s, split), getattr(canonical, split))


def test_small_frey_mat_and_errors(tmp_path):
    ff = np.arange(560 * 20, dtype=np.int64).reshape(560, 20) % 256
    scipy_io.savemat(tmp_path / FREY_MAT, {"ff": ff.astype(np.uint8)})
    s = load_frey_faces(tmp_path, verify=False, scale=False, dtype=torch.int64)
    assert s.sizes == (16, 2, 2)
    rows = torch.cat([s.train, s.valid, s.test]).sort(0).values
    assert torch.equal(rows, torch.tensor(ff.T).sort(0).values)
    with pytest.raises(ValueError, match="published sizes"):
        load_frey_faces(tmp_path)
    scipy_io.savemat(tmp_path / FREY_MAT, {"faces": ff})
    with pytest.raises(ValueError, match="expected variable 'ff'"):
        load_frey_faces(tmp_path, verify=False)
    (tmp_path / FREY_MAT).write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="malformed .mat file"):
        load_frey_faces(tmp_path, verify=False)


def test_caltech_full_mat_matches_canonical(tmp_path):
    z = np.load(_real(CALTECH_SILHOUETTES_FILE))
    x = np.unpackbits(z["x_packbits"], axis=1)[:, :784].astype(np.float64)  # as in the .mat
    scipy_io.savemat(
        tmp_path / CALTECH_FULL_MAT,
        {
            "X": x,
            "Y": z["y"][None].astype(np.float64),
            "classnames": z["classnames"].astype(object),
        },
    )
    canonical = load_caltech_silhouettes(_real(CALTECH_SILHOUETTES_FILE), seed=1)
    s = load_caltech_silhouettes(tmp_path, seed=1)
    for field in ("train", "valid", "test", "train_labels", "valid_labels", "test_labels"):
        assert torch.equal(getattr(s, field), getattr(canonical, field))
    assert s.classnames == canonical.classnames


def test_caltech_split1_is_used_as_it_is(tmp_path):
    rng = np.random.default_rng(1)
    data = {}
    for k, n in (("train", 6), ("val", 3), ("test", 4)):
        data[f"{k}_data"] = rng.integers(0, 2, size=(n, 784)).astype(np.float64)
        data[f"{k}_labels"] = rng.integers(1, 102, size=(n, 1)).astype(np.float64)
    scipy_io.savemat(tmp_path / CALTECH_SPLIT1_MAT, {**data, "classnames": _classnames()})
    s = load_caltech_silhouettes(tmp_path, verify=False)
    assert s.sizes == (6, 3, 4) and s.classnames[5] == "class5"
    upright = 1 - data["val_data"].reshape(-1, 28, 28, order="F").reshape(-1, 784)
    assert torch.equal(s.valid, torch.tensor(upright, dtype=torch.float32))
    assert torch.equal(
        s.test_labels, torch.tensor(data["test_labels"][:, 0] - 1, dtype=torch.int64)
    )
    with pytest.raises(ValueError, match="published sizes"):
        load_caltech_silhouettes(tmp_path)


def test_caltech_mat_bad_values(tmp_path):
    scipy_io.savemat(
        tmp_path / CALTECH_FULL_MAT,
        {"X": np.full((3, 784), 0.5), "Y": np.ones((1, 3)), "classnames": _classnames()},
    )
    with pytest.raises(ValueError, match="0/1 pixels"):
        load_caltech_silhouettes(tmp_path, verify=False)
    scipy_io.savemat(
        tmp_path / CALTECH_FULL_MAT,
        {"X": np.ones((3, 784)), "Y": np.full((1, 3), 300.0), "classnames": _classnames()},
    )
    with pytest.raises(ValueError, match="class labels in 1..101"):
        load_caltech_silhouettes(tmp_path, verify=False)
