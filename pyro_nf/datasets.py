"""Loaders for the small real datasets used by pyro-nf's tests, examples and benchmarks.

pyro-nf never downloads anything. Every loader reads one *canonical file* from a local path
(``path`` may be the file itself or a directory that contains it under its canonical name),
checks its sha256 checksum (``verify=True``), checks the shapes and dtypes of what it read, and
returns torch tensors. The canonical files, their formats and their provenance:

=========================================== ==================================================
file                                        contents and source
=========================================== ==================================================
``binarized_mnist_larochelle_packbits.npz`` statically binarized MNIST (Larochelle & Murray
                                            2011), train/valid/test 50000/10000/10000, packed
                                            bits; decoded from ``binarized_mnist.npz`` in
                                            mad-ant/TheanoNADE (matches the published checksums
                                            of Larochelle's ``binarized_mnist_*.amat``)
``freyfaces_1965x28x20_uint8.npz``          Frey faces, 1965 grey images 28x20, converted from
                                            ``data/Freyfaces/freyfaces.pkl`` in
                                            riannevdberg/sylvester-flows
``caltech101_silhouettes_28.npz``           Caltech 101 Silhouettes 28x28, all 8671 images and
                                            101 classes, converted from
                                            ``datasets/caltech101_silhouettes_28.mat`` in
                                            AshaNarayana/MLP_Assignment
``german.data-numeric``                     UCI Statlog German credit (numeric version), 1000
                                            rows, 24 features, label 1 = good / 2 = bad
``sonar.all-data``                          UCI Connectionist Bench (Sonar, Mines vs. Rocks),
                                            208 rows, 60 features, label R/M
=========================================== ==================================================

scikit-learn's bundled 8x8 digits (:func:`load_digits`) need no file at all and make the
zero-setup dataset for a VAE demo.

:func:`default_data_dir` finds a directory holding these files: the environment variable
``PYRO_NF_DATA`` if set, else ``../shared/data`` next to a source checkout. Tests, examples and
benchmarks use it to find the data and to skip cleanly when it is absent.

Errors are explicit: a missing file raises :class:`FileNotFoundError` naming the expected file
name, the path searched and where the file comes from; a checksum mismatch or a malformed file
(wrong keys, shapes, dtypes or values) raises :class:`ValueError` naming the file, what was
expected and what was found.

Seeded splits (Frey faces, Caltech silhouettes, digits) are made by :func:`seeded_split_indices`:
``perm = numpy.random.default_rng(seed).permutation(n)``, then the first ``n_train`` entries
of ``perm`` index the training set, the next ``n_valid`` the validation set and the remaining
``n_test`` the test set (each split keeps the permuted order). The default seed is ``0``.

Example:
    >>> from pyro_nf.datasets import default_data_dir, load_sonar
    >>> data_dir = default_data_dir()  # $PYRO_NF_DATA, or ../shared/data in a checkout, or None
    >>> if data_dir is not None and (data_dir / "sonar.all-data").exists():
    ...     sonar = load_sonar(data_dir)
    ...     assert sonar.x.shape == (208, 60) and sonar.y.shape == (208,)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CALTECH_SILHOUETTES_FILE",
    "FREY_FACES_FILE",
    "GERMAN_CREDIT_FILE",
    "LabelledSplits",
    "MNIST_FILE",
    "SONAR_FILE",
    "Splits",
    "TabularData",
    "default_data_dir",
    "load_caltech_silhouettes",
    "load_digits",
    "load_frey_faces",
    "load_german_credit",
    "load_sonar",
    "load_static_mnist",
    "random_subset",
    "seeded_split_indices",
]

PathLike = str | os.PathLike

MNIST_FILE = "binarized_mnist_larochelle_packbits.npz"
FREY_FACES_FILE = "freyfaces_1965x28x20_uint8.npz"
CALTECH_SILHOUETTES_FILE = "caltech101_silhouettes_28.npz"
GERMAN_CREDIT_FILE = "german.data-numeric"
SONAR_FILE = "sonar.all-data"

#: sha256 checksums of the canonical files (from the data README).
SHA256: dict[str, str] = {
    MNIST_FILE: "df14a884cb4aa7ac6692463fb31798a687c4e762c73c23a8ae3114fbec4e6093",
    CALTECH_SILHOUETTES_FILE: "6b533c41c977d9145f406bc2997940e7918f18d07d688f8b07a5a8d39c4bcba1",
    FREY_FACES_FILE: "b31ddb973f41a99244168000379cc79c3f1e4402c3604814fe3699002931659b",
    GERMAN_CREDIT_FILE: "2752b044394958ab6dd193a0b56ca0f0b3a2d8bc7cb8c008e35a5e84bbec02f8",
    SONAR_FILE: "e90434cdbf00fcf93ffa911fe447ae25606979658e60f1d32e155c3b5240234d",
}

#: Where each canonical file comes from (used in FileNotFoundError messages).
_SOURCES: dict[str, str] = {
    MNIST_FILE: (
        "the GitHub repository mad-ant/TheanoNADE (binarized_mnist.npz, the statically "
        "binarized MNIST of Larochelle & Murray 2011; store each split packed with "
        "numpy.packbits(a, axis=1) as uint8 (N, 98) under keys train, valid, test)"
    ),
    FREY_FACES_FILE: (
        "the GitHub repository riannevdberg/sylvester-flows (data/Freyfaces/freyfaces.pkl; "
        "store it in an .npz under key x as uint8 (1965, 28, 20))"
    ),
    CALTECH_SILHOUETTES_FILE: (
        "the GitHub repository AshaNarayana/MLP_Assignment "
        "(datasets/caltech101_silhouettes_28.mat; store it in an .npz under keys x_packbits "
        "(uint8 (8671, 98) packed bits), y (classes 1..101) and classnames)"
    ),
    GERMAN_CREDIT_FILE: (
        "the UCI Machine Learning Repository (Statlog (German Credit Data), file "
        "german.data-numeric)"
    ),
    SONAR_FILE: (
        "the UCI Machine Learning Repository (Connectionist Bench (Sonar, Mines vs. Rocks), "
        "file sonar.all-data)"
    ),
}

_ENV_VAR = "PYRO_NF_DATA"


# --------------------------------------------------------------------------------------------
# Return types
# --------------------------------------------------------------------------------------------


def _shape(t: Any) -> str:
    """Short description of a field for ``__repr__``: shapes instead of tensor contents."""
    if isinstance(t, torch.Tensor):
        return f"{tuple(t.shape)} {t.dtype}"
    if isinstance(t, tuple) and len(t) > 4:
        return f"({t[0]!r}, {t[1]!r}, ..., {t[-1]!r})"
    return repr(t)


@dataclass(frozen=True, eq=False)
class Splits:
    """A train / validation / test split of a dataset, one tensor of shape ``(N_split, D)`` each.

    Example:
        >>> s = Splits(torch.zeros(3, 2), torch.zeros(1, 2), torch.zeros(1, 2))
        >>> s.train.shape, s.sizes
        (torch.Size([3, 2]), (3, 1, 1))
        >>> s
        Splits(train=(3, 2) torch.float32, valid=(1, 2) torch.float32, test=(1, 2) torch.float32)
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Number of rows in ``(train, valid, test)``."""
        return (len(self.train), len(self.valid), len(self.test))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_shape(v)}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


@dataclass(frozen=True, eq=False, repr=False)
class LabelledSplits(Splits):
    """A :class:`Splits` with integer class labels for each split.

    ``train_labels`` etc. are ``torch.int64`` tensors of shape ``(N_split,)`` holding class
    indices ``0 .. len(classnames) - 1``; ``classnames[k]`` names class ``k``.

    Example:
        >>> s = LabelledSplits(
        ...     torch.zeros(2, 4), torch.zeros(1, 4), torch.zeros(1, 4),
        ...     torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([0]), ("a", "b"),
        ... )
        >>> s.sizes, s.classnames[int(s.valid_labels[0])]
        ((2, 1, 1), 'b')
    """

    train_labels: torch.Tensor
    valid_labels: torch.Tensor
    test_labels: torch.Tensor
    classnames: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class TabularData:
    """A supervised tabular dataset: features ``x`` ``(N, D)``, targets ``y`` ``(N,)``.

    ``feature_names`` has one name per column of ``x``.

    Example:
        >>> d = TabularData(torch.zeros(5, 2), torch.zeros(5), ("a", "b"))
        >>> d
        TabularData(x=(5, 2) torch.float32, y=(5,) torch.float32, feature_names=('a', 'b'))
    """

    x: torch.Tensor
    y: torch.Tensor
    feature_names: tuple[str, ...]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_shape(v)}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


# --------------------------------------------------------------------------------------------
# Helpers: locating, verifying, reading
# --------------------------------------------------------------------------------------------


def default_data_dir() -> Path | None:
    """Return the directory holding pyro-nf's canonical data files, or ``None``.

    The directory is, in order: the environment variable ``PYRO_NF_DATA`` if it is set and
    non-empty (returned as given, with ``~`` expanded, whether or not it exists); else
    ``../shared/data`` relative to the repository root of a source checkout (that is
    ``Path(__file__).resolve().parents[2] / "shared" / "data"``) if it is a directory; else
    ``None``. Callers use ``None`` to skip cleanly when no data is available.

    Example:
        >>> d = default_data_dir()
        >>> d is None or isinstance(d, Path)
        True
    """
    env = os.environ.get(_ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    candidate = Path(__file__).resolve().parents[2] / "shared" / "data"
    return candidate if candidate.is_dir() else None


def _resolve(path: PathLike | None, filename: str) -> Path:
    """Return the file to read: ``path`` itself if it is a file, else ``path / filename``."""
    where = "the directory given by default_data_dir()"
    if path is None:
        data_dir = default_data_dir()
        if data_dir is None:
            raise FileNotFoundError(
                f"{filename}: no path given and no data directory found (set the environment "
                f"variable {_ENV_VAR} to a directory holding {filename}); get the file from "
                f"{_SOURCES[filename]}"
            )
        path = data_dir
    else:
        where = "the given path"
    p = Path(path).expanduser()
    if p.is_file():
        return p
    candidate = p / filename
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"{filename}: file not found; searched {where} {str(p)!r} (as a file, and for "
        f"{str(candidate)!r}); get the file from {_SOURCES[filename]}"
    )


def _sha256(file: Path) -> str:
    """The hex sha256 digest of ``file``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(file: Path, filename: str) -> None:
    """Raise :class:`ValueError` unless ``file`` has the sha256 checksum of ``filename``."""
    expected = SHA256[filename]
    found = _sha256(file)
    if found != expected:
        raise ValueError(
            f"{file}: sha256 checksum mismatch for {filename}: expected {expected}, found "
            f"{found}; the file is corrupt or is not the canonical {filename} (pass verify=False "
            f"to skip the checksum, at your own risk)"
        )


