"""The one training loop of pyro-nf: SVI with flow guides, maximum likelihood and VAEs.

:func:`train` minimizes a scalar loss closure ``loss_fn(step)`` over a set of parameters. It is
model-agnostic: an SVI loss is ``Trace_ELBO().differentiable_loss(model, guide, *args)``, a
density fit is ``-flow.log_prob(batch).mean()``. It adds learning-rate schedules, gradient
clipping, early stopping on a smoothed noisy loss or a validation metric, recovery from NaN/inf
losses, atomic checkpoints that resume bit-identically, and data-parallel training.

The loop is made of named parts, one module each: :mod:`.optim` (parameters, optimizer,
schedule, clipping), :mod:`.stopping` (early stopping), :mod:`.guard` (the NaN guard),
:mod:`.checkpoint` (run state and checkpoints), :mod:`.progress` (the bar) and
:mod:`pyro_nf.training.distributed` (data parallelism).

**Checkpoints.** With ``checkpoint=path`` the full state (parameters, the buffers of an
``nn.Module`` ``params``, optimizer, schedule, random generators, history, the run's fingerprint
and an integrity record: the SHA-256 of every tensor and of the rest) is written atomically. A
failed write raises :class:`~pyro_nf.training.checkpoint.CheckpointWriteError` (an ``OSError``
naming the path) and leaves the previous file intact. ``resume=True`` continues bit-identically,
with the checkpointed lr (a converged run returns at once). It refuses, with ``ValueError``, a
file that is damaged or edited (integrity), holds non-finite parameters, or belongs to another
run: parameter names/shapes differ, or the fingerprints differ (``"checkpoint: <path> belongs to
another run: <field> differs (saved ..., now ...)"``). The loop adds to the caller's
``fingerprint``, under ``"train"``, the names, shapes and dtypes of the trained tensors and
buffers, the optimizer's class and hyperparameters, ``lr``, ``lr_schedule`` and ``clip_norm``
(not ``steps``: a run may be continued for longer). ``resume="force"`` continues another run's
checkpoint with a warning (an optimizer state that does not fit starts fresh).

**Interrupting.** The first Ctrl-C stops the run at the end of the current step (a second one at
once). Like a normal end, the run then closes its history (``stop_reason="interrupted"``),
writes the final checkpoint, puts the best parameters back and prints one line saying so; then
``KeyboardInterrupt`` is raised with the history as ``err.history``.

**NaN guard.** With ``nan_policy="restore"``, a non-finite loss or gradient norm puts back the
state of the last finite step, halves the lr and warns :class:`NaNRestoreWarning` (the step still
counts), until ``max_nan_restores`` restores came without ``NAN_RECOVERY_STEPS`` (100) good steps
in a row between them; ``"raise"`` (no per-step copies) raises :class:`TrainingDivergedError` at
the first failure.

Example:
    >>> x = torch.linspace(-1, 1, 50, dtype=torch.float64)
    >>> lin = torch.nn.Linear(1, 1).double()
    >>> history = train(lambda step: ((lin(x[:, None]).squeeze(-1) - 2 * x - 1) ** 2).mean(),
    ...                 lin, steps=3000, lr=0.05, progress=False,
    ...                 early_stopping=EarlyStopping(patience=50, min_delta=1e-8))
    >>> history.converged, round(lin.weight.item(), 2), round(lin.bias.item(), 2)
    (True, 2.0, 1.0)
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..utils.validation import check_float, check_positive_int
from .checkpoint import RunState, atomic_save, clone_into
from .distributed import DataParallel, use_data_parallel
from .guard import NAN_RECOVERY_STEPS, NaNGuard, NaNRestoreWarning, TrainingDivergedError
from .history import History
from .optim import (
    AUTO_CLIP_FACTOR,
    AUTO_CLIP_MIN_STEPS,
    AUTO_CLIP_WINDOW,
    ParamsLike,
    auto_clip_threshold,
    clip_limit,
    make_optimizer,
    make_scheduler,
    named_params,
    scale_lr,
)
from .progress import ProgressBar, check_progress
from .runinfo import check_checkpoint_args, defer_sigint, run_fingerprint
from .stopping import EarlyStopping, Plateau, make_trackers

__all__ = [
    "AUTO_CLIP_FACTOR",
    "AUTO_CLIP_MIN_STEPS",
    "AUTO_CLIP_WINDOW",
    "EarlyStopping",
    "History",
    "NAN_RECOVERY_STEPS",
    "NaNRestoreWarning",
    "ParamsLike",
    "Plateau",
    "TrainingDivergedError",
    "atomic_save",
    "auto_clip_threshold",
    "train",
]


def _check_settings(
    steps: int,
    lr: float | None,
    clip_norm: float | str | None,
    nan_policy: str,
    counts: dict[str, int],
    max_nan_restores: int,
) -> dict[str, int]:
    """Validate ``train``'s scalar settings; return the checked ``steps`` and counts."""
    steps = check_positive_int("steps", steps)
    checked = {name: check_positive_int(name, value) for name, value in counts.items()}
    checked["max_nan_restores"] = check_positive_int("max_nan_restores", max_nan_restores, 0)
    if lr is not None:
        check_float("lr", lr, "a positive finite float", lambda v: v > 0)
    if clip_norm is not None and clip_norm != "auto":
        check_float(
            "clip_norm", clip_norm, "None, 'auto' or a positive finite float", lambda v: v > 0
        )
    if nan_policy not in ("restore", "raise"):
        raise ValueError(f"nan_policy: expected 'restore' or 'raise', got {nan_policy!r}")
    return {"steps": steps, **checked}


