r"""A :class:`~pyro_nf.Flow` as a Pyro transform module (what :meth:`Flow.as_pyro_transform` returns).

A flow maps standard normal noise to samples, :math:`z = f(\varepsilon) = f_K \circ \dots \circ
f_1(\varepsilon)`. Pyro's own flow API expects that map as a
:class:`~pyro.distributions.TransformModule` (a ``torch.distributions.Transform`` that is also an
``nn.Module`` owning its parameters), or, when the parameters depend on a context, a
:class:`~pyro.distributions.ConditionalTransformModule` whose ``condition(context)`` returns a
transform. The classes here wrap a flow that way, with

.. math::

    \_call(\varepsilon) = f(\varepsilon),\qquad \_inverse(z) = f^{-1}(z),\qquad
    \log\lvert\det J\rvert(\varepsilon, z) = \textstyle\sum_k \log\lvert\det J_{f_k}\rvert,

computed by the flow's own transforms, rebuilt from its current parameters on every call (no
stale parameters after an optimizer step). The flow is a registered submodule, so
``.parameters()``, ``pyro.module`` and Pyro's autoguides (``AutoNormalizingFlow``) see and train
its parameters.

**Caching.** The default ``cache_size=1`` is torch's one-entry cache: the inverse of the output
just computed is the input (no root finding for planar maps, no ``D`` sequential passes for IAF).
Unlike torch's, the cache is emptied when the parameters change in place (an optimizer step), so
a module reused across steps never returns a pair computed with old parameters. Independently of it, the log-determinant computed with a value is reused by
``log_abs_det_jacobian`` for exactly that ``(x, y)`` pair (tensor identity) at unchanged
parameter versions; anything else is recomputed.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions import ConditionalTransformModule, TransformModule
from torch.distributions import Transform, constraints

from ..transforms import ChainTransform
from ..transforms.base import check_cache_size
from ..utils.validation import check_context, check_event
from .distribution import FlowLike

__all__ = ["ConditionalFlowTransformModule", "ConditionedFlowTransform", "FlowTransformModule"]


class _FlowMap:
    """The shared body of the transforms below: ``flow.build_transforms(context)`` chained, with
    the log-determinant of the last ``(x, y)`` pair remembered. Needs ``self.flow`` and
    ``self._context()``."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def _context(self) -> torch.Tensor | None:
        raise NotImplementedError

    def _chain(self) -> ChainTransform:
        return ChainTransform(self.flow.build_transforms(self._context(), validate=False))

    def _versions(self) -> tuple[int, ...]:
        versions = [p._version for p in self.flow.parameters()]
        context = self._context()
        return (*versions, context._version) if context is not None else tuple(versions)

    def _checked(self, name: str, value: Any) -> torch.Tensor:
        like = next(iter(self.flow.parameters()), None)
        return check_event(name, value, self.flow.dim, finite=False, like=like)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x), log|det ∂f/∂x|)``, shapes ``(..., D)`` and ``(...)``."""
        y, ladj = self._chain().forward_and_log_det(self._checked("x", x))
        self._memo = (x, y, ladj, self._versions())
        return y, ladj

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f⁻¹(y), log|det ∂f⁻¹/∂y|)``, shapes ``(..., D)`` and ``(...)``."""
        x, inv_ladj = self._chain().inverse_and_log_det(self._checked("y", y))
        self._memo = (x, y, -inv_ladj, self._versions())
        return x, inv_ladj

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._drop_stale_cache()
        return super().__call__(x)  # type: ignore[misc]

    def _inv_call(self, y: torch.Tensor) -> torch.Tensor:
        self._drop_stale_cache()
        return super()._inv_call(y)  # type: ignore[misc]

    def _drop_stale_cache(self) -> None:
        """Empty torch's one-entry cache once the parameters (or context) changed in place: the
        cached pair belongs to the old map."""
        if self._cache_size == 1:
            versions = self._versions()
            if versions != getattr(self, "_cache_versions", None):
                self._cached_x_y = None, None
                self._cache_versions = versions

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_log_det(x)[0]

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_log_det(y)[0]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0] is x and memo[1] is y and memo[3] == self._versions():
            return memo[2]
        return self.forward_and_log_det(x)[1]

    @property
    def sign(self) -> int:
        """The sign of the Jacobian determinant (``-1`` only through odd permutations)."""
        return self._chain().sign

    def __getstate__(self) -> dict[str, Any]:
        # the remembered tensors carry autograd graphs, which can be neither pickled nor saved
        state = super().__getstate__()  # type: ignore[misc]
        state["_memo"] = None
        if "_cached_x_y" in state:
            state["_cached_x_y"] = (None, None)
        return state


