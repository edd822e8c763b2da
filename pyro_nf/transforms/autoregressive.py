r"""Autoregressive transforms: IAF (fast sampling) and MAF (fast density), one layer for both.

A MADE network reads :math:`x` (and an optional context) and returns, for every coordinate
:math:`i`, two numbers :math:`(\mu_i, s_i)` that depend on :math:`x_{<i}` only. The layer is the
elementwise affine map

.. math::

    y = a(x) \odot x + c(x),\qquad \log\lvert\det J\rvert = \textstyle\sum_i \log a_i(x),

whose Jacobian is triangular. Two updates are available:

* ``"sigmoid"`` — Kingma et al.'s numerically stable IAF update
  :math:`y = \sigma \odot x + (1 - \sigma) \odot \mu` with
  :math:`\sigma = \operatorname{sigmoid}(\bar s + b_g)`, followed by the constant rescaling
  :math:`1/\sigma_0`, :math:`\sigma_0 = \operatorname{sigmoid}(b_g)`, so that
  :math:`a = \sigma/\sigma_0`, :math:`c = (1 - \sigma)\mu/\sigma_0`. The gate bias :math:`b_g`
  keeps :math:`\sigma` near 1 early in training; the rescaling makes a freshly initialised
  layer (MADE outputs 0) *exactly* the identity. The pre-activation is soft-clamped,
  :math:`\bar s = S\tanh(s/S)`, so that :math:`\log a` is bounded and the inverse direction
  cannot overflow.
* ``"affine"`` — :math:`a = \exp(s)` with :math:`s` soft-clamped to :math:`(-S, S)` by
  :math:`S \tanh(s/S)`, :math:`c = \mu` (the MAF of Papamakarios et al.).

**Directions.** The one-pass direction evaluates :math:`a, c` at :math:`x` and is cheap; the
other direction recovers :math:`x_i = (y_i - c_i)/a_i` coordinate by coordinate and needs
:math:`D` passes. An **IAF** uses the cheap direction for sampling (noise → sample);
a **MAF** uses it for density evaluation (sample → noise), i.e. its forward map is the inverse
of the layer. ``invert=True`` selects the MAF orientation.

References:
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, *Improved Variational Inference
    with Inverse Autoregressive Flow*, NeurIPS 2016.
    Papamakarios, Pavlakou & Murray, *Masked Autoregressive Flow for Density Estimation*,
    NeurIPS 2017.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..utils.nn import MADE
from .base import FlowTransform

__all__ = ["AutoregressiveTransform", "DEFAULT_GATE_BIAS", "DEFAULT_SCALE_BOUND"]

DEFAULT_GATE_BIAS = 1.0
DEFAULT_SCALE_BOUND = 3.0


class AutoregressiveTransform(FlowTransform):
    r"""One autoregressive layer around a :class:`~pyro_nf.utils.nn.MADE` network.

    Args:
        made: a MADE with ``num_params=2`` (outputs :math:`\mu` and :math:`s`).
        context: optional context of shape ``(..., H)``, broadcast against the input.
        update: ``"sigmoid"`` (Kingma et al.'s stable IAF update) or ``"affine"``.
        invert: ``False`` for IAF orientation (one-pass forward), ``True`` for MAF (one-pass
            inverse).
        gate_bias: :math:`b_g` of the sigmoid update.
        scale_bound: :math:`S`, the soft bound on the MADE's scale output (both updates).

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> made = MADE(3, hidden=(16,))
        >>> _ = torch.nn.init.normal_(made.net[-1].weight, std=0.3)
        >>> iaf = AutoregressiveTransform(made)
        >>> x = torch.randn(5, 3)
        >>> y, ladj = iaf.forward_and_log_det(x)
        >>> x_back, inv_ladj = iaf.inverse_and_log_det(y)   # 3 sequential passes
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(inv_ladj, -ladj, atol=1e-5)
        (True, True)
    """

    def __init__(
        self,
        made: MADE,
        context: torch.Tensor | None = None,
        update: Literal["sigmoid", "affine"] = "sigmoid",
        invert: bool = False,
        gate_bias: float = DEFAULT_GATE_BIAS,
        scale_bound: float = DEFAULT_SCALE_BOUND,
    ) -> None:
        if update not in ("sigmoid", "affine"):
            raise ValueError(f"update: expected 'sigmoid' or 'affine', got {update!r}")
        super().__init__(made.dim)
        self.made, self.context, self.update, self.invert = made, context, update, invert
        self.gate_bias, self.scale_bound = gate_bias, scale_bound
        self._log_sigma0 = -math.log1p(math.exp(-gate_bias))  # log sigmoid(gate_bias)

    def _scale_shift(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``log a(x)`` and ``c(x)``, each of shape ``(..., D)``."""
        mu, s = self.made(x, self.context).unbind(-2)
        if self.update == "sigmoid":
            # the gate is bounded, so log(sigmoid(gate)) is safe (and cheaper than logsigmoid)
            sigma = torch.sigmoid(
                self.scale_bound * torch.tanh(s / self.scale_bound) + self.gate_bias
            )
            log_a = torch.log(sigma) - self._log_sigma0
            shift = (1.0 - sigma) * mu * math.exp(-self._log_sigma0)
        else:
            log_a = self.scale_bound * torch.tanh(s / self.scale_bound)
            shift = mu
        return log_a, shift

    def _one_pass(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_a, shift = self._scale_shift(x)
        return x * torch.exp(log_a) + shift, log_a.sum(-1)

    def _sequential(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.zeros_like(y)
        log_a = y.new_zeros(())
        for _ in range(self.dim):  # after pass i, coordinates 1..i are exact
            log_a, shift = self._scale_shift(x)
            x = (y - shift) * torch.exp(-log_a)
        return x, -log_a.sum(-1)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sequential(x) if self.invert else self._one_pass(x)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._one_pass(y) if self.invert else self._sequential(y)
