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

import inspect
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..flows.distribution import FlowDistribution
from ..flows.flow import Flow
from ..flows.registry import build_flow, flow_spec, get_family, normalize_spec, register_builder
from ..training.distributed import shard
from ..training.loop import EarlyStopping, History, TrainingDivergedError, train
from ..training.runinfo import check_checkpoint_args
from ..utils.hashing import tensor_sha256
from ..utils.validation import check_context, check_event, check_positive_int, check_seed
from .data import (
    FitData,
    Shuffler,
    as_tensor,
    check_fraction,
    check_frame_columns,
    context_standardization,
    fit_rows,
    frame_columns,
    train_val_split,
)
from .grid import density_grid_2d, plot_limits
from .persistence import load_payload_into, read_estimator_file, resolve_flow, write_estimator_file

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


# -- checks of fit's options ---------------------------------------------------------------------


def _check_fit_counts(
    steps: Any,
    batch_size: Any,
    validate_every: Any,
    eval_batch_size: Any,
    seed: Any,
    train_kwargs: dict[str, Any],
) -> tuple[int, int, int, int, int]:
    """Check the counts, the seed and the checkpoint arguments of a fit before any data work."""
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    validate_every = check_positive_int("validate_every", validate_every)
    eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size)
    seed = check_seed(seed)
    check_checkpoint_args(
        train_kwargs.get("checkpoint"), train_kwargs.get("resume", True),
        train_kwargs.get("fingerprint"),
    )  # fmt: skip
    return steps, batch_size, validate_every, eval_batch_size, seed


def _add_weight_decay(train_kwargs: dict[str, Any], weight_decay: Any, lr: float) -> None:
    """Check ``weight_decay``; when positive, put an AdamW factory into ``train_kwargs``."""
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


def _check_fit_options(
    drop_nonfinite: Any,
    train_kwargs: dict[str, Any],
    val_fraction: Any,
    x_val: Any,
    context_val: Any,
) -> float:
    """Check the remaining options of :meth:`DensityEstimator.fit`; return the validation
    fraction (0.1 by default)."""
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
    frac = 0.1 if val_fraction is None else check_fraction(val_fraction)
    if x_val is None and context_val is not None:
        raise ValueError("context_val: expected None without x_val, got a tensor")
    return frac


def _default_early_stopping(
    early_stopping: EarlyStopping | bool | None, validates: bool, validate_every: int
) -> EarlyStopping | bool | None:
    """``early_stopping=True`` made concrete: a patience of 20 validations when there is a
    validation set, else :class:`~pyro_nf.EarlyStopping`'s defaults on the training loss."""
    if early_stopping is not True:
        return early_stopping
    if validates:
        return EarlyStopping(patience=20 * validate_every, min_delta=1e-4, rel_delta=0.0)
    return EarlyStopping()


def _minibatch_nll(
    est: DensityEstimator, data: FitData, batch_size: int, seed: int
) -> Callable[[int], torch.Tensor]:
    """The loss of step ``t``: mean NLL (data scale) of minibatch ``t`` of a seeded shuffle of
    the training rows (standardized once, with ``est``'s current ``loc``/``scale``).

    In a data-parallel run (a ``torch.distributed`` process group with ``world_size > 1``) each
    rank scores its :func:`~pyro_nf.training.distributed.shard` of the minibatch and
    :func:`~pyro_nf.training.train` averages the gradients; a single process is unchanged.
    """
    xt_std, ct_std = est._to_flow_space(data.x_train), est._context(data.c_train)
    log_scale = est.scale.log().sum()
    batches = Shuffler(xt_std.shape[0], batch_size, int(seed), xt_std.device)

    def loss_fn(step: int) -> torch.Tensor:
        idx = batches(step)
        if idx is None:  # the full batch; in a data-parallel run, this rank's rows of it
            xb, cb = shard(xt_std), (None if ct_std is None else shard(ct_std))
        else:  # minibatch t; in a data-parallel run, this rank's rows of it
            idx = shard(idx)
            xb, cb = xt_std[idx], (None if ct_std is None else ct_std[idx])
        q = FlowDistribution(est.flow, cb, validate_args=False)
        return log_scale - q.log_prob(xb).mean()

    return loss_fn


def _validation_nll(
    est: DensityEstimator, data: FitData, batch_size: int
) -> Callable[[], float] | None:
    """The validation NLL of ``est`` as a function of its current parameters (``None``: no
    validation rows)."""
    if data.x_val is None:
        return None
    return lambda: est.nll(data.x_val, data.c_val, batch_size=batch_size)


