r"""Rational-quadratic neural spline transforms (Durkan, Bekasov, Murray & Papamakarios 2019).

Each coordinate goes through a monotone rational-quadratic spline of ``K`` bins on
:math:`[-B, B]` and through the identity outside it (*linear tails*). The spline is given by
``K + 1`` knots :math:`(x_k, y_k)` with :math:`x_0 = y_0 = -B`, :math:`x_K = y_K = B`, and
positive derivatives :math:`d_k` at the knots, with :math:`d_0 = d_K = 1` so that the map and its
derivative are continuous at :math:`\pm B`. In bin :math:`k`, with :math:`w_k = x_{k+1} - x_k`,
:math:`h_k = y_{k+1} - y_k`, :math:`s_k = h_k / w_k` and :math:`\theta = (x - x_k)/w_k`:

.. math::

    y = y_k + \frac{h_k\,[s_k\theta^2 + d_k\theta(1-\theta)]}
                   {s_k + (d_{k+1} + d_k - 2s_k)\,\theta(1-\theta)},\qquad
    \frac{dy}{dx} = \frac{s_k^2\,[d_{k+1}\theta^2 + 2s_k\theta(1-\theta) + d_k(1-\theta)^2]}
                        {[s_k + (d_{k+1} + d_k - 2s_k)\,\theta(1-\theta)]^2}.

**Inverse.** For :math:`\xi = y - y_k` and :math:`\delta = d_{k+1} + d_k - 2s_k`, :math:`\theta`
solves :math:`a\theta^2 + b\theta + c = 0` with :math:`a = h_k(s_k - d_k) + \xi\delta`,
:math:`b = h_k d_k - \xi\delta`, :math:`c = -s_k\xi \le 0`; the root in :math:`[0, 1]` is taken by
the cancellation-free form :math:`\theta = 2c / (-b - \sqrt{b^2 - 4ac})`.

**Stability at the knots.** Every bin has width and height at least ``min_bin_width·2B`` and
``min_bin_height·2B``, every derivative is at least ``min_derivative``; the bin search counts
interior knots (so its index lies in ``0..K-1`` by construction, and a point exactly on a knot
starts the bin on its right, :math:`\theta = 0`); the end knots are set exactly to :math:`\pm B`;
:math:`\theta`, the discriminant and each output (to its bin) are clamped to their exact ranges; the spline branch is
evaluated at ``x`` clamped to :math:`[-B, B]`, so that the unused branch of the tails stays finite
(and so do its gradients).

The raw network outputs per coordinate are ``3K - 1`` numbers: ``K`` width and ``K`` height
logits (softmax) and ``K - 1`` interior derivatives (softplus, shifted so that raw 0 gives
derivative 1). All-zero raw outputs are exactly the identity, so a freshly built layer (last
network layer zeroed) starts at the identity.

References:
    Durkan, Bekasov, Murray & Papamakarios, *Neural Spline Flows*, NeurIPS 2019.
    Gregory & Delbourgo, *Piecewise rational quadratic interpolation to monotonic data*, 1982.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.nn import MADE
from .base import FlowTransform

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_BOUND",
    "MIN_BIN_HEIGHT",
    "MIN_BIN_WIDTH",
    "MIN_DERIVATIVE",
    "SplineAutoregressiveTransform",
    "SplineCouplingTransform",
    "rational_quadratic_spline",
    "spline_parameters",
]

DEFAULT_BINS = 8
DEFAULT_BOUND = 5.0
MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3


def _derivative_shift(min_derivative: float) -> float:
    """``c`` with ``min_derivative + softplus(c) = 1``: raw 0 gives derivative 1."""
    return math.log(math.expm1(1.0 - min_derivative))


def spline_parameters(
    raw: torch.Tensor,
    min_bin_width: float = MIN_BIN_WIDTH,
    min_bin_height: float = MIN_BIN_HEIGHT,
    min_derivative: float = MIN_DERIVATIVE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Bin widths, heights (fractions of :math:`2B`) and knot derivatives from raw outputs.

    Args:
        raw: shape ``(..., 3K - 1)``: ``K`` width logits, ``K`` height logits, ``K - 1`` raw
            interior derivatives.

    Returns:
        ``widths, heights`` of shape ``(..., K)`` (each :math:`\ge` its minimum, summing to 1)
        and ``derivatives`` of shape ``(..., K + 1)`` (ends exactly 1, interior
        :math:`m_d + \operatorname{softplus}(r + c) \ge m_d`, :math:`c` such that raw 0 gives 1).

    Example:
        >>> w, h, d = spline_parameters(torch.zeros(3, 3 * 4 - 1))
        >>> w[0], d[0]
        (tensor([0.2500, 0.2500, 0.2500, 0.2500]), tensor([1., 1., 1., 1., 1.]))
    """
    bins = (raw.shape[-1] + 1) // 3
    if raw.shape[-1] != 3 * bins - 1 or bins < 1:
        raise ValueError(f"raw: expected a last dimension 3K - 1 (K >= 1), got {raw.shape[-1]}")
    for name, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        if not 0.0 <= value * bins < 1.0:
            raise ValueError(f"{name}: expected 0 <= {name} * bins < 1, got {value} * {bins}")
    w, h, d = raw.split([bins, bins, bins - 1], dim=-1)
    widths = min_bin_width + (1.0 - min_bin_width * bins) * torch.softmax(w, dim=-1)
    heights = min_bin_height + (1.0 - min_bin_height * bins) * torch.softmax(h, dim=-1)
    inner = min_derivative + F.softplus(d + _derivative_shift(min_derivative))
    derivatives = F.pad(inner, (1, 1), value=1.0)
    return widths, heights, derivatives


