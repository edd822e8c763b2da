"""The image datasets: static binarized MNIST, Frey faces, Caltech 101 silhouettes, digits.

Each loader reads the canonical ``.npz`` (checksummed) or, when only those are present, the
upstream files as their authors distribute them (:mod:`pyro_nf.datasets.upstream`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .files import (
    CALTECH_SILHOUETTES_FILE,
    FREY_FACES_FILE,
    MNIST_FILE,
    PathLike,
    check_float_dtype,
    check_seed,
    default_data_dir,  # noqa: F401 (the doctests use it)
    load_npz,
    verify_checksum,
)
from .splits import LabelledSplits, Splits, seeded_labelled_splits, seeded_splits, to_tensor
from .upstream import (
    CALTECH_FULL_MAT,
    CALTECH_SPLIT1_MAT,
    FREY_MAT,
    MNIST_AMAT,
    locate,
    read_caltech_mat,
    read_frey_mat,
    read_mnist_amat,
)

__all__ = [
    "caltech_pixels",
    "load_caltech_silhouettes",
    "load_digits",
    "load_frey_faces",
    "load_static_mnist",
]


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
    check_float_dtype(dtype)
    file = locate(path, MNIST_FILE, (MNIST_AMAT["train"],))
    if file.suffix == ".amat":
        bits = read_mnist_amat(file, verify)
    else:
        if verify:
            verify_checksum(file, MNIST_FILE)
        sizes = {"train": 50000, "valid": 10000, "test": 10000}
        arrays = load_npz(file, {k: ((n, 98), "uint8") for k, n in sizes.items()})
        bits = {k: np.unpackbits(a, axis=1)[:, :784] for k, a in arrays.items()}
    return Splits(**{k: to_tensor(a, dtype) for k, a in bits.items()})


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
    seed = check_seed(seed)
    file = locate(path, FREY_FACES_FILE, (FREY_MAT,))
    if file.suffix == ".mat":
        x = read_frey_mat(file, verify).reshape(-1, 560)
    else:
        if verify:
            verify_checksum(file, FREY_FACES_FILE)
        x = load_npz(file, {"x": ((1965, 28, 20), "uint8")})["x"].reshape(1965, 560)
    sizes = _scaled_sizes(len(x), (1565, 200, 200))
    return seeded_splits(x / 255.0 if scale else x, sizes, seed, dtype)


def _scaled_sizes(n: int, published: tuple[int, int, int]) -> tuple[int, int, int]:
    """Split sizes for ``n`` items in the proportions of the ``published`` sizes (the published
    sizes themselves when ``n`` is their sum)."""
    total = sum(published)
    valid, test = (round(n * s / total) for s in published[1:])
    return n - valid - test, valid, test


def _check_frey_dtype(dtype: torch.dtype, scale: bool) -> None:
    """Raise unless ``dtype`` is floating (``scale=True``) or real, not bool (``scale=False``)."""
    if scale:
        check_float_dtype(dtype)
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
    check_float_dtype(dtype)
    seed = check_seed(seed)
    file = locate(path, CALTECH_SILHOUETTES_FILE, (CALTECH_SPLIT1_MAT, CALTECH_FULL_MAT))
    if file.suffix == ".mat":
        splits, classnames = read_caltech_mat(file, verify)
        if "all" not in splits:  # Marlin's split 1: the standard split, as it is
            parts = [(caltech_pixels(x), y - 1) for x, y in splits.values()]
            return LabelledSplits(
                *(to_tensor(x, dtype) for x, _ in parts),
                *(torch.from_numpy(y) for _, y in parts),
                classnames,
            )
        x, labels = caltech_pixels(splits["all"][0]), splits["all"][1] - 1
    else:
        if verify:
            verify_checksum(file, CALTECH_SILHOUETTES_FILE)
        x, labels, classnames = _read_caltech(file)
    sizes = _scaled_sizes(len(x), (4100, 2264, 2307))
    return seeded_labelled_splits(x, labels, sizes, seed, dtype, classnames)


def _read_caltech(file: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images ``(8671, 784)`` in {0, 1}, ``int64`` labels 0..100 and the 101 class names."""
    arrays = load_npz(
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
    x = caltech_pixels(np.unpackbits(arrays["x_packbits"], axis=1)[:, :784])
    return x, y - 1, tuple(str(c) for c in arrays["classnames"])


def caltech_pixels(bits: np.ndarray) -> np.ndarray:
    """Column-major silhouettes ``(N, 784)`` (object 0) to row-major rows with the object as 1.

    sylvester-flows also uses ``1 - x``, so its pixel values match ours, up to the pixel order,
    which matters only to convolutional models.
    """
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
    check_float_dtype(dtype)
    seed = check_seed(seed)
    if stochastic and not binarize:
        raise ValueError("stochastic: stochastic=True needs binarize=True")
    x, y = _sklearn_digits()
    if binarize:
        x = _binarize(x, stochastic, seed)
    classnames = tuple(str(k) for k in range(10))
    return seeded_labelled_splits(x, y, (1197, 300, 300), seed, dtype, classnames)


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