def _fit_fingerprint(
    est: DensityEstimator, data: FitData, train_kwargs: dict[str, Any], **settings: Any
) -> dict[str, Any]:
    """The fingerprint of a fit (recorded in its checkpoint, compared on resume): hashes of the
    training and validation rows, the flow's spec, the standardization and the fit's
    ``settings``, merged into a ``fingerprint`` the caller passed in ``train_kwargs``."""
    rows = {
        "x": data.x_train, "context": data.c_train, "x_val": data.x_val, "context_val": data.c_val
    }  # fmt: skip
    ours = {
        "data": {k: None if v is None else tensor_sha256(v) for k, v in rows.items()},
        "flow": flow_spec(est.flow),
        "standardize": est.standardize,
        "settings": settings,
    }
    return {**dict(train_kwargs.pop("fingerprint", None) or {}), "density": ours}


def _check_finite_fit(est: DensityEstimator) -> None:
    """``TrainingDivergedError`` if a fit left a non-finite parameter or buffer."""
    for name, t in est.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrainingDivergedError(
                f"fit: the fitted estimator's tensor {name!r} has NaN/inf values; the fit "
                "diverged (lower lr, rescale the data or check it for extreme values)",
                est.history or History(),
            )


def _spec_lacks_dim(flow: Any, builder_kwargs: dict[str, Any]) -> bool:
    """Whether the builder name or spec ``flow`` leaves out a ``dim`` its builder takes (then
    :meth:`DensityEstimator.fit` builds the flow from the data's columns)."""
    if isinstance(flow, Flow):
        return False
    try:
        norm = normalize_spec(flow, builder_kwargs)
        params = inspect.signature(get_family(norm["name"]).builder).parameters
    except (TypeError, ValueError):  # not a valid spec: build_flow says why
        return False
    return "dim" in params and "dim" not in norm["kwargs"]


