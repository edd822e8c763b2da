r"""Elementwise affine maps: the learnable diagonal Gaussian "base" of a flow.

:math:`y = \mu + \sigma \odot x` with :math:`\sigma = \operatorname{softplus}(\rho)`, so
:math:`\log\lvert\det J\rvert = \sum_i \log \sigma_i`. Applied to standard normal noise it gives
the diagonal Gaussian :math:`\mathcal N(\mu, \operatorname{diag}\sigma^2)`; pyro-nf represents
every learnable base this way (standard normal noise followed by an affine layer), so base and
flow layers compose through one code path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import FlowTransform

__all__ = ["DiagonalAffineTransform", "inverse_softplus"]


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (for ``y > 0``).

    Example:
        >>> round(inverse_softplus(1.0), 6)
        0.541325
    """
    return y + math.log(-math.expm1(-y))


class DiagonalAffineTransform(FlowTransform):
    r"""``y = loc + softplus(scale_raw) ⊙ x``; parameters of shape ``(..., D)``.

    Example:
        >>> t = DiagonalAffineTransform(torch.tensor([1.0, -1.0]), torch.full((2,), inverse_softplus(2.0)))
        >>> y, ladj = t.forward_and_log_det(torch.tensor([1.0, 1.0]))
        >>> y, round(float(ladj), 4) == round(2 * math.log(2.0), 4)
        (tensor([3., 1.]), True)
    """

    def __init__(self, loc: torch.Tensor, scale_raw: torch.Tensor) -> None:
        super().__init__(loc.shape[-1])
        self.loc = loc
        self.scale = F.softplus(scale_raw).clamp_min(torch.finfo(scale_raw.dtype).tiny)
        self.log_scale = torch.log(self.scale)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.addcmul(self.loc, self.scale, x)
        return y, self.log_scale.sum(-1).expand(y.shape[:-1])

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (y - self.loc) / self.scale
        return x, -self.log_scale.sum(-1).expand(x.shape[:-1])
