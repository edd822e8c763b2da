r"""Affine maps: the learnable Gaussian "base" of a flow (diagonal or full covariance).

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

__all__ = [
    "DiagonalAffineTransform",
    "LowerTriangularAffineTransform",
    "inverse_softplus",
    "positive_scale",
    "raw_from_scale",
]

#: ``"softplus"``: σ = softplus(ρ) (additive steps); ``"exp"``: σ = exp(B tanh(ρ/B)), B = 30
#: (multiplicative steps: an optimizer can change a scale by orders of magnitude quickly).
POSITIVE_MAPS = ("softplus", "exp")
LOG_SCALE_BOUND = 30.0


def positive_scale(
    raw: torch.Tensor, positive: str = "softplus"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(σ, log σ)`` from unconstrained ``raw`` by the map named ``positive``.

    Example:
        >>> positive_scale(torch.tensor([0.0]), "exp")
        (tensor([1.]), tensor([0.]))
    """
    if positive == "exp":
        log_scale = LOG_SCALE_BOUND * torch.tanh(raw / LOG_SCALE_BOUND)
        return torch.exp(log_scale), log_scale
    scale = F.softplus(raw).clamp_min(torch.finfo(raw.dtype).tiny)
    return scale, torch.log(scale)


def raw_from_scale(scale: torch.Tensor, positive: str = "softplus") -> torch.Tensor:
    """The inverse of :func:`positive_scale` (for initialisation).

    Example:
        >>> raw = raw_from_scale(torch.tensor([0.1, 5.0]), "exp")
        >>> positive_scale(raw, "exp")[0]
        tensor([0.1000, 5.0000])
    """
    if positive not in POSITIVE_MAPS:
        raise ValueError(f"positive: expected one of {POSITIVE_MAPS}, got {positive!r}")
    if positive == "exp":
        return LOG_SCALE_BOUND * torch.atanh(torch.log(scale) / LOG_SCALE_BOUND)
    return scale + torch.log(-torch.expm1(-scale))


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

    def __init__(
        self, loc: torch.Tensor, scale_raw: torch.Tensor, positive: str = "softplus"
    ) -> None:
        super().__init__(loc.shape[-1])
        self.loc = loc
        self.scale, self.log_scale = positive_scale(scale_raw, positive)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.addcmul(self.loc, self.scale, x)
        return y, self.log_scale.sum(-1).expand(y.shape[:-1])

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (y - self.loc) / self.scale
        return x, -self.log_scale.sum(-1).expand(x.shape[:-1])


class LowerTriangularAffineTransform(FlowTransform):
    r"""``y = loc + L x`` with ``L`` lower triangular, ``L_ii = softplus(ρ_i) > 0``.

    On standard normal noise this is the full-covariance Gaussian
    :math:`\mathcal N(\text{loc}, L L^\top)`; :math:`\log\lvert\det J\rvert = \sum_i \log L_{ii}`;
    the inverse is a triangular solve.

    Args:
        loc: shape ``(..., D)``.
        diag_raw: :math:`\rho`, shape ``(..., D)``.
        off_diag: the strictly lower entries in ``torch.tril_indices(D, D, -1)`` order, shape
            ``(..., D(D-1)/2)``.

    Example:
        >>> t = LowerTriangularAffineTransform(torch.zeros(2), torch.full((2,), inverse_softplus(1.0)),
        ...                                    torch.tensor([0.5]))
        >>> t.scale_tril
        tensor([[1.0000, 0.0000],
                [0.5000, 1.0000]])
        >>> t(torch.tensor([1.0, 1.0]))
        tensor([1.0000, 1.5000])
    """

    @classmethod
    def from_scale_tril(
        cls, loc: torch.Tensor, scale_tril: torch.Tensor
    ) -> LowerTriangularAffineTransform:
        """The map ``y = loc + L x`` for a given lower-triangular ``L`` (positive diagonal).

        Example:
            >>> t = LowerTriangularAffineTransform.from_scale_tril(torch.zeros(2), 2 * torch.eye(2))
            >>> t.inverse_and_log_det(torch.tensor([2.0, 4.0]))
            (tensor([1., 2.]), tensor(-1.3863))
        """
        self = cls.__new__(cls)
        FlowTransform.__init__(self, loc.shape[-1])
        self.loc, self.scale_tril = loc, scale_tril
        self.log_diag = torch.log(scale_tril.diagonal(dim1=-2, dim2=-1))
        return self

    def __init__(
        self,
        loc: torch.Tensor,
        diag_raw: torch.Tensor,
        off_diag: torch.Tensor,
        positive: str = "softplus",
    ) -> None:
        dim = loc.shape[-1]
        super().__init__(dim)
        self.loc = loc
        diag, self.log_diag = positive_scale(diag_raw, positive)
        batch = torch.broadcast_shapes(diag.shape[:-1], off_diag.shape[:-1])
        rows, cols = torch.tril_indices(dim, dim, -1, device=loc.device)
        tril = diag.new_zeros(*batch, dim, dim)
        tril[..., rows, cols] = off_diag
        self.scale_tril = tril + torch.diag_embed(diag)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.loc + (self.scale_tril @ x.unsqueeze(-1)).squeeze(-1)
        return y, self.log_diag.sum(-1).expand(y.shape[:-1])

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centred = (y - self.loc).unsqueeze(-1)
        tril = self.scale_tril.expand(*centred.shape[:-2], self.dim, self.dim)
        x = torch.linalg.solve_triangular(tril, centred, upper=False).squeeze(-1)
        return x, -self.log_diag.sum(-1).expand(x.shape[:-1])
