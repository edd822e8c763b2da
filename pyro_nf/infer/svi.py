r"""``fit``: stochastic variational inference for any Pyro model and guide, on pyro-nf's loop.

The loss is a differentiable negative ELBO computed by Pyro itself
(``Trace_ELBO().differentiable_loss``, or ``RenyiELBO`` for :math:`\alpha`-bounds / IWAE), so
the flow-augmented ELBO

.. math::

    \mathcal L = \mathbb E_{\varepsilon}\Bigl[\log p(x, f(\varepsilon)) - \log p_0(\varepsilon)
    + \textstyle\sum_k \log\lvert\det J_{f_k}\rvert\Bigr]

is exactly what Pyro computes for a guide that samples from a :class:`~pyro_nf.FlowDistribution`.
The parameters (guide modules and any ``pyro.param`` of model or guide) are collected once and
optimized with one torch optimizer by :func:`pyro_nf.training.train`, which adds the progress bar,
schedules, clipping, early stopping, NaN recovery and checkpoints.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.importance import vectorized_importance_weights

from ..diagnostics.draws import check_callable, check_keywords, check_model_kwargs
from ..training.checkpoint import atomic_save
from ..training.integrity import (
    INTEGRITY_KEY,
    check_finite_tensors,
    check_integrity,
    integrity_record,
    read_payload,
)
from ..training.loop import EarlyStopping, History, train
from ..utils.hashing import data_sha256, tensor_sha256
from ..utils.validation import check_float, check_positive_int
from ..utils.warn import warn_at_caller

__all__ = [
    "ConvergenceWarning",
    "FIT_KEYWORDS",
    "RenyiBound",
    "default_early_stopping",
    "default_num_particles",
    "fit",
    "fit_fingerprint",
    "guide_state_path",
    "make_elbo",
]


class ConvergenceWarning(UserWarning):
    """Warned by :func:`fit` when the step budget ran out before the ELBO stopped improving."""


class RenyiBound:
    r"""The Rényi :math:`\alpha` bound (Li & Turner 2016) as a differentiable loss.

    With :math:`K` particles and log weights :math:`\log w_k = \log p(x, z_k) - \log q(z_k)`,

    .. math::

        \mathcal L_\alpha = \frac{1}{1-\alpha}\log \frac1K \sum_k w_k^{1-\alpha},

    which is the IWAE bound (Burda et al. 2016) at :math:`\alpha = 0` and tends to the ELBO as
    :math:`\alpha \to 1`. Pyro's ``RenyiELBO`` only offers ``loss_and_grads``; this class gives
    ``differentiable_loss`` (pathwise gradients, so the guide must be reparameterizable, as flow
    guides are), which is what :func:`fit` optimizes.

    Example:
        >>> import torch, pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> float(RenyiBound(alpha=0.0, num_particles=10).differentiable_loss(model, guide))
        0.0
    """

    def __init__(
        self, alpha: float = 0.0, num_particles: int = 2, max_plate_nesting: int | None = None
    ) -> None:
        if not (isinstance(alpha, int | float) and alpha >= 0 and alpha != 1):
            raise ValueError(f"alpha: expected a number >= 0 other than 1, got {alpha!r}")
        self.alpha = float(alpha)
        self.num_particles = check_positive_int("num_particles", num_particles)
        self.max_plate_nesting = max_plate_nesting

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        from ..diagnostics.importance import guess_max_plate_nesting

        if self.max_plate_nesting is None:
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        lw, _, _ = vectorized_importance_weights(
            model,
            guide,
            *args,
            num_samples=self.num_particles,
            max_plate_nesting=self.max_plate_nesting,
            **kwargs,
        )
        lw = lw.reshape(-1)
        scaled = (1.0 - self.alpha) * lw
        bound = (torch.logsumexp(scaled, 0) - math.log(lw.numel())) / (1.0 - self.alpha)
        return -bound


def make_elbo(
    elbo: str | ELBO = "trace",
    num_particles: int = 1,
    vectorize_particles: bool = True,
    alpha: float = 0.0,
    max_plate_nesting: int | None = None,
) -> ELBO | RenyiBound:
    """Build the loss: ``"trace"`` (Pyro's ``Trace_ELBO``) or ``"renyi"`` (:class:`RenyiBound`;
    ``alpha=0`` with ``num_particles=K`` is the IWAE bound), or pass an ``ELBO`` through.

    Example:
        >>> type(make_elbo("renyi", num_particles=8)).__name__
        'RenyiBound'
    """
    if isinstance(elbo, ELBO | RenyiBound):
        return elbo
    check_positive_int("num_particles", num_particles)
    common: dict[str, Any] = {
        "num_particles": num_particles,
        "vectorize_particles": vectorize_particles and num_particles > 1,
    }
    if max_plate_nesting is not None:
        common["max_plate_nesting"] = max_plate_nesting
    if elbo == "trace":
        return Trace_ELBO(**common)
    if elbo == "renyi":
        return RenyiBound(alpha, num_particles, max_plate_nesting)
    raise ValueError(f"elbo: expected 'trace', 'renyi' or a pyro.infer.ELBO instance, got {elbo!r}")


def _trainable_parameters(
    loss: ELBO | RenyiBound, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> dict[str, torch.Tensor]:
    """Every tensor the loss depends on: ``pyro.param`` sites and the modules' own parameters.

    A module registered with ``pyro.module`` computes with its *own* parameters, while Pyro's
    param store may still hold tensors of an earlier module of the same name; those stale
    tensors are left out (with a warning) instead of being "optimized" to no effect.
    """
    with poutine.trace(param_only=True) as capture:  # creates every param once
        value = loss.differentiable_loss(model, guide, *args, **kwargs)
    candidates: dict[str, torch.Tensor] = {}
    for name, site in capture.trace.nodes.items():
        candidates[name] = site["value"].unconstrained()
    for owner in (guide, model):
        if isinstance(owner, torch.nn.Module):
            for name, p in owner.named_parameters():
                candidates.setdefault(f"{type(owner).__name__}.{name}", p)
    seen: set[int] = set()
    unique = {}
    for name, p in candidates.items():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            unique[name] = p
    if not unique:
        raise ValueError(
            "guide: found no parameters to optimize (does the guide call pyro.param or pyro.module?)"
        )
    grads = torch.autograd.grad(value, list(unique.values()), allow_unused=True)
    used = {name: p for (name, p), g in zip(unique.items(), grads, strict=True) if g is not None}
    stale = sorted(set(unique) - set(used))
    if stale and len(stale) < len(unique):
        warnings.warn(
            f"fit: {len(stale)} tensors in Pyro's param store (e.g. {stale[0]!r}) do not affect the "
            "loss, probably left by an earlier guide of the same name; they are not optimized. "
            "Call pyro.clear_param_store() before building a new guide to avoid this.",
            stacklevel=3,
        )
    if not used:
        raise ValueError("guide: none of the parameters found affects the loss")
    return used


def default_early_stopping(steps: int) -> EarlyStopping:
    """The convergence rule :func:`fit` uses by default for a budget of ``steps``.

    When the smoothed ELBO stops improving, divide the learning rate by 10, twice, then stop at
    the next plateau (:class:`~pyro_nf.training.EarlyStopping` with patience
    ``clip(steps // 10, 200, 500)`` steps, smoothing 0.02, ``lr_decays=2``); the decays shrink
    the jitter of the final iterate, which is proportional to the learning rate.

    Example:
        >>> default_early_stopping(5000)
        EarlyStopping(patience=500, min_delta=0.0, rel_delta=0.0001, smoothing=0.02, min_steps=0, lr_decays=2, decay_factor=0.1)
    """
    return EarlyStopping(
        patience=max(200, min(500, steps // 10)), smoothing=0.02, lr_decays=2, decay_factor=0.1
    )


def default_num_particles(guide: Any) -> int:
    """The ELBO particles :func:`fit` draws per step when ``num_particles`` is not given: the
    guide's ``default_num_particles`` attribute, else 1 (Pyro's default).

    A :class:`~pyro_nf.FlowGuide` asks for 4: with one draw per step the gradient noise of a
    flow's ELBO sets the accuracy the fit ends at (on centered eight schools and German credit
    some seeds stopped 0.13–0.2 sd off with one draw, all under 0.08 with four; measured by
    ``benchmarks/hard_posteriors.py``), and four vectorized draws cost little more than one.

    Example:
        >>> default_num_particles(lambda: None)
        1
    """
    value = getattr(guide, "default_num_particles", 1)
    return check_positive_int("guide.default_num_particles", value)


def _warn_unvectorized(num_particles: int, err: BaseException) -> None:
    """Warn that the default particles run one after another: the model failed vectorized."""
    reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    warn_at_caller(
        f"fit: the model could not run {num_particles} particles vectorized ({reason}); "
        "drawing them one after another instead (slower). Pass num_particles=1 for one "
        "draw per step, or vectorize_particles=False to silence this.",
        RuntimeWarning,
    )


#: The keywords :func:`fit` takes (its own, then those it passes to ``train``).
FIT_KEYWORDS = (
    "steps",
    "elbo",
    "num_particles",
    "vectorize_particles",
    "alpha",
    "max_plate_nesting",
    "lr",
    "early_stopping",
    "model_kwargs",
    *(
        name
        for name, p in inspect.signature(train).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in ("lr", "early_stopping")
    ),
)


def fit(
    model: Callable,
    guide: Callable,
    *args: Any,
    steps: int = 2000,
    elbo: str | ELBO | RenyiBound = "trace",
    num_particles: int | None = None,
    vectorize_particles: bool = True,
    alpha: float = 0.0,
    max_plate_nesting: int | None = None,
    lr: float = 1e-2,
    early_stopping: bool | EarlyStopping | None = True,
    model_kwargs: dict[str, Any] | None = None,
    **train_kwargs: Any,
) -> History:
    r"""Fit ``guide`` to ``model(*args, **model_kwargs)`` by maximizing the ELBO.

    Args:
        model, guide: a Pyro model and guide (e.g. a :class:`~pyro_nf.FlowGuide`).
        *args: the model's (and guide's) positional arguments.
        steps: maximum number of optimization steps.
        elbo, num_particles, vectorize_particles, alpha, max_plate_nesting: see :func:`make_elbo`.
            ``num_particles=None`` (default): :func:`default_num_particles` of the guide for
            ``Trace_ELBO`` (4 for a :class:`~pyro_nf.FlowGuide`, 1 for other guides), and 1
            for ``"renyi"`` (whose bound depends on the number, so it is asked for
            explicitly). Where the model cannot run vectorized particles, a default number of
            particles is drawn one after another instead, with a warning.
        lr: learning rate (Adam by default).
        early_stopping: ``True`` (default): :func:`default_early_stopping` (divide the learning
            rate by 10 twice, then stop, at plateaus of the smoothed ELBO); a
            :class:`ConvergenceWarning` says when ``steps`` ran out first. ``None`` runs all
            ``steps`` at ``lr`` (or its ``lr_schedule``).
        model_kwargs: the keyword arguments of the model and guide, as one dict: they are
            called as ``model(*args, **model_kwargs)`` (the convention of every pyro-nf
            function that runs a model; nothing else is passed to the model).
        **train_kwargs: passed to :func:`pyro_nf.training.train` (``optimizer``, ``lr_schedule``,
            ``clip_norm``, ``checkpoint``, ``progress``, ...). Any other keyword (a model
            keyword given directly, a misspelling) is refused at once, before any trace, with
            a ``TypeError`` naming it (``FIT_KEYWORDS`` lists those taken).

    Returns:
        The :class:`~pyro_nf.training.History`; ``history.losses`` are negative ELBO estimates.

    Example:
        >>> import torch, pyro, pyro.distributions as dist
        >>> import pyro_nf
        >>> def model():
        ...     pyro.sample("z", dist.Normal(3.0, 0.5))
        >>> guide = pyro_nf.FlowGuide(model, flow="planar", depth=2)
        >>> history = fit(model, guide, steps=3000, lr=0.05, num_particles=8, progress=False)
        >>> history.converged, len(history.lr_decay_steps)   # two decays, then a plateau
        (True, 2)
        >>> abs(guide.median()["z"].item() - 3.0) < 0.1
        True
    """
    check_keywords("fit", train_kwargs, FIT_KEYWORDS)
    _check_fit_arguments(model, guide, steps, lr, early_stopping, vectorize_particles)
    _check_nesting(max_plate_nesting)
    kwargs = check_model_kwargs(model_kwargs)
    loss, params = _loss_and_parameters(
        model, guide, args, kwargs, (elbo, num_particles, vectorize_particles, alpha),
        max_plate_nesting,
    )  # fmt: skip
    _sync_guide_buffers(guide, train_kwargs.get("checkpoint"), train_kwargs.get("resume", True))

    loss_fn = _rejections_as_nan(lambda: loss.differentiable_loss(model, guide, *args, **kwargs))
    train_kwargs.setdefault("desc", "SVI")
    train_kwargs.setdefault("fingerprint", fit_fingerprint(guide, args, kwargs, loss))
    if early_stopping is True:
        early_stopping = default_early_stopping(steps)
    history = train(loss_fn, params, steps, lr=lr, early_stopping=early_stopping, **train_kwargs)
    if early_stopping and history.stop_reason == "max_steps":
        _warn_not_converged(steps)
    _attach_history(guide, history)
    return history


def _loss_and_parameters(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    loss_settings: tuple,
    max_plate_nesting: int | None,
) -> tuple[ELBO | RenyiBound, dict[str, torch.Tensor]]:
    """:func:`fit`'s loss (``loss_settings = (elbo, num_particles, vectorize_particles,
    alpha)``, ``num_particles=None`` resolved by :func:`default_num_particles`) and the tensors
    it depends on. Default particles the model cannot run vectorized are drawn one by one."""
    elbo, num_particles, vectorize, alpha = loss_settings
    defaulted = num_particles is None
    if defaulted:
        num_particles = default_num_particles(guide) if elbo == "trace" else 1
    loss = make_elbo(elbo, num_particles, vectorize, alpha, max_plate_nesting)
    try:
        return loss, _trainable_parameters(loss, model, guide, args, kwargs)
    except (RuntimeError, ValueError, IndexError, NotImplementedError) as err:
        if not (defaulted and num_particles > 1 and vectorize):
            raise
        _warn_unvectorized(num_particles, err)
    loss = make_elbo(elbo, num_particles, False, alpha, max_plate_nesting)
    return loss, _trainable_parameters(loss, model, guide, args, kwargs)


def _check_fit_arguments(
    model: Any, guide: Any, steps: Any, lr: Any, early_stopping: Any, vectorize_particles: Any
) -> None:
    """Check :func:`fit`'s own arguments before any trace is run."""
    check_callable("model", model, "a callable Pyro model")
    check_callable("guide", guide, "a callable Pyro guide (e.g. pyro_nf.FlowGuide(model))")
    check_positive_int("steps", steps)
    check_float("lr", lr, "a positive finite float", lambda v: v > 0)
    if not (early_stopping is None or isinstance(early_stopping, bool | EarlyStopping)):
        raise ValueError(
            "early_stopping: expected True, False, None or an EarlyStopping, "
            f"got {type(early_stopping).__name__}"
        )
    if not isinstance(vectorize_particles, bool):
        raise ValueError(
            f"vectorize_particles: expected True or False, got {vectorize_particles!r}"
        )


