"""The record of a training run (:class:`History`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["History"]


@dataclass(repr=False)
class History:
    """What happened during :func:`train` (one entry per step in the lists).

    ``steps_per_epoch`` (set by minibatch fitters such as :func:`pyro_nf.vae.fit_vae`) lets the
    summary count epochs too.

    Attributes: ``losses`` (NaN at steps that were rolled back), ``smoothed`` (EMA of the finite
    losses), ``lrs`` (learning rate used at each step, first parameter group), ``grad_norms``
    (total gradient norm before clipping), ``num_clipped`` (steps whose gradient was clipped),
    ``val_losses`` (``(step, value)`` pairs),
    ``converged`` (early stopping triggered), ``stop_reason`` (``"converged"``,
    ``"max_steps"``, ``"callback"``, ``"diverged"`` or ``"interrupted"``), ``best_step`` (lowest validation loss,
    else lowest smoothed loss), ``num_nan_restores``, ``lr_decay_steps`` (steps at which early
    stopping decayed the learning rate at a plateau), ``elapsed`` (seconds, over resumes),
    ``pilot_losses`` (with ``fit_reverse_kl(restarts=...)``: every pilot's final mean loss),
    ``halvings`` (with ``fit_reverse_kl(population=...)``: ``(step, {member: mean loss})`` at
    every halving).

    Example:
        >>> h = History(losses=[3.0, 2.0], smoothed=[3.0, 2.9], stop_reason="max_steps")
        >>> h.num_steps, str(h)
        (2, 'History(steps=2, stop_reason=max_steps, converged=False, final smoothed loss=2.9, ...')
    """

    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    converged: bool = False
    stop_reason: str = "not started"
    best_step: int | None = None
    num_nan_restores: int = 0
    num_clipped: int = 0
    lr_decay_steps: list[int] = field(default_factory=list)
    elapsed: float = 0.0
    pilot_losses: list[float] = field(default_factory=list)
    halvings: list[tuple[int, dict[int, float]]] = field(default_factory=list)
    steps_per_epoch: int | None = None

    @property
    def num_steps(self) -> int:
        """Number of steps taken (over resumes)."""
        return len(self.losses)

    @property
    def epochs(self) -> float | None:
        """Passes over the data (``num_steps / steps_per_epoch``), for minibatch fits that set
        ``steps_per_epoch`` (e.g. :func:`pyro_nf.vae.fit_vae`); ``None`` otherwise.

        Example:
            >>> History(losses=[1.0] * 30, steps_per_epoch=20).epochs
            1.5
        """
        if not self.steps_per_epoch:
            return None
        return self.num_steps / self.steps_per_epoch

    def summary(self) -> str:
        """One-line description of the run (see the class example)."""
        final = f"{self.smoothed[-1]:.6g}" if self.smoothed else "n/a"
        val = f", best val loss={min(v for _, v in self.val_losses):.6g}" if self.val_losses else ""
        epochs = f", epochs={self.epochs:.4g}" if self.epochs is not None else ""
        return (
            f"History(steps={self.num_steps}{epochs}, stop_reason={self.stop_reason}, converged="
            f"{self.converged}, final smoothed loss={final}{val}, best_step={self.best_step}, "
            f"nan_restores={self.num_nan_restores}, elapsed={self.elapsed:.2f}s)"
        )

    __str__ = summary
    __repr__ = summary  # a run's lists can hold 10^5 entries: never dump them

    def finish(self) -> None:
        """Set ``stop_reason`` (``"max_steps"`` unless already set) and ``best_step`` at the end.

        ``best_step`` is the step of the lowest validation loss, else of the lowest finite
        smoothed loss (``None`` if there is none).
        """
        self.stop_reason = self.stop_reason or "max_steps"
        finite = [(v, i) for i, v in enumerate(self.smoothed) if math.isfinite(v)]
        self.best_step = (
            min((v, s) for s, v in self.val_losses)[1]
            if self.val_losses
            else min(finite)[1]
            if finite
            else None
        )
