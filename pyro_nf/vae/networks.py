r"""Encoder and decoder networks of a VAE.

An *encoder* maps a data point :math:`x` (shape ``(..., D_x)``) to a context
:math:`h(x)` (shape ``(..., H)``) from which an amortized flow computes the per-data-point
parameters of :math:`q(z \mid x)`; a *decoder* maps a latent :math:`z` (shape ``(..., D_z)``)
to the parameters of :math:`p(x \mid z)` (shape ``(..., P)``). Both accept any number of
leading batch dimensions (e.g. ``(samples, data)``), so one call scores many importance
samples at once.

* :class:`MLPEncoder` — ``D_x → hidden[0] → … → hidden[-1] = H`` with a nonlinearity after
  every layer (the classic 784-300-300 encoder of the flow papers).
* :class:`ConvEncoder` — two stride-2 5×5 convolutions and a linear layer, for images.
* :class:`MLPDecoder` — ``D_z → hidden → P`` (linear output).

References:
    Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014.
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..utils.nn import MLP
from ..utils.validation import check_positive_int

__all__ = ["ConvEncoder", "MLPDecoder", "MLPEncoder"]


def _check_widths(name: str, widths: Sequence[int], allow_empty: bool = False) -> tuple[int, ...]:
    widths = tuple(widths)
    if (not widths and not allow_empty) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths
    ):
        raise ValueError(f"{name}: expected a sequence of positive ints, got {widths!r}")
    return widths


class MLPEncoder(nn.Module):
    """``h(x) = act(W_L … act(W_1 x + b_1) … + b_L)``; ``out_features = hidden[-1]``.

    Args:
        in_features: data dimension ``D_x``.
        hidden: layer widths (at least one); the last is the context size ``H``.
        activation: nonlinearity class (default :class:`torch.nn.ELU`).

    Example:
        >>> enc = MLPEncoder(784, hidden=(300, 300))
        >>> enc(torch.rand(5, 784)).shape, enc.out_features
        (torch.Size([5, 300]), 300)
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (300, 300),
        activation: type[nn.Module] = nn.ELU,
    ) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        hidden = _check_widths("hidden", hidden)
        layers: list[nn.Module] = []
        for a, b in zip((in_features, *hidden[:-1]), hidden, strict=True):
            layers += [nn.Linear(a, b), activation()]
        self.net = nn.Sequential(*layers)
        self.in_features, self.out_features = in_features, hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvEncoder(nn.Module):
    """A small convolutional encoder for ``(C, H, W)`` images given flattened as ``(..., C·H·W)``.

    ``conv(5×5, stride 2) → act → conv(5×5, stride 2) → act → linear → act``.

    Args:
        image_shape: ``(H, W)`` or ``(C, H, W)`` of one image (e.g. ``(28, 28)``).
        out_features: context size ``H``.
        channels: the two convolutions' output channels.
        activation: nonlinearity class.

    Example:
        >>> enc = ConvEncoder((28, 28), out_features=64)
        >>> enc(torch.rand(3, 2, 784)).shape
        torch.Size([3, 2, 64])
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        out_features: int = 300,
        channels: Sequence[int] = (32, 64),
        activation: type[nn.Module] = nn.ELU,
    ) -> None:
        super().__init__()
        shape = _check_widths("image_shape", image_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise ValueError(f"image_shape: expected (H, W) or (C, H, W), got {tuple(image_shape)}")
        c1, c2 = _check_widths("channels", channels)
        check_positive_int("out_features", out_features)
        self.image_shape = shape
        self.conv = nn.Sequential(
            nn.Conv2d(shape[0], c1, 5, stride=2, padding=2),
            activation(),
            nn.Conv2d(c1, c2, 5, stride=2, padding=2),
            activation(),
        )
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, *shape)).numel()
        self.head = nn.Sequential(nn.Linear(flat, out_features), activation())
        self.in_features = shape[0] * shape[1] * shape[2]
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x: expected a tensor of shape (..., {self.in_features}) (flattened images of "
                f"shape {self.image_shape}), got shape {tuple(x.shape)}"
            )
        y = self.conv(x.reshape(-1, *self.image_shape))
        return self.head(y.flatten(1)).reshape(*batch, self.out_features)


class MLPDecoder(nn.Module):
    """``z ↦`` the likelihood's parameters: ``D_z → hidden → P`` with a linear output layer.

    Args:
        z_dim: latent dimension ``D_z``.
        out_features: number of likelihood parameters ``P``.
        hidden: hidden widths (may be empty).
        activation: nonlinearity class.

    Example:
        >>> dec = MLPDecoder(40, 784)
        >>> dec(torch.randn(7, 5, 40)).shape
        torch.Size([7, 5, 784])
    """

    def __init__(
        self,
        z_dim: int,
        out_features: int,
        hidden: Sequence[int] = (300, 300),
        activation: type[nn.Module] = nn.ELU,
    ) -> None:
        super().__init__()
        check_positive_int("z_dim", z_dim)
        check_positive_int("out_features", out_features)
        hidden = _check_widths("hidden", hidden, allow_empty=True)
        self.net = MLP(z_dim, out_features, hidden, activation=activation)
        self.z_dim, self.out_features = z_dim, out_features

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