def _open_canonical(path: PathLike | None, filename: str, verify: bool) -> Path:
    """The canonical file ``filename`` found from ``path``, its checksum checked if ``verify``."""
    file = _resolve(path, filename)
    if verify:
        _verify(file, filename)
    return file


def _load_npz(file: Path, expected: dict[str, tuple[tuple[int | None, ...], str]]) -> dict:
    """Read an ``.npz`` without pickles and check its keys, shapes and dtype kinds.

    ``expected`` maps key -> (shape with ``None`` for any size, numpy dtype string or kind
    letter such as ``"U"``).
    """
    arrays = _read_npz_arrays(file, expected)
    for key, (shape, dtype) in expected.items():
        _check_array(file, key, arrays[key], shape, dtype)
    return arrays


def _read_npz_arrays(file: Path, expected: dict) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive ``file``, whose keys must be those of ``expected``."""
    try:
        z = np.load(file, allow_pickle=False)
    except Exception as e:  # any failure to parse means the file is malformed
        raise ValueError(
            f"{file}: malformed file: expected a numpy .npz archive with keys "
            f"{sorted(expected)}, but it could not be read ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{file}: malformed file: expected a numpy .npz archive with keys "
            f"{sorted(expected)}, found a single .npy array"
        )
    with z:
        keys, want = sorted(z.files), sorted(expected)
        if keys != want:
            raise ValueError(f"{file}: malformed file: expected keys {want}, found keys {keys}")
        try:
            return {k: z[k] for k in want}
        except Exception as e:
            raise ValueError(
                f"{file}: malformed file: an array in the .npz archive could not be read "
                f"({type(e).__name__}: {e})"
            ) from e


def _check_array(
    file: Path, key: str, a: np.ndarray, shape: tuple[int | None, ...], dtype: str
) -> None:
    """Raise :class:`ValueError` unless ``a`` (under ``key``) has ``shape`` and ``dtype``."""
    ok_dtype = a.dtype.kind == dtype if len(dtype) == 1 else a.dtype == np.dtype(dtype)
    ok_shape = a.ndim == len(shape) and all(
        s is None or s == t for s, t in zip(shape, a.shape, strict=True)
    )
    if not (ok_dtype and ok_shape):
        want_shape = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(
            f"{file}: malformed file: key {key!r}: expected dtype {dtype} and shape "
            f"{want_shape}, found dtype {a.dtype} and shape {a.shape}"
        )


def _read_text(file: Path) -> str:
    """The contents of ``file`` as ASCII text (non-text bytes are a malformed file)."""
    try:
        return file.read_bytes().decode("ascii")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{file}: malformed file: expected ASCII text, found non-text bytes ({e})"
        ) from e


def _text_rows(file: Path, sep: str | None) -> list[list[str]]:
    """The non-blank lines of the text file ``file``, each stripped and split at ``sep``."""
    return [line.strip().split(sep) for line in _read_text(file).splitlines() if line.strip()]


def _check_float_dtype(dtype: torch.dtype) -> None:
    """Raise :class:`ValueError` unless ``dtype`` is a floating torch dtype."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch.dtype, got {dtype!r}")


