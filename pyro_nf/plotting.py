r"""Plots for 2-D densities, samples and training curves (matplotlib, an optional extra).

* :func:`plot_density_2d` — a heatmap of :math:`p(x)` (or :math:`\log p(x)`) on a grid, from a
  log-density callable, a :class:`~pyro_nf.FlowDistribution`, a
  :class:`~pyro_nf.density.DensityEstimator` or any object with ``log_prob``.
* :func:`plot_samples_2d` — a scatter plot of samples.
* :func:`plot_training_curve` — the loss of every step, its running smoothing and the
  validation losses of a :class:`~pyro_nf.History`.

Every function draws on ``ax`` (a new figure if ``None``) and returns the ``Axes``
(``ax.figure`` is the figure). Matplotlib is imported only when a function is called; without it
an ``ImportError`` names the ``examples`` extra. For files, use a non-interactive backend
(``matplotlib.use("Agg")``) and ``ax.figure.savefig(path)``.

References:
    Hunter, *Matplotlib: A 2D Graphics Environment*, Computing in Science & Engineering 9, 2007.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .density.grid import density_grid_2d, plot_limits

__all__ = ["plot_density_2d", "plot_samples_2d", "plot_training_curve"]


def _pyplot() -> Any:
    """Import ``matplotlib.pyplot`` lazily, with an install hint when it is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - exercised by monkeypatching in the tests
        raise ImportError(
            "pyro_nf.plotting needs matplotlib, an optional dependency: install the 'examples' "
            "extra, e.g. pip install 'pyro-nf[examples]' (or pip install matplotlib)"
        ) from e
    return plt


def _axes(ax: Any, figsize: tuple[float, float] = (4.0, 4.0)) -> Any:
    if ax is None:
        _, ax = _pyplot().subplots(figsize=figsize)
    else:
        _pyplot()
    return ax


def plot_density_2d(
    target: Any,
    ax: Any = None,
    lim: Any = 3.0,
    n: int = 200,
    *,
    log: bool = False,
    cmap: str = "viridis",
    title: str | None = None,
    colorbar: bool = False,
    log_floor: float = -30.0,
    labels: tuple[str, str] | None = ("x1", "x2"),
) -> Any:
    r"""Heatmap of a 2-D density on an ``n × n`` grid (cell midpoints).

    Args:
        target: a callable ``(M, 2) -> (M,)`` returning log-densities, or an object with
            ``log_prob`` (see :func:`pyro_nf.density.density_grid_2d`).
        ax: the matplotlib ``Axes`` to draw on (default: a new figure).
        lim: ``L`` (the square ``[-L, L]²``), ``(lo, hi)`` or ``((xlo, xhi), (ylo, yhi))``.
        n: grid cells per axis.
        log: show :math:`\log p` (clipped below at ``max + log_floor``) instead of :math:`p`.
        cmap, title, labels: appearance (``labels``: the x and y axis labels, or ``None``).
        colorbar: add a colorbar labelled ``"density"`` (``"log density"`` with ``log``).

    Returns: the ``Axes``; the heatmap is ``ax.images[-1]``.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> normal = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> ax = plot_density_2d(normal, lim=3.0, n=50, title="N(0, I)")
        >>> ax.images[-1].get_array().shape, ax.get_xlabel(), ax.get_ylabel()
        ((50, 50), 'x1', 'x2')
    """
    labels = _check_labels(labels)
    values = _density_values(target, lim, n, log, log_floor)
    ax = _axes(ax)
    (xlo, xhi), (ylo, yhi) = plot_limits(lim)
    extent = (xlo, xhi, ylo, yhi)
    image = ax.imshow(values.numpy(), origin="lower", extent=extent, cmap=cmap, aspect="auto",
                      interpolation="nearest")  # fmt: skip
    _set_limits(ax, lim)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="log density" if log else "density")
    return _titled(_labelled(ax, labels), title)


def _density_values(target: Any, lim: Any, n: int, log: bool, log_floor: float) -> torch.Tensor:
    r"""The heatmap's ``(n, n)`` values (float64, CPU): :math:`p`, or :math:`\log p` clipped
    below at ``max + log_floor``; non-finite log-densities count as :math:`-\infty`."""
    _, _, log_p = density_grid_2d(target, lim=lim, n=n)
    log_p = log_p.detach().to("cpu", torch.float64)
    finite = torch.isfinite(log_p)
    if not bool(finite.any()):
        raise ValueError(
            "target: expected a log-density that is finite somewhere on the grid, "
            "got no finite value"
        )
    top = float(log_p[finite].max())
    log_p = torch.where(finite, log_p, torch.full_like(log_p, -math.inf))
    return log_p.clamp_min(top + log_floor) if log else log_p.exp()


