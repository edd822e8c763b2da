"""The return types of the loaders and the seeded splits they use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .files import check_seed

__all__ = [
    "LabelledSplits",
    "Splits",
    "TabularData",
    "random_subset",
    "seeded_labelled_splits",
    "seeded_split_indices",
    "seeded_splits",
    "to_tensor",
]


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
    seed = check_seed(seed)
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
    perm = np.random.default_rng(check_seed(seed)).permutation(x.shape[0])[:n]
    return x[torch.from_numpy(np.sort(perm)).to(x.device)]


def to_tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """``a`` as a (contiguous) torch tensor of ``dtype``."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def seeded_splits(
    x: np.ndarray, sizes: tuple[int, int, int], seed: int, dtype: torch.dtype
) -> Splits:
    """The rows of ``x`` split by :func:`seeded_split_indices`, as tensors of ``dtype``."""
    idx = seeded_split_indices(len(x), sizes, seed)
    return Splits(*(to_tensor(x[i], dtype) for i in idx))


def seeded_labelled_splits(
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
        *(to_tensor(x[i], dtype) for i in idx),
        *(torch.from_numpy(labels[i]) for i in idx),
        classnames,
    )
