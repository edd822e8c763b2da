"""Early stopping: the rule (:class:`EarlyStopping`) and its smoothed tracker (:class:`Plateau`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..utils.validation import check_float, check_positive_int

__all__ = ["EarlyStopping", "Plateau"]


@dataclass
class EarlyStopping:
    """Stop when the smoothed monitored value stops improving (``History.converged = True``).

    The monitored value is the training loss, or the validation loss when ``train`` gets a
    ``validate_fn`` (then updated only at validation steps). With ``s = smoothing`` and the
    ``n``-th finite value ``x`` arriving at step ``t`` (non-finite values are skipped):

    * ``ema = ema + max(s, 1/n) * (x - ema)``: a running mean for ``n <= 1/s``, then an EMA;
    * ``threshold = max(min_delta, rel_delta * |best|)``; if ``n <= 1/s`` (warm-up) or
      ``ema < best - threshold``, this is a significant improvement: ``best, best_step = ema, t``;
    * a *plateau* at step ``t`` once ``t - best_step >= patience`` and ``t + 1 >= min_steps``;
    * at each of the first ``lr_decays`` plateaus the learning rate of every parameter group (and
      a schedule's base rates) is multiplied by ``decay_factor``, the step is recorded in
      ``History.lr_decay_steps`` and the search goes on from ``best, best_step = ema, t``; the
      next plateau is convergence.

    That is, a run stops iff its smoothed value went no lower than ``best - threshold`` for
    ``patience`` steps at the lowest learning rate. Decaying the rate at a plateau (as torch's
    ``ReduceLROnPlateau``) shrinks the stationary jitter of stochastic-gradient iterates, which
    is proportional to the rate, before the run is declared converged. Noise: the EMA's sd is ``sigma * sqrt(s / (2 - s))`` (0.16 sigma at
    ``s = 0.05``, sigma the per-step loss noise). A run whose expected improvement per
    ``patience`` steps exceeds ``threshold`` plus about 5 such sds is practically never stopped;
    a flat noisy loss is stopped within about 1-3 patience windows even at zero threshold.
    ``smoothing=None`` means 0.05 for the training loss and 1 (none) for a validation loss.

    Example:
        >>> EarlyStopping(patience=100, rel_delta=1e-3)
        EarlyStopping(patience=100, min_delta=0.0, rel_delta=0.001, smoothing=None, min_steps=0, lr_decays=0, decay_factor=0.1)
        >>> EarlyStopping(patience=0)
        Traceback (most recent call last):
        ...
        ValueError: patience: expected an integer >= 1, got 0
        >>> EarlyStopping(lr_decays=2, decay_factor=1.5)
        Traceback (most recent call last):
        ...
        ValueError: decay_factor: expected a float in (0, 1), got 1.5
    """

    patience: int = 200
    min_delta: float = 0.0
    rel_delta: float = 1e-4
    smoothing: float | None = None
    min_steps: int = 0
    lr_decays: int = 0
    decay_factor: float = 0.1

    def __post_init__(self) -> None:
        check_positive_int("patience", self.patience)
        check_positive_int("min_steps", self.min_steps, minimum=0)
        check_positive_int("lr_decays", self.lr_decays, minimum=0)
        for name in ("min_delta", "rel_delta"):
            check_float(name, getattr(self, name), "a finite float >= 0", lambda v: v >= 0)
        if self.smoothing is not None:
            check_float("smoothing", self.smoothing, "a float in (0, 1]", lambda v: 0 < v <= 1)
        check_float("decay_factor", self.decay_factor, "a float in (0, 1)", lambda v: 0 < v < 1)

    @classmethod
    def resolve(cls, early_stopping: EarlyStopping | bool | None) -> EarlyStopping | None:
        """The rule meant by ``train(early_stopping=...)``: ``True`` is the defaults.

        Example:
            >>> EarlyStopping.resolve(True).patience, EarlyStopping.resolve(None)
            (200, None)
        """
        es = cls() if early_stopping is True else early_stopping or None
        if es is not None and not isinstance(es, cls):
            raise ValueError(f"early_stopping: expected None, True or an EarlyStopping, got {es!r}")
        return es


@dataclass
class Plateau:
    """EMA + best-with-patience tracker implementing the :class:`EarlyStopping` rule.

    Example:
        >>> p = Plateau(smoothing=0.5)
        >>> [p.update(t, 1.0) for t in range(4)]
        [0, 0, 1, 2]
    """

    smoothing: float
    min_delta: float = 0.0
    rel_delta: float = 0.0
    count: int = 0
    ema: float = math.nan
    best: float = math.inf
    best_step: int = -1

    def update(self, step: int, value: float) -> int:
        """Feed a value; return the number of steps since the last significant improvement."""
        if math.isfinite(value):
            self.count += 1
            weight = max(self.smoothing, 1.0 / self.count)  # running mean, then EMA
            self.ema = value if self.count == 1 else self.ema + weight * (value - self.ema)
            threshold = max(self.min_delta, self.rel_delta * abs(self.best))
            if self.count <= 1 / self.smoothing or self.ema < self.best - threshold:
                self.best, self.best_step = self.ema, step
        return step - self.best_step if self.best_step >= 0 else 0

    def restart_search(self, step: int) -> None:
        """Start the search for an improvement afresh from the current EMA (after a decay)."""
        self.best, self.best_step = self.ema, step

    def load(self, saved: dict) -> None:
        """Put back the running state saved by ``dataclasses.asdict`` in a checkpoint."""
        for key in ("count", "ema", "best", "best_step"):
            setattr(self, key, saved[key])


def make_trackers(es: EarlyStopping | None, on_validation: bool) -> tuple[Plateau, Plateau]:
    """The ``(training loss, validation loss)`` trackers of a run with early stopping ``es``.

    The training-loss tracker smooths with ``es.smoothing`` (0.05 if unset, and always when a
    validation loss is monitored instead, then without thresholds); the validation tracker with
    ``es.smoothing`` or 1 (no smoothing).

    Example:
        >>> make_trackers(None, False)[0].smoothing, make_trackers(None, True)[1].smoothing
        (0.05, 1.0)
    """
    deltas = {"min_delta": es.min_delta, "rel_delta": es.rel_delta} if es else {}
    smoothing = es.smoothing if es else None
    tracker = Plateau(
        0.05 if on_validation or smoothing is None else smoothing,
        **({} if on_validation else deltas),
    )
    return tracker, Plateau(smoothing or 1.0, **deltas)
