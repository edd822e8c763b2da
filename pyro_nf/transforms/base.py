"""The one primitive every pyro-nf transform implements.

A :class:`FlowTransform` is a :class:`torch.distributions.Transform` on vectors (event dim 1)
whose parameters are *passed in* as tensors, possibly with leading batch dimensions. The same
class therefore serves a directly parameterized flow (parameters without batch dimensions) and
an amortized one (parameters of shape ``(..., P)`` computed from a context), and broadcasting
does the rest.

Subclasses implement two methods and get everything else for free:

* ``forward_and_log_det(x) -> (y, log|det ∂y/∂x|)``
* ``inverse_and_log_det(y) -> (x, log|det ∂x/∂y|)``

Both log-determinants have shape ``x.shape[:-1]`` (one value per vector). Caching is off
(``cache_size=0``): pyro-nf never relies on a transform remembering the last tensor it saw,
which is the source of the stale-cache and ``KeyError`` bugs of Pyro's planar/radial flows.
Code that wants torch's one-entry cache (``ComposeTransform(..., cache_size=1)``, Pyro's
reparameterizers) gets it from :meth:`FlowTransform.with_cache`, which returns an equivalent
transform sharing the parameters.

Every pyro-nf transform preserves orientation (``sign = +1``: its Jacobian determinant is
positive) except the permutations, whose :attr:`~FlowTransform.sign` is the permutation's parity.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch.distributions import Transform, constraints

__all__ = [
    "FLOAT32_SAFE_MAGNITUDE",
    "ChainTransform",
    "FlowTransform",
    "InverseFlowTransform",
    "check_cache_size",
    "sum_to",
    "warn_if_float32_unsafe",
]

#: The largest parameter magnitude at which the float32 inverses of planar and radial maps
#: (``log_prob`` of points not just sampled) agree with float64 to about 1e-3 relative; beyond
#: it they drift (parameters near 1e6 give wrong log-densities), and
#: :func:`warn_if_float32_unsafe` warns once, advising float64.
FLOAT32_SAFE_MAGNITUDE = 1e4


class FlowTransform(Transform):
    """A bijection of ``R^D`` with both directions and both log-determinants.

    Subclasses set ``self.dim`` and implement :meth:`forward_and_log_det` and
    :meth:`inverse_and_log_det`.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, dim: int, cache_size: int = 0) -> None:
        super().__init__(cache_size=check_cache_size(cache_size))
        self.dim = dim

    # -- the primitive -------------------------------------------------------------------------
    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``y = f(x)`` and ``log|det ∂f/∂x|`` (shape ``x.shape[:-1]``)."""
        raise NotImplementedError

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``x = f⁻¹(y)`` and ``log|det ∂f⁻¹/∂y|`` (shape ``y.shape[:-1]``)."""
        raise NotImplementedError

    # -- derived torch.distributions.Transform API ---------------------------------------------
    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_log_det(x)[0]

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_log_det(y)[0]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_and_log_det(x)[1]

    @property
    def inv(self) -> FlowTransform:  # type: ignore[override]
        return InverseFlowTransform(self)

    @property
    def sign(self) -> int:
        """The sign of ``det ∂y/∂x``: ``+1`` (orientation preserving) unless overridden."""
        return 1

    def with_cache(self, cache_size: int = 1) -> FlowTransform:
        """This transform with torch's ``cache_size`` (0: none, 1: the last pair ``(x, y)``).

        Returns ``self`` if the cache size is already ``cache_size``, else a shallow copy that
        shares every parameter tensor and network (gradients reach the same leaves) with its own
        empty cache.

        Example:
            >>> from pyro_nf.transforms import Reverse
            >>> t = Reverse(3).with_cache(1)
            >>> x = torch.tensor([1.0, 2.0, 3.0])
            >>> y = t(x)
            >>> t.inv(y) is x          # the cached preimage
            True
        """
        check_cache_size(cache_size)
        if self._cache_size == cache_size:
            return self
        new = copy.copy(self)
        Transform.__init__(new, cache_size=cache_size)
        return new

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


