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

**Upstream files.** A user who has the files as their authors distribute them needs no
conversion: Larochelle's ``binarized_mnist_{train,valid,test}.amat``, Roweis'
``frey_rawface.mat`` and Marlin's ``caltech101_silhouettes_28_split1.mat`` (the standard split 1,
used as it is) or ``caltech101_silhouettes_28.mat`` are read directly when the canonical file is
absent from the directory (see :mod:`pyro_nf.datasets.upstream`; ``.mat`` needs SciPy).

The package: :mod:`~pyro_nf.datasets.files` (locating, checksums, parsing),
:mod:`~pyro_nf.datasets.splits` (return types, seeded splits), :mod:`~pyro_nf.datasets.images`,
:mod:`~pyro_nf.datasets.tabular`, :mod:`~pyro_nf.datasets.upstream`.

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

from .files import (
    CALTECH_SILHOUETTES_FILE,
    FREY_FACES_FILE,
    GERMAN_CREDIT_FILE,
    MNIST_FILE,
    SHA256,
    SONAR_FILE,
    default_data_dir,
)
from .images import load_caltech_silhouettes, load_digits, load_frey_faces, load_static_mnist
from .splits import LabelledSplits, Splits, TabularData, random_subset, seeded_split_indices
from .tabular import load_german_credit, load_sonar

__all__ = [
    "CALTECH_SILHOUETTES_FILE",
    "FREY_FACES_FILE",
    "GERMAN_CREDIT_FILE",
    "LabelledSplits",
    "MNIST_FILE",
    "SHA256",
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
