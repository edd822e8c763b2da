"""2-D grids of log-densities (for plots and normalization checks): :func:`density_grid_2d`
and the limits parser :func:`plot_limits`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..utils.validation import check_positive_int

__all__ = ["density_grid_2d", "grid_midpoints", "plot_limits"]


def plot_limits(lim: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    """Plot limits ``((xlo, xhi), (ylo, yhi))`` from ``L``, ``(lo, hi)`` or both pairs.

    Example:
        >>> plot_limits(3)
        ((-3.0, 3.0), (-3.0, 3.0))
    """
    if isinstance(lim, Sequence) and len(lim) == 2 and all(isinstance(v, Sequence) for v in lim):
        return _limit_pair(lim[0], lim), _limit_pair(lim[1], lim)
    return _limit_pair(lim, lim), _limit_pair(lim, lim)


def _limit_pair(v: Any, lim: Any) -> tuple[float, float]:
    """``(lo, hi)`` of one axis from ``L`` or ``(lo, hi)``; errors show the whole ``lim``."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        lo, hi = -float(v), float(v)
    elif isinstance(v, Sequence) and len(v) == 2:
        lo, hi = float(v[0]), float(v[1])
    else:
        raise ValueError(
            f"lim: expected a number L, (lo, hi) or ((xlo, xhi), (ylo, yhi)), got {lim!r}"
        )
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"lim: expected finite limits with lo < hi, got {lim!r}")
    return lo, hi


def _reference_tensor(obj: Any) -> torch.Tensor | None:
    """A floating tensor of ``obj`` (``loc``, ``context``, parameters, buffers) or ``None``."""
    for attr in ("loc", "context"):
        t = getattr(obj, attr, None)
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t
    module = obj if isinstance(obj, nn.Module) else getattr(obj, "flow", None)
    if isinstance(module, nn.Module):
        for t in (*module.parameters(), *module.buffers()):
            if t.is_floating_point():
                return t
    return None


def grid_midpoints(
    lim: Any, n: int, dtype: torch.dtype, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell midpoints ``xs``, ``ys`` (``(n,)``) of an ``n × n`` grid and its points ``(n², 2)``,
    row-major in ``y`` (point ``i * n + j`` is ``(xs[j], ys[i])``).

    Example:
        >>> xs, ys, pts = grid_midpoints(1.0, 2, torch.float32, "cpu")
        >>> xs.tolist(), pts.tolist()
        ([-0.5, 0.5], [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]])
    """
    (xlo, xhi), (ylo, yhi) = plot_limits(lim)
    xs = torch.linspace(xlo, xhi, n + 1, dtype=dtype, device=device)
    ys = torch.linspace(ylo, yhi, n + 1, dtype=dtype, device=device)
    xs, ys = 0.5 * (xs[1:] + xs[:-1]), 0.5 * (ys[1:] + ys[:-1])
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return xs, ys, torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def _log_density_fn(target: Any) -> Callable[[torch.Tensor], Any]:
    """``target.log_prob`` if it has one, else ``target`` itself (which must be callable)."""
    fn = target.log_prob if hasattr(target, "log_prob") else target
    if not callable(fn):
        raise ValueError(
            f"target: expected a callable or an object with .log_prob, got {type(target).__name__}"
        )
    return fn


@torch.no_grad()
def _evaluate_in_batches(
    fn: Callable[[torch.Tensor], Any], pts: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``fn`` on ``pts`` in chunks of ``batch_size`` rows, one value per point."""
    out = torch.cat(
        [
            torch.as_tensor(fn(pts[i : i + batch_size])).reshape(-1)
            for i in range(0, pts.shape[0], batch_size)
        ]
    )
    if out.shape[0] != pts.shape[0]:
        raise ValueError(
            f"target: expected one log-density per point ({pts.shape[0]}), got "
            f"{out.shape[0]} values"
        )
    return out


def density_grid_2d(
    target: Any,
    lim: Any = 3.0,
    n: int = 200,
    *,
    batch_size: int = 65536,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Evaluate a 2-D log-density on the cell midpoints of an ``n × n`` grid.

    Args:
        target: a callable ``(M, 2) -> (M,)`` or an object with ``.log_prob`` (a
            :class:`~pyro_nf.density.DensityEstimator`, a :class:`~pyro_nf.FlowDistribution`,
            a torch distribution with event shape ``(2,)``).
        lim: ``L`` (the square ``[-L, L]²``), ``(lo, hi)``, or ``((xlo, xhi), (ylo, yhi))``.
        n: cells per axis.
        batch_size: points per call of the log-density.
        dtype, device: of the grid (default: those of the target's parameters, else torch's
            default dtype on the CPU).

    Returns:
        ``xs`` (``(n,)``), ``ys`` (``(n,)``) and ``log_p`` of shape ``(n, n)`` with
        ``log_p[i, j] = log p(xs[j], ys[i])`` (rows are y, as ``imshow`` expects). The
        midpoint-rule integral is ``log_p.exp().sum() * dx * dy`` with
        ``dx = xs[1] - xs[0]``.

    Example:
        >>> std_normal = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> xs, ys, log_p = density_grid_2d(std_normal, lim=6.0, n=100)
        >>> round(float(log_p.exp().sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])), 6)
        1.0
    """
    plot_limits(lim)  # checked first, as the other arguments
    n = check_positive_int("n", n, minimum=2)
    batch_size = check_positive_int("batch_size", batch_size)
    fn = _log_density_fn(target)
    ref = _reference_tensor(target)
    dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
    device = device or (ref.device if ref is not None else "cpu")
    xs, ys, pts = grid_midpoints(lim, n, dtype, device)
    return xs, ys, _evaluate_in_batches(fn, pts, batch_size).reshape(n, n)
