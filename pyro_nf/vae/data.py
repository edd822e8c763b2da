r"""The VAE benchmark datasets with the likelihood each one calls for.

=========== ========================= =============== ==========================================
name        splits (train/valid/test) pixels          likelihood
=========== ========================= =============== ==========================================
``mnist``   50000 / 10000 / 10000     28x28 binary    Bernoulli (static binarization)
``caltech`` 4100 / 2264 / 2307        28x28 binary    Bernoulli (seeded split, not "split1")
``frey``    1565 / 200 / 200          28x20 grey      discretized logistic, 256 levels (nats/image)
``digits``  1197 / 300 / 300          8x8 binary      Bernoulli (grey level > 8; no download)
=========== ========================= =============== ==========================================

The files are read by :mod:`pyro_nf.datasets` from :func:`~pyro_nf.datasets.default_data_dir`
(or ``data_dir``); ``digits`` needs only scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import datasets

__all__ = ["DATASETS", "VAEData", "load_vae_data"]

#: the dataset names :func:`load_vae_data` knows.
DATASETS = ("mnist", "frey", "caltech", "digits")


@dataclass(frozen=True, eq=False)
class VAEData:
    """Splits of a VAE dataset, ``(N, D)`` each, plus how to model them.

    Example:
        >>> d = VAEData(torch.zeros(3, 4), torch.zeros(1, 4), torch.zeros(1, 4), "bernoulli", (2, 2))
        >>> d.data_dim
        4
        >>> d
        VAEData(train/valid/test=3/1/1, data_dim=4, image_shape=(2, 2), likelihood='bernoulli', dtype=torch.float32)
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    likelihood: str
    image_shape: tuple[int, int]

    @property
    def data_dim(self) -> int:
        """Number of pixels ``D``."""
        return self.train.shape[1]

    def __repr__(self) -> str:  # shapes, never the pixels
        sizes = "/".join(str(len(t)) for t in (self.train, self.valid, self.test))
        return (
            f"VAEData(train/valid/test={sizes}, data_dim={self.data_dim}, image_shape="
            f"{self.image_shape}, likelihood={self.likelihood!r}, dtype={self.train.dtype})"
        )


def load_vae_data(
    name: str, data_dir: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> VAEData:
    """Load one of :data:`DATASETS` (see the module docstring).

    Raises:
        FileNotFoundError: the data file is absent (not for ``digits``).
        ImportError: scikit-learn is missing (``digits`` only).

    Example:
        >>> import importlib.util
        >>> if importlib.util.find_spec("sklearn") is not None:
        ...     d = load_vae_data("digits")
        ...     assert d.train.shape == (1197, 64) and d.likelihood == "bernoulli"
    """
    if name not in DATASETS:
        raise ValueError(f"name: expected one of {DATASETS}, got {name!r}")
    if name == "digits":
        s = datasets.load_digits(binarize=True, dtype=dtype)
        return VAEData(s.train, s.valid, s.test, "bernoulli", (8, 8))
    path = data_dir if data_dir is not None else datasets.default_data_dir()
    if name == "mnist":
        s = datasets.load_static_mnist(path, dtype=dtype)
        return VAEData(s.train, s.valid, s.test, "bernoulli", (28, 28))
    if name == "caltech":
        s = datasets.load_caltech_silhouettes(path, dtype=dtype)
        return VAEData(s.train, s.valid, s.test, "bernoulli", (28, 28))
    s = datasets.load_frey_faces(path, dtype=dtype)
    return VAEData(s.train, s.valid, s.test, "discretized_logistic", (28, 20))