def _check_nesting(max_plate_nesting: Any) -> None:
    """Raise unless ``max_plate_nesting`` is ``None`` or an integer >= 0."""
    if max_plate_nesting is not None:
        check_positive_int("max_plate_nesting", max_plate_nesting, minimum=0)


def _data_hash(value: Any) -> Any:
    """A content hash of one model argument (tensors and plain data; else its type name)."""
    if isinstance(value, torch.Tensor):
        return tensor_sha256(value)
    if isinstance(value, list | tuple):
        return [_data_hash(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _data_hash(v) for k, v in value.items()}
    try:
        return data_sha256(value)
    except TypeError:
        return type(value).__name__


def fit_fingerprint(guide: Any, args: tuple, kwargs: dict, loss: Any) -> dict[str, Any]:
    """The plain-data fingerprint of a :func:`fit` run: hashes of the model's arguments, the
    guide (its :meth:`~pyro_nf.FlowGuide.describe` or type) and the loss; a checkpoint written
    under another fingerprint is not resumed (unless ``resume="force"``).

    Example:
        >>> fp = fit_fingerprint(None, (torch.zeros(2),), {}, None)
        >>> sorted(fp), len(fp["model_args"][0])
        (['guide', 'loss', 'model_args', 'model_kwargs'], 64)
    """
    describe = getattr(guide, "describe", None)
    return {
        "model_args": [_data_hash(a) for a in args],
        "model_kwargs": {k: _data_hash(v) for k, v in sorted(kwargs.items())},
        "guide": describe() if callable(describe) else type(guide).__name__,
        "loss": type(loss).__name__,
    }


def guide_state_path(checkpoint: str | os.PathLike) -> str:
    """Where :func:`fit` keeps the guide's buffers next to the training ``checkpoint``.

    Example:
        >>> guide_state_path("run.pt")
        'run.pt.guide'
    """
    return f"{os.fspath(checkpoint)}.guide"


def _sync_guide_buffers(guide: Any, checkpoint: Any, resume: Any) -> None:
    """Make a resumed fit continue with the guide's saved buffers (a :class:`FlowGuide`'s fixed
    Laplace preconditioner, MADE masks, ...), not with ones set up again in this process (the
    Laplace search starts from random draws); a fresh run saves them next to the checkpoint."""
    if checkpoint is None or not isinstance(guide, torch.nn.Module):
        return
    buffers = dict(guide.named_buffers())
    path = guide_state_path(checkpoint)
    if not (resume and os.path.exists(os.fspath(checkpoint)) and os.path.exists(path)):
        payload: dict[str, Any] = {"buffers": {n: b.detach().cpu() for n, b in buffers.items()}}
        payload[INTEGRITY_KEY] = integrity_record(payload)
        atomic_save(payload, path)
        return
    saved = _read_guide_state(path)
    if sorted(saved) != sorted(buffers) or any(
        saved[n].shape != b.shape for n, b in buffers.items()
    ):
        raise ValueError(
            f"checkpoint: expected the guide state saved with {os.fspath(checkpoint)!r} to match "
            f"this guide's buffers, got {sorted(saved)} for {sorted(buffers)}; "
            "pass resume=False to start afresh"
        )
    with torch.no_grad():
        for name, b in buffers.items():
            b.copy_(saved[name])


def _read_guide_state(path: str) -> dict[str, torch.Tensor]:
    """The guide buffers saved at ``path``, refused (``ValueError`` naming the file) when the
    file is unreadable, damaged or edited (its integrity record), or holds non-finite values."""
    payload = read_payload(path, "checkpoint", "the guide state saved by pyro_nf.fit")
    if not isinstance(payload, dict) or not isinstance(payload.get("buffers"), dict):
        raise ValueError(f"checkpoint: {path} is not a guide state saved by pyro_nf.fit")
    if not check_integrity(payload, path, "checkpoint", strip="buffers."):
        raise ValueError(f"checkpoint: {path} has no integrity record; pass resume=False")
    check_finite_tensors(payload["buffers"], path, "checkpoint")
    return payload["buffers"]


#: Pyro's messages for a distribution parameter or value outside its support: after a first
#: good step, these come from an extreme draw of the guide (a scale that underflowed to 0), not
#: from a bug in the model.
_REJECTION_MESSAGES = ("to satisfy the constraint", "Expected value argument")


def _rejections_as_nan(elbo_loss: Callable[[], torch.Tensor]) -> Callable[[int], torch.Tensor]:
    """The loss of one step; a draw the model rejects (``ValueError`` with one of
    :data:`_REJECTION_MESSAGES`) after a first good step counts as a non-finite loss, which
    the NaN guard of :func:`~pyro_nf.training.train` answers (last good state back, learning
    rate halved, or a :class:`~pyro_nf.training.TrainingDivergedError` naming the step)."""
    succeeded = False

    def loss_fn(step: int) -> torch.Tensor:
        nonlocal succeeded
        try:
            value = elbo_loss()
        except ValueError as err:
            text = str(err)
            if not succeeded or not any(m in text for m in _REJECTION_MESSAGES):
                raise
            warn_at_caller(  # at the fit(...) line, not inside the training loop
                f"fit: step {step}: the model rejected a draw of the guide "
                f"({text.splitlines()[0][:160]}); counted as a non-finite loss",
                RuntimeWarning,
            )
            return torch.tensor(math.nan, requires_grad=True)
        succeeded = True
        return value

    return loss_fn


def _warn_not_converged(steps: int) -> None:
    """Warn (at :func:`fit`'s caller) that the step budget ran out before convergence."""
    warnings.warn(
        f"fit: the smoothed ELBO was still improving after {steps} steps (not converged); "
        "consider more steps. history.converged is False.",
        ConvergenceWarning,
        stacklevel=3,
    )


def _attach_history(guide: Callable, history: History) -> None:
    """Store ``history`` on the guide, for ``guide.report()`` and :func:`pyro_nf.diagnose`."""
    try:
        guide.history = history
    except AttributeError:  # pragma: no cover - guides that refuse attributes
        pass
