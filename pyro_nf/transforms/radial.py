r"""Radial flows (Rezende & Mohamed, 2015) with their closed-form inverse.

A radial map contracts or expands space around a centre :math:`z_0`:

.. math::

    f(z) = z + \beta\, h(\alpha, r)\,(z - z_0),\qquad r = \lVert z - z_0\rVert,\quad
    h = \frac{1}{\alpha + r},

with :math:`\alpha = \operatorname{softplus}(\alpha') > 0` and
:math:`\beta = -\alpha + \operatorname{softplus}(\beta') > -\alpha`, which makes it invertible.
Then :math:`1 + \beta h = \frac{\operatorname{softplus}(\beta') + r}{\alpha + r}` and

.. math::

    \log\lvert\det J\rvert = (D-1)\log(1 + \beta h) + \log\Bigl(1 + \frac{\alpha\beta}{(\alpha+r)^2}\Bigr),

both evaluated in forms that stay finite for :math:`\beta \to -\alpha`. The raw parameters
:math:`\alpha' = \beta' = 0` give :math:`\beta = 0`: the identity, used as initialisation.

**Inverse (closed form).** With :math:`R = \lVert y - z_0\rVert`, the radius :math:`r` of the
preimage is the non-negative root of :math:`r^2 + (\alpha + \beta - R)\,r - \alpha R = 0`
(computed in the cancellation-free form), and :math:`z = z_0 + \frac{\alpha + r}{\alpha + \beta + r}(y - z_0)`.

References:
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import FlowTransform

__all__ = ["RadialTransform"]


class RadialTransform(FlowTransform):
    r"""A chain of ``K`` radial maps, parameters of shape ``(..., K, D)`` and ``(..., K)``.

    Args:
        z0: centres, shape ``(..., K, D)``.
        alpha_raw: :math:`\alpha'`, shape ``(..., K)``; :math:`\alpha = \operatorname{softplus}(\alpha')`.
        beta_raw: :math:`\beta'`, shape ``(..., K)``; :math:`\beta = -\alpha + \operatorname{softplus}(\beta')`.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> K, D = 4, 3
        >>> t = RadialTransform(torch.randn(K, D), torch.randn(K), torch.randn(K))
        >>> z = torch.randn(10, D)
        >>> y, ladj = t.forward_and_log_det(z)
        >>> z_back, inv_ladj = t.inverse_and_log_det(y)
        >>> torch.allclose(z_back, z, atol=1e-5), torch.allclose(inv_ladj, -ladj, atol=1e-5)
        (True, True)
    """

    def __init__(self, z0: torch.Tensor, alpha_raw: torch.Tensor, beta_raw: torch.Tensor) -> None:
        super().__init__(z0.shape[-1])
        self.z0 = z0
        self.depth = z0.shape[-2]
        tiny = torch.finfo(z0.dtype).tiny
        self.alpha = F.softplus(alpha_raw).clamp_min(tiny)
        self.alpha_plus_beta = F.softplus(beta_raw).clamp_min(tiny)  # α + β > 0
        self.beta = self.alpha_plus_beta - self.alpha

    def _log_det(self, r: torch.Tensor, k: int | slice) -> torch.Tensor:
        """Per-layer log|det J| at preimage radius ``r`` (for ``k`` a layer or slice of layers)."""
        a, apb = self.alpha[..., k], self.alpha_plus_beta[..., k]
        a_plus_r = a + r
        first = (self.dim - 1) * (torch.log(apb + r) - torch.log(a_plus_r))
        # 1 + αβ/(α+r)² = (r² + 2αr + α(α+β)) / (α+r)²
        second = torch.log(r * (r + 2 * a) + a * apb) - 2 * torch.log(a_plus_r)
        return first + second

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        radii = []
        for k in range(self.depth):
            diff = x - self.z0[..., k, :]
            r = torch.linalg.vector_norm(diff, dim=-1)
            x = x + (self.beta[..., k] / (self.alpha[..., k] + r)).unsqueeze(-1) * diff
            radii.append(r)
        ladj = self._log_det(torch.stack(radii, dim=-1), slice(None)).sum(-1)
        return x, ladj

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tiny = torch.finfo(y.dtype).tiny
        ladj = None
        for k in reversed(range(self.depth)):
            a, apb = self.alpha[..., k], self.alpha_plus_beta[..., k]
            diff = y - self.z0[..., k, :]
            big_r = torch.linalg.vector_norm(diff, dim=-1)
            # r² + B r - αR = 0 with B = α + β - R; non-negative root without cancellation.
            b_coef = apb - big_r
            b_pos, b_neg = b_coef.clamp_min(0), b_coef.clamp_max(0)
            r_pos = (
                2 * a * big_r / (b_pos + torch.sqrt(b_pos * b_pos + 4 * a * big_r)).clamp_min(tiny)
            )
            r_neg = 0.5 * (torch.sqrt((b_neg * b_neg + 4 * a * big_r).clamp_min(tiny)) - b_neg)
            r = torch.where(b_coef >= 0, r_pos, r_neg)
            y = self.z0[..., k, :] + ((a + r) / (apb + r)).unsqueeze(-1) * diff
            step = -self._log_det(r, k)
            ladj = step if ladj is None else ladj + step
        return y, ladj
