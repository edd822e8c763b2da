"""Coordinate permutations: volume preserving, so ``log|det J| = 0``.

Placed between autoregressive or coupling layers so that every coordinate gets to depend on
every other one.
"""

from __future__ import annotations

import torch

from .base import FlowTransform

__all__ = ["Permute", "Reverse", "permutation_parity"]


class Permute(FlowTransform):
    r"""``y = x[..., perm]``, with inverse ``x = y[..., argsort(perm)]`` and zero log-det.

    Args:
        perm: a permutation of ``0..D-1`` (a 1-D ``LongTensor``).

    Example:
        >>> t = Permute(torch.tensor([2, 0, 1]))
        >>> y, ladj = t.forward_and_log_det(torch.tensor([10.0, 20.0, 30.0]))
        >>> y, ladj
        (tensor([30., 10., 20.]), tensor(0.))
        >>> t.inverse_and_log_det(y)[0]
        tensor([10., 20., 30.])
    """

    def __init__(self, perm: torch.Tensor) -> None:
        perm = torch.as_tensor(perm, dtype=torch.long)
        dim = perm.numel()
        if perm.dim() != 1 or not torch.equal(
            torch.sort(perm).values, torch.arange(dim, device=perm.device)
        ):
            raise ValueError(f"perm: expected a permutation of 0..D-1, got {perm.tolist()}")
        super().__init__(dim)
        self.perm = perm
        self.inverse_perm = torch.argsort(perm)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., self.perm.to(x.device)], x.new_zeros(x.shape[:-1])

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y[..., self.inverse_perm.to(y.device)], y.new_zeros(y.shape[:-1])

    @property
    def sign(self) -> int:
        """The parity of the permutation (``det`` of its permutation matrix): ``±1``.

        Example:
            >>> Permute(torch.tensor([1, 0, 2])).sign, Permute(torch.tensor([1, 2, 0])).sign
            (-1, 1)
        """
        return permutation_parity(self.perm.tolist())


def permutation_parity(perm: list[int]) -> int:
    """``+1`` for an even permutation of ``0..D-1``, ``-1`` for an odd one (by its cycles).

    Example:
        >>> permutation_parity([2, 1, 0]), permutation_parity([0, 1, 2, 3])
        (-1, 1)
    """
    seen, sign = [False] * len(perm), 1
    for start in range(len(perm)):
        length, i = 0, start
        while not seen[i]:
            seen[i], i, length = True, perm[i], length + 1
        if length % 2 == 0 and length > 0:
            sign = -sign
    return sign


class Reverse(FlowTransform):
    """Reverse the order of the coordinates (its own inverse).

    Example:
        >>> Reverse(3)(torch.tensor([1.0, 2.0, 3.0]))
        tensor([3., 2., 1.])
    """

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(-1), x.new_zeros(x.shape[:-1])

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y.flip(-1), y.new_zeros(y.shape[:-1])

    @property
    def sign(self) -> int:
        """``(-1)^{⌊D/2⌋}``: reversing ``D`` coordinates is ``⌊D/2⌋`` swaps.

        Example:
            >>> Reverse(2).sign, Reverse(4).sign
            (-1, 1)
        """
        return -1 if (self.dim // 2) % 2 else 1