def _data_columns(x: Any) -> int:
    """The number of columns ``D`` of the data ``x`` (``(N, D)``), else ``ValueError``."""
    shape = getattr(x, "shape", None)
    if shape is None:
        try:
            shape = np.shape(x)
        except ValueError:
            shape = None
    if shape is None or len(shape) != 2 or int(shape[1]) < 1:
        raise ValueError(
            f"x: expected data of shape (N, D) to infer the flow's dim from, got "
            f"{type(x).__name__} of shape {None if shape is None else tuple(shape)}"
        )
    return int(shape[1])


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
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize: expected a bool, got {standardize!r}")
        self.standardize = standardize
        self.history: History | None = None
        self.feature_names: tuple[str, ...] | None = None
        self.flow: Flow | None = None
        self.dim: int | None = None
        self.context_dim: int | None = builder_kwargs.get("context_dim")
        self._pending: tuple[Any, dict[str, Any]] | None = None
        if isinstance(flow, Flow):
            if builder_kwargs:
                raise ValueError(
                    f"builder_kwargs: expected none with a Flow instance, got "
                    f"{sorted(builder_kwargs)}"
                )
            self._install(flow)
        elif _spec_lacks_dim(flow, builder_kwargs):  # built by fit, once x gives D
            self._pending = (flow, dict(builder_kwargs))
        else:
            self._install(build_flow(flow, **builder_kwargs))

    def _install(self, flow: Flow) -> None:
        """Make ``flow`` this estimator's flow, with standardization buffers of its size."""
        self.flow = flow
        self.dim, self.context_dim = flow.dim, flow.context_dim
        ref = next(iter(flow.parameters()), None)
        kw = {"dtype": ref.dtype, "device": ref.device} if ref is not None else {}
        h = self.context_dim or 0
        self.register_buffer("loc", torch.zeros(self.dim, **kw))
        self.register_buffer("scale", torch.ones(self.dim, **kw))
        self.register_buffer("context_loc", torch.zeros(h, **kw))
        self.register_buffer("context_scale", torch.ones(h, **kw))
        self._pending = None

    def _require_flow(self, what: str) -> None:
        """``RuntimeError`` if the flow awaits its dimension from :meth:`fit`."""
        if self.flow is None:
            raise RuntimeError(
                f"DensityEstimator.{what}: the flow is built when fit() sees the data (no dim "
                "was given); call fit(x) first, or pass dim= when constructing the estimator"
            )

    # -- transforms between data space and the flow's space --------------------------------------
    def _to_flow_space(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc) / self.scale

    def _context(self, context: torch.Tensor | None) -> torch.Tensor | None:
        return None if context is None else (context - self.context_loc) / self.context_scale

    def _log_prob_std(self, x_std: torch.Tensor, ctx_std: torch.Tensor | None) -> torch.Tensor:
        q = FlowDistribution(self.flow, ctx_std, validate_args=False)
        return q.log_prob(x_std) - self.scale.log().sum()

    def _checked_context(self, context: Any) -> torch.Tensor | None:
        self._require_flow("context")
        if context is not None and self.context_dim is not None:
            context = as_tensor("context", context, self.loc)
        return check_context(context, self.context_dim)

    # -- public API -----------------------------------------------------------------------------
    def distribution(self, context: torch.Tensor | None = None) -> FlowDistribution:
        """The flow's distribution *in the standardized space* (``loc``/``scale`` not applied);
        :meth:`log_prob` and :meth:`sample` are the data-space versions.

        Example:
            >>> DensityEstimator("planar", dim=3, depth=2).distribution().event_shape
            torch.Size([3])
        """
        self._require_flow("distribution")
        return self.flow(self._context(self._checked_context(context)))

    def log_prob(
        self,
        x: Any,
        context: Any = None,
        batch_size: int | None = None,
        *,
        grad: bool | None = None,
    ) -> torch.Tensor:
        r"""Log-density :math:`\log q(x \mid \text{context})` on the data's scale.

        Args:
            x: points of shape ``(..., D)``: a tensor, NumPy array or pandas ``DataFrame``
                (whose columns must be the fitted :attr:`feature_names`), converted to the
                estimator's dtype and device.
            context: ``(..., H)`` broadcasting with ``x``'s batch shape (amortized flows only).
            batch_size: evaluate a 2-D ``x`` in chunks of this many rows (saves memory).
            grad: keep the autograd graph (to differentiate in ``x`` or the parameters).
                ``None`` (default): only when ``x`` is a tensor that requires grad, so a plain
                call returns a tensor that converts to NumPy directly; ``True``: always (e.g. a
                hand-written training loop); ``False``: never.

        Returns:
            Shape ``broadcast(x.shape[:-1], context.shape[:-1])``.

        Example:
            >>> est = DensityEstimator("maf", dim=2, depth=1, context_dim=3)
            >>> est.log_prob(torch.randn(10, 2), context=torch.randn(10, 3)).shape
            torch.Size([10])
            >>> est.log_prob(torch.randn(2), context=torch.randn(4, 3)).shape  # broadcasting
            torch.Size([4])
            >>> import numpy as np
            >>> np.asarray(est.log_prob(np.zeros((3, 2)), context=np.zeros((3, 3)))).shape
            (3,)
        """
        self._require_flow("log_prob")
        if grad is not None and not isinstance(grad, bool):
            raise TypeError(f"grad: expected None, True or False, got {grad!r}")
        check_frame_columns("x", x, self.feature_names)
        keep = grad if grad is not None else isinstance(x, torch.Tensor) and x.requires_grad
        with torch.set_grad_enabled(keep and torch.is_grad_enabled()):
            return self._log_prob_rows(check_event("x", as_tensor("x", x, self.loc), self.dim),
                                       self._checked_context(context), batch_size)  # fmt: skip

    def _log_prob_rows(
        self, x: torch.Tensor, ctx: torch.Tensor | None, batch_size: int | None
    ) -> torch.Tensor:
        """:meth:`log_prob` of checked tensors, in chunks of ``batch_size`` rows if given."""
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
        self._require_flow("sample")
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
        progress: bool | None = None,
        desc: str = "density",
        **train_kwargs: Any,
    ) -> History:
        r"""Fit the flow to the rows of ``x`` (shape ``(N, D)``) by maximum likelihood: the loss
        of step ``t`` is the mean NLL (nats per point, data scale) of minibatch ``t`` of a seeded
        per-epoch shuffle; early stopping watches the validation NLL (best parameters restored).

        Args:
            x, context: data ``(N, D)`` and contexts ``(N, H)`` (amortized flows); tensors/arrays.
            steps, batch_size, lr, weight_decay: maximal number of optimizer steps, minibatch
                size (full batch if ``>= N``), Adam learning rate, AdamW decay (when positive).
            val_fraction: seeded fraction of ``x`` held out (default 0.1; 0 for none, then
                early stopping watches the smoothed training loss and nothing is restored).
            x_val, context_val: an explicit validation set instead of a split.
            early_stopping: ``True`` (patience of 20 validations, ``min_delta=1e-4`` nats), an
                :class:`~pyro_nf.EarlyStopping`, or ``None``.
            validate_every, eval_batch_size: steps between validations, rows per scoring chunk.
            seed: seed of the split and the shuffles (parameter initialization is the flow's).
            drop_nonfinite: drop rows with NaN/inf (with a warning) instead of raising.
            progress, desc: the progress bar, as in :func:`pyro_nf.training.train` (``True`` always,
                ``None`` when interactive, ``False`` never) and its label.
            train_kwargs: passed to :func:`pyro_nf.training.train` (``lr_schedule``,
                ``clip_norm``, ``optimizer``, ``checkpoint``, ``callback`` ...).

        Returns:
            The :class:`~pyro_nf.History` (also ``self.history``); ``val_losses`` in nats/point.

        Raises:
            ValueError: bad rows (non-finite without ``drop_nonfinite``, wrong shape, too few,
                constant or overflowing columns), a context mismatch, or a ``checkpoint`` of
                another fit (other data, flow or settings).
            TrainingDivergedError: the fit left NaN/inf parameters.
            KeyboardInterrupt: on Ctrl-C, as :func:`~pyro_nf.training.train` (``self.history``
                is set).

        Example:
            >>> est = DensityEstimator("diagonal", dim=2)
            >>> h = est.fit(torch.randn(200, 2), steps=50, lr=0.05, validate_every=10, progress=False)
            >>> [step for step, _ in h.val_losses], h.stop_reason
            ([9, 19, 29, 39, 49], 'max_steps')
        """
        steps, batch_size, validate_every, eval_batch_size, seed = _check_fit_counts(
            steps, batch_size, validate_every, eval_batch_size, seed, train_kwargs
        )
        _add_weight_decay(train_kwargs, weight_decay, lr)
        frac = _check_fit_options(drop_nonfinite, train_kwargs, val_fraction, x_val, context_val)
        self._prepare_for(x, x_val)
        data = fit_rows(self, (x, context), (x_val, context_val), frac, seed, drop_nonfinite)
        self._set_standardization(data)
        validate_fn = _validation_nll(self, data, eval_batch_size)
        stopper = _default_early_stopping(early_stopping, validate_fn is not None, validate_every)
        fingerprint = _fit_fingerprint(self, data, train_kwargs, batch_size=batch_size, seed=seed,
                                       weight_decay=weight_decay)  # fmt: skip
        try:
            self.history = train(
                _minibatch_nll(self, data, batch_size, seed), self.flow, steps, lr=lr,
                early_stopping=stopper, validate_fn=validate_fn, validate_every=validate_every,
                progress=progress, desc=desc, fingerprint=fingerprint, **train_kwargs,
            )  # fmt: skip
        except KeyboardInterrupt as err:  # train restored the best parameters; keep the history
            self.history = getattr(err, "history", None)
            raise
        _check_finite_fit(self)
        return self.history

    def _prepare_for(self, x: Any, x_val: Any) -> None:
        """Build a pending flow with ``D`` = the columns of ``x``; record ``x``'s column names
        (a ``DataFrame``'s), which ``x_val`` must share."""
        names = frame_columns("x", x)
        check_frame_columns("x_val", x_val, names)
        if self._pending is not None:
            spec, kwargs = self._pending
            self._install(build_flow(spec, dim=_data_columns(x), **kwargs))
        self.feature_names = names

    @torch.no_grad()
    def _set_standardization(self, data: FitData) -> None:
        """Set ``loc``/``scale`` (and the context's) from the training rows, or reset them."""
        if not self.standardize:
            self.loc.zero_()
            self.scale.fill_(1.0)
            self.context_loc.zero_()
            self.context_scale.fill_(1.0)
            return
        self.loc.copy_(data.x_train.mean(0))
        self.scale.copy_(data.x_train.std(0, unbiased=False))
        if data.c_train is not None:
            c_loc, c_scale = context_standardization(data.c_train)
            self.context_loc.copy_(c_loc)
            self.context_scale.copy_(c_scale)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the estimator to ``path`` atomically (temporary file, then ``os.replace``).

        The file holds the flow's spec (if it was built by :func:`build_flow` or from a name),
        the dtype, ``standardize``, the ``state_dict`` (flow parameters and the standardization
        buffers) and the last fit's history; it loads with ``torch.load(weights_only=True)``
        (the format: :mod:`pyro_nf.density.persistence`).

        Example:
            >>> import tempfile, os
            >>> est = DensityEstimator("realnvp", dim=2, depth=2, hidden=[8])
            >>> path = os.path.join(tempfile.mkdtemp(), "est.pt")
            >>> est.save(path)
            >>> x = torch.randn(5, 2)
            >>> torch.equal(DensityEstimator.load(path).log_prob(x), est.log_prob(x))
            True
        """
        self._require_flow("save")
        write_estimator_file(self, path)

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
        blob = read_estimator_file(path, map_location)
        est = cls(resolve_flow(blob, flow, os.fspath(path)), standardize=blob["standardize"])
        load_payload_into(est, blob)
        est.feature_names = blob.get("feature_names")
        return est.eval()

    def extra_repr(self) -> str:
        names = "" if self.feature_names is None else f", feature_names={self.feature_names}"
        built = "" if self.flow is not None else ", flow=<built by fit>"
        return (
            f"dim={self.dim}, context_dim={self.context_dim}, standardize={self.standardize}"
            f"{names}{built}"
        )


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
    est = DensityEstimator(flow, standardize=standardize, **kwargs)
    est.fit(x, context, **fit_kwargs)
    return est