def _check_flow(flow: Any, amortized: bool) -> None:
    if not isinstance(flow, torch.nn.Module) or not isinstance(flow, FlowLike):
        raise TypeError(f"flow: expected a pyro_nf.Flow, got {type(flow).__name__}")
    if amortized and flow.context_dim is None:
        raise ValueError(
            "flow: expected an amortized flow (context_dim set) for a conditional transform, "
            "got a directly parameterized one; use FlowTransformModule"
        )
    if not amortized and flow.context_dim is not None:
        raise ValueError(
            f"flow: expected a directly parameterized flow, got one with context_dim="
            f"{flow.context_dim}; use ConditionalFlowTransformModule"
        )


class FlowTransformModule(_FlowMap, TransformModule):
    r"""A directly parameterized flow as a Pyro :class:`~pyro.distributions.TransformModule`:
    base-space draws :math:`\varepsilon` to flow outputs :math:`f(\varepsilon)`.

    Args:
        flow: a :class:`~pyro_nf.Flow` with ``context_dim=None`` (registered as the submodule
            ``flow``: its parameters are this module's).
        cache_size: torch's cache size, 0 or 1 (default 1, as Pyro's flow transforms).

    Example:
        >>> import pyro.distributions as dist
        >>> import pyro_nf
        >>> t = pyro_nf.planar(2, depth=3).as_pyro_transform()
        >>> q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), t)
        >>> z = q.rsample((4,))
        >>> q.log_prob(z).shape, len(list(t.parameters()))
        (torch.Size([4]), 2)
    """

    def __init__(self, flow: torch.nn.Module, cache_size: int = 1) -> None:
        _check_flow(flow, amortized=False)
        super().__init__(cache_size=check_cache_size(cache_size))
        self.flow = flow
        self._memo = None

    def _context(self) -> None:
        return None

    def with_cache(self, cache_size: int = 1) -> FlowTransformModule:
        """The same map (sharing the flow and its parameters) with another cache size."""
        if self._cache_size == check_cache_size(cache_size):
            return self
        return FlowTransformModule(self.flow, cache_size)

    def extra_repr(self) -> str:
        return f"cache_size={self._cache_size}"


class ConditionedFlowTransform(_FlowMap, Transform):
    """An amortized flow at one context: what :meth:`ConditionalFlowTransformModule.condition`
    returns (a plain ``Transform``; the parameters belong to the conditional module).

    Args:
        flow: an amortized :class:`~pyro_nf.Flow`.
        context: shape ``(..., H)``; its batch shape broadcasts with the inputs'.
        cache_size: 0 or 1.
    """

    def __init__(self, flow: torch.nn.Module, context: torch.Tensor, cache_size: int = 1) -> None:
        _check_flow(flow, amortized=True)
        check_context(context, flow.context_dim, like=next(iter(flow.parameters()), None))
        super().__init__(cache_size=check_cache_size(cache_size))
        self.flow, self.context = flow, context
        self._memo = None

    def _context(self) -> torch.Tensor:
        return self.context

    def with_cache(self, cache_size: int = 1) -> ConditionedFlowTransform:
        """The same map at the same context with another cache size."""
        if self._cache_size == check_cache_size(cache_size):
            return self
        return ConditionedFlowTransform(self.flow, self.context, cache_size)


class ConditionalFlowTransformModule(ConditionalTransformModule):
    r"""An amortized flow as a Pyro :class:`~pyro.distributions.ConditionalTransformModule`:
    ``condition(context)`` is the transform :math:`\varepsilon \mapsto f(\varepsilon; \text{context})`.

    Args:
        flow: a :class:`~pyro_nf.Flow` with ``context_dim`` set (registered as ``flow``).
        cache_size: the cache size of the conditioned transforms, 0 or 1 (default 1).

    Example:
        >>> import pyro.distributions as dist
        >>> import pyro_nf
        >>> ct = pyro_nf.iaf(2, depth=1, context_dim=3).as_pyro_transform()
        >>> base = dist.Normal(torch.zeros(5, 2), 1.0).to_event(1)
        >>> q = dist.ConditionalTransformedDistribution(base, [ct]).condition(torch.randn(5, 3))
        >>> q.log_prob(q.rsample()).shape
        torch.Size([5])
    """

    def __init__(self, flow: torch.nn.Module, cache_size: int = 1) -> None:
        _check_flow(flow, amortized=True)
        super().__init__()
        self.flow = flow
        self.cache_size = check_cache_size(cache_size)

    def condition(self, context: torch.Tensor) -> ConditionedFlowTransform:
        """The flow's transform at ``context`` (shape ``(..., H)``)."""
        return ConditionedFlowTransform(self.flow, context, self.cache_size)

    def extra_repr(self) -> str:
        return f"cache_size={self.cache_size}"
