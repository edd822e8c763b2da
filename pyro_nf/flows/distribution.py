r"""``FlowDistribution``: the distribution a flow defines, usable anywhere Pyro takes one.

A flow pushes standard normal noise :math:`\varepsilon \sim \mathcal N(0, I_D)` through its
transforms :math:`f = f_K \circ \dots \circ f_1` (the *sampling direction*), so

.. math::

    \log q(z) = \log \mathcal N(\varepsilon; 0, I) - \sum_k \log\lvert\det J_{f_k}\rvert,
    \qquad z = f(\varepsilon).

**Scoring.** :meth:`FlowDistribution.rsample_and_log_prob` returns both at once. ``log_prob``
of the tensor that was *just* sampled reuses that value (this is what Pyro's ``Trace_ELBO``
does with a guide's sample); ``log_prob`` of any other point runs the inverse transforms. The
reuse is keyed on the tensor's identity *and* on the version counters of the flow's parameters
and context, so after an optimizer step nothing stale is returned and nothing raises
``KeyError`` — the failure modes of Pyro's planar/radial flows (pyro issues #2718, #2564).
For the same reason the transforms are rebuilt from the flow's current parameters whenever
those change in place.

**Shapes.** ``event_shape = (D,)``; ``batch_shape`` is the context's batch shape (``()`` for a
directly parameterized flow), or any shape it was :meth:`expand` ed to (which is what
``pyro.plate`` does).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from ..utils.validation import check_context, check_event, check_sample_shape, check_tensor_like

if TYPE_CHECKING:  # pragma: no cover
    from ..transforms import FlowTransform

__all__ = ["FlowDistribution"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@runtime_checkable
class FlowLike(Protocol):
    """What :class:`FlowDistribution` needs from a flow: the structural contract, not ``Flow``.

    ``dim`` (the event size ``D``), ``context_dim`` (``H``, or ``None`` when directly
    parameterized), ``parameters()`` (whose version counters invalidate cached transforms) and
    ``build_transforms(context, validate)`` (the transforms ``[f_1, ..., f_K]``, sampling
    direction). :class:`~pyro_nf.Flow` and population members satisfy it.

    Example:
        >>> import pyro_nf
        >>> isinstance(pyro_nf.planar(2, depth=1), FlowLike)
        True
    """

    dim: int
    context_dim: int | None

    def parameters(self) -> Iterator[torch.Tensor]: ...

    def build_transforms(
        self, context: torch.Tensor | None = None, validate: bool = True
    ) -> list[FlowTransform]: ...


def _check_flow_like(flow: Any) -> None:
    if (
        not isinstance(flow, FlowLike)
        or isinstance(flow.dim, bool)
        or not isinstance(flow.dim, int)
    ):
        raise TypeError(
            "flow: expected an object with an integer `dim`, `context_dim`, `parameters()` and "
            f"`build_transforms(context, validate)` (e.g. a pyro_nf.Flow), got {type(flow).__name__}"
        )


def _first_parameter(flow: FlowLike) -> torch.Tensor | None:
    """The flow's first parameter (its dtype and device are the flow's), or ``None``."""
    return next(iter(flow.parameters()), None)


class FlowDistribution(TorchDistribution):
    r"""The distribution of :math:`z = f(\varepsilon)`, :math:`\varepsilon \sim \mathcal N(0, I)`.

    Usually obtained as ``flow(context)`` from a :class:`~pyro_nf.Flow`; not built by hand.

    Args:
        flow: the :class:`~pyro_nf.Flow` module (its current parameters are used).
        context: the context tensor of shape ``(..., H)`` for an amortized flow, else ``None``.
        batch_shape: an explicit batch shape the context's batch shape broadcasts to.
        validate_args: check values passed to :meth:`log_prob` (shape and finiteness).

    Example:
        >>> import pyro_nf
        >>> flow = pyro_nf.planar(2, depth=4)
        >>> q = flow()
        >>> z, log_q = q.rsample_and_log_prob((3,))
        >>> z.shape, log_q.shape
        (torch.Size([3, 2]), torch.Size([3]))
        >>> q.log_prob(z) is log_q          # the sample just drawn: no recomputation
        True
        >>> torch.allclose(q.log_prob(z.detach().clone()), log_q)  # any point: via the inverse
        True
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(
        self,
        flow: FlowLike,
        context: torch.Tensor | None = None,
        batch_shape: torch.Size | tuple[int, ...] | None = None,
        validate_args: bool | None = None,
    ) -> None:
        # the one construction path: the flow's contract and the context's shape are always
        # checked; the context's values (a host sync) only unless validate_args=False
        _check_flow_like(flow)
        like = _first_parameter(flow)
        check_context(context, flow.context_dim, finite=validate_args is not False, like=like)
        self.flow = flow
        self.context = context
        ctx_batch = context.shape[:-1] if context is not None else torch.Size()
        if batch_shape is None:
            batch_shape = ctx_batch
        batch_shape = torch.Size(batch_shape)
        try:
            broadcast = torch.broadcast_shapes(ctx_batch, batch_shape)
        except RuntimeError:
            broadcast = None
        if broadcast != batch_shape:
            raise ValueError(
                f"batch_shape: expected a shape that the context's batch shape {tuple(ctx_batch)} "
                f"broadcasts to, got {tuple(batch_shape)}"
            )
        self._validate = True if validate_args is None else bool(validate_args)
        self._transforms: list[FlowTransform] | None = None
        self._versions: tuple[int, ...] | None = None
        self._cache: tuple[torch.Tensor, torch.Tensor, tuple[int, ...]] | None = None
        super().__init__(batch_shape, torch.Size([flow.dim]), validate_args=False)

    # -- internals -----------------------------------------------------------------------------
    def _current_versions(self) -> tuple[int, ...]:
        versions = [p._version for p in self.flow.parameters()]
        if self.context is not None:
            versions.append(self.context._version)
        return tuple(versions)

    def transforms(self) -> list[FlowTransform]:
        """The transforms ``[f_1, ..., f_K]`` at the flow's current parameters."""
        versions = self._current_versions()
        if self._transforms is None or versions != self._versions:
            self._transforms = self.flow.build_transforms(self.context, validate=False)
            self._versions = versions
            self._cache = None
        return self._transforms

    def _like(self) -> torch.Tensor | None:
        """The tensor whose dtype and device values must have: the context, else a parameter."""
        return self.context if self.context is not None else _first_parameter(self.flow)

    def _reference(self) -> torch.Tensor:
        if self.context is not None:
            return self.context
        for p in self.flow.parameters():
            return p
        return torch.empty(())

    # -- sampling ------------------------------------------------------------------------------
    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a reparameterized sample of shape ``sample_shape + batch_shape + (D,)`` and its
        log density (shape ``sample_shape + batch_shape``) in one pass."""
        sample_shape = check_sample_shape("sample_shape", sample_shape)
        transforms = self.transforms()
        ref = self._reference()
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=ref.dtype, device=ref.device)
        log_q = -0.5 * (eps * eps).sum(-1) - self.flow.dim * _HALF_LOG_2PI
        z = eps
        for t in transforms:
            z, ladj = t.forward_and_log_det(z)
            log_q = log_q - ladj
        z = z.expand(shape) if z.shape != shape else z
        log_q = log_q.expand(shape[:-1]) if log_q.shape != shape[:-1] else log_q
        self._cache = (z, log_q, self._versions)
        return z, log_q

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape)[0]

    # -- scoring -------------------------------------------------------------------------------
    def _cached_log_prob(self, value: torch.Tensor) -> torch.Tensor | None:
        if self._cache is None:
            return None
        z, log_q, versions = self._cache
        if value is not z or versions != self._current_versions():
            return None
        if torch.is_grad_enabled() and not log_q.requires_grad and self._needs_grad():
            return None  # sampled under no_grad; recompute with a graph
        return log_q

    def _needs_grad(self) -> bool:
        if self.context is not None and self.context.requires_grad:
            return True
        return any(p.requires_grad for p in self.flow.parameters())

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        cached = self._cached_log_prob(value)
        if cached is not None:
            return cached
        if not self._validate:  # dtype, device and meta: metadata only, checked always
            if isinstance(value, torch.Tensor):
                check_tensor_like("value", value, self._like())
        else:
            check_event("value", value, self.flow.dim, like=self._like())
            try:
                torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
            except RuntimeError:
                raise ValueError(
                    f"value: expected a batch shape that broadcasts with the distribution's "
                    f"batch shape {tuple(self.batch_shape)}, got a value of shape {tuple(value.shape)}"
                ) from None
        log_q = value.new_zeros(())
        z = value
        for t in reversed(self.transforms()):
            z, ladj = t.inverse_and_log_det(z)
            log_q = log_q + ladj
        log_q = log_q - 0.5 * (z * z).sum(-1) - self.flow.dim * _HALF_LOG_2PI
        out_shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        return log_q.expand(out_shape) if log_q.shape != out_shape else log_q

    # -- shapes --------------------------------------------------------------------------------
    def expand(self, batch_shape: Any, _instance: Any = None) -> FlowDistribution:
        return FlowDistribution(
            self.flow, self.context, torch.Size(batch_shape), validate_args=self._validate
        )

    def __repr__(self) -> str:
        return (
            f"FlowDistribution(dim={self.flow.dim}, batch_shape={tuple(self.batch_shape)}, "
            f"flow={type(self.flow).__name__})"
        )
