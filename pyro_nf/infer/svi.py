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

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.importance import vectorized_importance_weights

from ..training.loop import EarlyStopping, History, train
from ..utils.validation import check_positive_int

__all__ = ["fit", "make_elbo", "RenyiBound", "ConvergenceWarning", "default_early_stopping"]


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


def fit(
    model: Callable,
    guide: Callable,
    *args: Any,
    steps: int = 2000,
    elbo: str | ELBO | RenyiBound = "trace",
    num_particles: int = 1,
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
        lr: learning rate (Adam by default).
        early_stopping: ``True`` (default): :func:`default_early_stopping` (divide the learning
            rate by 10 twice, then stop, at plateaus of the smoothed ELBO); a
            :class:`ConvergenceWarning` says when ``steps`` ran out first. ``None`` runs all
            ``steps`` at ``lr`` (or its ``lr_schedule``).
        model_kwargs: keyword arguments of the model and guide.
        **train_kwargs: passed to :func:`pyro_nf.training.train` (``optimizer``, ``lr_schedule``,
            ``clip_norm``, ``early_stopping``, ``checkpoint``, ``progress``, ...).

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
    kwargs = dict(model_kwargs or {})
    loss = make_elbo(elbo, num_particles, vectorize_particles, alpha, max_plate_nesting)
    params = _trainable_parameters(loss, model, guide, args, kwargs)

    def loss_fn(step: int):
        return loss.differentiable_loss(model, guide, *args, **kwargs)

    train_kwargs.setdefault("desc", "SVI")
    if early_stopping is True:
        early_stopping = default_early_stopping(steps)
    history = train(loss_fn, params, steps, lr=lr, early_stopping=early_stopping, **train_kwargs)
    if early_stopping and history.stop_reason == "max_steps":
        _warn_not_converged(steps)
    _attach_history(guide, history)
    return history


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
