r"""Direct-likelihood mode: fit a flow to data by maximum likelihood.

Given data :math:`x_1, \dots, x_N \in \mathbb R^D` (and optionally contexts :math:`y_n`), a flow
:math:`x = f(\varepsilon)`, :math:`\varepsilon \sim \mathcal N(0, I_D)`, is fitted by maximizing
the mean log-likelihood

.. math::

    \mathcal L(\theta) = \frac1N \sum_n \log q_\theta(x_n \mid y_n), \qquad
    \log q(x) = \log \mathcal N\bigl(f^{-1}(x); 0, I\bigr)
                + \log\bigl\lvert\det \partial f^{-1}/\partial x\bigr\rvert,

with minibatch Adam (:func:`pyro_nf.training.train`). Every point is scored through the inverse
of the flow, so the cost depends on the family: MAF and coupling flows (NICE/RealNVP) take one
pass, radial has a closed-form inverse, planar a safeguarded Newton solve with exact
implicit-function gradients, IAF ``D`` sequential passes. Any :class:`~pyro_nf.Flow`,
including mixed stacks, works.

**Standardization.** With ``standardize=True`` the flow models :math:`\tilde x = (x - \mu)/\sigma`
(mean and standard deviation of the *training* split, per column); the density on the original
scale includes the Jacobian of that affine map,

.. math::

    \log q(x) = \log \tilde q\bigl((x - \mu)/\sigma\bigr) - \textstyle\sum_i \log \sigma_i,

so every reported log-likelihood (training loss, validation loss, :meth:`~DensityEstimator.
log_prob`) is on the scale of the data. Contexts are standardized too (no Jacobian needed; a
constant context column is left unscaled).

**Fitting protocol.** A seeded validation split (or an explicit ``x_val``), seeded reshuffling
every epoch, the validation NLL every ``validate_every`` steps, early stopping on it, and the
parameters with the lowest validation NLL restored at the end (as flowjax's ``fit_to_data``).
Bad data raise ``ValueError`` naming the argument: non-finite rows (or, with
``drop_nonfinite=True``, they are dropped with a warning), a wrong event dimension, too few
rows, constant columns (a constant column has no density; maximum likelihood would diverge).

**Saving.** :meth:`DensityEstimator.save` writes (atomically) the flow's *spec* (a registered
builder name plus keyword arguments, see :func:`build_flow`), the dtype and the ``state_dict``;
:meth:`DensityEstimator.load` rebuilds the flow and loads the parameters, so ``log_prob`` is
bit-identical after a round trip (on the same device). A flow built by hand has no spec: pass a
freshly built flow of the same architecture to ``load(path, flow=...)``.

References:
    Papamakarios, Pavlakou & Murray, *Masked Autoregressive Flow for Density Estimation*,
    NeurIPS 2017.
    Dinh, Sohl-Dickstein & Bengio, *Density estimation using Real NVP*, ICLR 2017.
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
    Papamakarios, Nalisnick, Rezende, Mohamed & Lakshminarayanan, *Normalizing Flows for
    Probabilistic Modeling and Inference*, JMLR 22, 2021.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from ..flows.distribution import FlowDistribution
from ..flows.flow import Flow
from ..flows.registry import build_flow, flow_spec, register_builder
from ..training.loop import EarlyStopping, History, atomic_save, train
from ..utils.validation import check_context, check_event, check_positive_int

__all__ = [
    "DensityEstimator",
    "build_flow",
    "density_grid_2d",
    "fit_density",
    "flow_spec",
    "plot_limits",
    "register_builder",
    "train_val_split",
]

_FORMAT = "pyro_nf.density/1"
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


# -- data handling -------------------------------------------------------------------------------


def train_val_split(
    n: int, val_fraction: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into training and validation indices.

    The validation part has ``max(1, round(val_fraction * n))`` rows (none if ``val_fraction``
    is 0); both index tensors are sorted, ``int64``, on the CPU.

    Example:
        >>> tr, va = train_val_split(10, 0.2, seed=0)
        >>> len(tr), len(va), sorted(tr.tolist() + va.tolist()) == list(range(10))
        (8, 2, True)
        >>> torch.equal(va, train_val_split(10, 0.2, seed=0)[1])
        True
    """
    n = check_positive_int("n", n)
    _check_fraction(val_fraction)
    n_val = 0 if val_fraction == 0 else max(1, int(round(val_fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _check_fraction(val_fraction: Any) -> float:
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 <= val_fraction < 1
    ):
        raise ValueError(f"val_fraction: expected a float in [0, 1), got {val_fraction!r}")
    return float(val_fraction)


def _as_tensor(name: str, value: Any, ref: torch.Tensor) -> torch.Tensor:
    """Tensor/array/list -> tensor on ``ref``'s device and dtype (real values only)."""
    if isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
        try:
            value = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{name}: expected a real-valued array, got {type(value).__name__} "
                f"that cannot be converted ({e})"
            ) from e
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{name}: expected a torch.Tensor (or numpy array), got {type(value).__name__}"
        )
    if value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"{name}: expected real-valued data, got dtype {value.dtype}")
    return value.to(device=ref.device, dtype=ref.dtype)


