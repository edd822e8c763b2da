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

from .base import FlowTransform, sum_to, warn_if_float32_unsafe

__all__ = ["RadialTransform", "radial_chain"]


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
        # a TorchScript trace (torch.jit.trace_module, Pyro's JitTrace_ELBO) cannot export the
        # fused autograd node: traced, the same maps run as plain tensor operations
        chain = radial_chain if torch.jit.is_tracing() else _RadialChain.apply
        return chain(x, self.z0, self.alpha, self.alpha_plus_beta)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        warn_if_float32_unsafe("radial", self.z0, self.alpha, self.alpha_plus_beta)
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
            # |y - z0| overflowing (|y| ≳ 1e19 in float32, 1e154 in float64): the map is the
            # identity out there (ratio 1, log-det 0), so log q ends at -inf, not at NaN
            far = torch.isinf(big_r)
            ratio = torch.where(far, 1.0, (a + r) / (apb + r))
            y = self.z0[..., k, :] + ratio.unsqueeze(-1) * diff
            step = torch.where(far, 0.0, -self._log_det(r, k))
            ladj = step if ladj is None else ladj + step
        return y, ladj


def radial_chain(
    x: torch.Tensor, z0: torch.Tensor, alpha: torch.Tensor, apb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The ``K`` radial maps and their summed log-determinant in plain (traceable, twice
    differentiable) tensor operations: ``(x, z0, α, α+β) -> (y, Σ_k log|det J_k|)``.

    The same values as the fused autograd node pyro-nf uses outside tracing (to rounding).

    Example:
        >>> x, z0 = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)
        >>> y, ladj = radial_chain(x, z0, torch.ones(1), torch.full((1,), 2.0))  # β = 1, r = 5
        >>> torch.allclose(y, x * (1 + 1 / 6))
        True
    """
    dim = x.shape[-1]
    radii = []
    beta = apb - alpha
    for z0_k, a_k, b_k in zip(z0.unbind(-2), alpha.unbind(-1), beta.unbind(-1), strict=True):
        diff = x - z0_k
        r = torch.linalg.vector_norm(diff, dim=-1)
        x = x + (b_k / (a_k + r)).unsqueeze(-1) * diff
        radii.append(r)
    r = torch.stack(radii, dim=-1)
    h = torch.reciprocal(alpha + r)
    q = r * (r + 2 * alpha) + alpha * apb  # (α+r)² + αβ > 0
    log_det = (dim - 1) * torch.log((apb + r) * h) + torch.log(q * h * h)
    return x, log_det.sum(-1)


class _RadialChain(torch.autograd.Function):
    """The K radial maps and their log-determinant in one autograd node:
    ``(x, z0, α, α+β) -> (y, Σ_k log|det J_k|)``.

    With ``d = x - z0``, ``r = |d|``, ``h = 1/(α + r)``, ``c = βh``, ``y = x + c d`` and the
    per-layer log-det ``L(r, α, α+β)`` of the module docstring, the backward pass is written out:
    ``ḡ_c = ḡ_y·d``; ``ḡ_r = -ḡ_c c h + ḡ_L ∂L/∂r``; ``ḡ_d = c ḡ_y + (ḡ_r/r) d``;
    ``ḡ_x = ḡ_y + ḡ_d``; ``ḡ_z0 = -ḡ_d``; ``ḡ_α = -ḡ_c (α+β+r) h² + ḡ_L ∂L/∂α``;
    ``ḡ_{α+β} = ḡ_c h + ḡ_L ∂L/∂(α+β)``. Parameter gradients are reduced over batch dimensions
    once for all layers. First derivatives only (gradcheck-tested).
    """

    @staticmethod
    def forward(ctx, x, z0, alpha, apb):  # type: ignore[override]
        dim = x.shape[-1]
        diffs, radii = [], []
        beta = apb - alpha
        for z0_k, a_k, b_k in zip(z0.unbind(-2), alpha.unbind(-1), beta.unbind(-1), strict=True):
            diff = x - z0_k
            r = torch.linalg.vector_norm(diff, dim=-1)
            x = torch.addcmul(x, (b_k / (a_k + r)).unsqueeze(-1), diff)
            diffs.append(diff)
            radii.append(r)
        r = torch.stack(radii, dim=-1)
        h = torch.reciprocal(alpha + r)
        q = r * (r + 2 * alpha) + alpha * apb  # (α+r)² + αβ > 0
        log_det = (dim - 1) * torch.log((apb + r) * h) + torch.log(q * h * h)
        ctx.save_for_backward(alpha, apb, r, h, q, *diffs)
        ctx.shapes = (diffs[0].shape, z0.shape, alpha.shape, apb.shape)
        return x, log_det.sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_log_det):  # type: ignore[override]
        alpha, apb, r, h, q, *diffs = ctx.saved_tensors
        x_shape, z0_shape, alpha_shape, apb_shape = ctx.shapes
        dim, depth = x_shape[-1], len(diffs)
        coef = (apb - alpha) * h  # c = βh
        dc_dr = -coef * h
        inv_r = torch.reciprocal(torch.where(r > 0, r, torch.ones_like(r)))
        if grad_log_det is not None:
            g_ld = grad_log_det.unsqueeze(-1)
            inv_apb_r, inv_q = torch.reciprocal(apb + r), torch.reciprocal(q)
            g_r_ld = g_ld * ((dim - 1) * (inv_apb_r - h) + 2 * (r + alpha) * inv_q - 2 * h)
            g_alpha_ld = g_ld * (-(dim + 1) * h + (2 * r + apb) * inv_q)
            g_apb_ld = g_ld * ((dim - 1) * inv_apb_r + alpha * inv_q)
        g = grad_y if grad_y is not None else torch.zeros_like(diffs[0])
        g_diffs, g_cs = [None] * depth, [None] * depth
        dc_dr_k, coef_k, inv_r_k = dc_dr.unbind(-1), coef.unsqueeze(-1).unbind(-2), inv_r.unbind(-1)
        g_r_ld_k = g_r_ld.unbind(-1) if grad_log_det is not None else None
        for k in reversed(range(depth)):
            g_c = torch.linalg.vecdot(g, diffs[k])
            g_r = g_c * dc_dr_k[k]
            if g_r_ld_k is not None:
                g_r = g_r + g_r_ld_k[k]
            g_diff = torch.addcmul(coef_k[k] * g, (g_r * inv_r_k[k]).unsqueeze(-1), diffs[k])
            g_diffs[k], g_cs[k] = g_diff, g_c
            g = g + g_diff
        g_c_all = torch.stack(g_cs, dim=-1)
        grad_alpha = -g_c_all * (apb + r) * h * h
        grad_apb = g_c_all * h
        if grad_log_det is not None:
            grad_alpha = grad_alpha + g_alpha_ld
            grad_apb = grad_apb + g_apb_ld
        return (
            sum_to(g, x_shape),
            sum_to(-torch.stack(g_diffs, dim=-2), z0_shape),
            sum_to(grad_alpha, alpha_shape),
            sum_to(grad_apb, apb_shape),
        )
