r"""Readers of the datasets' *upstream* files, as their authors distribute them.

The loaders of :mod:`pyro_nf.datasets` read a compact canonical ``.npz`` (checksummed), but a
user who already has the original files needs no conversion: given a directory (or file) that
holds one of these, the loader reads it directly.

================================================ ==============================================
upstream file                                    format
================================================ ==============================================
``binarized_mnist_{train,valid,test}.amat``      Larochelle's text files: one image a line, 784
                                                 space-separated 0/1, row-major 28x28
``frey_rawface.mat``                             Roweis' MATLAB file: ``ff``, ``uint8``
                                                 ``(560, 1965)``, one image a column
                                                 (``ff.T.reshape(-1, 28, 20)`` is upright)
``caltech101_silhouettes_28_split1.mat``         Marlin's split 1: ``train_data`` /
                                                 ``val_data`` / ``test_data`` ``(N, 784)``,
                                                 ``*_labels`` ``(N, 1)`` in 1..101,
                                                 ``classnames``; pixels column-major, object 0
``caltech101_silhouettes_28.mat``                the full set: ``X`` ``(8671, 784)``, ``Y``
                                                 ``(1, 8671)``, ``classnames``
================================================ ==============================================

No checksums of the upstream files are known here, so ``verify=True`` checks the published
sizes instead (and every reader checks the shapes and the pixel values); ``verify=False`` accepts
files of any size (e.g. a subset). ``.mat`` files are read with :func:`scipy.io.loadmat` (SciPy
is needed for them only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .files import PathLike, default_data_dir, resolve_file

__all__ = [
    "CALTECH_FULL_MAT",
    "CALTECH_SPLIT1_MAT",
    "FREY_MAT",
    "MNIST_AMAT",
    "locate",
    "read_caltech_mat",
    "read_frey_mat",
    "read_mnist_amat",
]

#: Larochelle's static binarized MNIST, one file per split.
MNIST_AMAT = {s: f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")}
#: Roweis' Frey faces.
FREY_MAT = "frey_rawface.mat"
#: Marlin's Caltech 101 silhouettes, 28x28: the standard split 1, and the full set.
CALTECH_SPLIT1_MAT = "caltech101_silhouettes_28_split1.mat"
CALTECH_FULL_MAT = "caltech101_silhouettes_28.mat"


def locate(path: PathLike | None, canonical: str, upstream: tuple[str, ...]) -> Path:
    """The file to read: ``path`` itself if it is a file; else, in the directory ``path`` (default
    :func:`~pyro_nf.datasets.files.default_data_dir`), the ``canonical`` file if present, else
    the first of the ``upstream`` files present; else :class:`FileNotFoundError` (naming the
    canonical file, as :func:`~pyro_nf.datasets.files.resolve_file` does).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / FREY_MAT).write_bytes(b"")
        >>> locate(d, "freyfaces_1965x28x20_uint8.npz", (FREY_MAT,)).name
        'frey_rawface.mat'
    """
    directory = Path(path).expanduser() if path is not None else default_data_dir()
    if directory is not None and directory.is_dir() and not (directory / canonical).is_file():
        for name in upstream:
            if (directory / name).is_file():
                return directory / name
    return resolve_file(path, canonical)


def _amat_bits(file: Path) -> np.ndarray:
    """The 0/1 pixels of one ``.amat`` file as ``uint8`` ``(N, 784)``, vectorized."""
    try:
        raw = np.frombuffer(file.read_bytes(), dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"{file}: cannot read the .amat file ({e})") from e
    digit = (raw == ord("0")) | (raw == ord("1"))
    space = (raw == ord(" ")) | (raw == ord("\n")) | (raw == ord("\r")) | (raw == ord("\t"))
    if not (digit | space).all():
        bad = bytes(raw[~(digit | space)][:5].tolist())
        raise ValueError(
            f"{file}: malformed .amat file: expected space-separated 0/1 pixels, found {bad!r}"
        )
    lines = [ln for ln in file.read_bytes().splitlines() if ln.strip()]
    bits = raw[digit] - ord("0")
    if len(lines) == 0 or bits.size != 784 * len(lines):
        raise ValueError(
            f"{file}: malformed .amat file: expected 784 pixels on each of its {len(lines)} "
            f"non-empty lines, found {bits.size} pixels in all"
        )
    return bits.reshape(len(lines), 784)


def read_mnist_amat(train_file: Path, verify: bool = True) -> dict[str, np.ndarray]:
    r"""The three splits of Larochelle's binarized MNIST from ``train_file`` and its siblings
    ``binarized_mnist_{valid,test}.amat``: ``{split: uint8 (N, 784)}`` in {0, 1}.

    ``verify``: require the published sizes 50000 / 10000 / 10000.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for split in ("train", "valid", "test"):
        ...     _ = (d / MNIST_AMAT[split]).write_text(" ".join(["1"] * 784) + "\n")
        >>> {k: v.shape for k, v in read_mnist_amat(d / MNIST_AMAT["train"], verify=False).items()}
        {'train': (1, 784), 'valid': (1, 784), 'test': (1, 784)}
    """
    files = {split: train_file.parent / name for split, name in MNIST_AMAT.items()}
    for name, file in zip(MNIST_AMAT.values(), files.values(), strict=True):
        if not file.is_file():
            raise FileNotFoundError(
                f"{name}: file not found next to {train_file.name} in {str(train_file.parent)!r}; "
                "the .amat format needs all three splits"
            )
    out = {split: _amat_bits(file) for split, file in files.items()}
    if verify:
        _check_sizes(train_file.parent, {k: len(v) for k, v in out.items()},
                     {"train": 50000, "valid": 10000, "test": 10000})  # fmt: skip
    return out


def _check_sizes(where: Path, found: dict[str, int], expected: dict[str, int]) -> None:
    """``ValueError`` unless the split sizes are the published ones (``verify=True``)."""
    if found != expected:
        raise ValueError(
            f"{where}: expected the published sizes {expected}, found {found} "
            "(pass verify=False to load a file of other size)"
        )


def _loadmat(file: Path) -> dict[str, Any]:
    """The variables of a MATLAB file (SciPy's reader), with clear errors."""
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - scipy comes with scikit-learn
        raise ImportError(
            f"{file}: reading MATLAB .mat files needs SciPy (`pip install scipy`); or use the "
            "canonical .npz file"
        ) from e
    try:
        return loadmat(file)
    except Exception as e:  # scipy raises many types on a damaged file
        raise ValueError(
            f"{file}: malformed .mat file: it could not be read ({type(e).__name__}: {e})"
        ) from e


def _mat_array(file: Path, mat: dict[str, Any], key: str, ndim: int) -> np.ndarray:
    """``mat[key]`` as an array of ``ndim`` dimensions, else a ``ValueError`` naming it."""
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{file}: malformed .mat file: expected variable {key!r}, found {found}")
    a = np.asarray(mat[key])
    if a.ndim != ndim:
        raise ValueError(
            f"{file}: malformed .mat file: variable {key!r}: expected {ndim} dimensions, "
            f"found shape {a.shape}"
        )
    return a


def read_frey_mat(file: Path, verify: bool = True) -> np.ndarray:
    """Roweis' ``frey_rawface.mat`` as ``uint8`` ``(N, 28, 20)`` grey levels (``verify``:
    require ``N = 1965``).

    Example:
        >>> import tempfile, scipy.io
        >>> f = Path(tempfile.mkdtemp()) / FREY_MAT
        >>> scipy.io.savemat(f, {"ff": np.zeros((560, 3), dtype=np.uint8)})
        >>> read_frey_mat(f, verify=False).shape
        (3, 28, 20)
    """
    ff = _mat_array(file, _loadmat(file), "ff", 2)
    if ff.shape[0] != 560 or not (np.issubdtype(ff.dtype, np.integer) and ff.min(initial=0) >= 0
                                  and ff.max(initial=0) <= 255):  # fmt: skip
        raise ValueError(
            f"{file}: malformed .mat file: variable 'ff': expected grey levels 0..255 of shape "
            f"(560, N), found dtype {ff.dtype} and shape {ff.shape}"
        )
    if verify:
        _check_sizes(file, {"images": ff.shape[1]}, {"images": 1965})
    return np.ascontiguousarray(ff.T.reshape(-1, 28, 20).astype(np.uint8))


def _binary_pixels(file: Path, key: str, a: np.ndarray) -> np.ndarray:
    """``a`` ``(N, 784)`` with values in {0, 1} as ``uint8``, else ``ValueError``."""
    if a.shape[-1] != 784 or not np.isin(a, (0, 1)).all():
        raise ValueError(
            f"{file}: malformed .mat file: variable {key!r}: expected 0/1 pixels of shape "
            f"(N, 784), found shape {a.shape}"
        )
    return a.astype(np.uint8)


def _classnames(file: Path, mat: dict[str, Any]) -> tuple[str, ...]:
    """The 101 class names of a Caltech silhouettes ``.mat`` file."""
    names = tuple(
        str(np.asarray(c).squeeze()) for c in np.asarray(mat.get("classnames", [])).ravel()
    )
    if len(names) != 101:
        raise ValueError(
            f"{file}: malformed .mat file: expected 101 classnames, found {len(names)}"
        )
    return names


def _labels(file: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    """Class labels 1..101 of ``n`` images as ``int64`` ``(n,)``."""
    y = y.ravel()
    if y.size != n or not np.isin(y, np.arange(1, 102)).all():
        raise ValueError(
            f"{file}: malformed .mat file: variable {key!r}: expected {n} class labels in "
            f"1..101, found {y.size} values"
        )
    return y.astype(np.int64)


def read_caltech_mat(
    file: Path, verify: bool = True
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """Marlin's Caltech 101 silhouettes ``.mat`` (split 1, or the full set):
    ``({split: (bits uint8 (N, 784) as in the file, labels int64 1..101)}, classnames)``.

    The split-1 file gives ``train``/``valid``/``test``; the full set gives one split ``all``.
    ``verify``: require the published sizes (4100 / 2264 / 2307, or 8671).

    Example:
        >>> import tempfile, scipy.io
        >>> f = Path(tempfile.mkdtemp()) / CALTECH_FULL_MAT
        >>> names = np.array([f"c{k}" for k in range(101)], dtype=object)
        >>> scipy.io.savemat(f, {"X": np.ones((4, 784)), "Y": np.ones((1, 4)), "classnames": names})
        >>> splits, classnames = read_caltech_mat(f, verify=False)
        >>> splits["all"][0].shape, classnames[:2]
        ((4, 784), ('c0', 'c1'))
    """
    mat = _loadmat(file)
    if "train_data" in mat:
        keys = {"train": "train", "valid": "val", "test": "test"}
        out = {}
        for split, k in keys.items():
            x = _binary_pixels(file, f"{k}_data", _mat_array(file, mat, f"{k}_data", 2))
            y = _labels(file, f"{k}_labels", _mat_array(file, mat, f"{k}_labels", 2), len(x))
            out[split] = (x, y)
        expected = {"train": 4100, "valid": 2264, "test": 2307}
    else:
        x = _binary_pixels(file, "X", _mat_array(file, mat, "X", 2))
        out = {"all": (x, _labels(file, "Y", _mat_array(file, mat, "Y", 2), len(x)))}
        expected = {"all": 8671}
    if verify:
        _check_sizes(file, {k: len(v[0]) for k, v in out.items()}, expected)
    return out, _classnames(file, mat)