def _check_rows(name: str, value: torch.Tensor, dim: int) -> None:
    if value.dim() != 2 or value.shape[1] != dim:
        raise ValueError(
            f"{name}: expected a tensor of shape (N, {dim}) (N rows of dimension "
            f"{dim}), got shape {tuple(value.shape)}"
        )


def _clean_rows(
    x: torch.Tensor, context: torch.Tensor | None, x_name: str, c_name: str, drop: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raise on (or, with ``drop``, remove with a warning) rows with NaN/inf in x or context."""
    bad_x = ~torch.isfinite(x).all(-1)
    bad = bad_x.clone()
    if context is not None:
        bad |= ~torch.isfinite(context).all(-1)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return x, context
    if not drop:
        where = x_name if bool(bad_x.any()) else c_name
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        more = ", ..." if n_bad > 5 else ""
        raise ValueError(
            f"{where}: expected finite values, got {n_bad} of {x.shape[0]} rows with NaN or inf "
            f"(rows {rows}{more}); pass drop_nonfinite=True to drop such rows"
        )
    warnings.warn(
        f"{x_name}: dropped {n_bad} of {x.shape[0]} rows with NaN or inf values "
        "(drop_nonfinite=True)",
        UserWarning,
        stacklevel=3,
    )
    keep = ~bad
    return x[keep], (context[keep] if context is not None else None)


def _check_not_constant(name: str, x: torch.Tensor, where: str) -> None:
    mean, std = x.mean(0), x.std(0, unbiased=False)
    eps = torch.finfo(x.dtype).eps
    const = std <= 8 * eps * (mean.abs() + torch.finfo(x.dtype).tiny)
    if bool(const.any()):
        cols = torch.nonzero(const).flatten()[:10].tolist()
        raise ValueError(
            f"{name}: expected every column to vary, got {int(const.sum())} constant column(s) "
            f"{cols} (zero variance in {where}); a constant column has no density and maximum "
            "likelihood diverges on it: drop it or add noise (dequantize)"
        )


class _Shuffler:
    """Minibatch indices for step ``t``: a fresh seeded permutation every epoch (a pure function
    of ``t``, so checkpoint/resume gives the same batches)."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, device
        self.per_epoch = math.ceil(n / batch_size)
        self.epoch, self.perm = -1, None

    def __call__(self, step: int) -> torch.Tensor | None:
        if self.batch_size >= self.n:
            return None  # full batch
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self.epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**62)
            self.perm = torch.randperm(self.n, generator=gen).to(self.device)
            self.epoch = epoch
        return self.perm[i * self.batch_size : (i + 1) * self.batch_size]


# -- the estimator -------------------------------------------------------------------------------


