"""The progress display of :func:`~pyro_nf.training.train` (a tqdm bar with the smoothed loss)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar over ``total`` steps from ``initial``, labelled ``desc``, showing the loss.

    ``show=False`` turns it off; with ``show=True`` tqdm still turns it off when stderr is not
    a TTY.

    Example:
        >>> with ProgressBar(10, 0, "fit", show=False) as bar:
        ...     bar.advance(1.5)
    """

    def __init__(self, total: int, initial: int, desc: str, show: bool) -> None:
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=None if show else True)

    def __enter__(self) -> ProgressBar:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def advance(self, smoothed_loss: float) -> None:
        """One step done; show ``smoothed_loss``."""
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{smoothed_loss:.4g}", refresh=False)
            self.bar.update(1)
