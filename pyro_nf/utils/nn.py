r"""Neural-network building blocks: a plain MLP and MADE (masked autoencoder).

MADE (Germain et al., 2015) computes outputs where output :math:`i` depends only on inputs
:math:`x_{<i}` (and on an optional context, which every hidden unit sees). Masks are
registered buffers, so they move with ``.to(device)`` and are saved in ``state_dict``.

References:
    Germain, Gregor, Murray & Larochelle, *MADE: Masked Autoencoder for Distribution
    Estimation*, ICML 2015.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .validation import (
    check_parameter_count,
    check_positive_int,
    check_widths,
    mlp_parameter_count,
)

__all__ = ["MLP", "MaskedLinear", "MADE", "default_hidden", "made_parameter_count"]


def default_hidden(dim: int, context_dim: int | None = None) -> tuple[int, int]:
    """Two hidden layers of width ``max(64, 2·dim + context_dim)``.

    Example:
        >>> default_hidden(10), default_hidden(100, 50)
        ((64, 64), (250, 250))
    """
    width = max(64, 2 * dim + (context_dim or 0))
    return (width, width)


def _zero_linear(layer: nn.Linear) -> None:
    """All outputs 0: a flow layer reading them starts at the identity."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


def _redraw_linears(layers: nn.Module, zero_last: bool) -> None:
    """Torch's default init for every ``nn.Linear`` among ``layers``' children; the last one
    zeroed if ``zero_last`` (all outputs 0: a flow layer reading them starts at the identity)."""
    linears = [layer for layer in layers.children() if isinstance(layer, nn.Linear)]
    for layer in linears:
        layer.reset_parameters()
    if zero_last and linears:
        _zero_linear(linears[-1])


def made_parameter_count(
    dim: int, hidden: Sequence[int], num_params: int = 2, context_dim: int | None = None
) -> int:
    """The weights and biases of :class:`MADE` (masked entries included: they are stored).

    Example:
        >>> made_parameter_count(3, (16,), 2), sum(p.numel() for p in MADE(3, (16,)).parameters())
        (166, 166)
    """
    return mlp_parameter_count([dim + (context_dim or 0), *hidden, num_params * dim])


class MLP(nn.Sequential):
    """A multi-layer perceptron ``in → hidden... → out`` with a nonlinearity between layers.

    Args:
        in_features: input size.
        out_features: output size.
        hidden: hidden layer widths (may be empty: a single linear map).
        activation: the nonlinearity class (default :class:`torch.nn.ELU`).
        zero_last: initialise the last layer's weights and bias to zero (its output starts at 0).

    Example:
        >>> net = MLP(3, 2, hidden=(8,))
        >>> net(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ELU,
        zero_last: bool = False,
    ) -> None:
        in_features = check_positive_int("in_features", in_features)
        out_features = check_positive_int("out_features", out_features)
        hidden = check_widths("hidden", hidden)
        sizes = [in_features, *hidden, out_features]
        check_parameter_count("hidden", mlp_parameter_count(sizes), "the network")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)
        self.zero_last = zero_last
        if zero_last:
            _zero_linear(layers[-1])

    def reset_parameters(self) -> None:
        """Draw fresh weights (torch's default init), zeroing the last layer if ``zero_last``."""
        _redraw_linears(self, self.zero_last)


class MaskedLinear(nn.Linear):
    """``y = x (W ⊙ M)ᵀ + b`` with a fixed 0/1 mask ``M`` of shape ``(out, in)`` (a buffer).

    Example:
        >>> layer = MaskedLinear(2, 2, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        >>> _ = layer.weight.data.fill_(1.0), layer.bias.data.zero_()
        >>> layer(torch.tensor([[1.0, 10.0]]))
        tensor([[ 1., 11.]], grad_fn=<AddmmBackward0>)
    """

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""An autoregressive network: ``num_params`` outputs per coordinate, output ``i`` a function
    of ``x[..., :i]`` (and of the context) only.

    Input degrees are ``1..D``; hidden degrees cycle through ``1..D-1``; a hidden unit of degree
    ``d`` sees inputs of degree ``<= d`` and output ``i`` (degree ``i``) sees hidden units of
    degree ``< i``. Context features have degree 0 and reach every hidden unit.

    Args:
        dim: ``D``.
        hidden: hidden layer widths (at least one layer).
        num_params: outputs per coordinate.
        context_dim: size of the optional context input.
        activation: nonlinearity class.

    Returns (from ``forward``): a tensor of shape ``(..., num_params, D)``; the last layer starts
    at zero, so every output is 0 at initialisation.

    Example:
        >>> made = MADE(3, hidden=(16,), num_params=2)
        >>> x = torch.randn(4, 3)
        >>> made(x).shape
        torch.Size([4, 2, 3])
        >>> _ = torch.nn.init.normal_(made.net[-1].weight)  # leave the zero init to see the masks
        >>> j = torch.autograd.functional.jacobian(made, x[0])  # ∂out[p, i] / ∂x[j]
        >>> bool((j.triu() == 0).all()), bool((j.tril(-1) != 0).any())  # i depends on x[<i] only
        (True, True)
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        num_params: int = 2,
        context_dim: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if isinstance(hidden, (list, tuple)) and len(hidden) < 1:
            raise ValueError(
                f"hidden: expected at least one hidden layer width, got {tuple(hidden)}"
            )
        hidden = check_widths("hidden", hidden, allow_empty=False)
        check_positive_int("dim", dim)
        check_positive_int("num_params", num_params)
        if context_dim is not None:
            check_positive_int("context_dim", context_dim)
        check_parameter_count("hidden", made_parameter_count(dim, hidden, num_params, context_dim))
        self.dim, self.num_params, self.context_dim = dim, num_params, context_dim
        ctx = context_dim or 0
        in_deg = torch.cat([torch.zeros(ctx, dtype=torch.long), torch.arange(1, dim + 1)])
        layers: list[nn.Module] = []
        prev = in_deg
        for width in hidden:
            deg = (
                (torch.arange(width) % max(1, dim - 1)) + 1
                if dim > 1
                else torch.zeros(width, dtype=torch.long)
            )
            layers += [
                MaskedLinear(prev.numel(), width, (deg[:, None] >= prev[None, :]).float()),
                activation(),
            ]
            prev = deg
        out_deg = torch.arange(1, dim + 1).repeat(num_params)
        self.net = nn.Sequential(
            *layers,
            MaskedLinear(
                prev.numel(), num_params * dim, (out_deg[:, None] > prev[None, :]).float()
            ),
        )
        self.reset_output()

    def reset_parameters(self) -> None:
        """Draw fresh hidden weights (torch's default init) and zero the output layer."""
        _redraw_linears(self.net, zero_last=True)

    def reset_output(self) -> None:
        """Zero the output layer (all outputs 0: the flow layer using it starts at identity)."""
        _zero_linear(self.net[-1])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_dim is not None:
            if context is None:
                raise ValueError(
                    f"context: this MADE needs a context of shape (..., {self.context_dim}), got None"
                )
            shape = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
            x = torch.cat(
                [context.expand(*shape, self.context_dim), x.expand(*shape, self.dim)], dim=-1
            )
        out = self.net(x)
        return out.unflatten(-1, (self.num_params, self.dim))