def _check_seed(seed: Any) -> int:
    """``seed`` as an ``int``; raise :class:`ValueError` unless it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    return int(seed)


def seeded_split_indices(
    n: int, sizes: tuple[int, int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a seeded random train / valid / test split of ``n`` items.

    The procedure, used by every seeded split in this module: ``perm =
    numpy.random.default_rng(seed).permutation(n)``; train is ``perm[:n_train]``, valid is
    ``perm[n_train:n_train + n_valid]`` and test is ``perm[n_train + n_valid:]`` (each in
    permuted order). ``sizes`` must sum to ``n``.

    Example:
        >>> tr, va, te = seeded_split_indices(10, (6, 2, 2), seed=0)
        >>> len(tr), len(va), len(te)
        (6, 2, 2)
        >>> sorted(np.concatenate([tr, va, te]).tolist()) == list(range(10))
        True
    """
    seed = _check_seed(seed)
    if len(sizes) != 3 or any(int(s) < 0 for s in sizes) or sum(sizes) != n:
        raise ValueError(f"sizes: expected three non-negative sizes summing to {n}, got {sizes}")
    n_train, n_valid, _ = (int(s) for s in sizes)
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:n_train], perm[n_train : n_train + n_valid], perm[n_train + n_valid :]


def random_subset(x: torch.Tensor, n: int | None, seed: int = 0) -> torch.Tensor:
    """``n`` rows of ``x`` drawn without replacement (``numpy.random.default_rng(seed)``
    permutation, first ``n``), or all of ``x`` when ``n`` is ``None`` or ``>= len(x)``.

    Never evaluate on the *first* ``n`` rows of an ordered split: the MNIST test set (and so
    static binarized MNIST's) puts the cleaner writers first, so a VAE's ELBO on its first
    images is markedly better than on the whole set.

    Example:
        >>> x = torch.arange(10).unsqueeze(-1)
        >>> random_subset(x, 3).flatten().tolist(), random_subset(x, None).shape
        ([2, 4, 6], torch.Size([10, 1]))
    """
    if n is None or n >= x.shape[0]:
        return x
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected None or a positive integer, got {n!r}")
    perm = np.random.default_rng(_check_seed(seed)).permutation(x.shape[0])[:n]
    return x[torch.from_numpy(np.sort(perm)).to(x.device)]


