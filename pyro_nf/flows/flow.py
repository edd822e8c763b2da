r"""``Flow``: a stack of layers that turns a context into a :class:`FlowDistribution`.

One data path serves every use::

    context ──(context network)──▶ parameters ──▶ transforms ──▶ (sample, log_prob)

A *directly parameterized* flow (``context_dim=None``) is the special case where the parameters
are the layers' own ``nn.Parameter`` s and no context is given. An *amortized* flow
(``context_dim=H``) has one context network that maps a context of shape ``(..., H)`` to the
parameters of all its planar/radial/affine layers at once (Rezende & Mohamed 2015), while
autoregressive layers read the context through their MADE (Kingma et al. 2016).

The builders (:mod:`pyro_nf.flows.builders`) make the usual stacks of each family.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..transforms import FlowTransform
from ..utils.nn import MLP
from ..utils.validation import (
    check_context,
    check_parameter_count,
    check_positive_int,
    check_widths,
    mlp_parameter_count,
)
from .distribution import FlowDistribution
from .layers import FlowLayer
from .pyro_modules import ConditionalFlowTransformModule, FlowTransformModule

__all__ = ["Flow"]

#: the family a flow of affine layers only is reported as (by its layers' class names)
_GAUSSIAN_FAMILIES = {
    frozenset({"LowerTriangularAffineLayer"}): "gaussian",
    frozenset({"DiagonalAffineLayer"}): "diagonal",
}


class Flow(nn.Module):
    r"""A normalizing flow: standard normal noise pushed through ``layers`` in order.

    Args:
        dim: event dimension ``D``.
        layers: the layers in the sampling direction (noise → sample).
        context_dim: ``H`` for an amortized flow, ``None`` for a directly parameterized one.
        context_hidden: hidden widths of the context network (default ``()``: a linear map,
            as in Rezende & Mohamed 2015).

    Calling ``flow(context)`` returns a :class:`~pyro_nf.FlowDistribution` with
    ``batch_shape = context.shape[:-1]`` (``()`` without context) and ``event_shape = (D,)``.

    Example:
        >>> from pyro_nf.flows.layers import DiagonalAffineLayer, PlanarLayer
        >>> flow = Flow(2, [DiagonalAffineLayer(2), PlanarLayer(2, depth=3)])
        >>> flow().sample((5,)).shape
        torch.Size([5, 2])
        >>> amortized = Flow(2, [DiagonalAffineLayer(2, amortized=True), PlanarLayer(2, 3, amortized=True)],
        ...                  context_dim=4)
        >>> q = amortized(torch.randn(7, 4))
        >>> q.batch_shape, q.event_shape
        (torch.Size([7]), torch.Size([2]))
    """

    def __init__(
        self,
        dim: int,
        layers: Sequence[FlowLayer],
        context_dim: int | None = None,
        context_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        if context_dim is not None:
            check_positive_int("context_dim", context_dim)
        context_hidden = check_widths("context_hidden", context_hidden)
        if isinstance(layers, (str, bytes, torch.Tensor)) or not hasattr(layers, "__iter__"):
            raise ValueError(f"layers: expected a sequence of FlowLayers, got {layers!r}")
        layers = list(layers)
        if len(layers) == 0:
            raise ValueError("layers: expected at least one flow layer, got an empty sequence")
        for i, layer in enumerate(layers):
            if not isinstance(layer, FlowLayer):
                raise ValueError(f"layers[{i}]: expected a FlowLayer, got {type(layer).__name__}")
            if layer.dim != dim:
                raise ValueError(f"layers[{i}]: expected a layer of dim {dim}, got dim {layer.dim}")
            if layer.context_dim is not None and layer.context_dim != context_dim:
                raise ValueError(
                    f"layers[{i}]: reads a context of size {layer.context_dim} but the flow has "
                    f"context_dim={context_dim}"
                )
            if layer.amortized and context_dim is None:
                raise ValueError(
                    f"layers[{i}]: is amortized (parameters from a context) but context_dim=None"
                )
        self.layers = nn.ModuleList(layers)
        self.context_dim = context_dim
        amortized = [layer for layer in layers if layer.amortized]
        self._sizes = [layer.num_params for layer in amortized]
        self.context_net: nn.Module | None = None
        if amortized:
            out = sum(self._sizes)
            sizes = [context_dim, *context_hidden, out]
            check_parameter_count(
                "context_hidden", mlp_parameter_count(sizes), "the context network"
            )
            self.context_net = MLP(context_dim, out, hidden=context_hidden, zero_last=True)
            self._init_context_bias()

    @torch.no_grad()
    def _init_context_bias(self) -> None:
        """Zero last-layer weights, bias = the amortized layers' initial parameters."""
        amortized = [layer for layer in self.layers if layer.amortized]
        self.context_net[-1].bias.copy_(torch.cat([layer.initial_value() for layer in amortized]))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A fresh start, as if just constructed: every layer's initial parameters, with the
        random parts drawn anew from the global torch RNG (see
        :meth:`pyro_nf.flows.layers.FlowLayer.reset_parameters`), and a fresh context network.

        Example:
            >>> from pyro_nf import planar
            >>> flow = planar(2, depth=3)
            >>> with torch.no_grad():
            ...     for p in flow.parameters():
            ...         _ = p.add_(0.5)
            >>> flow.reset_parameters()
            >>> x = torch.randn(4, 2)
            >>> torch.allclose(flow().log_prob(x), torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1))
            True
        """
        for layer in self.layers:
            layer.reset_parameters()
        if self.context_net is not None:
            self.context_net.reset_parameters()
            self._init_context_bias()

    def build_transforms(
        self, context: torch.Tensor | None = None, validate: bool = True
    ) -> list[FlowTransform]:
        """The list of transforms (sampling direction) at the current parameters."""
        if validate:
            check_context(context, self.context_dim, like=self._like())
        chunks: list[torch.Tensor] = []
        if self.context_net is not None:
            chunks = list(self.context_net(context).split(self._sizes, dim=-1))
        transforms = []
        for layer in self.layers:
            params = chunks.pop(0) if layer.amortized else None
            transforms.append(layer.transform(params, context))
        return transforms

    def _like(self) -> torch.Tensor | None:
        """A parameter: a context must have its dtype and device."""
        return next(iter(self.parameters()), None)

    def forward(self, context: torch.Tensor | None = None) -> FlowDistribution:
        check_context(context, self.context_dim, like=self._like())
        return FlowDistribution(self, context)

    def as_pyro_transform(
        self, *, cache_size: int = 1
    ) -> FlowTransformModule | ConditionalFlowTransformModule:
        r"""This flow as a Pyro transform module that owns its parameters.

        A directly parameterized flow gives a :class:`~pyro.distributions.TransformModule`
        mapping base-space draws :math:`\varepsilon` (shape ``(..., D)``) to flow outputs
        :math:`f(\varepsilon)`, exactly as ``flow()`` samples; an amortized flow gives a
        :class:`~pyro.distributions.ConditionalTransformModule` whose ``condition(context)`` is
        that map at the context. The flow is registered as the submodule ``flow``, so Pyro's
        ``AutoNormalizingFlow``, ``pyro.module`` and optimizers train its parameters. See
        :mod:`pyro_nf.flows.pyro_modules`.

        Args:
            cache_size: torch's transform cache, 0 or 1 (default 1, as Pyro's flows).

        Example:
            >>> from pyro_nf import planar
            >>> flow = planar(3, depth=4)
            >>> t = flow.as_pyro_transform()
            >>> _ = torch.manual_seed(0)
            >>> z, log_q = flow().rsample_and_log_prob((5,))
            >>> _ = torch.manual_seed(0)
            >>> eps = torch.randn(5, 3)                      # the same base-space draws
            >>> torch.allclose(t(eps), z)
            True
            >>> set(t.parameters()) == set(flow.parameters())   # it owns the flow's parameters
            True
        """
        if self.context_dim is None:
            return FlowTransformModule(self, cache_size)
        return ConditionalFlowTransformModule(self, cache_size)

    def summary(self) -> dict[str, Any]:
        """The flow in a few plain fields (what its repr shows).

        ``family``: the families of its maps, ``"+"``-joined in order (``"gaussian"``,
        ``"diagonal"`` or ``"affine"`` for a flow of affine layers only); ``dim``; ``depth``: the
        number of family maps (planar/radial maps, autoregressive, coupling or spline layers;
        affine bases, permutations and preconditioners do not count); ``context_dim``.

        Example:
            >>> from pyro_nf import iaf, planar, stack
            >>> stack(iaf(2, depth=2), planar(2, depth=3, base="standard")).summary()
            {'family': 'iaf+planar', 'dim': 2, 'depth': 5, 'context_dim': None}
        """
        families: list[str] = []
        for layer in self.layers:
            name = layer.family_name()
            if name is not None and name not in families:
                families.append(name)
        if not families:  # affine layers only: the two Gaussian families, or a preconditioner
            kinds = {type(layer).__name__ for layer in self.layers}
            families = [_GAUSSIAN_FAMILIES.get(frozenset(kinds), "affine")]
        return {
            "family": "+".join(families),
            "dim": self.dim,
            "depth": sum(layer.family_depth() for layer in self.layers),
            "context_dim": self.context_dim,
        }

    def __repr__(self) -> str:
        """``Flow(family='planar', dim=3, depth=4, context_dim=None)`` (no parameters)."""
        return "Flow(" + ", ".join(f"{k}={v!r}" for k, v in self.summary().items()) + ")"

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}"
