"""Input checks that raise clear ``ValueError`` s naming the argument.

Every public entry point of pyro-nf validates what a user passes in before any tensor work
starts, so a wrong shape or a NaN is reported as *what argument, what was expected, what was
given* instead of a stack trace from deep inside torch or a silent NaN loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "check_positive_int",
    "check_event",
    "check_finite",
    "check_float",
    "check_context",
]


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``, else raise.

    Example:
        >>> check_positive_int("depth", 4)
        4
        >>> check_positive_int("depth", 0)
        Traceback (most recent call last):
        ...
        ValueError: depth: expected an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, expected: str, ok: Callable[[float], bool]) -> float:
    """Check that ``value`` is a finite real number (not a bool) for which ``ok(value)`` holds.

    Example:
        >>> check_float("lr", 0.1, "a positive finite float", lambda v: v > 0)
        0.1
        >>> check_float("lr", float("nan"), "a positive finite float", lambda v: v > 0)
        Traceback (most recent call last):
        ...
        ValueError: lr: expected a positive finite float, got nan
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not ok(value)
    ):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    """Raise if ``value`` holds NaN or infinite entries.

    Example:
        >>> check_finite("x", torch.tensor([0.0, float("nan")]))
        Traceback (most recent call last):
        ...
        ValueError: x: expected finite values, got 1 non-finite entries (NaN or inf) in a tensor of shape (2,)
    """
    if value.is_floating_point():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise ValueError(
                f"{name}: expected finite values, got {int(bad.sum())} non-finite entries "
                f"(NaN or inf) in a tensor of shape {tuple(value.shape)}"
            )


def check_event(name: str, value: Any, dim: int, finite: bool = True) -> torch.Tensor:
    """Check that ``value`` is a floating tensor of shape ``(..., dim)`` (and finite).

    Example:
        >>> check_event("value", torch.zeros(5, 3), dim=2)
        Traceback (most recent call last):
        ...
        ValueError: value: expected a tensor of shape (..., 2) (event dimension 2), got shape (5, 3)
    """
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{name}: expected a torch.Tensor of shape (..., {dim}), got {type(value).__name__}"
        )
    if value.dim() < 1 or value.shape[-1] != dim:
        raise ValueError(
            f"{name}: expected a tensor of shape (..., {dim}) (event dimension {dim}), "
            f"got shape {tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if finite:
        check_finite(name, value)
    return value


def check_context(
    context: Any, context_dim: int | None, finite: bool = True
) -> torch.Tensor | None:
    """Check a ``context`` argument against the flow's ``context_dim``.

    A flow built with ``context_dim=None`` is directly parameterized and takes no context; an
    amortized flow (``context_dim=H``) needs a tensor of shape ``(..., H)``.

    Example:
        >>> check_context(None, 3)
        Traceback (most recent call last):
        ...
        ValueError: context: this flow is amortized (context_dim=3) and needs a tensor of shape (..., 3), got None
    """
    if context_dim is None:
        if context is not None:
            shape = (
                tuple(context.shape)
                if isinstance(context, torch.Tensor)
                else type(context).__name__
            )
            raise ValueError(
                "context: this flow is directly parameterized (context_dim=None) and takes no "
                f"context; expected None, got {shape}"
            )
        return None
    if context is None:
        raise ValueError(
            f"context: this flow is amortized (context_dim={context_dim}) and needs a tensor of "
            f"shape (..., {context_dim}), got None"
        )
    return check_event("context", context, context_dim, finite=finite)
