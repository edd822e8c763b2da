r"""Find the posterior's location and scale before a flow learns its shape.

For a log density :math:`\ell(u)` of the unconstrained latent vector (the model's log joint plus
the log-Jacobians of ``biject_to``), :func:`find_mode` maximizes :math:`\ell` with L-BFGS (strong
Wolfe line search; quasi-Newton steps are invariant to a linear rescaling of the coordinates, so
predictors on wildly different scales do not slow it down the way they slow Adam), falling back
to Adam with a decaying step if L-BFGS produces a non-finite value. :func:`laplace_scale_tril`
then returns the Cholesky factor of the Laplace covariance
:math:`\Sigma = (-\nabla^2 \ell(\hat u))^{-1}`, computed by autograd.

When the negative Hessian is indefinite but has no flat direction (a saddle, or the neck of a
hierarchical model whose density grows without bound as a scale goes to 0, where the curvature
along the log-scale is negative), the SoftAbs factor keeps each eigen-direction's width
:math:`1/\sqrt{|\lambda|}` (Betancourt 2013). Coordinates the density does not depend on
(masked-out sites) get the fallback scale, silently. When a direction has no curvature (a
singular model) or the dimension is too large for a dense Hessian, a *diagonal* approximation is
used instead (:math:`\sigma_i = 1/\sqrt{h_{ii}}` where :math:`h_{ii} > 0`, a fallback scale
elsewhere), and a :class:`LaplaceFallbackWarning` says so.

References:
    MacKay, *Information Theory, Inference, and Learning Algorithms*, ch. 27 (Laplace's method).
    Nocedal & Wright, *Numerical Optimization*, ch. 7 (L-BFGS).
    Betancourt, *A General Metric for Riemannian Manifold Hamiltonian Monte Carlo*, GSI 2013
    (SoftAbs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "laplace_approximation",
    "gaussian_elbo",
    "newton_refine",
    "find_mode",
    "laplace_scale_tril",
    "LaplaceFallbackWarning",
    "ModeResult",
    "MAX_DENSE_HESSIAN_DIM",
]

#: Largest dimension for which the dense Hessian is computed (D backward passes).
MAX_DENSE_HESSIAN_DIM = 500


class LaplaceFallbackWarning(UserWarning):
    """Warned when the Laplace approximation falls back to a diagonal or default scale.

    Example:
        >>> issubclass(LaplaceFallbackWarning, UserWarning)
        True
    """


@dataclass(frozen=True)
class ModeResult:
    """Outcome of :func:`find_mode`: the mode, the log density there, and how it was found."""

    mode: torch.Tensor
    log_density: float
    method: str
    iterations: int
    grad_norm: float


def _value_and_grad(
    fn: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(u)`` (detached) and its gradient at ``u``."""
    u = u.detach().requires_grad_(True)
    value = fn(u)
    (grad,) = torch.autograd.grad(value, u)
    return value.detach(), grad


def find_mode(
    log_density: Callable[[torch.Tensor], torch.Tensor],
    init: torch.Tensor,
    max_iter: int = 1000,
    tolerance: float = 1e-6,
) -> ModeResult:
    r"""Maximize ``log_density`` (``(D,) -> ()``) from ``init`` (shape ``(D,)``).

    L-BFGS with a strong Wolfe line search; if it fails (non-finite values), Adam with a
    decaying learning rate from the best point seen. Stops when the gradient's max norm is below
    ``tolerance · (1 + |ℓ|)``.

    Example:
        >>> scales = torch.tensor([1e-2, 1.0, 1e2], dtype=torch.float64)
        >>> logp = lambda u: -0.5 * (((u - 1.0) / scales) ** 2).sum()
        >>> result = find_mode(logp, torch.zeros(3, dtype=torch.float64))
        >>> torch.allclose(result.mode, torch.ones(3, dtype=torch.float64), atol=1e-6), result.method
        (True, 'lbfgs')
    """
    point, evaluations = _lbfgs_search(log_density, init, max_iter)
    method = "lbfgs"
    if point is None:
        method, point = "adam", _adam_search(log_density, init, max_iter)
    u, value, grad = point
    return ModeResult(u.detach(), float(value), method, evaluations, float(grad.abs().max()))


