"""Input checks that raise clear ``ValueError`` s naming the argument.

Every public entry point of pyro-nf validates what a user passes in before any tensor work
starts, so a wrong shape or a NaN is reported as *what argument, what was expected, what was
given* instead of a stack trace from deep inside torch or a silent NaN loss.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "MAX_PARAMETERS",
    "check_choice",
    "check_parameter_count",
    "check_positive_int",
    "check_sample_shape",
    "check_seed",
    "check_tensor_like",
    "check_widths",
    "mlp_parameter_count",
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


def check_seed(value: Any, name: str = "seed", allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` if it is a non-negative integer (a Python or NumPy integer, not a
    bool; ``None`` too where ``allow_none``), else ``ValueError`` naming ``name``. The one seed
    check of pyro-nf: every seeded function (data splits, density fits, guide summaries, NUTS
    chains) accepts the same seeds.

    Example:
        >>> check_seed(7), check_seed(None, allow_none=True)
        (7, None)
        >>> check_seed(-1)
        Traceback (most recent call last):
        ...
        ValueError: seed: expected a non-negative integer, got -1
    """
    if value is None and allow_none:
        return None
    # numbers.Integral: Python and NumPy integers (bools are excluded by name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        expected = "None or a non-negative integer" if allow_none else "a non-negative integer"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
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


def check_event(
    name: str, value: Any, dim: int, finite: bool = True, like: torch.Tensor | None = None
) -> torch.Tensor:
    """Check that ``value`` is a floating tensor of shape ``(..., dim)`` (and finite), with data
    (not on the ``meta`` device) and, given ``like``, of its dtype and on its device (see
    :func:`check_tensor_like`).

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
    check_tensor_like(name, value, like)
    if finite:
        check_finite(name, value)
    return value


def check_context(
    context: Any, context_dim: int | None, finite: bool = True, like: torch.Tensor | None = None
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
    return check_event("context", context, context_dim, finite=finite, like=like)


def check_tensor_like(name: str, value: torch.Tensor, like: torch.Tensor | None = None) -> None:
    """Refuse a ``meta`` tensor and, given ``like`` (e.g. a flow parameter), a floating tensor of
    another dtype or a tensor on another device: no silent casts, no errors from deep in torch.

    Example:
        >>> check_tensor_like("value", torch.zeros(2, dtype=torch.float64), like=torch.zeros(1))
        Traceback (most recent call last):
        ...
        ValueError: value: expected dtype float32 (the flow's dtype), got float64; convert with .to(torch.float32) or the flow with .double()
    """
    if value.device.type == "meta":
        raise ValueError(f"{name}: expected a tensor with data, got a tensor on the 'meta' device")
    if like is None:
        return
    if value.is_floating_point() and value.dtype != like.dtype:
        want, got = _dtype_name(like.dtype), _dtype_name(value.dtype)
        fix = {"float64": ".double()", "float16": ".half()", "bfloat16": ".bfloat16()"}.get(
            got, f".to(torch.{got})"
        )
        raise ValueError(
            f"{name}: expected dtype {want} (the flow's dtype), got {got}; convert with "
            f".to(torch.{want}) or the flow with {fix}"
        )
    if value.device != like.device:
        raise ValueError(
            f"{name}: expected a tensor on the flow's device {like.device}, got one on "
            f"{value.device}; move it with .to('{like.device}') or the flow with .to('{value.device}')"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_widths(name: str, value: Any, allow_empty: bool = True) -> tuple[int, ...]:
    """Return hidden-layer widths as a tuple if they are a sequence of integers ``>= 1``.

    Example:
        >>> check_widths("hidden", [32, 32])
        (32, 32)
        >>> check_widths("hidden", [0])
        Traceback (most recent call last):
        ...
        ValueError: hidden: expected a sequence of integers >= 1 (layer widths), got [0]
    """
    ok = isinstance(value, (list, tuple)) and (allow_empty or len(value) > 0)
    if ok:
        ok = all(not isinstance(w, bool) and isinstance(w, int) and w >= 1 for w in value)
    if not ok:
        expected = "a sequence of integers >= 1" + ("" if allow_empty else ", not empty")
        raise ValueError(f"{name}: expected {expected} (layer widths), got {value!r}")
    return tuple(int(w) for w in value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices`` (compared by type and value), else raise.

    Example:
        >>> check_choice("update", "affine", ("sigmoid", "affine"))
        'affine'
        >>> check_choice("update", 3, ("sigmoid", "affine"))
        Traceback (most recent call last):
        ...
        ValueError: update: expected 'sigmoid' or 'affine', got 3
    """
    if not any(type(value) is type(c) and value == c for c in choices):
        names = [repr(c) for c in choices]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise ValueError(f"{name}: expected {listed}, got {value!r}")
    return value


def check_sample_shape(name: str, value: Any) -> torch.Size:
    """Return ``value`` as a ``torch.Size`` if it is a sequence of integers ``>= 0``.

    Example:
        >>> check_sample_shape("sample_shape", (3, 2))
        torch.Size([3, 2])
        >>> check_sample_shape("sample_shape", (-1,))
        Traceback (most recent call last):
        ...
        ValueError: sample_shape: expected a tuple of integers >= 0 (a torch.Size), got (-1,)
    """
    ok = isinstance(value, (tuple, list, torch.Size)) and all(
        not isinstance(n, bool) and isinstance(n, int) and n >= 0 for n in value
    )
    if not ok:
        raise ValueError(f"{name}: expected a tuple of integers >= 0 (a torch.Size), got {value!r}")
    return torch.Size(value)


#: The most parameters one flow (or one network of it) may have: sizes are checked against it
#: before anything is allocated, so an absurd ``dim``, ``depth`` or ``hidden`` fails at once.
MAX_PARAMETERS = 2**31


def check_parameter_count(name: str, count: int, what: str = "the flow") -> int:
    """Refuse a parameter count above :data:`MAX_PARAMETERS`, naming the argument ``name``.

    Example:
        >>> check_parameter_count("depth", 10**12)
        Traceback (most recent call last):
        ...
        ValueError: depth: expected sizes giving at most 2**31 parameters (MAX_PARAMETERS), got sizes giving 1e+12 parameters in the flow
    """
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"{name}: expected sizes giving at most 2**31 parameters (MAX_PARAMETERS), got sizes "
            f"giving {float(count):.3g} parameters in {what}"
        )
    return count


def mlp_parameter_count(sizes: Sequence[int]) -> int:
    """Weights and biases of a dense network with layer sizes ``sizes`` (input, ..., output).

    Example:
        >>> mlp_parameter_count([3, 8, 2])
        50
    """
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
