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

__all__ = ["Flow"]


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

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}"
