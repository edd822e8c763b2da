r"""Planar flows (Rezende & Mohamed, 2015) with an exact, differentiable inverse.

A planar map is :math:`f(z) = z + \hat u\, h(w^\top z + b)` with :math:`h = \tanh`. It is
invertible iff :math:`w^\top \hat u \ge -1`; pyro-nf enforces the strict version by building
:math:`\hat u` from an unconstrained :math:`u`:

.. math::

    \hat u = u + \bigl(m(w^\top u) - w^\top u\bigr)\,\frac{w}{\lVert w\rVert^2},\qquad
    m(a) = -1 + \operatorname{softplus}(a + \log(e - 1)),

so that :math:`w^\top \hat u = m(w^\top u) > -1` (note the squared norm). The shift
:math:`\log(e-1)` makes :math:`m(0) = 0`, hence :math:`u = 0` is *exactly* the identity map,
which is how pyro-nf initialises flows. The log-determinant is

.. math::

    \log\lvert\det J\rvert = \log\bigl(1 + h'(w^\top z + b)\, m\bigr)
    = \log\bigl(\tanh^2 s + (1 - \tanh^2 s)\,\operatorname{softplus}(\cdot)\bigr),

written in the second form so that it stays finite when :math:`m \to -1`.

**Inverse.** There is no closed form, but :math:`y = f(z)` gives the scalar equation
:math:`w^\top y + b = s + m \tanh(s)` for :math:`s = w^\top z + b`. Its left side is known, its
right side strictly increasing in :math:`s`, and the root lies in
:math:`[c - |m|, c + |m|]`. pyro-nf solves it by vectorized Newton steps safeguarded by
bisection, then :math:`z = y - \hat u \tanh(s)`. Gradients of the root with respect to the
parameters and ``y`` come from the implicit function theorem
(:math:`\partial s/\partial c = 1/F'`, :math:`\partial s/\partial m = -\tanh(s)/F'`), applied as
one differentiable Newton step at the converged root, never by unrolling the iterations.

References:
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..utils.validation import check_positive_int
from .base import FlowTransform, sum_to, warn_if_float32_unsafe

__all__ = ["PlanarInverseError", "PlanarTransform", "planar_chain", "planar_constraint"]

#: The shift of pyro-nf's constraint m(a) = -1 + softplus(a + log(e - 1)), so that m(0) = 0.
PLANAR_SHIFT = math.log(math.e - 1.0)


class PlanarInverseError(RuntimeError):
    """Raised when the planar inverse's root finder does not converge."""


