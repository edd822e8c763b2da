r"""Coupling transforms: NICE (additive) and RealNVP (affine), fast in both directions.

A binary mask :math:`b \in \{0, 1\}^D` splits the coordinates into a conditioning part
(:math:`b_i = 1`, copied) and a transformed part (:math:`b_i = 0`). A network reads the
conditioning part (and an optional context) and returns :math:`s, t \in \mathbb R^D`:

.. math::

    y = b \odot x + (1 - b) \odot \bigl(x \odot e^{\bar s} + t\bigr),\qquad
    \log\lvert\det J\rvert = \textstyle\sum_i (1 - b_i)\,\bar s_i,

with :math:`s, t` functions of :math:`b \odot x` only, so the Jacobian is triangular after a
permutation. The scale is bounded for stability, :math:`\bar s = S \tanh(s / S)`. NICE
(``kind="additive"``) fixes :math:`\bar s = 0`: volume preserving, log-det 0. The inverse is
the same one pass: :math:`x = b \odot y + (1 - b) \odot (y - t)\, e^{-\bar s}`, because
:math:`b \odot y = b \odot x`.

References:
    Dinh, Krueger & Bengio, *NICE: Non-linear Independent Components Estimation*, ICLR 2015.
    Dinh, Sohl-Dickstein & Bengio, *Density estimation using Real NVP*, ICLR 2017.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .base import FlowTransform

__all__ = ["CouplingTransform"]


class CouplingTransform(FlowTransform):
    r"""One coupling layer around a network ``net: (..., D [+ H]) -> (..., 2D)``.

    Args:
        net: maps ``cat([context, b ⊙ x])`` to ``(s, t)`` stacked on the last dim (``2D`` outputs).
        mask: the 0/1 float mask ``b`` of shape ``(D,)`` (1 = conditioning coordinate).
        context: optional context of shape ``(..., H)``.
        kind: ``"affine"`` (RealNVP) or ``"additive"`` (NICE).
        scale_bound: :math:`S`.

    Example:
        >>> net = nn.Linear(2, 4)
        >>> t = CouplingTransform(net, torch.tensor([1.0, 0.0]))
        >>> x = torch.randn(3, 2)
        >>> y, ladj = t.forward_and_log_det(x)
        >>> torch.equal(y[:, 0], x[:, 0])   # conditioning coordinate is copied
        True
        >>> x_back, inv_ladj = t.inverse_and_log_det(y)
        >>> torch.allclose(x_back, x, atol=1e-6), torch.allclose(inv_ladj, -ladj)
        (True, True)
    """

    def __init__(
        self,
        net: nn.Module,
        mask: torch.Tensor,
        context: torch.Tensor | None = None,
        kind: Literal["affine", "additive"] = "affine",
        scale_bound: float = 3.0,
    ) -> None:
        if kind not in ("affine", "additive"):
            raise ValueError(f"kind: expected 'affine' or 'additive', got {kind!r}")
        super().__init__(mask.shape[-1])
        self.net, self.mask, self.context = net, mask, context
        self.kind, self.scale_bound = kind, scale_bound

    def _scale_shift(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        inp = x * self.mask
        if self.context is not None:
            shape = torch.broadcast_shapes(inp.shape[:-1], self.context.shape[:-1])
            inp = torch.cat([self.context.expand(*shape, -1), inp.expand(*shape, -1)], dim=-1)
        out = self.net(inp)
        # slices, not ``chunk``: NICE leaves ``s`` unused, and TorchScript's autodiff (Pyro's
        # JitTrace_ELBO) cannot differentiate a chunk with an unused output
        t = out[..., self.dim :] * (1.0 - self.mask)
        if self.kind == "additive":
            return None, t
        s = out[..., : self.dim]
        return self.scale_bound * torch.tanh(s / self.scale_bound) * (1.0 - self.mask), t

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(x)
        if s is None:
            y = x + t
            return y, y.new_zeros(y.shape[:-1])
        return x * torch.exp(s) + t, s.sum(-1)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(y)
        if s is None:
            x = y - t
            return x, x.new_zeros(x.shape[:-1])
        return (y - t) * torch.exp(-s), -s.sum(-1)