def _lbfgs_search(
    log_density: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, max_iter: int
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, int]:
    """L-BFGS from ``init``: ``((u, ℓ(u), ∇ℓ(u)) or None if it went non-finite, evaluations)``."""
    u = init.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [u],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        opt.zero_grad()
        loss = -log_density(u)
        evaluations += 1
        if torch.isfinite(loss):
            loss.backward()
        return loss

    try:
        opt.step(closure)
        value, grad = _value_and_grad(log_density, u)
    except (RuntimeError, ValueError):
        return None, evaluations
    finite = (
        bool(torch.isfinite(value))
        and bool(torch.isfinite(grad).all())
        and bool(torch.isfinite(u).all())
    )
    return ((u, value, grad) if finite else None), evaluations


def _adam_search(
    log_density: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam with a decaying step from ``init``: the best point seen, ``(u, ℓ(u), ∇ℓ(u))``."""
    u = init.detach().clone().requires_grad_(True)
    adam = torch.optim.Adam([u], lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=0.995)
    best, best_u = -float("inf"), u.detach().clone()
    for _ in range(max_iter):
        adam.zero_grad()
        value = log_density(u)
        if not torch.isfinite(value):
            with torch.no_grad():
                u.copy_(best_u)
            continue
        if float(value.detach()) > best:
            best, best_u = float(value.detach()), u.detach().clone()
        (-value).backward()
        adam.step()
        sched.step()
    u = best_u.requires_grad_(True)
    value, grad = _value_and_grad(log_density, u)
    return u, value, grad


def laplace_scale_tril(
    log_density: Callable[[torch.Tensor], torch.Tensor],
    mode: torch.Tensor,
    fallback_scale: float = 0.1,
    max_dense_dim: int = MAX_DENSE_HESSIAN_DIM,
) -> tuple[torch.Tensor, str]:
    r"""Cholesky factor ``L`` of the Laplace covariance at ``mode``, and which kind it is.

    Returns ``(L, kind)`` with ``kind`` one of

    * ``"full"``: :math:`LL^\top = P^{-1}`, :math:`P = -\nabla^2\ell(\hat u)` positive definite;
    * ``"softabs"``: :math:`P = Q\Lambda Q^\top` is not (safely) positive definite, e.g. at the
      "mode" of a hierarchical model whose density grows without bound as a scale goes to 0,
      where the curvature along the log-scale is negative: :math:`LL^\top = Q\,
      \mathrm{diag}(1/|\lambda_i|)\,Q^\top` (the SoftAbs metric of Betancourt 2013): each
      direction keeps the width its curvature implies, whatever the sign;
    * ``"diagonal"`` (fallback, warned: a direction without curvature, :math:`|\lambda_i| \le
      D\varepsilon\max|\lambda|`, as in a singular model; a non-finite Hessian; or
      ``D > max_dense_dim``) or ``"fallback"`` (no usable curvature at all:
      ``fallback_scale · I``).

    Coordinates on which ``ℓ`` does not depend at all (their row and column of the Hessian are
    exactly zero, e.g. sites masked out with ``poutine.mask`` or ``.mask(False)``) carry no
    curvature: they get ``fallback_scale`` and the rest is treated as above, without a warning.

    Example:
        >>> cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
        >>> prec = torch.linalg.inv(cov)
        >>> logp = lambda u: -0.5 * u @ prec @ u
        >>> L, kind = laplace_scale_tril(logp, torch.zeros(2, dtype=torch.float64))
        >>> kind, torch.allclose(L @ L.T, cov)
        ('full', True)
        >>> saddle = lambda u: -0.5 * u[0] ** 2 + 2.0 * u[1] ** 2     # curvature -1 and +4
        >>> L, kind = laplace_scale_tril(saddle, torch.zeros(2, dtype=torch.float64))
        >>> kind, L.diagonal().tolist()
        ('softabs', [1.0, 0.5])
    """
    dim = mode.numel()
    if dim > max_dense_dim:
        diag = _hessian_diagonal(log_density, mode)
        return _diagonal_fallback(
            -diag, fallback_scale, f"D = {dim} > max_dense_dim = {max_dense_dim}"
        )
    hess = torch.autograd.functional.hessian(log_density, mode.detach())
    # decompose in float64 even for float32 models: badly scaled posteriors have condition
    # numbers far beyond float32's precision, and only the preconditioner needs to be good
    precision = -0.5 * (hess + hess.T).double()
    if not bool(torch.isfinite(precision).all()):
        return _diagonal_fallback(
            torch.full_like(mode, float("nan")), fallback_scale, "the Hessian is not finite"
        )
    scale_tril, kind = _informative_scale_tril(precision, fallback_scale)
    return scale_tril.to(dtype=mode.dtype, device=mode.device), kind


def _informative_scale_tril(
    precision: torch.Tensor, fallback_scale: float
) -> tuple[torch.Tensor, str]:
    """The factor of :func:`laplace_scale_tril` from a finite float64 ``precision``: full or
    SoftAbs on the coordinates the density depends on, ``fallback_scale`` on the others; the
    warned diagonal fallback where a direction has no curvature."""
    dim = precision.shape[-1]
    informative = (precision != 0).any(dim=0)
    if not bool(informative.any()):
        return torch.diag_embed(
            torch.full((dim,), float(fallback_scale), dtype=precision.dtype)
        ), "fallback"
    idx = informative.nonzero().squeeze(-1)
    block = precision[idx][:, idx]
    tril, kind = _full_scale_tril(block), "full"
    if tril is None:
        tril, kind = _softabs_scale_tril(block), "softabs"
    if tril is None:  # a (nearly) flat direction: no width to take from the curvature
        diagonal = torch.zeros(dim, dtype=precision.dtype)
        diagonal[idx] = block.diagonal()
        return _diagonal_fallback(diagonal, fallback_scale, _why_not_full(block))
    out = torch.diag_embed(torch.full((dim,), float(fallback_scale), dtype=precision.dtype))
    out[idx.unsqueeze(-1), idx] = tril
    return out, kind


def _full_scale_tril(precision: torch.Tensor) -> torch.Tensor | None:
    """Cholesky factor of ``precision⁻¹``, or ``None`` if ``precision`` is not safely positive
    definite (smallest eigenvalue at most ``D ε`` times the largest)."""
    dim = precision.shape[-1]
    chol, info = torch.linalg.cholesky_ex(precision)
    if int(info) != 0:
        return None
    eig = torch.linalg.eigvalsh(precision)
    if not float(eig.min()) > dim * torch.finfo(eig.dtype).eps * float(eig.max()):
        return None
    cov = torch.cholesky_inverse(chol)
    cov = 0.5 * (cov + cov.T)
    scale_tril, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0 and bool(torch.isfinite(scale_tril).all()):
        return scale_tril
    return None


def _softabs_scale_tril(precision: torch.Tensor) -> torch.Tensor | None:
    r"""Cholesky factor of :math:`Q\,\mathrm{diag}(1/|\lambda|)\,Q^\top` for the symmetric
    ``precision`` :math:`= Q\Lambda Q^\top`, or ``None`` if some :math:`|\lambda_i|` is at most
    :math:`D\varepsilon\max|\lambda|` (a flat direction, whose width the curvature does not
    give)."""
    dim = precision.shape[-1]
    eig, vec = torch.linalg.eigh(precision)
    magnitude = eig.abs()
    if not float(magnitude.min()) > dim * torch.finfo(eig.dtype).eps * float(magnitude.max()):
        return None
    cov = (vec / magnitude) @ vec.T
    cov = 0.5 * (cov + cov.T)
    scale_tril, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0 or not bool(torch.isfinite(scale_tril).all()):
        return None
    return scale_tril


def _why_not_full(precision: torch.Tensor) -> str:
    """Why neither a full nor a SoftAbs factor was taken, for the fallback warning."""
    eig = torch.linalg.eigvalsh(precision)
    eig_min, eig_max = float(eig.min()), float(eig.max())
    if eig_min > 0:
        return (
            f"the negative Hessian at the mode is too ill-conditioned for {precision.dtype} "
            f"(eigenvalues from {eig_min:.3g} to {eig_max:.3g})"
        )
    return (
        "the negative Hessian at the mode is not positive definite (smallest eigenvalue "
        f"{eig_min:.3g}, a direction without curvature)"
    )


def newton_refine(
    log_density: Callable[[torch.Tensor], torch.Tensor], mode: torch.Tensor, steps: int = 50
) -> torch.Tensor:
    r"""Polish (or find) a mode with Levenberg–Marquardt-damped Newton steps.

    Each step solves :math:`(P + \lambda\,\mathrm{diag}|P_{ii}|)\,\delta = \nabla\ell` with
    :math:`P = -\nabla^2\ell` (in float64) and accepts :math:`u + \delta` if it does not lower
    ``ℓ``; the damping :math:`\lambda` shrinks tenfold after an accepted step and grows tenfold
    after a rejected one or when the damped matrix is not positive definite. Near a mode this is
    Newton's method (exact on quadratics whatever their conditioning); far from one, or where
    :math:`P` is indefinite, it takes short scaled gradient steps. Stops when a step gains less
    than ``1e-12 (1 + |ℓ|)``, when no damping up to ``1e10`` helps, or after ``steps`` steps.

    Example:
        >>> prec = torch.tensor([[1e4, 99.0], [99.0, 1.0]], dtype=torch.float64)  # rho = -0.99
        >>> logp = lambda u: -0.5 * (u - 1.0) @ prec @ (u - 1.0) - (u[1] - 1.0) ** 4
        >>> u = newton_refine(logp, torch.tensor([30.0, -40.0], dtype=torch.float64))
        >>> torch.allclose(u, torch.ones(2, dtype=torch.float64))
        True
    """
    u = mode.detach().clone()
    value, grad = _value_and_grad(log_density, u)
    damping = 1e-4
    for _ in range(steps):
        if not (bool(torch.isfinite(grad).all()) and math.isfinite(float(value))):
            break
        hess = torch.autograd.functional.hessian(log_density, u).double()
        precision = -0.5 * (hess + hess.T)
        if not bool(torch.isfinite(precision).all()):
            break
        accepted, damping = _damped_newton_step(log_density, u, value, grad, precision, damping)
        if accepted is None:
            break
        candidate, new_value = accepted
        gain = float(new_value) - float(value)
        u = candidate.detach()
        value, grad = _value_and_grad(log_density, u)
        if gain <= 1e-12 * (1.0 + abs(float(value))):
            break
    return u


def _damped_newton_step(
    log_density: Callable[[torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    value: torch.Tensor,
    grad: torch.Tensor,
    precision: torch.Tensor,
    damping: float,
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, float]:
    """Grow the damping until a step does not lower ``ℓ``: ``((u + δ, ℓ(u + δ)) or None, damping)``."""
    scaling = precision.diagonal().abs()
    scaling = torch.where(scaling > 0, scaling, torch.ones_like(scaling))
    g = grad.double().unsqueeze(-1)
    while damping <= 1e10:
        chol, info = torch.linalg.cholesky_ex(precision + damping * torch.diag(scaling))
        if int(info) == 0:
            step = torch.cholesky_solve(g, chol).squeeze(-1).to(u.dtype)
            candidate = u + step
            with torch.no_grad():
                new_value = log_density(candidate)
            if bool(torch.isfinite(new_value)) and float(new_value) >= float(value):
                return (candidate, new_value), max(damping / 10.0, 1e-12)
        damping *= 10.0
    return None, damping


def laplace_approximation(
    log_density: Callable[[torch.Tensor], torch.Tensor],
    init: torch.Tensor,
    fallback_scale: float = 0.1,
    max_dense_dim: int = MAX_DENSE_HESSIAN_DIM,
) -> tuple[ModeResult, torch.Tensor, str]:
    r"""Mode (L-BFGS, then Newton polishing when the dense Hessian is affordable) and the Cholesky
    factor of the Laplace covariance there; see :func:`laplace_scale_tril` for the fallbacks.

    Example:
        >>> scales = torch.tensor([1e-3, 1.0, 1e3], dtype=torch.float64)   # condition number 1e12
        >>> logp = lambda u: -0.5 * (((u - 1.0) / scales) ** 2).sum()
        >>> mode, L, kind = laplace_approximation(logp, torch.zeros(3, dtype=torch.float64))
        >>> torch.allclose(mode.mode, torch.ones(3, dtype=torch.float64)), kind
        (True, 'full')
        >>> torch.allclose(L.diagonal(), scales)
        True
    """
    result = find_mode(log_density, init)
    if init.numel() <= max_dense_dim:
        polished = newton_refine(log_density, result.mode)
        value, grad = _value_and_grad(log_density, polished)
        result = ModeResult(
            polished,
            float(value),
            result.method + "+newton",
            result.iterations,
            float(grad.abs().max()),
        )
    scale_tril, kind = laplace_scale_tril(log_density, result.mode, fallback_scale, max_dense_dim)
    return result, scale_tril, kind


def gaussian_elbo(
    log_density: Callable[[torch.Tensor], torch.Tensor],
    loc: torch.Tensor,
    scale_tril: torch.Tensor,
    num_samples: int = 64,
    seed: int = 0,
) -> float:
    r"""Monte Carlo ELBO of :math:`\mathcal N(\text{loc}, LL^\top)` for ``log_density``
    (common random numbers from a fixed ``seed``, so two candidates compare fairly);
    ``-inf`` if the density is not finite at some draw.

    Example:
        >>> logp = lambda u: -0.5 * (u**2).sum() - 0.5 * u.numel() * math.log(2 * math.pi)
        >>> round(gaussian_elbo(logp, torch.zeros(2), torch.eye(2)), 6)   # exact: ELBO = log Z = 0
        0.0
    """
    dim = loc.numel()
    gen = torch.Generator(device=loc.device).manual_seed(seed)
    eps = torch.randn(num_samples, dim, generator=gen, dtype=loc.dtype, device=loc.device)
    entropy = 0.5 * dim * (1.0 + math.log(2 * math.pi)) + float(
        torch.log(scale_tril.diagonal()).sum()
    )
    with torch.no_grad():
        values = torch.stack([log_density(loc + scale_tril @ e) for e in eps])
    if not bool(torch.isfinite(values).all()):
        return -math.inf
    return float(values.mean()) + entropy


def _hessian_diagonal(
    log_density: Callable[[torch.Tensor], torch.Tensor], mode: torch.Tensor
) -> torch.Tensor:
    """``diag ∇²ℓ`` by one Hessian-vector product per coordinate (no dense matrix)."""
    u = mode.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density(u), u, create_graph=True)
    out = torch.empty_like(mode)
    for i in range(mode.numel()):
        (row,) = torch.autograd.grad(grad[i], u, retain_graph=True)
        out[i] = row[i]
    return out.detach()


def _diagonal_fallback(
    precision_diag: torch.Tensor, fallback_scale: float, why: str
) -> tuple[torch.Tensor, str]:
    """Diagonal ``L`` from the positive finite precisions (``fallback_scale`` elsewhere), warned."""
    ok = torch.isfinite(precision_diag) & (precision_diag > 0)
    scale = torch.where(
        ok,
        precision_diag.clamp_min(1e-300).rsqrt(),
        torch.full_like(precision_diag, fallback_scale),
    )
    kind = "diagonal" if bool(ok.any()) else "fallback"
    warnings.warn(
        f"Laplace initialisation: {why}; using a {kind} approximation instead "
        f"({int((~ok).sum())} of {ok.numel()} coordinates got the fallback scale {fallback_scale:g})",
        LaplaceFallbackWarning,
        stacklevel=3,
    )
    return torch.diag_embed(scale), kind