def planar_constraint(
    u: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Return :math:`(\hat u, m, 1 + m)` for raw parameters ``u``, ``w`` of shape ``(..., D)``.

    ``m = wᵀû`` (shape ``(...)``) is returned from its closed form rather than recomputed from
    ``û``, and ``1 + m = softplus(·) > 0`` is returned separately so that log-determinants stay
    finite even when ``m`` rounds to ``-1``.

    Example:
        >>> u, w = torch.tensor([-5.0, 0.0]), torch.tensor([1.0, 0.0])
        >>> u_hat, m, one_plus_m = planar_constraint(u, w)
        >>> bool(m > -1), torch.allclose((w * u_hat).sum(), m)
        (True, True)
    """
    wu = (w * u).sum(-1)
    # clamped at machine epsilon so that m > -1 holds in floating point, not just on paper
    one_plus_m = F.softplus(wu + PLANAR_SHIFT).clamp_min(torch.finfo(u.dtype).eps)
    m = one_plus_m - 1.0
    w_sq = (w * w).sum(-1).clamp_min(torch.finfo(w.dtype).tiny)
    u_hat = u + ((m - wu) / w_sq).unsqueeze(-1) * w
    return u_hat, m, one_plus_m


def _dot(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(x * w).sum(-1)`` with broadcasting; a single matrix-vector product when ``w`` is 1-D."""
    return x @ w if w.dim() == 1 else torch.linalg.vecdot(x, w)


def _log_det(t: torch.Tensor, one_plus_m: torch.Tensor) -> torch.Tensor:
    """``log(1 + (1 - t²) m)`` in the form ``log(t² + (1 - t²)(1 + m))``, finite for ``m → -1``."""
    t_sq = t * t
    return torch.log(t_sq + (1.0 - t_sq) * one_plus_m)


class PlanarTransform(FlowTransform):
    r"""A chain of ``K`` planar maps with parameters of shape ``(..., K, D)`` and ``(..., K)``.

    Running all ``K`` layers in one transform lets pyro-nf build :math:`\hat u` for every layer
    in one vectorized step and sum all log-determinants at once, which is where most of its
    speed over a list of separate transforms comes from.

    Args:
        u: raw (unconstrained) directions, shape ``(..., K, D)``.
        w: normals, shape ``(..., K, D)``.
        b: offsets, shape ``(..., K)``.
        rtol: relative tolerance of the inverse's root finder (default: ``1e-12`` in float64,
            ``1e-6`` in float32).
        max_iter: iteration cap of the root finder; :class:`PlanarInverseError` past it.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> K, D = 3, 2
        >>> t = PlanarTransform(torch.randn(K, D), torch.randn(K, D), torch.randn(K))
        >>> z = torch.randn(5, D, dtype=torch.float64)
        >>> t = PlanarTransform(*(p.double() for p in (t.u, t.w, t.b)))
        >>> y, ladj = t.forward_and_log_det(z)
        >>> z_back, inv_ladj = t.inverse_and_log_det(y)
        >>> torch.allclose(z_back, z), torch.allclose(inv_ladj, -ladj)
        (True, True)
    """

    def __init__(
        self,
        u: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor,
        rtol: float | None = None,
        max_iter: int = 200,
    ) -> None:
        super().__init__(u.shape[-1])
        self.u, self.w, self.b = u, w, b
        self.depth = u.shape[-2]
        self.rtol = rtol if rtol is not None else (1e-12 if u.dtype == torch.float64 else 1e-6)
        self.max_iter = check_positive_int("max_iter", max_iter)
        self.u_hat, self.m, self.one_plus_m = planar_constraint(u, w)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a TorchScript trace (torch.jit.trace_module, Pyro's JitTrace_ELBO) cannot export the
        # fused autograd node: traced, the same maps run as plain tensor operations
        chain = planar_chain if torch.jit.is_tracing() else _PlanarChain.apply
        y, tanhs = chain(x, self.w, self.b, self.u_hat)
        return y, _log_det(tanhs, self.one_plus_m).sum(-1)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, b, u_hat, m = self.w, self.b, self.u_hat, self.m
        warn_if_float32_unsafe("planar", u_hat, w, b)
        ladj = y.new_zeros(())
        for k in reversed(range(self.depth)):
            c = _dot(y, w[..., k, :]) + b[..., k]
            m_k = m[..., k].expand_as(c)
            # wᵀy overflowing to ±inf (|y| near the dtype's max): tanh(s) = ±1 exactly there
            far = torch.isinf(c)
            s = _implicit_root(torch.where(far, 0.0, c), m_k, self.rtol, self.max_iter)
            t = torch.where(far, torch.sign(c), torch.tanh(s))
            y = y - t.unsqueeze(-1) * u_hat[..., k, :]
            ladj = ladj - _log_det(t, self.one_plus_m[..., k])
        return y, ladj.expand(y.shape[:-1]) if ladj.dim() == 0 else ladj


def planar_chain(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, u_hat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The ``K`` planar maps in plain (traceable, twice differentiable) tensor operations.

    :math:`x_k = x_{k-1} + \hat u_k \tanh(w_k^\top x_{k-1} + b_k)`; returns :math:`x_K` and
    the stacked :math:`\tanh(s_k)`, shape ``(..., K)``. The same values as the fused autograd
    node pyro-nf uses outside tracing (to rounding).

    Example:
        >>> x, w = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0]])
        >>> y, tanhs = planar_chain(x, w, torch.zeros(1), torch.tensor([[0.5, 0.0]]))
        >>> torch.allclose(y, x + torch.tensor([0.5, 0.0]) * torch.tanh(torch.tensor(1.0)))
        True
    """
    tanhs = []
    for w_k, b_k, u_k in zip(w.unbind(-2), b.unbind(-1), u_hat.unbind(-2), strict=True):
        t = torch.tanh(_dot(x, w_k) + b_k)
        tanhs.append(t)
        x = x + t.unsqueeze(-1) * u_k
    return x, torch.stack(tanhs, dim=-1)


class _PlanarChain(torch.autograd.Function):
    """The K planar maps in one autograd node: ``(x, w, b, û) -> (y, tanh(s_1..K))``.

    The backward pass is written out by hand (it is the chain rule through
    ``x_k = x_{k-1} + û_k tanh(w_kᵀ x_{k-1} + b_k)``), which replaces ~5K small autograd nodes by
    one and is where the speed of a deep planar stack comes from. First derivatives only.
    """

    @staticmethod
    def forward(ctx, x, w, b, u_hat):  # type: ignore[override]
        inputs, tanhs = [], []
        for w_k, b_k, u_k in zip(w.unbind(-2), b.unbind(-1), u_hat.unbind(-2), strict=True):
            t = torch.tanh(_dot(x, w_k) + b_k)
            inputs.append(x)
            tanhs.append(t)
            x = torch.addcmul(x, t.unsqueeze(-1), u_k)
        ctx.save_for_backward(w, u_hat, *inputs, *tanhs)
        ctx.shapes = (inputs[0].shape, b.shape)
        return x, torch.stack(tanhs, dim=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_tanhs):  # type: ignore[override]
        w, u_hat, *rest = ctx.saved_tensors
        depth = w.shape[-2]
        inputs, tanhs = rest[:depth], rest[depth:]
        x_shape, b_shape = ctx.shapes
        g = grad_y if grad_y is not None else torch.zeros_like(inputs[0])
        grad_w, grad_b, grad_u = [], [], []
        for k in reversed(range(depth)):
            t, u_k, w_k = tanhs[k], u_hat[..., k, :], w[..., k, :]
            g_t = torch.linalg.vecdot(g, u_k.expand_as(g))
            if grad_tanhs is not None:
                g_t = g_t + grad_tanhs[..., k]
            g_s = g_t * (1 - t * t)
            grad_u.append(sum_to(g * t.unsqueeze(-1), u_k.shape))
            grad_w.append(sum_to(g_s.unsqueeze(-1) * inputs[k], w_k.shape))
            grad_b.append(sum_to(g_s, b_shape[:-1]))
            g = torch.addcmul(g, g_s.unsqueeze(-1), w_k)
        stack = lambda grads: torch.stack(grads[::-1], dim=-2)  # noqa: E731
        grad_b_all = torch.stack(grad_b[::-1], dim=-1)
        return sum_to(g, x_shape), stack(grad_w), grad_b_all, stack(grad_u)


def _solve_root(c: torch.Tensor, m: torch.Tensor, rtol: float, max_iter: int) -> torch.Tensor:
    """Solve ``s + m tanh(s) = c`` elementwise (no autograd): safeguarded Newton.

    ``F(s) = s + m tanh(s) - c`` is increasing (``m > -1``) and its root lies in the bracket
    ``[c - |m|, c + |m|]``. The start is the root of the nearer linear regime (``c / (1 + m)``
    near 0, ``c - m sign(c)`` where tanh saturates). A Newton step is replaced by bisection of the
    current bracket when it leaves the bracket or would not halve the previous step (the
    safeguard of "rtsafe", Press et al., *Numerical Recipes*, §9.4): plain Newton can cycle
    between the two saturated sides, e.g. ``m ≈ 10, c ≈ -8.6``. A point stops moving once it has
    converged.
    """
    if not bool(torch.isfinite(c).all() & torch.isfinite(m).all()):
        raise PlanarInverseError(
            "planar inverse: non-finite input to the root finder (a NaN or inf in the value to "
            "invert or in the layer's parameters)"
        )
    c, m = torch.broadcast_tensors(c, m)
    s, lo, hi = _root_start(c, m)
    step_old = hi - lo
    done = torch.zeros_like(c, dtype=torch.bool)
    for _ in range(max_iter):
        t = torch.tanh(s)
        f = s + m * t - c
        hi = torch.where(f > 0, s, hi)
        lo = torch.where(f < 0, s, lo)
        newton = f / (1.0 + m * (1.0 - t * t))
        s_new = s - newton
        bisect = ~((s_new >= lo) & (s_new <= hi)) | (2.0 * newton.abs() > step_old.abs())
        s_new = torch.where(bisect, 0.5 * (lo + hi), s_new)
        s_new = torch.where(done | (f == 0), s, s_new)
        step_old = s_new - s
        tol = rtol * (1.0 + s_new.abs())
        done = done | (f == 0) | ((s_new - s).abs() <= tol) | ((hi - lo) <= tol)
        s = s_new
        if bool(done.all()):
            return s
    raise _not_converged(c, m, done, rtol, max_iter)


def _root_start(
    c: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The start ``s`` and the bracket ``[lo, hi] = [c - |m|, c + |m|]`` of the root finder."""
    lo, hi = c - m.abs(), c + m.abs()
    linear = c.abs() <= 1.0 + m
    s = torch.where(linear, c / (1.0 + m), c - m * torch.sign(c))
    return torch.minimum(torch.maximum(s, lo), hi), lo, hi