def _to_tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """``a`` as a (contiguous) torch tensor of ``dtype``."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _seeded_splits(
    x: np.ndarray, sizes: tuple[int, int, int], seed: int, dtype: torch.dtype
) -> Splits:
    """The rows of ``x`` split by :func:`seeded_split_indices`, as tensors of ``dtype``."""
    idx = seeded_split_indices(len(x), sizes, seed)
    return Splits(*(_to_tensor(x[i], dtype) for i in idx))


def _seeded_labelled_splits(
    x: np.ndarray,
    labels: np.ndarray,
    sizes: tuple[int, int, int],
    seed: int,
    dtype: torch.dtype,
    classnames: tuple[str, ...],
) -> LabelledSplits:
    """Rows of ``x`` (as ``dtype``) and their ``int64`` ``labels``, split by
    :func:`seeded_split_indices`."""
    idx = seeded_split_indices(len(x), sizes, seed)
    return LabelledSplits(
        *(_to_tensor(x[i], dtype) for i in idx),
        *(torch.from_numpy(labels[i]) for i in idx),
        classnames,
    )


# --------------------------------------------------------------------------------------------
# Image datasets
# --------------------------------------------------------------------------------------------


def load_static_mnist(
    path: PathLike | None = None, *, dtype: torch.dtype = torch.float32, verify: bool = True
) -> Splits:
    """Load statically binarized MNIST with its standard split.

    The "static MNIST" of the flow / VAE literature (Larochelle & Murray 2011): a single fixed
    binarization of MNIST with the standard split train 50000 / valid 10000 / test 10000. The
    canonical file ``binarized_mnist_larochelle_packbits.npz`` (keys ``train``, ``valid``,
    ``test``, ``uint8`` of shape ``(N, 98)`` packed bits) was decoded from
    ``binarized_mnist.npz`` in mad-ant/TheanoNADE; all three splits match the published checksums
    of Larochelle's ``binarized_mnist_{train,valid,test}.amat`` byte for byte.

    Args:
        path: the ``.npz`` file, or a directory containing it under its canonical name
            (default: :func:`default_data_dir`).
        dtype: floating dtype of the returned tensors.
        verify: check the file's sha256 checksum first.

    Returns:
        :class:`Splits` of tensors of shapes ``(50000, 784)``, ``(10000, 784)``, ``(10000, 784)``
        with values in {0, 1}; each row is a 28x28 image in row-major order
        (``x.view(-1, 28, 28)`` is upright). Unlabelled (the binarized release has no labels).

    Raises:
        FileNotFoundError: the file is absent.
        ValueError: checksum mismatch, or the file is not the expected ``.npz``.

    Example:
        >>> data_dir = default_data_dir()
        >>> if data_dir is not None and (data_dir / MNIST_FILE).exists():
        ...     mnist = load_static_mnist(data_dir)
        ...     assert mnist.sizes == (50000, 10000, 10000)
        ...     assert mnist.train.shape[1] == 784
    """
    _check_float_dtype(dtype)
    file = _open_canonical(path, MNIST_FILE, verify)
    sizes = {"train": 50000, "valid": 10000, "test": 10000}
    arrays = _load_npz(file, {k: ((n, 98), "uint8") for k, n in sizes.items()})
    out = {k: _to_tensor(np.unpackbits(a, axis=1)[:, :784], dtype) for k, a in arrays.items()}
    return Splits(**out)


def load_frey_faces(
    path: PathLike | None = None,
    *,
    seed: int = 0,
    scale: bool = True,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> Splits:
    """Load the Frey faces with a seeded 1565 / 200 / 200 split.

    1965 grey images of Brendan Frey's face, 28x20 pixels, grey levels 0..255. The canonical
    file ``freyfaces_1965x28x20_uint8.npz`` (key ``x``, ``uint8`` of shape ``(1965, 28, 20)``)
    was converted without pickle from ``data/Freyfaces/freyfaces.pkl`` in
    riannevdberg/sylvester-flows (the same file as jmtomczak/vae_vampprior). Like
    sylvester-flows, the images are shuffled with a seed and split 1565/200/200 and scaled by
    1/255; our shuffle is :func:`seeded_split_indices` (``numpy.random.default_rng(seed)
    .permutation(1965)``), so the split is not sylvester-flows' own.

    Args:
        path: the ``.npz`` file, or a directory containing it under its canonical name
            (default: :func:`default_data_dir`).
        seed: seed of the split (default ``0``).
        scale: if ``True`` (default) divide the grey levels by 255 so values lie in [0, 1]; if
            ``False`` return the raw grey levels 0..255 (integer-valued), e.g. for a
            discretized likelihood; then an integer ``dtype`` such as ``torch.uint8`` is allowed.
        dtype: dtype of the returned tensors (floating unless ``scale=False``).
        verify: check the file's sha256 checksum first.

    Returns:
        :class:`Splits` of tensors of shapes ``(1565, 560)``, ``(200, 560)``, ``(200, 560)``;
        each row is a 28x20 image in row-major order (``x.view(-1, 28, 20)`` is upright).

    Raises:
        FileNotFoundError: the file is absent.
        ValueError: checksum mismatch, or the file is not the expected ``.npz``.

    Example:
        >>> data_dir = default_data_dir()
        >>> if data_dir is not None and (data_dir / FREY_FACES_FILE).exists():
        ...     frey = load_frey_faces(data_dir, seed=0)
        ...     assert frey.sizes == (1565, 200, 200) and frey.train.shape[1] == 560
        ...     raw = load_frey_faces(data_dir, scale=False, dtype=torch.uint8)
        ...     assert raw.train.dtype == torch.uint8
    """
    _check_frey_dtype(dtype, scale)
    seed = _check_seed(seed)
    file = _open_canonical(path, FREY_FACES_FILE, verify)
    x = _load_npz(file, {"x": ((1965, 28, 20), "uint8")})["x"].reshape(1965, 560)
    return _seeded_splits(x / 255.0 if scale else x, (1565, 200, 200), seed, dtype)


def _check_frey_dtype(dtype: torch.dtype, scale: bool) -> None:
    """Raise unless ``dtype`` is floating (``scale=True``) or real, not bool (``scale=False``)."""
    if scale:
        _check_float_dtype(dtype)
    elif not isinstance(dtype, torch.dtype) or dtype.is_complex or dtype == torch.bool:
        raise ValueError(f"dtype: expected a real torch.dtype, got {dtype!r}")


def load_caltech_silhouettes(
    path: PathLike | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> LabelledSplits:
    """Load Caltech 101 Silhouettes 28x28 with a seeded 4100 / 2264 / 2307 split and labels.

    All 8671 silhouettes of the 101 classes. The canonical file ``caltech101_silhouettes_28.npz``
    (keys ``x_packbits`` ``uint8`` ``(8671, 98)`` packed bits, ``y`` class 1..101,
    ``classnames`` ``(101,)`` strings) was converted from
    ``datasets/caltech101_silhouettes_28.mat`` in AshaNarayana/MLP_Assignment. The file stores
    each image column-major with the object as 0 and the background as 1; we return it
    **row-major and upright with foreground (the object) = 1**:
    ``x = 1 - bits.reshape(-1, 28, 28, order="F").reshape(-1, 784)``.

    Split: the standard "split1" has sizes 4100/2264/2307 but its indices are not available,
    so this is a seeded substitute with the same sizes, made by :func:`seeded_split_indices`
    (not stratified). Numbers are not directly comparable with published split1 results.

    Args:
        path: the ``.npz`` file, or a directory containing it under its canonical name
            (default: :func:`default_data_dir`).
        seed: seed of the split (default ``0``).
        dtype: floating dtype of the returned images.
        verify: check the file's sha256 checksum first.

    Returns:
        :class:`LabelledSplits` with images of shapes ``(4100, 784)``, ``(2264, 784)``,
        ``(2307, 784)`` in {0, 1}, ``int64`` labels ``0..100`` (the file's class minus one) and
        the 101 ``classnames``.

    Raises:
        FileNotFoundError: the file is absent.
        ValueError: checksum mismatch, or the file is not the expected ``.npz``.

    Example:
        >>> data_dir = default_data_dir()
        >>> if data_dir is not None and (data_dir / CALTECH_SILHOUETTES_FILE).exists():
        ...     cal = load_caltech_silhouettes(data_dir)
        ...     assert cal.sizes == (4100, 2264, 2307) and len(cal.classnames) == 101
    """
    _check_float_dtype(dtype)
    seed = _check_seed(seed)
    file = _open_canonical(path, CALTECH_SILHOUETTES_FILE, verify)
    x, labels, classnames = _read_caltech(file)
    return _seeded_labelled_splits(x, labels, (4100, 2264, 2307), seed, dtype, classnames)


def _read_caltech(file: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images ``(8671, 784)`` in {0, 1}, ``int64`` labels 0..100 and the 101 class names."""
    arrays = _load_npz(
        file,
        {
            "x_packbits": ((8671, 98), "uint8"),
            "y": ((8671,), "i"),
            "classnames": ((101,), "U"),
        },
    )
    y = arrays["y"].astype(np.int64)
    if y.min() < 1 or y.max() > 101:
        raise ValueError(
            f"{file}: malformed file: key 'y': expected class labels in 1..101, found values in "
            f"{y.min()}..{y.max()}"
        )
    x = _caltech_pixels(arrays["x_packbits"])
    return x, y - 1, tuple(str(c) for c in arrays["classnames"])


def _caltech_pixels(packed: np.ndarray) -> np.ndarray:
    """Packed column-major silhouettes (object 0) to row-major rows with the object as 1.

    sylvester-flows also uses ``1 - x``, so its pixel values match ours, up to the pixel order,
    which matters only to convolutional models.
    """
    bits = np.unpackbits(packed, axis=1)[:, :784]
    return 1 - bits.reshape(-1, 28, 28, order="F").reshape(-1, 784)


def load_digits(
    binarize: bool = False,
    *,
    stochastic: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> LabelledSplits:
    """Load scikit-learn's bundled 8x8 digits with a seeded 1197 / 300 / 300 split.

    The 1797 8x8 handwritten digits shipped with scikit-learn (``sklearn.datasets.load_digits``,
    a copy of the UCI "Optical Recognition of Handwritten Digits" test set); nothing to
    download, so this is the zero-setup dataset for VAE demos. Needs scikit-learn
    (``pip install pyro-nf[examples]``).

    Grey levels 0..16 are scaled to [0, 1] by dividing by 16. With ``binarize=True`` the
    pixels become {0, 1}: by default deterministically (``x > 0.5``, i.e. grey level > 8);
    with ``stochastic=True`` by one Bernoulli draw per pixel with probability ``x`` from
    ``numpy.random.default_rng(seed + 1)`` (a fixed, *static* binarization, drawn before the
    split). The split is :func:`seeded_split_indices` (``numpy.random.default_rng(seed)
    .permutation(1797)``, first 1197 train, next 300 valid, last 300 test).

    Args:
        binarize: return {0, 1} pixels instead of grey levels in [0, 1].
        stochastic: binarize by sampling instead of thresholding (needs ``binarize=True``).
        seed: seed of the split and of the stochastic binarization (default ``0``).
        dtype: floating dtype of the returned images.

    Returns:
        :class:`LabelledSplits` with images of shapes ``(1197, 64)``, ``(300, 64)``,
        ``(300, 64)`` (row-major 8x8), ``int64`` labels 0..9, classnames ``"0" .. "9"``.

    Raises:
        ImportError: scikit-learn is not installed.

    Example:
        >>> import importlib.util
        >>> if importlib.util.find_spec("sklearn") is not None:
        ...     digits = load_digits(binarize=True)
        ...     assert digits.sizes == (1197, 300, 300) and digits.train.shape[1] == 64
        ...     assert set(digits.train.unique().tolist()) <= {0.0, 1.0}
    """
    _check_float_dtype(dtype)
    seed = _check_seed(seed)
    if stochastic and not binarize:
        raise ValueError("stochastic: stochastic=True needs binarize=True")
    x, y = _sklearn_digits()
    if binarize:
        x = _binarize(x, stochastic, seed)
    classnames = tuple(str(k) for k in range(10))
    return _seeded_labelled_splits(x, y, (1197, 300, 300), seed, dtype, classnames)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits: ``float64`` pixels in [0, 1] (grey level / 16), ``int64``
    labels."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:
        raise ImportError(
            "load_digits needs scikit-learn, which is not installed; install it with "
            "`pip install pyro-nf[examples]` (or `pip install scikit-learn`)"
        ) from e
    x, y = _sk_load_digits(return_X_y=True)
    x = np.asarray(x, dtype=np.float64) / 16.0
    y = np.asarray(y, dtype=np.int64)
    if x.shape != (1797, 64) or y.shape != (1797,):
        raise ValueError(
            f"sklearn.datasets.load_digits: expected shapes (1797, 64) and (1797,), found "
            f"{x.shape} and {y.shape}"
        )
    return x, y


def _binarize(x: np.ndarray, stochastic: bool, seed: int) -> np.ndarray:
    """{0, 1} pixels: one Bernoulli(``x``) draw each from ``default_rng(seed + 1)``
    (``stochastic``), else ``x > 0.5``."""
    if stochastic:
        return (np.random.default_rng(seed + 1).random(x.shape) < x).astype(np.float64)
    return (x > 0.5).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Tabular datasets
# --------------------------------------------------------------------------------------------


def load_german_credit(
    path: PathLike | None = None,
    *,
    standardize: bool = False,
    intercept: bool = False,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> TabularData:
    """Load the UCI Statlog German credit data (numeric version) for logistic regression.

    1000 applicants, 24 numeric features (the 20 original attributes with the categorical ones
    indicator-coded by the UCI maintainers; the numeric columns are not individually named in
    ``german.doc``), label in the last column: 1 = good, 2 = bad. The canonical file
    ``german.data-numeric`` is whitespace-separated UCI text (checksum as registered by TFDS).

    By default the features are returned **raw** (unstandardized; their scales differ by orders
    of magnitude, useful to test robustness to bad scaling). The standard Bayesian logistic
    regression benchmark uses ``standardize=True, intercept=True``: each feature minus its mean,
    divided by its *population* standard deviation (``ddof=0``), then a column of ones appended
    as the **last** column (25 columns).

    Args:
        path: the file, or a directory containing it under its canonical name
            (default: :func:`default_data_dir`).
        standardize: standardize each feature to mean 0 and population std 1.
        intercept: append a column of ones (named ``"intercept"``) after the features.
        dtype: floating dtype of ``x`` and ``y``.
        verify: check the file's sha256 checksum first.

    Returns:
        :class:`TabularData` with ``x`` of shape ``(1000, 24)`` (``(1000, 25)`` with the
        intercept), ``y`` of shape ``(1000,)`` in {0., 1.} (1 for class 2 = bad credit, 300
        rows; 0 for good, 700 rows) in ``dtype`` (ready for a Bernoulli likelihood), and
        ``feature_names`` ``("a01", ..., "a24")`` (+ ``"intercept"``).

    Raises:
        FileNotFoundError: the file is absent.
        ValueError: checksum mismatch, or the file is not 1000 rows of 25 numbers.

    Example:
        >>> data_dir = default_data_dir()
        >>> if data_dir is not None and (data_dir / GERMAN_CREDIT_FILE).exists():
        ...     g = load_german_credit(data_dir, standardize=True, intercept=True)
        ...     assert g.x.shape == (1000, 25) and g.feature_names[-1] == "intercept"
    """
    _check_float_dtype(dtype)
    file = _open_canonical(path, GERMAN_CREDIT_FILE, verify)
    x, y = _read_german_credit(file)
    x, names = _design_matrix(file, x, standardize, intercept)
    return TabularData(_to_tensor(x, dtype), _to_tensor(y, dtype), names)


def _read_german_credit(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """The raw features ``(1000, 24)`` and the labels ``(1000,)`` (1 = bad, 0 = good)."""
    rows = _text_rows(file, None)
    data = _parse_rows(file, rows, n_rows=1000, n_cols=25, what="whitespace-separated")
    labels = data[:, -1]
    if not np.isin(labels, (1.0, 2.0)).all():
        bad = sorted(set(labels.tolist()) - {1.0, 2.0})[:5]
        raise ValueError(
            f"{file}: malformed file: expected labels 1 or 2 in the last column, found {bad}"
        )
    return data[:, :-1], (labels == 2.0).astype(np.float64)


def _design_matrix(
    file: Path, x: np.ndarray, standardize: bool, intercept: bool
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The German credit features, optionally standardized and with a final column of ones,
    and the column names."""
    names = [f"a{j:02d}" for j in range(1, 25)]
    if standardize:
        std = x.std(axis=0)
        if (std == 0).any():
            cols = np.flatnonzero(std == 0).tolist()
            raise ValueError(f"{file}: cannot standardize: constant feature columns {cols}")
        x = (x - x.mean(axis=0)) / std
    if intercept:
        x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        names.append("intercept")
    return x, tuple(names)


def load_sonar(
    path: PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> TabularData:
    """Load the UCI Connectionist Bench (Sonar, Mines vs. Rocks) data.

    208 sonar returns, 60 features (energy in each of 60 frequency bands, each in [0, 1]), label
    ``R`` (rock, 97 rows) or ``M`` (metal cylinder / mine, 111 rows). The canonical file
    ``sonar.all-data`` is comma-separated text from the UCI repository (checksum matches
    UCIData.jl's). Features are returned as in the file (no standardization, no intercept).

    Args:
        path: the file, or a directory containing it under its canonical name
            (default: :func:`default_data_dir`).
        dtype: floating dtype of ``x`` and ``y``.
        verify: check the file's sha256 checksum first.

    Returns:
        :class:`TabularData` with ``x`` ``(208, 60)``, ``y`` ``(208,)`` in ``dtype`` with
        **1 = M (mine)** and 0 = R (rock), and ``feature_names`` ``("band01", ..., "band60")``.

    Raises:
        FileNotFoundError: the file is absent.
        ValueError: checksum mismatch, or the file is not 208 rows of 60 numbers and R/M.

    Example:
        >>> data_dir = default_data_dir()
        >>> if data_dir is not None and (data_dir / SONAR_FILE).exists():
        ...     sonar = load_sonar(data_dir)
        ...     assert sonar.x.shape == (208, 60) and int(sonar.y.sum()) == 111
    """
    _check_float_dtype(dtype)
    file = _open_canonical(path, SONAR_FILE, verify)
    x, y = _read_sonar(file)
    names = tuple(f"band{j:02d}" for j in range(1, 61))
    return TabularData(_to_tensor(x, dtype), _to_tensor(y, dtype), names)


def _read_sonar(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """The features ``(208, 60)`` and the labels ``(208,)`` (1 = M, 0 = R)."""
    rows = _text_rows(file, ",")
    labels = [r[-1].strip() if r else "" for r in rows]
    bad = sorted({lab for lab in labels if lab not in ("R", "M")})
    if bad:
        raise ValueError(
            f"{file}: malformed file: expected label 'R' or 'M' in the last column, found {bad[:5]}"
        )
    x = _parse_rows(file, [r[:-1] for r in rows], n_rows=208, n_cols=60, what="comma-separated")
    return x, np.array([lab == "M" for lab in labels], dtype=np.float64)


def _parse_rows(
    file: Path, rows: list[list[str]], n_rows: int, n_cols: int, what: str
) -> np.ndarray:
    """``rows`` as a finite ``float64`` array of shape ``(n_rows, n_cols)``, else a clear error."""
    if len(rows) != n_rows:
        raise ValueError(
            f"{file}: malformed file: expected {n_rows} non-empty rows, found {len(rows)}"
        )
    for i, r in enumerate(rows):
        if len(r) != n_cols:
            raise ValueError(
                f"{file}: malformed file: expected {n_cols} {what} numeric values per row, "
                f"found {len(r)} on data row {i + 1}"
            )
    try:
        data = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{file}: malformed file: expected numbers, found {e}") from None
    if not np.isfinite(data).all():
        raise ValueError(f"{file}: malformed file: expected finite numbers, found NaN or inf")
    return data
