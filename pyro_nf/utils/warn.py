"""Warnings that point at the user's line, not at pyro-nf's internals.

:func:`warnings.warn` attributes a warning to a fixed number of frames up the stack, which is
wrong as soon as the same warning can be reached along call paths of different depths (for
example :func:`pyro_nf.refine` called directly, or through ``guide.report().refine()``).
:func:`warn_at_caller` counts the frames instead: the warning is attributed to the innermost
frame outside the ``pyro_nf`` package (Python 3.12's ``skip_file_prefixes``, on any version).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

__all__ = ["PACKAGE_DIR", "external_stacklevel", "warn_at_caller"]

#: The directory of the ``pyro_nf`` package; frames in files below it are internal.
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def _internal(filename: str) -> bool:
    try:
        return str(Path(filename).resolve()).startswith(PACKAGE_DIR + os.sep)
    except (OSError, ValueError):  # pragma: no cover - a pseudo-file such as "<stdin>"
        return False


def external_stacklevel() -> int:
    """The ``stacklevel`` that makes :func:`warnings.warn`, called by this function's caller,
    point at the innermost frame outside pyro-nf (1 if every frame is inside).

    Example:
        >>> external_stacklevel() >= 1
        True
    """
    frame = sys._getframe(1)  # the caller of this function: stacklevel 1
    level = 1
    while frame is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 1


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """:func:`warnings.warn` attributed to the user's frame (:func:`external_stacklevel`).

    Example:
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_at_caller("careful", RuntimeWarning)
        >>> caught[0].category.__name__, str(caught[0].message)
        ('RuntimeWarning', 'careful')
    """
    # external_stacklevel counts from this function (level 1), as warnings.warn does
    warnings.warn(message, category, stacklevel=external_stacklevel())
