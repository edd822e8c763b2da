"""The NaN guard of :func:`~pyro_nf.training.train`: on a non-finite loss or gradient, put back
the last good state and halve the learning rate, or give up with :class:`TrainingDivergedError`."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

import torch

from .checkpoint import RunState, clone_into
from .history import History
from .optim import scale_lr

__all__ = ["NAN_RECOVERY_STEPS", "NaNGuard", "NaNRestoreWarning", "TrainingDivergedError"]

#: Finite steps in a row after which the count of NaN restores starts again from zero.
NAN_RECOVERY_STEPS = 100


class NaNRestoreWarning(UserWarning):
    """Warned when a non-finite loss or gradient made :func:`train` restore the last good state.

    Example:
        >>> issubclass(NaNRestoreWarning, UserWarning)
        True
    """


class TrainingDivergedError(RuntimeError):
    """Raised when the loss or gradient stays non-finite; ``.history`` holds the run so far.

    Example:
        >>> TrainingDivergedError("diverged", History()).history.num_steps
        0
    """

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history


class NaNGuard:
    """Keeps the state of the last finite step and acts on a failing one (``nan_policy``).

    With ``policy="restore"`` the parameters and optimizer state are copied before every update
    (``snapshot``); a failure puts them back, halves the learning rate and warns
    :class:`NaNRestoreWarning`, until more than ``max_restores`` failures came without
    :data:`NAN_RECOVERY_STEPS` good steps in a row between them. With ``"raise"`` nothing is
    copied and the first failure raises :class:`TrainingDivergedError`. ``checkpoint(next_step)``
    records the run before raising and returns the path saved to (or ``None``).
    """

    def __init__(
        self,
        policy: str,
        max_restores: int,
        tensors: list[torch.Tensor],
        opt: torch.optim.Optimizer,
        sched: Any,
        state: RunState,
        checkpoint: Callable[[int], str | None],
    ) -> None:
        self.max_restores, self.tensors, self.opt, self.sched = max_restores, tensors, opt, sched
        self.state, self.checkpoint = state, checkpoint
        self.snap = self.snapshot() if policy == "restore" else None
        self.snap_step = state.step

    def snapshot(self, old: Any = None) -> dict[str, Any]:
        """A copy of the parameters and optimizer state (into ``old``'s tensors where they fit)."""
        return clone_into(
            old, {"params": [p.detach() for p in self.tensors], "optim": self.opt.state_dict()}
        )

    def load(self, params_list: list[torch.Tensor], optim_state: dict | None = None) -> None:
        """Copy saved parameters (and optimizer state) back into the trained ones."""
        with torch.no_grad():
            for p, saved in zip(self.tensors, params_list, strict=True):
                p.copy_(saved)
        if optim_state is not None:  # deep copy: the optimizer must not alias the snapshot
            self.opt.load_state_dict(copy.deepcopy(optim_state))

    def on_good_step(self, step: int) -> None:
        """Before the update of a finite step: snapshot, and count it towards recovery."""
        if self.snap is not None:
            self.snap, self.snap_step = self.snapshot(self.snap), step
        self.state.good_streak += 1
        if self.state.good_streak >= NAN_RECOVERY_STEPS:
            self.state.failures = 0

    def on_failure(self, step: int, value: float, gnorm: float) -> None:
        """After a non-finite step: restore the last good state and halve the lr, or raise."""
        st = self.state
        st.failures, st.good_streak = st.failures + 1, 0
        what = f"loss {value}" if not math.isfinite(value) else f"gradient norm {gnorm}"
        msg = f"step {step}: non-finite {what}"
        if self.snap is None or st.failures > self.max_restores:
            self._give_up(step, msg)
        self.load(self.snap["params"], self.snap["optim"])
        scale_lr(self.opt, self.sched, 0.5)
        st.history.num_nan_restores += 1
        warnings.warn(
            f"{msg}; restored the parameters and optimizer state used at step "
            f"{self.snap_step} and halved the learning rate to "
            f"{self.opt.param_groups[0]['lr']:.3g} (restore {st.failures} of at most "
            f"{self.max_restores} before {NAN_RECOVERY_STEPS} good steps in a row)",
            NaNRestoreWarning,
            stacklevel=4,  # on_failure <- the loop's step <- train <- train's caller
        )

    def _give_up(self, step: int, msg: str) -> NoReturn:
        """Stop the run as diverged: last good parameters back in place, checkpointed, raise."""
        self.state.history.stop_reason = "diverged"
        if self.snap is not None:
            self.load(self.snap["params"], self.snap["optim"])
            msg += (
                f" after {self.max_restores} restores with halved lr and fewer "
                f"than {NAN_RECOVERY_STEPS} good steps in a row between them;"
                f" gave up. The parameters are those used at step {self.snap_step}"
            )
        saved = self.checkpoint(step + 1)
        if saved is not None:
            msg += f" (saved to {saved!r})"
        raise TrainingDivergedError(
            f"train: {msg}. Check the model for numerical problems or lower the learning rate.",
            self.state.history,
        )
