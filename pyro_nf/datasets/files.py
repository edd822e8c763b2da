"""Locating, checksumming and reading the data files (the canonical files of
:mod:`pyro_nf.datasets` and their upstream originals)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..utils.validation import check_seed

__all__ = [
    "CALTECH_SILHOUETTES_FILE",
    "ENV_VAR",
    "FREY_FACES_FILE",
    "GERMAN_CREDIT_FILE",
    "MNIST_FILE",
    "PathLike",
    "SHA256",
    "SONAR_FILE",
    "SOURCES",
    "check_array",
    "check_float_dtype",
    "check_seed",
    "default_data_dir",
    "file_sha256",
    "load_npz",
    "open_canonical",
    "parse_rows",
    "read_text",
    "resolve_file",
    "text_rows",
    "verify_checksum",
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
SOURCES: dict[str, str] = {
    MNIST_FILE: (
        "the GitHub repository mad-ant/TheanoNADE (binarized_mnist.npz, the statically "
        "binarized MNIST of Larochelle & Murray 2011; store each split packed with "
        "numpy.packbits(a, axis=1) as uint8 (N, 98) under keys train, valid, test), or put Larochelle's "
        "binarized_mnist_{train,valid,test}.amat in that directory"
    ),
    FREY_FACES_FILE: (
        "the GitHub repository riannevdberg/sylvester-flows (data/Freyfaces/freyfaces.pkl; "
        "store it in an .npz under key x as uint8 (1965, 28, 20)), or put Roweis' "
        "frey_rawface.mat in that directory"
    ),
    CALTECH_SILHOUETTES_FILE: (
        "the GitHub repository AshaNarayana/MLP_Assignment "
        "(datasets/caltech101_silhouettes_28.mat; store it in an .npz under keys x_packbits "
        "(uint8 (8671, 98) packed bits), y (classes 1..101) and classnames), or put "
        "caltech101_silhouettes_28_split1.mat or caltech101_silhouettes_28.mat in that directory"
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
ENV_VAR = "PYRO_NF_DATA"


def default_data_dir() -> Path | None:
    """Return the directory holding pyro-nf's canonical data files, or ``None``.

    The directory is, in order: the environment variable ``PYRO_NF_DATA`` if it is set and
    non-empty (returned as given, with ``~`` expanded, whether or not it exists); else
    ``../shared/data`` relative to the repository root of a source checkout (that is
    ``Path(__file__).resolve().parents[3] / "shared" / "data"``) if it is a directory; else
    ``None``. Callers use ``None`` to skip cleanly when no data is available.

    Example:
        >>> d = default_data_dir()
        >>> d is None or isinstance(d, Path)
        True
    """
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    candidate = Path(__file__).resolve().parents[3] / "shared" / "data"
    return candidate if candidate.is_dir() else None


def resolve_file(path: PathLike | None, filename: str) -> Path:
    """Return the file to read: ``path`` itself if it is a file, else ``path / filename``."""
    where = "the directory given by default_data_dir()"
    if path is None:
        data_dir = default_data_dir()
        if data_dir is None:
            raise FileNotFoundError(
                f"{filename}: no path given and no data directory found (set the environment "
                f"variable {ENV_VAR} to a directory holding {filename}); get the file from "
                f"{SOURCES[filename]}"
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
        f"{str(candidate)!r}); get the file from {SOURCES[filename]}"
    )


def file_sha256(file: Path) -> str:
    """The hex sha256 digest of ``file``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(file: Path, filename: str) -> None:
    """Raise :class:`ValueError` unless ``file`` has the sha256 checksum of ``filename``."""
    expected = SHA256[filename]
    found = file_sha256(file)
    if found != expected:
        raise ValueError(
            f"{file}: sha256 checksum mismatch for {filename}: expected {expected}, found "
            f"{found}; the file is corrupt or is not the canonical {filename} (pass verify=False "
            f"to skip the checksum, at your own risk)"
        )


def open_canonical(path: PathLike | None, filename: str, verify: bool) -> Path:
    """The canonical file ``filename`` found from ``path``, its checksum checked if ``verify``."""
    file = resolve_file(path, filename)
    if verify:
        verify_checksum(file, filename)
    return file


def load_npz(file: Path, expected: dict[str, tuple[tuple[int | None, ...], str]]) -> dict:
    """Read an ``.npz`` without pickles and check its keys, shapes and dtype kinds.

    ``expected`` maps key -> (shape with ``None`` for any size, numpy dtype string or kind
    letter such as ``"U"``).
    """
    arrays = _read_npz_arrays(file, expected)
    for key, (shape, dtype) in expected.items():
        check_array(file, key, arrays[key], shape, dtype)
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


def check_array(
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


def read_text(file: Path) -> str:
    """The contents of ``file`` as ASCII text (non-text bytes are a malformed file)."""
    try:
        return file.read_bytes().decode("ascii")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{file}: malformed file: expected ASCII text, found non-text bytes ({e})"
        ) from e


def text_rows(file: Path, sep: str | None) -> list[list[str]]:
    """The non-blank lines of the text file ``file``, each stripped and split at ``sep``."""
    return [line.strip().split(sep) for line in read_text(file).splitlines() if line.strip()]


def parse_rows(
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


def check_float_dtype(dtype: torch.dtype) -> None:
    """Raise :class:`ValueError` unless ``dtype`` is a floating torch dtype."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
