"""The tabular datasets: UCI German credit (numeric) and sonar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .files import (
    GERMAN_CREDIT_FILE,
    SONAR_FILE,
    PathLike,
    check_float_dtype,
    default_data_dir,  # noqa: F401 (the doctests use it)
    open_canonical,
    parse_rows,
    text_rows,
)
from .splits import TabularData, to_tensor

__all__ = ["load_german_credit", "load_sonar"]


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
    check_float_dtype(dtype)
    file = open_canonical(path, GERMAN_CREDIT_FILE, verify)
    x, y = _read_german_credit(file)
    x, names = _design_matrix(file, x, standardize, intercept)
    return TabularData(to_tensor(x, dtype), to_tensor(y, dtype), names)


def _read_german_credit(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """The raw features ``(1000, 24)`` and the labels ``(1000,)`` (1 = bad, 0 = good)."""
    rows = text_rows(file, None)
    data = parse_rows(file, rows, n_rows=1000, n_cols=25, what="whitespace-separated")
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
    check_float_dtype(dtype)
    file = open_canonical(path, SONAR_FILE, verify)
    x, y = _read_sonar(file)
    names = tuple(f"band{j:02d}" for j in range(1, 61))
    return TabularData(to_tensor(x, dtype), to_tensor(y, dtype), names)


def _read_sonar(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """The features ``(208, 60)`` and the labels ``(208,)`` (1 = M, 0 = R)."""
    rows = text_rows(file, ",")
    labels = [r[-1].strip() if r else "" for r in rows]
    bad = sorted({lab for lab in labels if lab not in ("R", "M")})
    if bad:
        raise ValueError(
            f"{file}: malformed file: expected label 'R' or 'M' in the last column, found {bad[:5]}"
        )
    x = parse_rows(file, [r[:-1] for r in rows], n_rows=208, n_cols=60, what="comma-separated")
    return x, np.array([lab == "M" for lab in labels], dtype=np.float64)
