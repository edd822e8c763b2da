"""The one training loop of pyro-nf: SVI with flow guides, maximum likelihood and VAEs.

:func:`train` minimizes a scalar loss closure ``loss_fn(step)`` over a set of parameters. It is
model-agnostic: an SVI loss is ``Trace_ELBO().differentiable_loss(model, guide, *args)``, a
density fit is ``-flow.log_prob(batch).mean()``. It adds learning-rate schedules, gradient
clipping, early stopping on a smoothed noisy loss or a validation metric, recovery from NaN/inf
losses, and atomic checkpoints that resume bit-identically.

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

import contextlib
import copy
import math
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..utils.validation import check_float, check_positive_int

__all__ = [
    "train",
    "History",
    "EarlyStopping",
    "NaNRestoreWarning",
    "TrainingDivergedError",
    "auto_clip_threshold",
]

ParamsLike = nn.Module | Mapping[str, torch.Tensor] | Iterable[Any]
_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
_FORMAT = "pyro_nf.train/1"
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


#: ``clip_norm="auto"`` clips at this multiple of the recent median gradient norm ...
AUTO_CLIP_FACTOR = 5.0
#: ... taken over this many recent finite steps ...
AUTO_CLIP_WINDOW = 100
#: ... once at least this many of them are known (before that it does not clip).
AUTO_CLIP_MIN_STEPS = 20


def auto_clip_threshold(grad_norms: list[float]) -> float:
    r"""The gradient-norm limit of ``clip_norm="auto"`` after the steps with norms ``grad_norms``.

    :math:`c_t = 5\,\operatorname{median}(\lVert g_s\rVert : s \in \text{last 100 finite
    steps})`, computed from the unclipped norms (so clipping never ratchets the limit down)
    and ``inf`` until 20 finite norms are known. A rare spike — e.g. a planar map of a flow
    posterior driven close to non-invertibility by one minibatch — is cut to a typical step,
    while a norm that grows steadily moves the median with it. The limit is a function of the
    recorded history alone, so resumed runs clip exactly as uninterrupted ones.

    Example:
        >>> auto_clip_threshold([1.0] * 10)
        inf
        >>> auto_clip_threshold([1.0] * 50 + [2.0] * 50 + [float("nan"), 1e6])
        10.0
    """
    recent = [g for g in grad_norms[-AUTO_CLIP_WINDOW:] if math.isfinite(g)]
    if len(recent) < AUTO_CLIP_MIN_STEPS:
        return math.inf
    return AUTO_CLIP_FACTOR * float(np.median(recent))


@dataclass
class History:
    """What happened during :func:`train` (one entry per step in the lists).

    Attributes: ``losses`` (NaN at steps that were rolled back), ``smoothed`` (EMA of the finite
    losses), ``lrs`` (learning rate used at each step, first parameter group), ``grad_norms``
    (total gradient norm before clipping), ``num_clipped`` (steps whose gradient was clipped),
    ``val_losses`` (``(step, value)`` pairs),
    ``converged`` (early stopping triggered), ``stop_reason`` (``"converged"``,
    ``"max_steps"``, ``"callback"`` or ``"diverged"``), ``best_step`` (lowest validation loss,
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

    @property
    def num_steps(self) -> int:
        """Number of steps taken (over resumes)."""
        return len(self.losses)

    def summary(self) -> str:
        """One-line description of the run (see the class example)."""
        final = f"{self.smoothed[-1]:.6g}" if self.smoothed else "n/a"
        val = f", best val loss={min(v for _, v in self.val_losses):.6g}" if self.val_losses else ""
        return (
            f"History(steps={self.num_steps}, stop_reason={self.stop_reason}, converged="
            f"{self.converged}, final smoothed loss={final}{val}, best_step={self.best_step}, "
            f"nan_restores={self.num_nan_restores}, elapsed={self.elapsed:.2f}s)"
        )

    __str__ = summary


@dataclass
class Plateau:
    """EMA + best-with-patience tracker implementing the :class:`EarlyStopping` rule."""

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


def _named_params(params: ParamsLike) -> list[tuple[str, torch.Tensor]]:
    if isinstance(params, nn.Module):
        items: Iterable[Any] = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
    else:
        items = params.items() if isinstance(params, Mapping) else params
        items = [items] if isinstance(items, torch.Tensor) else items
    pairs: list[tuple[str, torch.Tensor]] = []
    for i, item in enumerate(items):
        name, p = item if isinstance(item, tuple) else (f"param{i}", item)
        if not (
            isinstance(p, torch.Tensor) and p.is_leaf and p.requires_grad and p.is_floating_point()
        ):
            got = (
                f"a tensor with dtype={p.dtype}, requires_grad={p.requires_grad}, is_leaf="
                f"{p.is_leaf}"
                if isinstance(p, torch.Tensor)
                else type(p).__name__
            )
            raise ValueError(
                f"params: expected leaf floating-point tensors with "
                f"requires_grad=True, got {got} for {name!r}"
            )
        if all(p is not q for _, q in pairs):
            pairs.append((str(name), p))
    if not pairs:
        raise ValueError("params: expected at least one trainable tensor, got none")
    return pairs


def _make_optimizer(optimizer: Any, tensors: list[torch.Tensor], lr: float | None):
    if isinstance(optimizer, str) and optimizer.lower() in _OPTIMIZERS:
        return _OPTIMIZERS[optimizer.lower()](tensors, lr=1e-2 if lr is None else lr)
    opt = (
        optimizer
        if isinstance(optimizer, torch.optim.Optimizer)
        else (optimizer(tensors) if callable(optimizer) else None)
    )
    if not isinstance(opt, torch.optim.Optimizer):
        raise ValueError(
            f"optimizer: expected one of {sorted(_OPTIMIZERS)}, a torch.optim."
            f"Optimizer or a callable(params) -> Optimizer, got {optimizer!r}"
        )
    ids = {id(t) for t in tensors}
    if any(id(p) not in ids for g in opt.param_groups for p in g["params"]):
        raise ValueError(
            "optimizer: expected an optimizer over (a subset of) `params`, got one "
            "holding tensors that are not in `params`"
        )
    for group in opt.param_groups if lr is not None else ():
        group["lr"] = lr
    return opt


def _make_scheduler(schedule: Any, opt: torch.optim.Optimizer, steps: int):
    if schedule is None:
        return None
    if callable(schedule) and not isinstance(schedule, str):
        return schedule(opt)
    warm = max(1, steps // 20)
    factors = {
        "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)),
        "exponential": lambda t: 0.01 ** (t / steps),
        "warmup_cosine": lambda t: (
            (t + 1) / warm
            if t < warm
            else 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, steps - warm)))
        ),
    }
    if schedule not in factors:
        raise ValueError(
            f"lr_schedule: expected None, one of {list(factors)} or a "
            f"callable(optimizer) -> LRScheduler, got {schedule!r}"
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, factors[schedule])


