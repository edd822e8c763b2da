"""What :func:`~pyro_nf.training.train` optimizes and how: named parameters, the optimizer, the
learning-rate schedule and gradient clipping."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "AUTO_CLIP_FACTOR",
    "AUTO_CLIP_MIN_STEPS",
    "AUTO_CLIP_WINDOW",
    "OPTIMIZERS",
    "ParamsLike",
    "auto_clip_threshold",
    "clip_limit",
    "make_optimizer",
    "make_scheduler",
    "named_params",
    "scale_lr",
]

ParamsLike = nn.Module | Mapping[str, torch.Tensor] | Iterable[Any]
#: The optimizers ``train(optimizer=...)`` knows by name.
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}

#: ``clip_norm="auto"`` clips at this multiple of the recent median gradient norm ...
AUTO_CLIP_FACTOR = 5.0
#: ... taken over this many recent finite steps ...
AUTO_CLIP_WINDOW = 100
#: ... once at least this many of them are known (before that it does not clip).
AUTO_CLIP_MIN_STEPS = 20


def _describe_param(p: Any) -> str:
    """How a rejected ``params`` entry looks, for the error message."""
    if isinstance(p, torch.Tensor):
        return (
            f"a tensor with dtype={p.dtype}, requires_grad={p.requires_grad}, is_leaf={p.is_leaf}"
        )
    return type(p).__name__


def _param_items(params: ParamsLike) -> Iterable[Any]:
    """The entries of ``params``: ``(name, tensor)`` pairs or bare tensors."""
    if isinstance(params, nn.Module):
        return [(n, p) for n, p in params.named_parameters() if p.requires_grad]
    items = params.items() if isinstance(params, Mapping) else params
    return [items] if isinstance(items, torch.Tensor) else items


def named_params(params: ParamsLike) -> list[tuple[str, torch.Tensor]]:
    """The distinct trainable tensors of ``params`` with their names (``param{i}`` if unnamed).

    Example:
        >>> w = torch.zeros(2, requires_grad=True)
        >>> [name for name, _ in named_params([w, ("b", torch.ones(1, requires_grad=True)), w])]
        ['param0', 'b']
    """
    pairs: list[tuple[str, torch.Tensor]] = []
    for i, item in enumerate(_param_items(params)):
        name, p = item if isinstance(item, tuple) else (f"param{i}", item)
        if not (
            isinstance(p, torch.Tensor) and p.is_leaf and p.requires_grad and p.is_floating_point()
        ):
            raise ValueError(
                f"params: expected leaf floating-point tensors with "
                f"requires_grad=True, got {_describe_param(p)} for {name!r}"
            )
        if all(p is not q for _, q in pairs):
            pairs.append((str(name), p))
    if not pairs:
        raise ValueError("params: expected at least one trainable tensor, got none")
    return pairs


def make_optimizer(
    optimizer: Any, tensors: list[torch.Tensor], lr: float | None
) -> torch.optim.Optimizer:
    """The optimizer of ``train(optimizer=..., lr=...)`` over ``tensors`` (see :func:`train`).

    Example:
        >>> w = torch.zeros(2, requires_grad=True)
        >>> make_optimizer("sgd", [w], None).param_groups[0]["lr"]
        0.01
    """
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()](tensors, lr=1e-2 if lr is None else lr)
    opt = (
        optimizer
        if isinstance(optimizer, torch.optim.Optimizer)
        else (optimizer(tensors) if callable(optimizer) else None)
    )
    if not isinstance(opt, torch.optim.Optimizer):
        raise ValueError(
            f"optimizer: expected one of {sorted(OPTIMIZERS)}, a torch.optim."
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


def make_scheduler(schedule: Any, opt: torch.optim.Optimizer, steps: int) -> Any:
    """The learning-rate schedule of ``train(lr_schedule=...)`` (``None`` for a constant rate).

    The multiplier of ``lr`` at step ``t`` (``T = steps``): ``"cosine"``
    ``(1 + cos(pi t / T)) / 2``; ``"exponential"`` ``0.01 ** (t / T)``; ``"warmup_cosine"``
    ``(t + 1) / W`` for ``t < W = max(1, T // 20)``, then cosine from 1 to 0; a callable
    ``schedule(optimizer) -> LRScheduler`` is called.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> type(make_scheduler("cosine", opt, 100)).__name__
        'LambdaLR'
    """
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


def scale_lr(opt: torch.optim.Optimizer, sched: Any, factor: float) -> None:
    """Multiply the learning rate of every parameter group by ``factor``, and a schedule's base
    rates too, so that the schedule keeps the scaled rate.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> scale_lr(opt, None, 0.5); opt.param_groups[0]["lr"]
        0.5
    """
    for group in opt.param_groups:
        group["lr"] *= factor
    if hasattr(sched, "base_lrs"):
        sched.base_lrs = [b * factor for b in sched.base_lrs]


def auto_clip_threshold(grad_norms: list[float]) -> float:
    r"""The gradient-norm limit of ``clip_norm="auto"`` after the steps with norms ``grad_norms``.

    That is :data:`AUTO_CLIP_FACTOR` times the median norm of the last :data:`AUTO_CLIP_WINDOW`
    finite steps, no clipping before :data:`AUTO_CLIP_MIN_STEPS` of them:

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


def clip_limit(clip_norm: float | str | None, grad_norms: list[float]) -> float:
    """The gradient-norm limit of this step for ``train(clip_norm=...)`` (``inf``: no clipping).

    Example:
        >>> clip_limit(None, []), clip_limit(2.0, []), clip_limit("auto", [1.0] * 30)
        (inf, 2.0, 5.0)
    """
    if clip_norm == "auto":
        return auto_clip_threshold(grad_norms)
    return clip_norm or math.inf  # type: ignore[return-value]