def _knots(fractions: torch.Tensor, bound: float) -> torch.Tensor:
    """``K + 1`` knot positions on ``[-bound, bound]`` from bin fractions ``(..., K)``; the end
    knots are exactly ``±bound``."""
    cum = torch.cumsum(fractions, dim=-1)[..., :-1] * (2.0 * bound) - bound
    ends = fractions.new_full((*fractions.shape[:-1], 1), bound)
    return torch.cat([-ends, cum, ends], dim=-1)


def _gather(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(values, -1, idx).squeeze(-1)


def _inverse_theta(
    xi: torch.Tensor, h: torch.Tensor, s: torch.Tensor, d0: torch.Tensor, d1: torch.Tensor
) -> torch.Tensor:
    r""":math:`\theta \in [0, 1]` with spline value ``y_k + xi`` in a bin (stable root)."""
    delta = d1 + d0 - 2.0 * s
    a = h * (s - d0) + xi * delta
    b = h * d0 - xi * delta
    c = -s * xi
    disc = (b * b - 4.0 * a * c).clamp_min(0.0)
    denom = -b - torch.sqrt(disc)
    # denom < 0 on the whole domain (it is -2 s h at theta = 1, -2 b at theta = 0)
    theta = 2.0 * c / denom.clamp_max(-torch.finfo(denom.dtype).tiny)
    return theta.clamp(0.0, 1.0)


def _bins(
    v: torch.Tensor,
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivatives: torch.Tensor,
    bound: float,
    inverse: bool,
) -> tuple[torch.Tensor, ...]:
    """The bin of each ``v`` (searched among the input knots, or the output knots if
    ``inverse``): its left knot ``x0``, width ``w``, bottom ``y0``, height ``h`` and end
    derivatives ``d0, d1``. Counting the interior knots at or below ``v`` gives an index in
    ``0..K-1`` by construction (clamped again for safety)."""
    xk, yk = _knots(widths, bound), _knots(heights, bound)
    search = yk if inverse else xk
    idx = (v.unsqueeze(-1) >= search[..., 1:-1]).sum(-1, keepdim=True)
    idx = idx.clamp(0, widths.shape[-1] - 1)
    x0, y0 = _gather(xk, idx), _gather(yk, idx)
    w, h = _gather(xk, idx + 1) - x0, _gather(yk, idx + 1) - y0
    return x0, w, y0, h, _gather(derivatives, idx), _gather(derivatives, idx + 1)


def _broadcast(x: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    shape = torch.broadcast_shapes(x.shape, *(p.shape[:-1] for p in params))
    return x.expand(shape), [p.expand(*shape, p.shape[-1]) for p in params]


def rational_quadratic_spline(
    x: torch.Tensor,
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivatives: torch.Tensor,
    bound: float = DEFAULT_BOUND,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The elementwise rational-quadratic spline (or its inverse) with identity tails.

    Args:
        x: inputs ``(...)``.
        widths, heights: bin fractions ``(..., K)`` (positive, summing to 1; see
            :func:`spline_parameters`), broadcast against ``x``.
        derivatives: ``(..., K + 1)`` positive knot derivatives (ends 1 for smooth tails).
        bound: :math:`B`; the identity outside :math:`[-B, B]`.
        inverse: evaluate :math:`f^{-1}` instead of :math:`f`.

    Returns:
        the outputs and the elementwise :math:`\log\lvert f'\rvert` (of :math:`f^{-1}` if
        ``inverse``), each of the broadcast shape.

    Example:
        >>> w, h, d = spline_parameters(torch.randn(5, 3 * 8 - 1))
        >>> x = torch.tensor([-7.0, -5.0, 0.3, 2.0, 5.0])
        >>> y, ladj = rational_quadratic_spline(x, w, h, d)
        >>> y[[0, 1, 4]], ladj[0]          # identity tails, knots exactly at +-B
        (tensor([-7., -5.,  5.]), tensor(0.))
        >>> x_back, inv_ladj = rational_quadratic_spline(y, w, h, d, inverse=True)
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(inv_ladj, -ladj, atol=1e-5)
        (True, True)
    """
    x, (widths, heights, derivatives) = _broadcast(x, widths, heights, derivatives)
    inside = (x > -bound) & (x < bound)  # the tails own ±bound: exact there
    v = x.clamp(-bound, bound)
    x0, w, y0, h, d0, d1 = _bins(v, widths, heights, derivatives, bound, inverse)
    s = h / w
    if inverse:
        theta = _inverse_theta(v - y0, h, s, d0, d1)
        out = torch.clamp(x0 + theta * w, x0, x0 + w)
    else:
        theta = ((v - x0) / w).clamp(0.0, 1.0)
    t1 = theta * (1.0 - theta)
    denom = s + (d1 + d0 - 2.0 * s) * t1
    if not inverse:
        out = y0 + h * (s * theta * theta + d0 * t1) / denom
        out = torch.clamp(out, y0, y0 + h)  # monotone across bins despite rounding
    numer = d1 * theta * theta + 2.0 * s * t1 + d0 * (1.0 - theta) ** 2
    ladj = 2.0 * torch.log(s) + torch.log(numer) - 2.0 * torch.log(denom)
    ladj = -ladj if inverse else ladj
    return torch.where(inside, out, x), torch.where(inside, ladj, torch.zeros_like(ladj))


class SplineAutoregressiveTransform(FlowTransform):
    r"""An autoregressive rational-quadratic spline layer around a MADE.

    The MADE (``num_params = 3K - 1``) gives, for coordinate :math:`i`, the spline parameters
    as functions of :math:`x_{<i}` (and of the context); :math:`y_i = f_i(x_i)`. The one-pass
    direction evaluates all splines at once; the other recovers the coordinates one by one
    (``D`` passes, each exact for one more coordinate). ``invert=False`` is the IAF orientation
    (one-pass sampling), ``invert=True`` the MAF orientation (one-pass density).

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> made = MADE(3, hidden=(16,), num_params=3 * 4 - 1)
        >>> _ = torch.nn.init.normal_(made.net[-1].weight, std=0.5)
        >>> t = SplineAutoregressiveTransform(made, bound=3.0)
        >>> x = torch.randn(5, 3)
        >>> y, ladj = t.forward_and_log_det(x)
        >>> x_back, inv_ladj = t.inverse_and_log_det(y)   # 3 sequential passes
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(inv_ladj, -ladj, atol=1e-5)
        (True, True)
    """

    def __init__(
        self,
        made: MADE,
        context: torch.Tensor | None = None,
        bound: float = DEFAULT_BOUND,
        invert: bool = False,
    ) -> None:
        if (made.num_params + 1) % 3:
            raise ValueError(
                f"made: expected num_params = 3K - 1 (K bins), got num_params={made.num_params}"
            )
        super().__init__(made.dim)
        self.made, self.context, self.bound, self.invert = made, context, bound, invert

    def _spline(
        self, cond: torch.Tensor, v: torch.Tensor, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The splines with parameters read from ``cond``, applied to ``v``."""
        raw = self.made(cond, self.context).transpose(-1, -2)  # (..., D, 3K - 1)
        out, ladj = rational_quadratic_spline(v, *spline_parameters(raw), self.bound, inverse)
        return out, ladj.sum(-1)

    def _sequential(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, ladj = torch.zeros_like(y), y.new_zeros(())
        for _ in range(self.dim):  # after pass i, coordinates 1..i are exact
            x, ladj = self._spline(x, y, inverse=True)
        return x, ladj

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sequential(x) if self.invert else self._spline(x, x, inverse=False)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._spline(y, y, inverse=False) if self.invert else self._sequential(y)


class SplineCouplingTransform(FlowTransform):
    r"""A rational-quadratic spline coupling layer: one pass in both directions.

    The coordinates ``cond`` are copied and, with the optional context, read by ``net``, which
    returns ``len(free) * (3K - 1)`` raw spline parameters for the coordinates ``free``.

    Args:
        net: ``(..., [H +] len(cond)) -> (..., len(free) * (3K - 1))``.
        cond, free: disjoint integer index tensors covering ``0..D-1``.
        context: optional ``(..., H)``.
        bound: :math:`B`.
        unsort: ``argsort(cat([cond, free]))`` if already known (skips the partition check).

    Example:
        >>> net = nn.Linear(1, 3 * 4 - 1)
        >>> t = SplineCouplingTransform(net, torch.tensor([0]), torch.tensor([1]), bound=3.0)
        >>> x = torch.randn(6, 2)
        >>> y, ladj = t.forward_and_log_det(x)
        >>> torch.equal(y[:, 0], x[:, 0])   # the conditioning coordinate is copied
        True
        >>> x_back, inv_ladj = t.inverse_and_log_det(y)   # one pass
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(inv_ladj, -ladj, atol=1e-5)
        (True, True)
    """

    def __init__(
        self,
        net: nn.Module,
        cond: torch.Tensor,
        free: torch.Tensor,
        context: torch.Tensor | None = None,
        bound: float = DEFAULT_BOUND,
        unsort: torch.Tensor | None = None,
    ) -> None:
        dim = cond.numel() + free.numel()
        if unsort is None:  # checked here once; a layer passes its own, checked at construction
            order = torch.cat([cond, free])
            if not torch.equal(order.sort().values, torch.arange(dim, device=order.device)):
                raise ValueError(f"cond, free: expected a partition of 0..{dim - 1}, got {order}")
            unsort = order.argsort()
        super().__init__(dim)
        self.net, self.cond, self.free, self.context, self.bound = net, cond, free, context, bound
        self._unsort = unsort

    def _couple(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x_cond = x.index_select(-1, self.cond)
        inp = x_cond
        if self.context is not None:
            shape = torch.broadcast_shapes(x.shape[:-1], self.context.shape[:-1])
            inp = torch.cat([self.context.expand(*shape, -1), x_cond.expand(*shape, -1)], -1)
        raw = self.net(inp).unflatten(-1, (self.free.numel(), -1))
        out, ladj = rational_quadratic_spline(
            x.index_select(-1, self.free), *spline_parameters(raw), self.bound, inverse
        )
        x_cond = x_cond.expand(*out.shape[:-1], -1)
        return torch.cat([x_cond, out], dim=-1).index_select(-1, self._unsort), ladj.sum(-1)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(x, inverse=False)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(y, inverse=True)
