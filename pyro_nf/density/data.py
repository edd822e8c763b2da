"""Data preparation for :class:`~pyro_nf.density.DensityEstimator`: checking and cleaning the
rows of data and context, the seeded train/validation split and the per-epoch minibatch
shuffler.

Every check raises ``ValueError`` naming the argument (``x``, ``context``, ``x_val`` ...).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..utils.validation import check_context, check_positive_int

__all__ = [
    "FitData",
    "Shuffler",
    "as_tensor",
    "check_fraction",
    "check_frame_columns",
    "check_not_constant",
    "check_rows",
    "check_standardizable",
    "clean_rows",
    "context_standardization",
    "explicit_validation",
    "fit_rows",
    "frame_columns",
    "prepare_rows",
    "split_for_fit",
    "train_val_split",
]


def check_fraction(val_fraction: Any) -> float:
    """``val_fraction`` as a float in ``[0, 1)``, else ``ValueError``.

    Example:
        >>> check_fraction(0.25)
        0.25
    """
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 <= val_fraction < 1
    ):
        raise ValueError(f"val_fraction: expected a float in [0, 1), got {val_fraction!r}")
    return float(val_fraction)


def _n_val(n: int, val_fraction: float) -> int:
    """Rows held out for validation: ``max(1, round(val_fraction * n))``, 0 for a 0 fraction."""
    return 0 if val_fraction == 0 else max(1, int(round(val_fraction * n)))


def train_val_split(
    n: int, val_fraction: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into training and validation indices.

    The validation part has ``max(1, round(val_fraction * n))`` rows (none if ``val_fraction``
    is 0); both index tensors are sorted, ``int64``, on the CPU.

    Example:
        >>> tr, va = train_val_split(10, 0.2, seed=0)
        >>> len(tr), len(va), sorted(tr.tolist() + va.tolist()) == list(range(10))
        (8, 2, True)
        >>> torch.equal(va, train_val_split(10, 0.2, seed=0)[1])
        True
    """
    n = check_positive_int("n", n)
    check_fraction(val_fraction)
    n_val = _n_val(n, val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def frame_columns(name: str, value: Any) -> tuple[str, ...] | None:
    """The column names of a pandas ``DataFrame`` ``value`` (as strings), ``None`` for other data.

    Example:
        >>> import pandas as pd
        >>> frame_columns("x", pd.DataFrame({"a": [1.0], "b": [2.0]})), frame_columns("x", [[1.0]])
        (('a', 'b'), None)
    """
    columns = getattr(value, "columns", None)
    if columns is None or not hasattr(value, "to_numpy"):
        return None
    return tuple(str(c) for c in columns)


def check_frame_columns(name: str, value: Any, expected: tuple[str, ...] | None) -> None:
    """``ValueError`` if ``value`` is a ``DataFrame`` whose columns are not ``expected`` (the
    fitted data's column names; nothing is checked when either has no names)."""
    found = frame_columns(name, value)
    if found is not None and expected is not None and found != tuple(expected):
        raise ValueError(
            f"{name}: expected a DataFrame with the fitted columns {list(expected)}, got columns "
            f"{list(found)}"
        )


def _frame_values(name: str, value: Any) -> np.ndarray:
    """The values of a pandas ``DataFrame``/``Series`` as ``float64``, else ``ValueError`` naming
    the non-numeric columns."""
    dtypes = getattr(value, "dtypes", None)
    if dtypes is not None and hasattr(dtypes, "items"):
        bad = [str(c) for c, t in dtypes.items() if getattr(t, "kind", "O") not in "iufb"]
        if bad:
            raise ValueError(f"{name}: expected numeric columns, got non-numeric columns {bad}")
    return np.array(value.to_numpy(dtype=np.float64), copy=True)


def as_tensor(name: str, value: Any, ref: torch.Tensor) -> torch.Tensor:
    """Tensor/array/list/``DataFrame`` -> tensor on ``ref``'s device and dtype (real values only).

    Example:
        >>> as_tensor("x", [[1, 2]], torch.zeros(1, dtype=torch.float64)).dtype
        torch.float64
    """
    if hasattr(value, "to_numpy") and not isinstance(value, torch.Tensor):
        value = _frame_values(name, value)
    if isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value)
            value = torch.as_tensor(arr if arr.flags.writeable else arr.copy())
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{name}: expected a real-valued array, got {type(value).__name__} "
                f"that cannot be converted ({e})"
            ) from e
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{name}: expected a torch.Tensor, NumPy array or pandas DataFrame, got "
            f"{type(value).__name__}"
        )
    if value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"{name}: expected real-valued data, got dtype {value.dtype}")
    return value.to(device=ref.device, dtype=ref.dtype)