def _check_loss(loss: Any, step: int) -> None:
    """``ValueError`` unless ``loss`` is a scalar tensor that requires grad."""
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
        got = (
            f"shape {tuple(loss.shape)}, requires_grad={loss.requires_grad}"
            if isinstance(loss, torch.Tensor)
            else type(loss).__name__
        )
        raise ValueError(
            f"loss_fn: expected a scalar tensor that requires grad, got {got} at step {step}"
        )


class _Run:
    """One call of :func:`train`: its parts (optimizer, trackers, guard, data parallelism,
    checkpoints) and the state they share; each method is one phase of a step."""

    def __init__(self, loss_fn: Callable[[int], torch.Tensor], params: ParamsLike, **kw: Any):
        self.loss_fn, self.validate_fn, self.kw = loss_fn, kw["validate_fn"], kw
        self.steps, self.clip_norm = kw["steps"], kw["clip_norm"]
        self.es = EarlyStopping.resolve(kw["early_stopping"])
        self.pairs = named_params(params)
        self.tensors = [p for _, p in self.pairs]
        self.opt = make_optimizer(kw["optimizer"], self.tensors, kw["lr"])
        self.sched = make_scheduler(kw["lr_schedule"], self.opt, self.steps)
        self.state = RunState(History(), *make_trackers(self.es, self.validate_fn is not None))
        self.parallel = DataParallel() if use_data_parallel(kw["distributed"]) else None
        self.buffers = dict(params.named_buffers()) if isinstance(params, nn.Module) else {}
        schedule = {"lr": kw["lr"], "lr_schedule": kw["lr_schedule"], "clip_norm": self.clip_norm}
        self.fingerprint = run_fingerprint(
            kw["fingerprint"], self.pairs, self.buffers, self.opt, schedule
        )
        path = kw["checkpoint"]
        self.path = self.parallel.rank_path(path) if self.parallel and path else path
        if self.path is not None and kw["resume"] and os.path.exists(self.path):
            self.state.resume(self.path, self.pairs, self.opt, self.sched, self.buffers,
                              self.fingerprint, kw["resume"])  # fmt: skip

    @property
    def is_main(self) -> bool:
        """Whether this process shows progress (rank 0 or a single process)."""
        return self.parallel is None or self.parallel.rank == 0

    def begin(self) -> None:
        """Start (or continue) the loop: broadcast rank 0's parameters, first snapshot, clock."""
        if self.parallel is not None:
            self.parallel.wrap(self.loss_fn, self.tensors)  # broadcasts rank 0's parameters
        self.guard = NaNGuard(
            self.kw["nan_policy"],
            self.kw["max_nan_restores"],
            self.tensors,
            self.opt,
            self.sched,
            self.state,
            self.save,
        )
        self.state.history.stop_reason, self.state.history.converged = "", False
        self.t0, self.elapsed0 = time.perf_counter(), self.state.history.elapsed

    def save(self, next_step: int) -> str | None:
        """Record the elapsed time and checkpoint the run (if it has a path); return the path."""
        self.state.history.elapsed = self.elapsed0 + time.perf_counter() - self.t0
        if self.path is not None:
            ckpt = self.state.to_checkpoint(
                next_step, self.pairs, self.opt, self.sched, self.buffers, self.fingerprint
            )
            atomic_save(ckpt, self.path)
        return self.path

    def gradient(self, step: int) -> tuple[float, float]:
        """Loss and backward of step ``step``; return the loss and the (unclipped) gradient norm."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.parallel(step) if self.parallel is not None else self.loss_fn(step)
        _check_loss(loss, step)
        value = self.parallel.mean(loss) if self.parallel is not None else float(loss.detach())
        if not math.isfinite(value):
            return value, math.nan
        loss.backward()
        if step == self.state.step and all(p.grad is None for p in self.tensors):
            raise ValueError(
                "params: expected tensors that loss_fn depends on, got "
                f"{len(self.tensors)} tensors none of which receives a gradient"
            )
        history = self.state.history
        limit = clip_limit(self.clip_norm, history.grad_norms)
        gnorm = float(nn.utils.clip_grad_norm_(self.tensors, limit))
        history.num_clipped += gnorm > limit
        return value, gnorm

    def take_step(self, step: int) -> tuple[float, bool]:
        """Compute the gradient, record the step, then update or let the NaN guard act."""
        lr_now = self.opt.param_groups[0]["lr"]
        value, gnorm = self.gradient(step)
        ok = math.isfinite(value) and math.isfinite(gnorm)
        history = self.state.history
        history.losses.append(value)
        history.lrs.append(lr_now)
        history.grad_norms.append(gnorm)
        if ok:
            self.guard.on_good_step(step)
            self.opt.step()
        else:
            self.guard.on_failure(step, value, gnorm)
        if self.sched is not None:
            self.sched.step()
        return value, ok

    def validate(self, step: int) -> int:
        """At a validation step: score, keep the best parameters; return steps since the best."""
        if (step + 1) % self.kw["validate_every"] != 0 and step + 1 != self.steps:
            return 0
        with torch.no_grad():
            val = float(self.validate_fn())
        if self.parallel is not None:
            val = self.parallel.mean(val)
        self.state.history.val_losses.append((step, val))
        if val < self.state.best_val:
            self.state.best_val = val
            self.state.best_params = clone_into(
                self.state.best_params, [p.detach() for p in self.tensors]
            )
        return self.state.val_tracker.update(step, val)

    def monitor(self, step: int, value: float) -> None:
        """Smooth the loss, validate, and decay the lr or stop at a plateau (early stopping)."""
        st, es = self.state, self.es
        since = st.tracker.update(step, value)
        st.history.smoothed.append(st.tracker.ema)
        if self.validate_fn is not None:
            since = self.validate(step)
        if es is None or since < es.patience or step + 1 < es.min_steps:
            return
        if len(st.history.lr_decay_steps) < es.lr_decays:
            scale_lr(self.opt, self.sched, es.decay_factor)
            st.history.lr_decay_steps.append(step)
            (st.val_tracker if self.validate_fn is not None else st.tracker).restart_search(step)
        else:
            st.history.converged, st.history.stop_reason = True, "converged"

    def maybe_checkpoint(self, next_step: int) -> None:
        """Checkpoint every ``checkpoint_every`` steps."""
        if self.path is not None and next_step % self.kw["checkpoint_every"] == 0:
            self.save(next_step)

    def finish(self) -> History:
        """Close the history, save the final state, put the best parameters back."""
        history = self.state.history
        history.finish()
        history.elapsed = self.elapsed0 + time.perf_counter() - self.t0
        if self.path is not None and history.num_steps > self.state.step:
            self.save(history.num_steps)  # the state the run ended in (params and optimizer agree)
        self.restore_best_params()
        return history

    def interrupted(self, err: KeyboardInterrupt | None) -> KeyboardInterrupt:
        """End an interrupted run as a normal end does (history closed with ``stop_reason
        "interrupted"``, final checkpoint, best parameters back), say so in one line, and
        return the ``KeyboardInterrupt`` to raise (``.history`` holds the run)."""
        history = self.state.history
        done = len(history.smoothed)  # steps completed (an interrupt may cut one short)
        for name in ("losses", "lrs", "grad_norms"):
            del getattr(history, name)[done:]
        history.val_losses[:] = [(s, v) for s, v in history.val_losses if s < done]
        history.stop_reason = "interrupted"
        self.finish()
        where = f"; checkpoint saved to {self.path!r}" if self.path is not None else ""
        msg = f"train: interrupted after {done} of {self.steps} steps{where}"
        if self.is_main:
            print(msg, file=sys.stderr)
        out = err if err is not None else KeyboardInterrupt(msg)
        out.history = history  # type: ignore[attr-defined]
        return out

    def restore_best_params(self) -> None:
        """With a validation loss and ``restore_best``: put the best parameters back."""
        if (
            self.validate_fn is not None
            and self.kw["restore_best"]
            and self.state.best_params is not None
        ):
            with torch.no_grad():
                for p, saved in zip(self.tensors, self.state.best_params, strict=True):
                    p.copy_(saved)


def train(
    loss_fn: Callable[[int], torch.Tensor],
    params: ParamsLike,
    steps: int = 1000,
    *,
    optimizer: str | torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] = "adam",
    lr: float | None = None,
    lr_schedule: str | Callable[[torch.optim.Optimizer], Any] | None = None,
    clip_norm: float | str | None = None,
    early_stopping: EarlyStopping | bool | None = None,
    validate_fn: Callable[[], float | torch.Tensor] | None = None,
    validate_every: int = 100,
    restore_best: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    resume: bool | str = True,
    fingerprint: Mapping[str, Any] | None = None,
    nan_policy: str = "restore",
    max_nan_restores: int = 5,
    progress: bool | None = None,
    desc: str = "fit",
    callback: Callable[[int, History], bool | None] | None = None,
    distributed: bool | None = None,
) -> History:
    """Minimize ``loss_fn(step)`` (a scalar tensor) over ``params`` for ``steps`` steps.

    Args:
        loss_fn: ``step -> scalar loss``; steps count from 0 and continue over resumes.
        params: an ``nn.Module`` (its trainable parameters), a mapping ``name -> tensor`` (e.g.
            ``dict(pyro.get_param_store().named_parameters())`` after calling the guide once), or
            an iterable of leaf tensors or ``(name, tensor)`` pairs. Order fixes checkpoints.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (plain), an optimizer over (a subset of)
            ``params``, or a factory ``callable(list_of_tensors) -> Optimizer``.
        lr: learning rate; ``None``: 1e-2 for named optimizers, else the optimizer's own.
        lr_schedule: ``"cosine"``, ``"exponential"``, ``"warmup_cosine"`` (the multipliers
            of ``lr`` are in :func:`~pyro_nf.training.optim.make_scheduler`) or
            ``callable(optimizer) -> LRScheduler`` (stepped every step).
        clip_norm: clip the total gradient norm to this value (``clip_grad_norm_``); ``"auto"``:
            clip spikes only, at 5 times the recent median norm (:func:`auto_clip_threshold`).
        early_stopping: :class:`EarlyStopping` (its docstring states the rule), ``True`` for
            the defaults, or ``None``.
        validate_fn: ``() -> float``, run under ``no_grad`` every ``validate_every`` steps and at
            the last step. Early stopping then monitors it, and with ``restore_best`` the
            parameters of its lowest value are put back at the end (the checkpoint keeps the
            final state, so that a resumed run continues consistently, and the best beside it).
        checkpoint: file path; the full state is saved atomically every ``checkpoint_every``
            steps and at the end (see *Checkpoints* in the module docstring).
        resume: ``True``: continue an existing checkpoint bit-identically (refused if it is
            damaged, non-finite or of another run); ``"force"``: continue another run's anyway,
            with a warning; ``False``: start over.
        fingerprint: plain data identifying the run (a hash of the data, the model's spec and
            settings), recorded in the checkpoint and compared on resume.
        nan_policy, max_nan_restores: on a non-finite loss or gradient norm, ``"restore"``
            puts back the last finite step's state and halves the lr, up to ``max_nan_restores``
            times; ``"raise"`` raises :class:`TrainingDivergedError` at once
            (:class:`~pyro_nf.training.guard.NaNGuard` states the rule).
        progress, desc: a ``tqdm.auto`` bar labelled ``desc`` showing the smoothed loss (a
            widget in Jupyter): ``True`` always, ``None`` when interactive (stderr is a terminal
            or a Jupyter kernel runs), ``False`` never (:mod:`~pyro_nf.training.progress`).
        callback: ``(step, history) -> bool``, called after every step; ``True`` stops.
        distributed: data-parallel over the initialized ``torch.distributed`` group (``None``:
            iff ``world_size > 1``); ``loss_fn`` takes its rank's part of a batch with
            :func:`~pyro_nf.training.shard`. See :mod:`pyro_nf.training.distributed`.

    Returns:
        The :class:`History` of the whole run (including the steps before a resume).

    Raises:
        KeyboardInterrupt: on Ctrl-C, after the run has closed like a normal end (see
            *Interrupting* in the module docstring), with the history as ``err.history``.

    Example:
        >>> w = torch.zeros((), requires_grad=True)
        >>> history = train(lambda step: (w - 3.0) ** 2, [w], steps=500, lr=0.1, progress=False)
        >>> round(w.item(), 3), history.num_steps, history.stop_reason
        (3.0, 500, 'max_steps')
    """
    counts = {"validate_every": validate_every, "checkpoint_every": checkpoint_every}
    settings = _check_settings(steps, lr, clip_norm, nan_policy, counts, max_nan_restores)
    path = check_checkpoint_args(checkpoint, resume, fingerprint)
    progress = check_progress(progress)
    run = _Run(loss_fn, params, **settings, optimizer=optimizer, lr=lr, lr_schedule=lr_schedule,
               clip_norm=clip_norm, early_stopping=early_stopping, validate_fn=validate_fn,
               restore_best=restore_best, checkpoint=path, resume=resume,
               fingerprint=fingerprint, nan_policy=nan_policy,
               distributed=distributed)  # fmt: skip
    history = run.state.history
    if history.stop_reason == "converged":  # resumed a finished run
        run.restore_best_params()
        return history
    run.begin()
    try:
        _loop(run, progress, desc, callback)
    except KeyboardInterrupt as err:
        raise run.interrupted(err) from None
    if history.stop_reason == "interrupted":
        raise run.interrupted(None)
    return run.finish()


def _loop(
    run: _Run, progress: bool | None, desc: str, callback: Callable[[int, History], Any] | None
) -> None:
    """The steps of :func:`train` from where the run (re)starts, until it stops; a first
    Ctrl-C stops it at the end of the step (``stop_reason="interrupted"``)."""
    history, start = run.state.history, run.state.step
    with (
        ProgressBar(run.steps, start, desc, progress if run.is_main else False) as bar,
        defer_sigint(enabled=run.parallel is None) as sigint,
    ):
        for step in range(start, run.steps):
            value, ok = run.take_step(step)
            run.monitor(step, value if ok else math.nan)
            bar.advance(history.smoothed[-1])
            if callback is not None and callback(step, history):
                history.stop_reason = "callback"
            if sigint.requested and not history.stop_reason:
                history.stop_reason = "interrupted"
            if history.stop_reason or step + 1 == run.steps:
                break
            run.maybe_checkpoint(step + 1)