class InverseFlowTransform(FlowTransform):
    """The inverse of a :class:`FlowTransform`: swaps the two directions.

    Example:
        >>> from pyro_nf.transforms import Reverse
        >>> t = Reverse(3).inv
        >>> t(torch.tensor([1.0, 2.0, 3.0]))
        tensor([3., 2., 1.])
    """

    def __init__(self, base: FlowTransform) -> None:
        super().__init__(base.dim, cache_size=base._cache_size)
        self.base = base

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.inverse_and_log_det(x)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.forward_and_log_det(y)

    @property
    def inv(self) -> FlowTransform:  # type: ignore[override]
        return self.base

    @property
    def sign(self) -> int:
        return self.base.sign

    # the inverse shares its base's cache, as torch's own inverse transforms do
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.base._inv_call(x)

    def _inv_call(self, y: torch.Tensor) -> torch.Tensor:
        return self.base(y)

    def with_cache(self, cache_size: int = 1) -> FlowTransform:
        return self.base.with_cache(cache_size).inv


class ChainTransform(FlowTransform):
    """Composition ``f = f_K ∘ … ∘ f_1``; log-determinants add up.

    Example:
        >>> from pyro_nf.transforms import Reverse
        >>> t = ChainTransform([Reverse(2), Reverse(2)])
        >>> y, ladj = t.forward_and_log_det(torch.tensor([1.0, 2.0]))
        >>> y, ladj
        (tensor([1., 2.]), tensor(0.))
    """

    def __init__(self, parts: list[FlowTransform]) -> None:
        if not parts:
            raise ValueError("parts: expected at least one transform, got an empty list")
        super().__init__(parts[0].dim)
        self.parts = list(parts)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.new_zeros(x.shape[:-1])
        for part in self.parts:
            x, ladj = part.forward_and_log_det(x)
            total = total + ladj
        return x, total

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = y.new_zeros(y.shape[:-1])
        for part in reversed(self.parts):
            y, ladj = part.inverse_and_log_det(y)
            total = total + ladj
        return y, total

    @property
    def sign(self) -> int:
        return math.prod(part.sign for part in self.parts)


def check_cache_size(cache_size: int) -> int:
    """Return ``cache_size`` if it is 0 or 1 (torch's cache sizes), else raise ``ValueError``.

    Example:
        >>> check_cache_size(2)
        Traceback (most recent call last):
        ...
        ValueError: cache_size: expected 0 or 1, got 2
    """
    if isinstance(cache_size, bool) or cache_size not in (0, 1):
        raise ValueError(f"cache_size: expected 0 or 1, got {cache_size!r}")
    return cache_size


def sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``grad`` over the dimensions that broadcasting added to a tensor of ``shape``.

    Used by hand-written backward passes whose parameters broadcast against batched inputs.

    Example:
        >>> sum_to(torch.ones(4, 3, 2), torch.Size([3, 1])).shape
        torch.Size([3, 1])
    """
    extra = grad.dim() - len(shape)
    if extra > 0:
        grad = grad.sum(dim=tuple(range(extra)))
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(dim=dims, keepdim=True) if dims else grad


def warn_if_float32_unsafe(family: str, *params: torch.Tensor) -> None:
    """Warn (a ``UserWarning``, once per call site) when float32 ``params`` exceed
    :data:`FLOAT32_SAFE_MAGNITUDE` in magnitude: the inverse loses accuracy there.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_if_float32_unsafe("planar", torch.tensor([1e8]))
        >>> "float64" in str(caught[0].message)
        True
    """
    if params[0].dtype != torch.float32:
        return
    largest = max(float(p.detach().abs().max()) if p.numel() else 0.0 for p in params)
    if largest > FLOAT32_SAFE_MAGNITUDE:
        warnings.warn(
            f"{family} flow: parameters of magnitude {largest:.3g} exceed the float32-safe "
            f"{FLOAT32_SAFE_MAGNITUDE:g} (FLOAT32_SAFE_MAGNITUDE): log_prob of points not just "
            "sampled goes through the inverse, which loses accuracy in float32 there; use "
            "float64 (flow.double() and float64 values)",
            UserWarning,
            stacklevel=3,
        )