def _scale_lr(opt: torch.optim.Optimizer, sched: Any, factor: float) -> None:
    """Multiply the learning rate of every parameter group by ``factor``, and a schedule's base
    rates too, so that the schedule keeps the scaled rate."""
    for group in opt.param_groups:
        group["lr"] *= factor
    if hasattr(sched, "base_lrs"):
        sched.base_lrs = [b * factor for b in sched.base_lrs]


def _clone_into(dst: Any, src: Any) -> Any:
    """Deep copy of nested containers of tensors, reusing ``dst``'s tensors where they fit."""
    if isinstance(src, torch.Tensor):
        if isinstance(dst, torch.Tensor) and (dst.shape, dst.dtype, dst.device) == (
            src.shape,
            src.dtype,
            src.device,
        ):
            return dst.copy_(src)
        return src.detach().clone()
    if isinstance(src, dict):
        old = dst if isinstance(dst, dict) else {}
        return {k: _clone_into(old.get(k), v) for k, v in src.items()}
    if isinstance(src, (list, tuple)):
        old = dst if isinstance(dst, (list, tuple)) and len(dst) == len(src) else [None] * len(src)
        return type(src)(_clone_into(a, b) for a, b in zip(old, src, strict=True))
    return copy.deepcopy(src)


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace`` it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _load_checkpoint(path: str, pairs: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"checkpoint: expected a pyro-nf training checkpoint at {path!r}, "
            f"got a file that cannot be read as one ({e})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise ValueError(
            f"checkpoint: expected a pyro-nf training checkpoint ({_FORMAT}) at "
            f"{path!r}, got {type(ckpt).__name__} without that format tag"
        )
    given = [(n, tuple(p.shape)) for n, p in pairs]
    saved = [(n, tuple(t.shape)) for n, t in ckpt["params"].items()]
    if given != saved:
        diff = [f"{n}: {s}" for n, s in given if (n, s) not in saved]
        extra = [f"{n}: {s}" for n, s in saved if (n, s) not in given]
        raise ValueError(
            f"checkpoint: expected parameters matching `params` (name: shape) in "
            f"{path!r}, got a mismatch: given but not saved {diff}, saved but not "
            f"given {extra}"
        )
    return ckpt


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
    resume: bool = True,
    nan_policy: str = "restore",
    max_nan_restores: int = 5,
    progress: bool = True,
    desc: str = "fit",
    callback: Callable[[int, History], bool | None] | None = None,
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
        lr_schedule: multiplier of ``lr`` at step ``t`` (``T = steps``): ``"cosine"``
            ``(1 + cos(pi t / T)) / 2``; ``"exponential"`` ``0.01 ** (t / T)``;
            ``"warmup_cosine"`` ``(t + 1) / W`` for ``t < W = max(1, T // 20)``, then cosine
            from 1 to 0; or ``callable(optimizer) -> LRScheduler`` (stepped every step).
        clip_norm: clip the total gradient norm to this value (``clip_grad_norm_``);
            ``"auto"``: clip spikes only, at :data:`AUTO_CLIP_FACTOR` (5) times the median norm
            of the last :data:`AUTO_CLIP_WINDOW` (100) finite steps (no clipping during the
            first :data:`AUTO_CLIP_MIN_STEPS` (20) steps); see :func:`auto_clip_threshold`.
        early_stopping: :class:`EarlyStopping` (its docstring states the rule), ``True`` for
            the defaults, or ``None``.
        validate_fn: ``() -> float``, run under ``no_grad`` every ``validate_every`` steps and at
            the last step. Early stopping then monitors it, and with ``restore_best`` the
            parameters of the lowest validation loss are put back at the end (the checkpoint
            keeps the state the run ended in, with the best parameters beside it, so that a
            resumed run continues from consistent parameters and optimizer state).
        checkpoint: file path; the full state is saved atomically every ``checkpoint_every``
            steps and at the end. With ``resume`` an existing checkpoint is loaded (``ValueError``
            if parameter names/shapes differ) and the run continues bit-identically, with the
            checkpointed lr; a converged one returns at once. Resume assumes the same settings.
        nan_policy: on a non-finite loss or gradient norm, ``"restore"`` puts back the
            parameters and optimizer state of the last finite step (from before its update),
            halves the lr and warns :class:`NaNRestoreWarning`; the step still counts (its loss
            is recorded). After ``max_nan_restores`` restores without ``NAN_RECOVERY_STEPS``
            (100) finite steps in a row between them, the next failure raises
            :class:`TrainingDivergedError` (a ``RuntimeError``) with the last good parameters in
            place and checkpointed (so alternating good and failing steps cannot halve the
            learning rate forever). ``"restore"`` copies the parameters and
            optimizer state every step; ``"raise"`` skips that and raises at the first failure.
        progress, desc: tqdm bar labelled ``desc`` showing the smoothed loss (off when stderr
            is not a TTY).
        callback: ``(step, history) -> bool``, called after every step; ``True`` stops.

    Returns:
        The :class:`History` of the whole run (including the steps before a resume).

    Example:
        >>> w = torch.zeros((), requires_grad=True)
        >>> history = train(lambda step: (w - 3.0) ** 2, [w], steps=500, lr=0.1, progress=False)
        >>> round(w.item(), 3), history.num_steps, history.stop_reason
        (3.0, 500, 'max_steps')
    """
    steps = check_positive_int("steps", steps)
    validate_every = check_positive_int("validate_every", validate_every)
    checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
    max_nan_restores = check_positive_int("max_nan_restores", max_nan_restores, minimum=0)
    if lr is not None:
        check_float("lr", lr, "a positive finite float", lambda v: v > 0)
    if clip_norm is not None and clip_norm != "auto":
        check_float(
            "clip_norm", clip_norm, "None, 'auto' or a positive finite float", lambda v: v > 0
        )
    if nan_policy not in ("restore", "raise"):
        raise ValueError(f"nan_policy: expected 'restore' or 'raise', got {nan_policy!r}")
    es = EarlyStopping() if early_stopping is True else early_stopping or None
    if es is not None and not isinstance(es, EarlyStopping):
        raise ValueError(f"early_stopping: expected None, True or an EarlyStopping, got {es!r}")
    pairs = _named_params(params)
    tensors = [p for _, p in pairs]
    opt = _make_optimizer(optimizer, tensors, lr)
    sched = _make_scheduler(lr_schedule, opt, steps)
    deltas = {"min_delta": es.min_delta, "rel_delta": es.rel_delta} if es else {}
    use_val, smoothing = validate_fn is not None, es.smoothing if es else None
    tracker = Plateau(
        0.05 if use_val or smoothing is None else smoothing, **({} if use_val else deltas)
    )
    val_tracker = Plateau(smoothing or 1.0, **deltas)
    history, start, failures, best_val, best_params = History(), 0, 0, math.inf, None
    good_streak = 0
    path = os.fspath(checkpoint) if checkpoint is not None else None

    if path is not None and resume and os.path.exists(path):
        ckpt = _load_checkpoint(path, pairs)
        with torch.no_grad():
            for name, p in pairs:
                p.copy_(ckpt["params"][name])
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None and ckpt["scheduler"] is not None:
            sched.load_state_dict(ckpt["scheduler"])
        for trk, saved in ((tracker, ckpt["tracker"]), (val_tracker, ckpt["val_tracker"])):
            for key in ("count", "ema", "best", "best_step"):
                setattr(trk, key, saved[key])
        history, start, failures = History(**ckpt["history"]), ckpt["step"], ckpt["failures"]
        good_streak = ckpt.get("good_streak", 0)
        best_val, best_params = ckpt["best_val"], ckpt["best_params"]
        if best_params is not None:
            best_params = [
                b.to(p.device, p.dtype) for b, p in zip(best_params, tensors, strict=True)
            ]
        _set_rng_state(ckpt["rng"])

    def save(next_step: int) -> None:
        history.elapsed = elapsed0 + time.perf_counter() - t0
        atomic_save(
            {
                "format": _FORMAT,
                "step": next_step,
                "failures": failures,
                "good_streak": good_streak,
                "best_val": best_val,
                "params": {n: p.detach() for n, p in pairs},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "history": asdict(history),
                "tracker": asdict(tracker),
                "val_tracker": asdict(val_tracker),
                "best_params": best_params,
                "rng": _rng_state(),
            },
            path,
        )

    def snapshot(old: Any = None) -> dict[str, Any]:
        return _clone_into(
            old, {"params": [p.detach() for p in tensors], "optim": opt.state_dict()}
        )

    def load(params_list: list[torch.Tensor], optim_state: dict | None = None) -> None:
        with torch.no_grad():
            for p, saved in zip(tensors, params_list, strict=True):
                p.copy_(saved)
        if optim_state is not None:  # deep copy: the optimizer must not alias the snapshot
            opt.load_state_dict(copy.deepcopy(optim_state))

    def restore_best_params() -> None:
        if use_val and restore_best and best_params is not None:
            load(best_params)

    if history.stop_reason == "converged":  # resumed a finished run
        restore_best_params()
        return history
    snap = snapshot() if nan_policy == "restore" else None
    snap_step, history.stop_reason, history.converged = start, "", False
    t0, elapsed0 = time.perf_counter(), history.elapsed
    with tqdm(total=steps, initial=start, desc=desc, disable=None if progress else True) as bar:
        for step in range(start, steps):
            lr_now = opt.param_groups[0]["lr"]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(step)
            if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
                got = (
                    f"shape {tuple(loss.shape)}, requires_grad={loss.requires_grad}"
                    if isinstance(loss, torch.Tensor)
                    else type(loss).__name__
                )
                raise ValueError(
                    f"loss_fn: expected a scalar tensor that requires grad, "
                    f"got {got} at step {step}"
                )
            value, gnorm = float(loss.detach()), math.nan
            if math.isfinite(value):
                loss.backward()
                if step == start and all(p.grad is None for p in tensors):
                    raise ValueError(
                        "params: expected tensors that loss_fn depends on, got "
                        f"{len(tensors)} tensors none of which receives a gradient"
                    )
                limit = (
                    auto_clip_threshold(history.grad_norms)
                    if clip_norm == "auto"
                    else clip_norm or math.inf
                )
                gnorm = float(nn.utils.clip_grad_norm_(tensors, limit))
                history.num_clipped += gnorm > limit
            ok = math.isfinite(value) and math.isfinite(gnorm)
            history.losses.append(value)
            history.lrs.append(lr_now)
            history.grad_norms.append(gnorm)
            if ok:
                if snap is not None:
                    snap, snap_step = snapshot(snap), step
                opt.step()
                good_streak += 1
                if good_streak >= NAN_RECOVERY_STEPS:
                    failures = 0
            else:
                failures, good_streak = failures + 1, 0
                what = f"loss {value}" if not math.isfinite(value) else f"gradient norm {gnorm}"
                msg = f"step {step}: non-finite {what}"
                if snap is None or failures > max_nan_restores:
                    history.stop_reason = "diverged"
                    history.elapsed = elapsed0 + time.perf_counter() - t0
                    if snap is not None:
                        load(snap["params"], snap["optim"])
                        msg += (
                            f" after {max_nan_restores} restores with halved lr and fewer "
                            f"than {NAN_RECOVERY_STEPS} good steps in a row between them;"
                            f" gave up. The parameters are those used at step {snap_step}"
                        )
                    if path is not None:
                        save(step + 1)
                        msg += f" (saved to {path!r})"
                    raise TrainingDivergedError(
                        f"train: {msg}. Check the model for numerical "
                        "problems or lower the learning rate.",
                        history,
                    )
                load(snap["params"], snap["optim"])
                _scale_lr(opt, sched, 0.5)
                history.num_nan_restores += 1
                warnings.warn(
                    f"{msg}; restored the parameters and optimizer state used at step "
                    f"{snap_step} and halved the learning rate to "
                    f"{opt.param_groups[0]['lr']:.3g} (restore {failures} of at most "
                    f"{max_nan_restores} before {NAN_RECOVERY_STEPS} good steps in a row)",
                    NaNRestoreWarning,
                    stacklevel=2,
                )
            if sched is not None:
                sched.step()
            since = tracker.update(step, value if ok else math.nan)
            history.smoothed.append(tracker.ema)
            if use_val:
                since = 0
                if (step + 1) % validate_every == 0 or step + 1 == steps:
                    with torch.no_grad():
                        val = float(validate_fn())
                    history.val_losses.append((step, val))
                    if val < best_val:
                        best_val = val
                        best_params = _clone_into(best_params, [p.detach() for p in tensors])
                    since = val_tracker.update(step, val)
            if es is not None and since >= es.patience and step + 1 >= es.min_steps:
                if len(history.lr_decay_steps) < es.lr_decays:
                    _scale_lr(opt, sched, es.decay_factor)
                    history.lr_decay_steps.append(step)
                    trk = val_tracker if use_val else tracker
                    trk.best, trk.best_step = trk.ema, step
                else:
                    history.converged, history.stop_reason = True, "converged"
            if not bar.disable:
                bar.set_postfix(loss=f"{history.smoothed[-1]:.4g}", refresh=False)
                bar.update(1)
            if callback is not None and callback(step, history):
                history.stop_reason = "callback"
            if history.stop_reason or step + 1 == steps:
                break
            if path is not None and (step + 1) % checkpoint_every == 0:
                save(step + 1)
    history.stop_reason = history.stop_reason or "max_steps"
    finite = [(v, i) for i, v in enumerate(history.smoothed) if math.isfinite(v)]
    history.best_step = (
        min((v, s) for s, v in history.val_losses)[1]
        if history.val_losses
        else min(finite)[1]
        if finite
        else None
    )
    history.elapsed = elapsed0 + time.perf_counter() - t0
    if path is not None and history.num_steps > start:
        save(history.num_steps)  # the state the run ended in (parameters and optimizer agree)
    restore_best_params()
    return history
