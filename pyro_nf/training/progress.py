"""The progress display of :func:`~pyro_nf.training.train` (a tqdm bar with the smoothed loss).

The bar is ``tqdm.auto``'s: a widget in Jupyter (with ``ipywidgets``), text on stderr elsewhere
(and in a kernel without ``ipywidgets``, where tqdm's widget bar would only warn). tqdm is
imported when a bar is made, never at ``import pyro_nf``.
Every fitter's ``progress`` argument means the same (:func:`resolve_progress`):

* ``True``: always show a bar, even when stderr is not a terminal (a log file, CI);
* ``None``: automatic: a bar when the session is interactive, i.e. stderr is a terminal or the
  code runs in a Jupyter/IPython kernel (whose stderr is never a terminal);
* ``False``: no bar.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__all__ = ["ProgressBar", "bar_class", "check_progress", "interactive", "resolve_progress"]


def check_progress(progress: Any) -> bool | None:
    """``progress`` if it is ``True``, ``False`` or ``None``; else ``TypeError`` naming it.

    Example:
        >>> check_progress(None) is None
        True
        >>> check_progress("yes")
        Traceback (most recent call last):
        ...
        TypeError: progress: expected True, False or None (automatic), got 'yes'
    """
    if progress is None or isinstance(progress, bool):
        return progress
    raise TypeError(f"progress: expected True, False or None (automatic), got {progress!r}")


def _in_kernel() -> bool:
    """Whether this process runs a Jupyter/IPython kernel (its shell has a ``kernel``)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    try:
        shell = get() if callable(get) else None
    except Exception:  # a broken IPython install: not a kernel
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def interactive() -> bool:
    """Whether a person is likely watching: stderr is a terminal, or we run in a kernel.

    Example:
        >>> isinstance(interactive(), bool)
        True
    """
    if _in_kernel():
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed or detached stream
        return False


def resolve_progress(progress: Any) -> bool:
    """Whether to show a bar: ``True``/``False`` as given, ``None`` -> :func:`interactive`.

    Raises ``TypeError`` (see :func:`check_progress`) for any other value.

    Example:
        >>> resolve_progress(True), resolve_progress(False)
        (True, False)
    """
    progress = check_progress(progress)
    return interactive() if progress is None else progress


def bar_class() -> type:
    """The tqdm class for a bar here: ``tqdm.auto.tqdm``, except the plain text
    ``tqdm.std.tqdm`` in a Jupyter kernel without ``ipywidgets``.

    Example:
        >>> import tqdm
        >>> issubclass(bar_class(), tqdm.tqdm)
        True
    """
    if _in_kernel() and importlib.util.find_spec("ipywidgets") is None:
        import tqdm.std

        return tqdm.std.tqdm
    import tqdm.auto

    return tqdm.auto.tqdm


class ProgressBar:
    """A ``tqdm.auto`` bar over ``total`` steps from ``initial``, labelled ``desc``, showing the
    loss; ``show`` is ``True`` (always), ``None`` (when interactive) or ``False`` (never), as
    resolved by :func:`resolve_progress`.

    Example:
        >>> with ProgressBar(10, 0, "fit", show=False) as bar:
        ...     bar.advance(1.5)
        >>> bar.shown
        False
    """

    def __init__(self, total: int, initial: int, desc: str, show: bool | None) -> None:
        self.shown = resolve_progress(show)
        self.bar = bar_class()(total=total, initial=initial, desc=desc, disable=not self.shown)

    def __enter__(self) -> ProgressBar:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def advance(self, smoothed_loss: float) -> None:
        """One step done; show ``smoothed_loss``."""
        if self.shown:
            self.bar.set_postfix(loss=f"{smoothed_loss:.4g}", refresh=False)
            self.bar.update(1)
