r"""Amortized variational posteriors :math:`q(z \mid x)` built on an encoder context ``h``.

Every posterior here is a module ``posterior(h) -> q`` where ``h = encoder(x)`` has shape
``(..., H)`` and ``q`` is a distribution with ``batch_shape = h.shape[:-1]`` and
``event_shape = (D_z,)``. For pyro-nf's own flows the posterior *is* an amortized
:class:`~pyro_nf.Flow`: one linear context network maps ``h`` to the per-data-point parameters
of a diagonal Gaussian base :math:`\mathcal N(\mu(h), \operatorname{diag}\sigma(h)^2)` and of
``K`` planar or radial maps (Rezende & Mohamed 2015), or the MADEs of ``K`` IAF layers read
``h`` as an extra input (Kingma et al. 2016):

.. math::

    z = f_K \circ \dots \circ f_1\bigl(\mu(h) + \sigma(h) \odot \varepsilon\bigr),\quad
    \log q(z \mid x) = \log\mathcal N(\varepsilon; 0, I) - \sum_i \log\sigma_i(h)
    - \sum_k \log\lvert\det J_{f_k}\rvert .

The diagonal Gaussian encoder is the depth-0 case. For comparison the same interface wraps
Pyro's built-in conditional flows (``pyro-planar``: :class:`~pyro.distributions.transforms.
ConditionalPlanar` with its default hypernetwork ``H → 10D → 10D → 2D+1`` per layer;
``pyro-iaf``: :class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive` with a
reversal between layers) on the same diagonal Gaussian base, through Pyro's
:class:`~pyro.distributions.ConditionalTransformedDistribution`.

References:
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
    Kingma et al., *Improved Variational Inference with Inverse Autoregressive Flow*,
    NeurIPS 2016.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro.distributions import ConditionalDistribution, ConditionalTransformedDistribution
from torch import nn

from ..flows.distribution import FlowDistribution
from ..flows.flow import Flow
from ..flows.layers import DiagonalAffineLayer
from ..flows.registry import family_names, get_family
from ..utils.validation import check_positive_int

__all__ = ["FLOWS", "PyroConditionalPosterior", "make_posterior", "rsample_and_log_prob"]

#: Pyro's own conditional posteriors, for side-by-side comparisons.
PYRO_KINDS = ("pyro-diag", "pyro-planar", "pyro-planar-linear", "pyro-iaf")

#: The posterior kinds :func:`make_posterior` knows at import: ``"diag"``, every registered
#: family with a VAE default depth (:func:`pyro_nf.flows.family_names` ``("vae")``, read again at
#: each call, so families registered later are accepted too) and :data:`PYRO_KINDS`.
FLOWS = ("diag", *family_names("vae"), *PYRO_KINDS)

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_SOFTPLUS_INV_1 = math.log(math.e - 1.0)


class _ConditionalDiagNormal(nn.Module, ConditionalDistribution):
    """``h ↦ N(loc(h), diag softplus(ρ(h))²)`` with a linear map started at N(0, I)."""

    def __init__(self, context_dim: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(context_dim, 2 * dim)
        nn.init.zeros_(self.linear.weight)
        with torch.no_grad():
            self.linear.bias.copy_(
                torch.cat([torch.zeros(dim), torch.full((dim,), _SOFTPLUS_INV_1)])
            )
        self.dim = dim

    def condition(self, context: torch.Tensor) -> dist.TorchDistribution:
        """The diagonal Normal for ``context``."""
        loc, raw = self.linear(context).split(self.dim, dim=-1)
        return dist.Normal(loc, F.softplus(raw)).to_event(1)


class _LinearPlanarHypernet(nn.Module):
    r"""``h ↦ (b, u, w)`` by one linear map ``H → 2D + 1``: the hypernetwork of pyro-nf's
    amortized planar layer (Rezende & Mohamed 2015), in the ``(bias, u, w)`` order Pyro's
    ``ConditionalPlanar`` reads. Pyro's ``DenseNN`` needs a hidden layer, hence this module."""

    def __init__(self, context_dim: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(context_dim, 2 * dim + 1)
        self.dim = dim

    def forward(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bias, u, w = self.linear(context).split([1, self.dim, self.dim], dim=-1)
        return bias, u, w


class PyroConditionalPosterior(nn.Module):
    r"""A posterior made of Pyro's built-in conditional transforms on a diagonal Gaussian base.

    ``posterior(h)`` returns ``ConditionalTransformedDistribution(base, transforms)
    .condition(h)`` — Pyro's own object, scored through Pyro's transform caches.

    Args:
        dim: latent dimension ``D``.
        context_dim: context size ``H``.
        transforms: Pyro ``ConditionalTransformModule`` s in the sampling direction.
        reverse_between: insert a coordinate reversal between consecutive transforms.

    Example:
        >>> q = PyroConditionalPosterior.planar(3, context_dim=5, depth=2)(torch.randn(4, 5))
        >>> z = q.rsample()
        >>> z.shape, q.log_prob(z).shape
        (torch.Size([4, 3]), torch.Size([4]))
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        transforms: Sequence[nn.Module],
        reverse_between: bool = False,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.context_dim = check_positive_int("context_dim", context_dim)
        self.base = _ConditionalDiagNormal(context_dim, dim)
        self.transforms = nn.ModuleList(transforms)
        self.reverse_between = reverse_between

    @classmethod
    def planar(
        cls, dim: int, context_dim: int, depth: int, hidden: Sequence[int] | None = None
    ) -> PyroConditionalPosterior:
        """``depth`` of Pyro's ``conditional_planar`` (default hypernetwork ``[10D, 10D]``;
        ``hidden=()``: one linear map ``H → 2D + 1`` per layer, pyro-nf's architecture)."""
        check_positive_int("depth", depth)
        if hidden is not None and len(hidden) == 0:
            return cls(
                dim,
                context_dim,
                [
                    T.ConditionalPlanar(_LinearPlanarHypernet(context_dim, dim))
                    for _ in range(depth)
                ],
            )
        hidden = list(hidden) if hidden is not None else None
        return cls(
            dim, context_dim, [T.conditional_planar(dim, context_dim, hidden) for _ in range(depth)]
        )

    @classmethod
    def iaf(
        cls, dim: int, context_dim: int, depth: int, hidden: Sequence[int] | None = None
    ) -> PyroConditionalPosterior:
        """``depth`` of Pyro's ``conditional_affine_autoregressive`` (default hidden ``[10D]``),
        reversing the coordinates between layers."""
        check_positive_int("depth", depth)
        hidden = list(hidden) if hidden is not None else None
        layers = [
            T.conditional_affine_autoregressive(dim, context_dim, hidden) for _ in range(depth)
        ]
        return cls(dim, context_dim, layers, reverse_between=True)

    def forward(self, context: torch.Tensor) -> dist.TorchDistribution:
        if len(self.transforms) == 0:  # the plain diagonal Gaussian encoder
            return self.base.condition(context)
        transforms: list = []
        for i, t in enumerate(self.transforms):
            if i > 0 and self.reverse_between:
                perm = torch.arange(self.dim - 1, -1, -1, device=context.device)
                transforms.append(T.Permute(perm))
            transforms.append(t)
        return ConditionalTransformedDistribution(self.base, transforms).condition(context)


def make_posterior(
    kind: str,
    dim: int,
    context_dim: int,
    depth: int | None = None,
    hidden: Sequence[int] | None = None,
) -> nn.Module:
    r"""An amortized posterior module ``h ↦ q(z | x)`` of the given ``kind``.

    Args:
        kind: one of :data:`FLOWS`: ``"diag"`` (diagonal Gaussian, depth 0), ``"planar"``,
            ``"radial"``, ``"iaf"``, ``"realnvp"``, ``"nice"`` (pyro-nf); ``"pyro-diag"`` (a plain Pyro ``Normal``),
            ``"pyro-planar"``, ``"pyro-iaf"`` (Pyro's built-in conditional flows, with Pyro's
            default hypernetworks), ``"pyro-planar-linear"`` (Pyro's ``ConditionalPlanar`` with
            pyro-nf's linear hypernetwork ``H → 2D + 1`` per layer: the architecture and
            parameter count of ``"planar"``, for like-for-like comparisons; only Pyro's
            invertibility constraint differs, it has no shift making ``u = 0`` the identity).
        dim: latent dimension ``D``.
        context_dim: encoder context size ``H``.
        depth: number of flow layers (default 10 for planar/radial, 2 for IAF; ignored by
            ``"diag"``).
        hidden: MADE / hypernetwork hidden widths for the IAF and Pyro kinds (library defaults
            otherwise).

    Example:
        >>> post = make_posterior("planar", 2, context_dim=8, depth=4)
        >>> q = post(torch.randn(5, 8))
        >>> q.batch_shape, q.event_shape
        (torch.Size([5]), torch.Size([2]))
        >>> make_posterior("diag", 2, 8)(torch.randn(5, 8)).rsample_and_log_prob()[1].shape
        torch.Size([5])
    """
    check_positive_int("dim", dim)
    check_positive_int("context_dim", context_dim)
    kinds = ("diag", *family_names("vae"), *PYRO_KINDS)
    if kind not in kinds:
        raise ValueError(f"kind: expected one of {kinds}, got {kind!r}")
    if kind == "diag":
        return Flow(dim, [DiagonalAffineLayer(dim, amortized=True)], context_dim=context_dim)
    if kind in PYRO_KINDS:
        depth = (2 if kind == "pyro-iaf" else 10) if depth is None else depth
        return _pyro_posterior(kind, dim, context_dim, check_positive_int("depth", depth), hidden)
    return _family_posterior(kind, dim, context_dim, depth, hidden)


def _family_posterior(
    kind: str, dim: int, context_dim: int, depth: int | None, hidden: Sequence[int] | None
) -> nn.Module:
    """An amortized pyro-nf flow of the registered family ``kind`` (its VAE depth by default)."""
    family = get_family(kind, use="vae", argname="kind")
    family.check_dim(dim, argname="dim")
    depth = family.vae_depth if depth is None else check_positive_int("depth", depth)
    extra = {} if kind in ("planar", "radial") else {"hidden": hidden}
    return family.builder(
        dim, depth, context_dim=context_dim, **{**family.vae_kwargs(dim), **extra}
    )


def _pyro_posterior(
    kind: str, dim: int, context_dim: int, depth: int, hidden: Sequence[int] | None
) -> nn.Module:
    """One of Pyro's conditional posteriors (:data:`PYRO_KINDS`)."""
    if kind == "pyro-diag":
        return PyroConditionalPosterior(dim, context_dim, [])
    if kind == "pyro-planar":
        return PyroConditionalPosterior.planar(dim, context_dim, depth, hidden)
    if kind == "pyro-planar-linear":
        if hidden is not None and len(hidden) > 0:
            raise ValueError(
                "hidden: 'pyro-planar-linear' has a linear hypernetwork (no hidden layers); got "
                f"hidden={tuple(hidden)} (use 'pyro-planar' for a hidden-layer hypernetwork)"
            )
        return PyroConditionalPosterior.planar(dim, context_dim, depth, hidden=())
    return PyroConditionalPosterior.iaf(dim, context_dim, depth, hidden)


def rsample_and_log_prob(
    q: torch.distributions.Distribution,
    sample_shape: torch.Size | tuple[int, ...] = torch.Size(),
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""A reparameterized sample ``z`` of ``q`` and ``log q(z)``, optionally from given noise.

    Without ``eps``: ``q.rsample_and_log_prob`` where available (pyro-nf), else
    ``q.rsample`` then ``q.log_prob`` (Pyro's cached transforms). With ``eps`` (standard normal
    noise of shape ``sample_shape + q.batch_shape + (D,)``): ``z`` is ``eps`` pushed through
    ``q``'s base and transforms — common random numbers, e.g. to make data-parallel training
    reproduce a single-process run exactly. Supported for a :class:`~pyro_nf.FlowDistribution`
    for a (diagonal) ``Normal`` and for a Pyro ``TransformedDistribution`` over one.

    Returns:
        ``z`` of shape ``sample_shape + batch_shape + (D,)`` and ``log q(z)`` of shape
        ``sample_shape + batch_shape``.

    Example:
        >>> q = make_posterior("planar", 2, context_dim=3, depth=2)(torch.randn(4, 3))
        >>> eps = torch.randn(6, 4, 2)
        >>> z, log_q = rsample_and_log_prob(q, eps=eps)
        >>> z.shape, torch.allclose(q.log_prob(z.detach()), log_q, atol=1e-5)
        (torch.Size([6, 4, 2]), True)
    """
    if eps is None:
        if isinstance(q, FlowDistribution):
            return q.rsample_and_log_prob(sample_shape)
        z = q.rsample(torch.Size(sample_shape))
        return z, q.log_prob(z)
    if isinstance(q, FlowDistribution):
        return _push_through_flow(q, eps)
    return _push_through_pyro(q, eps)


def _push_through_flow(q: FlowDistribution, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``eps`` pushed through a :class:`~pyro_nf.FlowDistribution`'s maps, with ``log q``."""
    log_q = -0.5 * (eps * eps).sum(-1) - q.flow.dim * _HALF_LOG_2PI
    z = eps
    for t in q.transforms():
        z, ladj = t.forward_and_log_det(z)
        log_q = log_q - ladj
    return z, log_q


def _push_through_pyro(
    q: torch.distributions.Distribution, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``eps`` pushed through a (transformed) Normal's base and transforms, with ``log q``."""
    outer, transforms = q, []
    if isinstance(q, torch.distributions.TransformedDistribution):
        outer, transforms = q.base_dist, q.transforms
    base = outer
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        raise ValueError(
            "q: expected a FlowDistribution, a Normal or a TransformedDistribution over a Normal "
            f"base to push noise through, got {type(q).__name__} over {type(base).__name__}"
        )
    z = base.loc + base.scale * eps
    log_q = outer.log_prob(z)
    for t in transforms:
        z_next = t(z)
        log_q = log_q - t.log_abs_det_jacobian(z, z_next)
        z = z_next
    return z, log_q