class DensityEstimator(nn.Module):
    r"""A flow fitted to data by maximum likelihood: ``fit``, ``log_prob``, ``sample``, ``save``.

    Args:
        flow: a :class:`~pyro_nf.Flow` (any family or stack; amortized with ``context_dim`` for
            conditional density estimation :math:`p(x \mid y)`), or a builder name / spec for
            :func:`build_flow` (then ``builder_kwargs`` are its arguments).
        standardize: model the standardized data :math:`(x - \mu)/\sigma` (statistics of the
            training split); densities are reported on the original scale (Jacobian included).
        builder_kwargs: arguments of the builder when ``flow`` is a name.

    Attributes:
        flow: the flow; ``dim``, ``context_dim``; buffers ``loc``, ``scale`` (``(D,)``) and
        ``context_loc``, ``context_scale`` (``(H,)``); ``history`` (the last :meth:`fit`'s
        :class:`~pyro_nf.History`, or ``None``).

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> x = torch.randn(500, 2) * torch.tensor([2.0, 0.5]) + 1.0
        >>> est = DensityEstimator("maf", dim=2, depth=2, hidden=[16], standardize=True)
        >>> history = est.fit(x, steps=200, lr=1e-2, progress=False)
        >>> est.log_prob(x[:3]).shape, est.sample(4).shape
        (torch.Size([3]), torch.Size([4, 2]))
        >>> abs(est.nll(x) - 2.84) < 0.1   # mean NLL (nats/point) vs the true entropy 2.84
        True
    """

    def __init__(
        self,
        flow: Flow | str | Mapping[str, Any] | tuple[str, Mapping[str, Any]],
        standardize: bool = False,
        **builder_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(flow, Flow):
            if builder_kwargs:
                raise ValueError(
                    f"builder_kwargs: expected none with a Flow instance, got "
                    f"{sorted(builder_kwargs)}"
                )
        else:
            flow = build_flow(flow, **builder_kwargs)
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize: expected a bool, got {standardize!r}")
        self.flow = flow
        self.dim, self.context_dim = flow.dim, flow.context_dim
        self.standardize = standardize
        ref = next(iter(flow.parameters()), None)
        kw = {"dtype": ref.dtype, "device": ref.device} if ref is not None else {}
        h = self.context_dim or 0
        self.register_buffer("loc", torch.zeros(self.dim, **kw))
        self.register_buffer("scale", torch.ones(self.dim, **kw))
        self.register_buffer("context_loc", torch.zeros(h, **kw))
        self.register_buffer("context_scale", torch.ones(h, **kw))
        self.history: History | None = None

    # -- transforms between data space and the flow's space --------------------------------------
    def _to_flow_space(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc) / self.scale

    def _context(self, context: torch.Tensor | None) -> torch.Tensor | None:
        return None if context is None else (context - self.context_loc) / self.context_scale

    def _log_prob_std(self, x_std: torch.Tensor, ctx_std: torch.Tensor | None) -> torch.Tensor:
        q = FlowDistribution(self.flow, ctx_std, validate_args=False)
        return q.log_prob(x_std) - self.scale.log().sum()

    def _checked_context(self, context: Any) -> torch.Tensor | None:
        if context is not None and self.context_dim is not None:
            context = _as_tensor("context", context, self.loc)
        return check_context(context, self.context_dim)

    # -- public API -----------------------------------------------------------------------------
    def distribution(self, context: torch.Tensor | None = None) -> FlowDistribution:
        """The flow's distribution *in the standardized space* (``loc``/``scale`` not applied);
        :meth:`log_prob` and :meth:`sample` are the data-space versions.

        Example:
            >>> DensityEstimator("planar", dim=3, depth=2).distribution().event_shape
            torch.Size([3])
        """
        return self.flow(self._context(self._checked_context(context)))

    def log_prob(self, x: Any, context: Any = None, batch_size: int | None = None) -> torch.Tensor:
        r"""Log-density :math:`\log q(x \mid \text{context})` on the data's scale.

        Args:
            x: points of shape ``(..., D)`` (converted to the estimator's dtype and device).
            context: ``(..., H)`` broadcasting with ``x``'s batch shape (amortized flows only).
            batch_size: evaluate a 2-D ``x`` in chunks of this many rows (saves memory).

        Returns:
            Shape ``broadcast(x.shape[:-1], context.shape[:-1])``. Differentiable in ``x`` and
            the parameters (call under ``torch.no_grad()`` when gradients are not needed).

        Example:
            >>> est = DensityEstimator("maf", dim=2, depth=1, context_dim=3)
            >>> est.log_prob(torch.randn(10, 2), context=torch.randn(10, 3)).shape
            torch.Size([10])
            >>> est.log_prob(torch.randn(2), context=torch.randn(4, 3)).shape  # broadcasting
            torch.Size([4])
        """
        x = check_event("x", _as_tensor("x", x, self.loc), self.dim)
        ctx = self._checked_context(context)
        if batch_size is not None:
            batch_size = check_positive_int("batch_size", batch_size)
        if (
            batch_size is None
            or x.dim() != 2
            or x.shape[0] <= batch_size
            or (ctx is not None and ctx.shape[:-1] != x.shape[:-1])
        ):
            return self._log_prob_std(self._to_flow_space(x), self._context(ctx))
        parts = []
        for start in range(0, x.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            c = None if ctx is None else self._context(ctx[sl])
            parts.append(self._log_prob_std(self._to_flow_space(x[sl]), c))
        return torch.cat(parts)

    def nll(self, x: Any, context: Any = None, batch_size: int = 8192) -> float:
        """Mean negative log-likelihood of the rows of ``x`` (nats per point), without gradients.

        Example:
            >>> est = DensityEstimator("gaussian", dim=2)
            >>> round(est.nll(torch.zeros(1, 2)), 4)   # log(2π) for N(0, I) at its mode
            1.8379
        """
        with torch.no_grad():
            return float(-self.log_prob(x, context, batch_size=batch_size).mean())

    def sample(self, n: int, context: Any = None) -> torch.Tensor:
        """Draw ``n`` samples on the data's scale, without gradients.

        Returns:
            Shape ``(n, D)``, or ``(n, *context.shape[:-1], D)`` for a batch of contexts (a
            context of shape ``(H,)`` gives ``(n, D)``).

        Example:
            >>> est = DensityEstimator("realnvp", dim=2, depth=2, context_dim=1)
            >>> est.sample(5, context=torch.tensor([0.5])).shape
            torch.Size([5, 2])
            >>> est.sample(5, context=torch.zeros(3, 1)).shape
            torch.Size([5, 3, 2])
        """
        n = check_positive_int("n", n)
        with torch.no_grad():
            q = self.flow(self._context(self._checked_context(context)))
            return q.sample((n,)) * self.scale + self.loc

    def fit(
        self,
        x: Any,
        context: Any = None,
        *,
        steps: int = 5000,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        val_fraction: float | None = None,
        x_val: Any = None,
        context_val: Any = None,
        early_stopping: EarlyStopping | bool | None = True,
        validate_every: int = 50,
        seed: int = 0,
        drop_nonfinite: bool = False,
        eval_batch_size: int = 8192,
        progress: bool = True,
        desc: str = "density",
        **train_kwargs: Any,
    ) -> History:
        r"""Fit the flow to the rows of ``x`` (shape ``(N, D)``) by maximum likelihood.

        The loss at step ``t`` is the mean NLL (nats per point, data scale) of minibatch ``t``
        of a seeded per-epoch shuffle. Unless ``val_fraction=0``, a validation set, either
        ``x_val`` or a seeded ``val_fraction`` split of ``x`` (default 0.1), is scored every
        ``validate_every`` steps; early stopping monitors it and the parameters with the lowest
        validation NLL are restored at the end. With ``standardize``, the statistics come from
        the training rows.

        Args:
            x: data ``(N, D)`` (tensor or array; converted to the estimator's dtype/device).
            context: ``(N, H)`` contexts for a conditional (amortized) flow, else ``None``.
            steps: maximal number of optimizer steps.
            batch_size: minibatch size (full batch if ``>= N``).
            lr: Adam learning rate.
            weight_decay: decoupled weight decay (AdamW) when positive; a regularizer for
                large flows on small data sets.
            val_fraction: fraction held out for validation (default 0.1; 0 for none, then early
                stopping watches the smoothed training loss and nothing is restored).
            x_val, context_val: an explicit validation set instead of a split.
            early_stopping: ``True`` (patience of 20 validations, ``min_delta=1e-4`` nats), an
                :class:`~pyro_nf.EarlyStopping`, or ``None``.
            validate_every: steps between validations.
            seed: seed of the split and the shuffles (parameter initialization is the flow's).
            drop_nonfinite: drop rows with NaN/inf (with a warning) instead of raising.
            eval_batch_size: chunk size for scoring the validation set.
            progress, desc: progress bar.
            train_kwargs: passed to :func:`pyro_nf.training.train` (``lr_schedule``,
                ``clip_norm``, ``optimizer``, ``checkpoint``, ``callback`` ...).

        Returns:
            The :class:`~pyro_nf.History` (also stored as ``self.history``); ``val_losses``
            are validation NLLs in nats per point.

        Raises:
            ValueError: non-finite rows (without ``drop_nonfinite``), a wrong shape, fewer than
            2 training rows (or no validation row), constant columns, a context mismatch.

        Example:
            >>> x = torch.randn(200, 2)
            >>> est = DensityEstimator("diagonal", dim=2)
            >>> h = est.fit(x, steps=50, lr=0.05, validate_every=10, progress=False)
            >>> [step for step, _ in h.val_losses], h.stop_reason
            ([9, 19, 29, 39, 49], 'max_steps')
            >>> x[0, 1] = float("nan")
            >>> est.fit(x, steps=5, progress=False)
            Traceback (most recent call last):
            ...
            ValueError: x: expected finite values, got 1 of 200 rows with NaN or inf (rows [0]); pass drop_nonfinite=True to drop such rows
        """
        steps = check_positive_int("steps", steps)
        batch_size = check_positive_int("batch_size", batch_size)
        validate_every = check_positive_int("validate_every", validate_every)
        eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size)
        if (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, (int, float))
            or not math.isfinite(weight_decay)
            or weight_decay < 0
        ):
            raise ValueError(f"weight_decay: expected a finite float >= 0, got {weight_decay!r}")
        if weight_decay > 0:
            if "optimizer" in train_kwargs:
                raise ValueError(
                    "weight_decay: expected 0 when an optimizer is given (set the "
                    f"optimizer's own weight decay), got {weight_decay!r}"
                )
            train_kwargs["optimizer"] = lambda ps: torch.optim.AdamW(
                ps, lr=lr, weight_decay=weight_decay
            )
        if not isinstance(drop_nonfinite, bool):
            raise ValueError(f"drop_nonfinite: expected a bool, got {drop_nonfinite!r}")
        for key in ("params", "validate_fn", "loss_fn"):
            if key in train_kwargs:
                raise ValueError(f"{key}: set by DensityEstimator.fit, got it in train_kwargs")
        if x_val is not None and val_fraction is not None:
            raise ValueError(
                "val_fraction: expected None when x_val is given (the validation "
                f"set is x_val), got {val_fraction!r}"
            )
        frac = 0.1 if val_fraction is None else _check_fraction(val_fraction)
        if x_val is None and context_val is not None:
            raise ValueError("context_val: expected None without x_val, got a tensor")

        x, ctx = self._prepare("x", "context", x, context, drop_nonfinite)
        n = x.shape[0]
        if x_val is not None:
            xv, cv = self._prepare("x_val", "context_val", x_val, context_val, drop_nonfinite)
            if xv.shape[0] < 1:
                raise ValueError("x_val: expected at least 1 finite row, got none")
            xt, ct = x, ctx
            if n < 2:
                raise ValueError(f"x: expected at least 2 rows, got {n}")
        else:
            n_val = 0 if frac == 0 else max(1, int(round(frac * n)))
            if n - n_val < 2:
                raise ValueError(
                    f"x: expected at least {2 + n_val if n_val else 2} rows (2 for training"
                    f"{f', {n_val} for validation with val_fraction={frac:g}' if n_val else ''}"
                    f"), got {n}"
                )
            tr, va = train_val_split(n, frac, seed)
            tr, va = tr.to(x.device), va.to(x.device)
            xt, xv = x[tr], (x[va] if n_val else None)
            ct = ctx[tr] if ctx is not None else None
            cv = ctx[va] if ctx is not None and n_val else None
        _check_not_constant("x", xt, "the training rows")

        with torch.no_grad():
            if self.standardize:
                self.loc.copy_(xt.mean(0))
                self.scale.copy_(xt.std(0, unbiased=False))
                if ct is not None:
                    c_std = ct.std(0, unbiased=False)
                    const = c_std <= 8 * torch.finfo(ct.dtype).eps * (ct.mean(0).abs() + 1e-30)
                    self.context_loc.copy_(torch.where(const, torch.zeros_like(c_std), ct.mean(0)))
                    self.context_scale.copy_(torch.where(const, torch.ones_like(c_std), c_std))
            else:
                self.loc.zero_()
                self.scale.fill_(1.0)
                self.context_loc.zero_()
                self.context_scale.fill_(1.0)
        xt_std = self._to_flow_space(xt)
        ct_std = self._context(ct)
        log_scale = self.scale.log().sum()
        batches = _Shuffler(xt.shape[0], batch_size, int(seed), xt.device)

        def loss_fn(step: int) -> torch.Tensor:
            idx = batches(step)
            xb = xt_std if idx is None else xt_std[idx]
            cb = ct_std if idx is None or ct_std is None else ct_std[idx]
            q = FlowDistribution(self.flow, cb, validate_args=False)
            return log_scale - q.log_prob(xb).mean()

        validate_fn = None
        if xv is not None:

            def validate_fn() -> float:
                return self.nll(xv, cv, batch_size=eval_batch_size)

        if early_stopping is True:
            early_stopping = (
                EarlyStopping(patience=20 * validate_every, min_delta=1e-4, rel_delta=0.0)
                if validate_fn is not None
                else EarlyStopping()
            )
        history = train(
            loss_fn,
            self.flow,
            steps,
            lr=lr,
            early_stopping=early_stopping,
            validate_fn=validate_fn,
            validate_every=validate_every,
            progress=progress,
            desc=desc,
            **train_kwargs,
        )
        self.history = history
        return history

    def _prepare(
        self, x_name: str, c_name: str, x: Any, context: Any, drop: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = _as_tensor(x_name, x, self.loc)
        _check_rows(x_name, x, self.dim)
        if self.context_dim is None:
            if context is not None:
                check_context(context, None)  # raises, naming `context`
        else:
            if context is None:
                raise ValueError(
                    f"{c_name}: this flow is amortized (context_dim={self.context_dim}) and "
                    f"needs a tensor of shape (N, {self.context_dim}), got None"
                )
            context = _as_tensor(c_name, context, self.loc)
            _check_rows(c_name, context, self.context_dim)
            if context.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{c_name}: expected {x.shape[0]} rows (one per row of "
                    f"{x_name}), got {context.shape[0]}"
                )
        return _clean_rows(x, context, x_name, c_name, drop)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the estimator to ``path`` atomically (temporary file, then ``os.replace``).

        The file holds the flow's spec (if it was built by :func:`build_flow` or from a name),
        the dtype, ``standardize``, the ``state_dict`` (flow parameters and the standardization
        buffers) and the last fit's history; it loads with ``torch.load(weights_only=True)``.

        Example:
            >>> import tempfile, os
            >>> est = DensityEstimator("realnvp", dim=2, depth=2, hidden=[8])
            >>> path = os.path.join(tempfile.mkdtemp(), "est.pt")
            >>> est.save(path)
            >>> x = torch.randn(5, 2)
            >>> torch.equal(DensityEstimator.load(path).log_prob(x), est.log_prob(x))
            True
        """
        payload = {
            "format": _FORMAT,
            "spec": flow_spec(self.flow),
            "dim": self.dim,
            "context_dim": self.context_dim,
            "dtype": str(self.loc.dtype).removeprefix("torch."),
            "standardize": self.standardize,
            "state_dict": {k: v.detach() for k, v in self.state_dict().items()},
            "history": asdict(self.history) if self.history is not None else None,
        }
        atomic_save(payload, os.fspath(path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        flow: Flow | None = None,
        map_location: str | torch.device | None = "cpu",
    ) -> DensityEstimator:
        """Load an estimator written by :meth:`save`.

        Args:
            path: the file.
            flow: a freshly built flow of the saved architecture; required when the file has
                no spec (the flow was built by hand), optional otherwise.
            map_location: device to load the tensors to (``torch.load``'s argument).

        Returns:
            The estimator (in ``eval`` mode), with the saved dtype and parameters.

        Example:
            >>> import tempfile, os, pyro_nf
            >>> path = os.path.join(tempfile.mkdtemp(), "hand_built.pt")
            >>> DensityEstimator(pyro_nf.Flow(2, [pyro_nf.PlanarLayer(2, 2)])).save(path)
            >>> est = DensityEstimator.load(path, flow=pyro_nf.Flow(2, [pyro_nf.PlanarLayer(2, 2)]))
            >>> est.dim, est.training
            (2, False)
        """
        try:
            blob = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
        except Exception as e:
            raise ValueError(
                f"path: expected a file written by DensityEstimator.save, got "
                f"{os.fspath(path)!r} which cannot be read as one ({e})"
            ) from e
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise ValueError(
                f"path: expected a DensityEstimator file ({_FORMAT}), got "
                f"{os.fspath(path)!r} without that format tag"
            )
        if flow is None:
            if blob["spec"] is None:
                raise ValueError(
                    "flow: this file holds no flow spec (the flow was built by hand, not by "
                    "build_flow or a builder name); expected a freshly built Flow of the saved "
                    f"architecture (dim={blob['dim']}, context_dim={blob['context_dim']}), got None"
                )
            flow = build_flow(blob["spec"])
        elif not isinstance(flow, Flow):
            raise ValueError(f"flow: expected a Flow or None, got {type(flow).__name__}")
        if (flow.dim, flow.context_dim) != (blob["dim"], blob["context_dim"]):
            raise ValueError(
                f"flow: expected dim={blob['dim']}, context_dim={blob['context_dim']} as saved, "
                f"got dim={flow.dim}, context_dim={flow.context_dim}"
            )
        est = cls(flow, standardize=blob["standardize"])
        dtype = _DTYPES[blob["dtype"]]
        ref = next(iter(blob["state_dict"].values()))
        est.to(device=ref.device, dtype=dtype)
        try:
            est.load_state_dict(blob["state_dict"])
        except RuntimeError as e:
            raise ValueError(
                f"flow: expected a flow whose parameters match the saved ones, got a mismatch ({e})"
            ) from e
        if blob.get("history") is not None:
            est.history = History(**blob["history"])
        return est.eval()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}, standardize={self.standardize}"


def fit_density(
    flow: Flow | str | Mapping[str, Any],
    x: Any,
    context: Any = None,
    *,
    standardize: bool = False,
    builder_kwargs: Mapping[str, Any] | None = None,
    **fit_kwargs: Any,
) -> DensityEstimator:
    """One call: wrap ``flow`` in a :class:`DensityEstimator`, :meth:`~DensityEstimator.fit` it
    to ``x`` (``(N, D)``) and return it (the :class:`~pyro_nf.History` is ``.history``).

    ``flow`` may be a builder name, then ``builder_kwargs`` are its arguments (``dim`` defaults
    to ``x.shape[-1]``). ``fit_kwargs`` go to :meth:`DensityEstimator.fit`.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> x = torch.randn(1000, 2) @ torch.tensor([[1.0, 0.0], [0.8, 0.6]])
        >>> est = fit_density("gaussian", x, steps=400, lr=0.05, batch_size=1000, progress=False)
        >>> L = est.flow.build_transforms()[0].scale_tril.detach()
        >>> torch.allclose(L @ L.T, torch.cov(x.T, correction=0), atol=0.01)
        True
    """
    kwargs = dict(builder_kwargs or {})
    if (
        not isinstance(flow, Flow)
        and "dim" not in kwargs
        and "kwargs" not in (flow if isinstance(flow, Mapping) else {})
    ):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(
                f"x: expected data of shape (N, D), got {type(x).__name__} "
                f"of shape {tuple(shape) if shape is not None else None}"
            )
        kwargs["dim"] = int(shape[-1])
    est = DensityEstimator(flow, standardize=standardize, **kwargs)
    est.fit(x, context, **fit_kwargs)
    return est


# -- 2-D grids (plots, normalization checks) -----------------------------------------------------


def plot_limits(lim: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    """Plot limits ``((xlo, xhi), (ylo, yhi))`` from ``L``, ``(lo, hi)`` or both pairs.

    Example:
        >>> plot_limits(3)
        ((-3.0, 3.0), (-3.0, 3.0))
    """

    def pair(v: Any) -> tuple[float, float]:
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

    if isinstance(lim, Sequence) and len(lim) == 2 and all(isinstance(v, Sequence) for v in lim):
        return pair(lim[0]), pair(lim[1])
    return pair(lim), pair(lim)


def _reference_tensor(obj: Any) -> torch.Tensor | None:
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
            :class:`DensityEstimator`, a :class:`~pyro_nf.FlowDistribution`, a torch
            distribution with event shape ``(2,)``).
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
    (xlo, xhi), (ylo, yhi) = plot_limits(lim)
    n = check_positive_int("n", n, minimum=2)
    batch_size = check_positive_int("batch_size", batch_size)
    fn = target.log_prob if hasattr(target, "log_prob") else target
    if not callable(fn):
        raise ValueError(
            f"target: expected a callable or an object with .log_prob, got {type(target).__name__}"
        )
    ref = _reference_tensor(target)
    dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
    device = device or (ref.device if ref is not None else "cpu")
    xs = torch.linspace(xlo, xhi, n + 1, dtype=dtype, device=device)
    ys = torch.linspace(ylo, yhi, n + 1, dtype=dtype, device=device)
    xs, ys = 0.5 * (xs[1:] + xs[:-1]), 0.5 * (ys[1:] + ys[:-1])
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
    with torch.no_grad():
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
    return xs, ys, out.reshape(n, n)