def _not_converged(
    c: torch.Tensor, m: torch.Tensor, done: torch.Tensor, rtol: float, max_iter: int
) -> PlanarInverseError:
    """The error for points that are not ``done``, naming the worst ``c`` and ``1 + m`` there."""
    bad = ~done
    return PlanarInverseError(
        f"planar inverse: the root finder did not converge to rtol={rtol:g} within "
        f"max_iter={max_iter} iterations for {int(bad.sum())} of {done.numel()} points "
        f"(there: largest |c| = {float(c[bad].abs().max()):.3g}, smallest 1 + m = "
        f"{float((1 + m[bad]).min()):.3g}); the layer is close to non-invertible there"
    )


def _implicit_root(c: torch.Tensor, m: torch.Tensor, rtol: float, max_iter: int) -> torch.Tensor:
    """The root ``s(c, m)`` with exact first derivatives by the implicit function theorem.

    One Newton step taken *with* autograd at the converged root ``s*`` has value ``s*`` (up to
    the solver tolerance) and derivatives ``∂s/∂c = 1/F'(s*)``, ``∂s/∂m = -tanh(s*)/F'(s*)``.
    """
    with torch.no_grad():
        s_star = _solve_root(c.detach(), m.detach(), rtol, max_iter)
    if not (c.requires_grad or m.requires_grad):
        return s_star
    t = torch.tanh(s_star)
    slope = 1.0 + m.detach() * (1.0 - t * t)
    return s_star - (s_star + m * t - c) / slope