def _set_limits(ax: Any, lim: Any) -> None:
    """Set both axes' limits from ``lim`` (see :func:`pyro_nf.density.plot_limits`)."""
    (xlo, xhi), (ylo, yhi) = plot_limits(lim)
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)


def _check_labels(labels: Any) -> tuple[str, str] | None:
    """``labels`` as a pair of strings, or ``None``; else ``ValueError`` naming ``labels``."""
    if labels is None:
        return None
    if isinstance(labels, str) or not isinstance(labels, (tuple, list)) or len(labels) != 2:
        raise ValueError(f"labels: expected None or two axis labels (x, y), got {labels!r}")
    return (str(labels[0]), str(labels[1]))


def _labelled(ax: Any, labels: tuple[str, str] | None) -> Any:
    """Label the x and y axes of ``ax`` with ``labels`` unless it is ``None``; return ``ax``."""
    if labels is not None:
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    return ax


def _titled(ax: Any, title: str | None) -> Any:
    """Set the title of ``ax`` unless it is ``None``; return ``ax``."""
    if title is not None:
        ax.set_title(title)
    return ax


def plot_samples_2d(
    samples: Any,
    ax: Any = None,
    lim: Any = None,
    *,
    s: float = 1.0,
    alpha: float = 0.3,
    color: str | None = None,
    title: str | None = None,
    labels: tuple[str, str] | None = ("x1", "x2"),
) -> Any:
    """Scatter plot of 2-D samples.

    Args:
        samples: tensor or array of shape ``(N, 2)``.
        ax: the ``Axes`` (default: a new figure).
        lim: axis limits as in :func:`plot_density_2d` (default: matplotlib's).
        s, alpha, color, title: appearance.
        labels: the x and y axis labels (``None``: none).

    Returns:
        The ``Axes``; the points are ``ax.collections[-1]``.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> ax = plot_samples_2d(torch.randn(100, 2))
        >>> ax.collections[-1].get_offsets().shape
        (100, 2)
    """
    labels = _check_labels(labels)
    pts = _as_points(samples)
    ax = _axes(ax)
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, color=color, linewidths=0)
    if lim is not None:
        _set_limits(ax, lim)
    return _titled(_labelled(ax, labels), title)


def _as_points(samples: Any) -> np.ndarray:
    """``samples`` as a float64 numpy array of shape ``(N, 2)``, else ``ValueError``."""
    if isinstance(samples, torch.Tensor):
        pts = samples.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            pts = np.asarray(samples, dtype=float)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"samples: expected an array of shape (N, 2), got {type(samples).__name__}"
            ) from e
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"samples: expected an array of shape (N, 2), got shape {pts.shape}")
    return pts


def plot_training_curve(
    history: Any,
    ax: Any = None,
    *,
    log_scale: bool = False,
    title: str | None = None,
    ylabel: str = "loss",
) -> Any:
    """Training curve of a :class:`~pyro_nf.History`: losses, smoothed losses, validation.

    Steps whose loss is not finite (rolled back by the NaN guard) are left out.

    Args:
        history: the ``History`` returned by :func:`pyro_nf.training.train` (or a fit).
        ax: the ``Axes`` (default: a new figure).
        log_scale: a logarithmic y axis (for positive losses).
        title, ylabel: labels.

    Returns:
        The ``Axes`` with one line per series (labels ``"loss"``, ``"smoothed"``,
        ``"validation"``) and a legend.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> from pyro_nf.training import History
        >>> h = History(losses=[3.0, 2.0, 1.5], smoothed=[3.0, 2.5, 2.2], val_losses=[(2, 1.7)])
        >>> [line.get_label() for line in plot_training_curve(h).get_lines()]
        ['loss', 'smoothed', 'validation']
    """
    losses = getattr(history, "losses", None)
    if losses is None or not hasattr(history, "smoothed"):
        raise ValueError(f"history: expected a pyro_nf History, got {type(history).__name__}")
    ax = _axes(ax, figsize=(6.0, 3.5))
    steps = [i for i, v in enumerate(losses) if math.isfinite(v)]
    ax.plot(steps, [losses[i] for i in steps], lw=0.5, alpha=0.4, label="loss")
    sm = [(i, v) for i, v in enumerate(history.smoothed) if math.isfinite(v)]
    ax.plot([i for i, _ in sm], [v for _, v in sm], lw=1.5, label="smoothed")
    val = [(i, v) for i, v in getattr(history, "val_losses", []) if math.isfinite(v)]
    if val:
        ax.plot([i for i, _ in val], [v for _, v in val], "o-", ms=3, lw=1.0, label="validation")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper right", fontsize="small")
    return _titled(ax, title)