def check_rows(name: str, value: torch.Tensor, dim: int) -> None:
    """Raise unless ``value`` has shape ``(N, dim)``."""
    if value.dim() != 2 or value.shape[1] != dim:
        raise ValueError(
            f"{name}: expected a tensor of shape (N, {dim}) (N rows of dimension "
            f"{dim}), got shape {tuple(value.shape)}"
        )


def clean_rows(
    x: torch.Tensor,
    context: torch.Tensor | None,
    x_name: str,
    c_name: str,
    drop: bool,
    stacklevel: int = 3,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raise on (or, with ``drop``, remove with a warning) rows with NaN/inf in x or context.

    ``stacklevel`` is the warning's, counted from this function.
    """
    bad_x = ~torch.isfinite(x).all(-1)
    bad = bad_x.clone()
    if context is not None:
        bad |= ~torch.isfinite(context).all(-1)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return x, context
    if not drop:
        where = x_name if bool(bad_x.any()) else c_name
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        more = ", ..." if n_bad > 5 else ""
        raise ValueError(
            f"{where}: expected finite values, got {n_bad} of {x.shape[0]} rows with NaN or inf "
            f"(rows {rows}{more}); pass drop_nonfinite=True to drop such rows"
        )
    warnings.warn(
        f"{x_name}: dropped {n_bad} of {x.shape[0]} rows with NaN or inf values "
        "(drop_nonfinite=True)",
        UserWarning,
        stacklevel=stacklevel,
    )
    keep = ~bad
    return x[keep], (context[keep] if context is not None else None)


def _checked_context_rows(
    c_name: str, context: Any, x: torch.Tensor, x_name: str, context_dim: int | None
) -> torch.Tensor | None:
    """The context as ``(N, H)`` rows matching ``x`` (``None`` for an unconditional flow)."""
    if context_dim is None:
        if context is not None:
            check_context(context, None)  # raises, naming `context`
        return None
    if context is None:
        raise ValueError(
            f"{c_name}: this flow is amortized (context_dim={context_dim}) and "
            f"needs a tensor of shape (N, {context_dim}), got None"
        )
    context = as_tensor(c_name, context, x)
    check_rows(c_name, context, context_dim)
    if context.shape[0] != x.shape[0]:
        raise ValueError(
            f"{c_name}: expected {x.shape[0]} rows (one per row of {x_name}), "
            f"got {context.shape[0]}"
        )
    return context


def prepare_rows(
    names: tuple[str, str],
    x: Any,
    context: Any,
    *,
    ref: torch.Tensor,
    dim: int,
    context_dim: int | None,
    drop: bool,
    stacklevel: int = 2,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Checked, finite ``(N, dim)`` data and ``(N, context_dim)`` contexts (or ``None``).

    ``names`` are the argument names ``(x_name, c_name)`` used in errors; ``ref`` gives the
    dtype and device. Rows with NaN/inf raise, or with ``drop`` are removed with a warning
    (``stacklevel`` counted from this function, as in ``warnings.warn``).

    Example:
        >>> x, c = prepare_rows(("x", "context"), [[0.0, 1.0]], None, ref=torch.zeros(2),
        ...                     dim=2, context_dim=None, drop=False)
        >>> x.shape, c
        (torch.Size([1, 2]), None)
    """
    x_name, c_name = names
    x = as_tensor(x_name, x, ref)
    check_rows(x_name, x, dim)
    context = _checked_context_rows(c_name, context, x, x_name, context_dim)
    return clean_rows(x, context, x_name, c_name, drop, stacklevel=stacklevel + 1)


@dataclass
class FitData:
    """The rows a fit trains on and validates on (``x_val`` is ``None`` without validation)."""

    x_train: torch.Tensor
    c_train: torch.Tensor | None
    x_val: torch.Tensor | None
    c_val: torch.Tensor | None


def split_for_fit(
    x: torch.Tensor, context: torch.Tensor | None, val_fraction: float, seed: int
) -> FitData:
    """Hold out a seeded ``val_fraction`` of the rows (see :func:`train_val_split`).

    Raises ``ValueError`` when fewer than 2 training rows would be left.

    Example:
        >>> data = split_for_fit(torch.randn(10, 2), None, 0.2, seed=0)
        >>> data.x_train.shape[0], data.x_val.shape[0]
        (8, 2)
    """
    n = x.shape[0]
    n_val = _n_val(n, val_fraction)
    if n - n_val < 2:
        raise ValueError(
            f"x: expected at least {2 + n_val if n_val else 2} rows (2 for training"
            f"{f', {n_val} for validation with val_fraction={val_fraction:g}' if n_val else ''}"
            f"), got {n}"
        )
    tr, va = train_val_split(n, val_fraction, seed)
    tr, va = tr.to(x.device), va.to(x.device)
    return FitData(
        x_train=x[tr],
        c_train=context[tr] if context is not None else None,
        x_val=x[va] if n_val else None,
        c_val=context[va] if context is not None and n_val else None,
    )


def explicit_validation(
    x: torch.Tensor,
    context: torch.Tensor | None,
    x_val: torch.Tensor,
    context_val: torch.Tensor | None,
) -> FitData:
    """Train on all of ``x`` and validate on the given ``x_val`` (at least 1 and 2 rows).

    Example:
        >>> explicit_validation(torch.randn(5, 2), None, torch.randn(3, 2), None).x_val.shape
        torch.Size([3, 2])
    """
    if x_val.shape[0] < 1:
        raise ValueError("x_val: expected at least 1 finite row, got none")
    if x.shape[0] < 2:
        raise ValueError(f"x: expected at least 2 rows, got {x.shape[0]}")
    return FitData(x, context, x_val, context_val)


def fit_rows(
    est: Any,
    data: tuple[Any, Any],
    validation: tuple[Any, Any],
    val_fraction: float,
    seed: int,
    drop: bool,
) -> FitData:
    """Checked training and validation rows for ``est.fit``: ``validation = (x_val,
    context_val)`` if ``x_val`` is given, else a seeded ``val_fraction`` split of ``data = (x,
    context)``.

    ``est`` is the estimator: ``est.loc`` gives the dtype and device, ``est.dim`` and
    ``est.context_dim`` the shapes. A ``drop`` warning points at the caller's caller (``fit``).

    Example:
        >>> from pyro_nf.density import DensityEstimator
        >>> est = DensityEstimator("diagonal", dim=2)
        >>> fit_rows(est, (torch.randn(10, 2), None), (None, None), 0.2, 0, False).x_val.shape
        torch.Size([2, 2])
    """
    dims = {"ref": est.loc, "dim": est.dim, "context_dim": est.context_dim, "drop": drop}
    x, ctx = prepare_rows(("x", "context"), *data, stacklevel=3, **dims)
    if validation[0] is None:
        rows = split_for_fit(x, ctx, val_fraction, seed)
    else:
        xv, cv = prepare_rows(("x_val", "context_val"), *validation, stacklevel=3, **dims)
        rows = explicit_validation(x, ctx, xv, cv)
    check_not_constant("x", rows.x_train, "the training rows")
    check_standardizable("x", rows.x_train)
    if rows.c_train is not None:
        check_standardizable("context", rows.c_train)
    return rows


def check_standardizable(name: str, x: torch.Tensor) -> None:
    """Raise if the mean or standard deviation of a column of ``x`` overflows its dtype (finite
    values near the largest float do): such data cannot be standardized or scored.

    Example:
        >>> check_standardizable("x", torch.tensor([[1.0, 1e308], [2.0, -1e308]], dtype=torch.float64))
        Traceback (most recent call last):
        ...
        ValueError: x: expected values whose mean and standard deviation are finite in float64, got column(s) [1] where they overflow (values up to 1e+308 in absolute value); rescale the data (e.g. divide by a power of ten)
    """
    mean, std = x.mean(0), x.std(0, unbiased=False)
    bad = ~(torch.isfinite(mean) & torch.isfinite(std) & torch.isfinite(std.log()))
    if bool(bad.any()):
        cols = torch.nonzero(bad).flatten()[:10].tolist()
        peak = float(x[:, bad].abs().max())
        raise ValueError(
            f"{name}: expected values whose mean and standard deviation are finite in "
            f"{str(x.dtype).removeprefix('torch.')}, got column(s) {cols} where they overflow "
            f"(values up to {peak:.3g} in absolute value); rescale the data (e.g. divide by a "
            "power of ten)"
        )


def check_not_constant(name: str, x: torch.Tensor, where: str) -> None:
    """Raise if a column of ``x`` is constant (it has no density; maximum likelihood diverges).

    Example:
        >>> check_not_constant("x", torch.tensor([[1.0, 0.0], [1.0, 2.0]]), "the data")
        Traceback (most recent call last):
        ...
        ValueError: x: expected every column to vary, got 1 constant column(s) [0] (zero variance in the data); a constant column has no density and maximum likelihood diverges on it: drop it or add noise (dequantize)
    """
    mean, std = x.mean(0), x.std(0, unbiased=False)
    eps = torch.finfo(x.dtype).eps
    const = std <= 8 * eps * (mean.abs() + torch.finfo(x.dtype).tiny)
    if bool(const.any()):
        cols = torch.nonzero(const).flatten()[:10].tolist()
        raise ValueError(
            f"{name}: expected every column to vary, got {int(const.sum())} constant column(s) "
            f"{cols} (zero variance in {where}); a constant column has no density and maximum "
            "likelihood diverges on it: drop it or add noise (dequantize)"
        )


def context_standardization(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column ``(loc, scale)`` of contexts; a constant column keeps ``(0, 1)`` (unscaled).

    Example:
        >>> context_standardization(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
        (tensor([2., 0.]), tensor([1., 1.]))
    """
    c_std = c.std(0, unbiased=False)
    const = c_std <= 8 * torch.finfo(c.dtype).eps * (c.mean(0).abs() + 1e-30)
    loc = torch.where(const, torch.zeros_like(c_std), c.mean(0))
    return loc, torch.where(const, torch.ones_like(c_std), c_std)


class Shuffler:
    """Minibatch indices for step ``t``: a fresh seeded permutation every epoch (a pure function
    of ``t``, so checkpoint/resume gives the same batches); ``None`` means the full batch.

    Example:
        >>> batches = Shuffler(5, 2, seed=0, device=torch.device("cpu"))
        >>> [len(batches(t)) for t in range(3)], Shuffler(5, 8, 0, torch.device("cpu"))(0)
        ([2, 2, 1], None)
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, device
        self.per_epoch = math.ceil(n / batch_size)
        self.epoch, self.perm = -1, None

    def __call__(self, step: int) -> torch.Tensor | None:
        if self.batch_size >= self.n:
            return None  # full batch
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self.epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**62)
            self.perm = torch.randperm(self.n, generator=gen).to(self.device)
            self.epoch = epoch
        return self.perm[i * self.batch_size : (i + 1) * self.batch_size]
