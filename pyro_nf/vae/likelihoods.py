r"""Observation models :math:`p(x \mid z)` for VAEs: Bernoulli and discretized logistic.

A likelihood is a small module that turns the decoder's output ``params`` (shape
``(..., P)``) into :math:`\log p(x \mid z)` summed over the ``D`` pixels (shape ``(...)``),
and into a Pyro distribution (event shape ``(D,)``) for the model of a model/guide pair.

**Bernoulli** (binary images, e.g. static MNIST, Caltech silhouettes): ``P = D`` logits
:math:`\ell`, :math:`\log p(x \mid z) = \sum_i x_i \ell_i - \operatorname{softplus}(\ell_i)`.

**Discretized logistic** (grey levels, e.g. Frey faces): the data are the ``B`` grey levels
:math:`k \in \{0, \dots, B-1\}`, given as :math:`x = k / (B - 1) \in [0, 1]`. Each pixel is a
logistic with location :math:`\mu_i = \operatorname{sigmoid}(a_i)` (:math:`a` the decoder's output,
``P = D``) and a learned per-pixel
scale :math:`s_i`, integrated over the bin :math:`[x - \delta, x + \delta]`,
:math:`\delta = \tfrac{1}{2(B-1)}`, with the first and last bins extended to :math:`\mp\infty`
(Salimans et al. 2017; Kingma et al. 2016 use it for images). With :math:`c = (x-\mu)/s` and
:math:`d = \delta/s`, the interior bins use the exact identity

.. math::

    \sigma(c + d) - \sigma(c - d) = \sigma(c + d)\,\sigma(d - c)\,\bigl(1 - e^{-2d}\bigr),

so :math:`\log P = \log\sigma(c+d) + \log\sigma(d-c) + \log(1 - e^{-2d})` is computed without
cancellation for any :math:`c` and :math:`s`. This is a proper distribution over the ``B`` grey
levels, so ``-log p(x)`` is a discrete negative log-likelihood **in nats per image** that is
comparable across models (unlike a Gaussian density on [0, 1]).

**Gaussian** (continuous data): :math:`\mathcal N(x_i; a_i, s_i^2)` with a learned or fixed
per-pixel scale — a density, not comparable with the discrete likelihoods; with a linear decoder
it is the linear Gaussian VAE with a closed-form marginal :math:`p(x)`, used to test the
importance-weighted estimator.

References:
    Salimans, Karpathy, Chen & Kingma, *PixelCNN++*, ICLR 2017 (discretized logistic).
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, *Improved Variational Inference
    with Inverse Autoregressive Flow*, NeurIPS 2016.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import constraints

from ..utils.validation import check_positive_int

__all__ = [
    "BernoulliLikelihood",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "GaussianLikelihood",
    "Likelihood",
    "discretized_logistic_log_prob",
    "make_likelihood",
]

_MIN_LOG_SCALE = -7.0


def _log1mexp(t: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(-t))`` for ``t > 0``, accurate for small and large ``t``."""
    return torch.where(t < math.log(2.0), torch.log(-torch.expm1(-t)), torch.log1p(-torch.exp(-t)))


class Likelihood(nn.Module):
    """Base class: ``log_prob(x, params)`` summed over pixels, and a Pyro ``distribution``.

    Attributes:
        data_dim: the number of pixels ``D``.
        num_params: the decoder output size ``P`` this likelihood reads.

    Example:
        >>> lik = make_likelihood("bernoulli", 4)
        >>> isinstance(lik, Likelihood), lik.data_dim, lik.num_params
        (True, 4, 4)
    """

    data_dim: int
    num_params: int
    #: the closed range data must lie in, and how to say so in an error message
    value_range: tuple[float, float] = (-math.inf, math.inf)
    value_text: str = "this likelihood"

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x \\mid z)` summed over the last dim; broadcasts ``x`` against ``params``."""
        raise NotImplementedError

    def distribution(self, params: torch.Tensor) -> TorchDistribution:
        """The observation distribution (event shape ``(D,)``) for a Pyro model."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean image (for plots), shape ``params.shape[:-1] + (D,)``."""
        raise NotImplementedError


class BernoulliLikelihood(Likelihood):
    r"""Independent Bernoulli pixels with logits from the decoder.

    Example:
        >>> lik = BernoulliLikelihood(3)
        >>> x = torch.tensor([[1.0, 0.0, 1.0]])
        >>> lik.log_prob(x, torch.zeros(2, 1, 3)).shape   # (samples, data) from broadcasting
        torch.Size([2, 1])
        >>> round(float(lik.log_prob(x, torch.zeros(3))), 4) == round(3 * math.log(0.5), 4)
        True
    """

    value_range = (0.0, 1.0)
    value_text = "the Bernoulli likelihood"

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.data_dim = self.num_params = check_positive_int("data_dim", data_dim)

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if x.shape != params.shape:
            shape = torch.broadcast_shapes(x.shape, params.shape)
            x, params = x.expand(shape), params.expand(shape)
        return -F.binary_cross_entropy_with_logits(params, x, reduction="none").sum(-1)

    def distribution(self, params: torch.Tensor) -> TorchDistribution:
        return dist.Bernoulli(logits=params, validate_args=False).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class DiscretizedLogistic(TorchDistribution):
    r"""A logistic(``loc``, ``scale``) integrated over ``num_bins`` equal bins of [0, 1].

    The support is the grid :math:`\{k/(B-1)\}_{k=0}^{B-1}`; see the module docstring for the
    bins and the stable log-probability. Elementwise (``event_shape = ()``).

    Example:
        >>> d = DiscretizedLogistic(torch.tensor(0.5), torch.tensor(0.1), num_bins=4)
        >>> grid = torch.arange(4) / 3
        >>> round(float(d.log_prob(grid).exp().sum()), 6)   # sums to one over the grid
        1.0
        >>> d.sample((3,)).shape
        torch.Size([3])
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        num_bins: int = 256,
        validate_args: bool | None = None,
    ) -> None:
        self.num_bins = check_positive_int("num_bins", num_bins, minimum=2)
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> DiscretizedLogistic:
        shape = torch.Size(batch_shape)
        return DiscretizedLogistic(self.loc.expand(shape), self.scale.expand(shape), self.num_bins)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return discretized_logistic_log_prob(value, self.loc, self.scale.log(), self.num_bins)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(torch.finfo(u.dtype).tiny, 1 - torch.finfo(u.dtype).eps)
            y = self.loc + self.scale * (torch.log(u) - torch.log1p(-u))
            k = torch.round(y * (self.num_bins - 1)).clamp(0, self.num_bins - 1)
            return k / (self.num_bins - 1)


def discretized_logistic_log_prob(
    x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    r"""Elementwise log-probability of the grid values ``x`` (see the module docstring).

    ``x`` is snapped to the nearest grid point :math:`k/(B-1)` (inputs rounded in float32 are
    therefore scored exactly); ``log_scale`` is clamped below at -7.

    Example:
        >>> x = torch.tensor([0.0, 1 / 3, 1.0])
        >>> discretized_logistic_log_prob(x, torch.tensor(0.5), torch.tensor(-2.0), 4).shape
        torch.Size([3])
    """
    top = num_bins - 1
    k = torch.round(x * top)
    log_scale = log_scale.clamp_min(_MIN_LOG_SCALE)
    inv_s = torch.exp(-log_scale)
    c = (k / top - loc) * inv_s
    d = (0.5 / top) * inv_s
    upper = F.logsigmoid(c + d)  # log P(X <= x + delta)
    lower = F.logsigmoid(d - c)  # log P(X >= x - delta)
    interior = upper + lower + _log1mexp(2 * d)
    return torch.where(k <= 0, upper, torch.where(k >= top, lower, interior))


class DiscretizedLogisticLikelihood(Likelihood):
    r"""Discretized logistic pixels (grey levels ``k/(B-1)``) with decoder locations and a
    learned per-pixel scale; see the module docstring. NLLs are in nats per image of the
    discrete ``B``-level data.

    Args:
        data_dim: the number of pixels ``D``.
        num_bins: the number of grey levels ``B`` (256 for 8-bit images).
        init_scale: the initial logistic scale of every pixel (in units of [0, 1]).

    Example:
        >>> lik = DiscretizedLogisticLikelihood(2, num_bins=256)
        >>> x = torch.tensor([[0.0, 128 / 255]])
        >>> lik.log_prob(x, torch.full((1, 2), 0.5)).shape
        torch.Size([1])
        >>> lik.distribution(torch.zeros(5, 2)).event_shape
        torch.Size([2])
    """

    value_range = (0.0, 1.0)
    value_text = "the discretized logistic likelihood (grey levels k/(B-1))"

    def __init__(self, data_dim: int, num_bins: int = 256, init_scale: float = 0.1) -> None:
        super().__init__()
        self.data_dim = self.num_params = check_positive_int("data_dim", data_dim)
        self.num_bins = check_positive_int("num_bins", num_bins, minimum=2)
        if not (
            isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale > 0
        ):
            raise ValueError(f"init_scale: expected a positive finite float, got {init_scale!r}")
        self.log_scale = nn.Parameter(torch.full((data_dim,), math.log(init_scale)))

    def _loc(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return discretized_logistic_log_prob(
            x, self._loc(params), self.log_scale, self.num_bins
        ).sum(-1)

    def distribution(self, params: torch.Tensor) -> TorchDistribution:
        scale = self.log_scale.clamp_min(_MIN_LOG_SCALE).exp().expand(params.shape)
        return DiscretizedLogistic(self._loc(params), scale, self.num_bins).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._loc(params)


class GaussianLikelihood(Likelihood):
    r"""Independent Gaussian pixels :math:`\mathcal N(x_i; a_i, s_i^2)` with means ``a`` from the
    decoder and a per-pixel scale :math:`s` that is learned (``scale=None``) or fixed.

    A *density* on continuous data: its NLLs are not comparable with discrete likelihoods
    (use :class:`DiscretizedLogisticLikelihood` for 8-bit images). With a linear decoder it
    is the linear Gaussian VAE whose marginal :math:`p(x)` is known in closed form.

    Example:
        >>> lik = GaussianLikelihood(2, scale=1.0)
        >>> round(float(lik.log_prob(torch.zeros(2), torch.zeros(2))), 4)
        -1.8379
    """

    value_text = "the Gaussian likelihood"

    def __init__(self, data_dim: int, scale: float | None = None, init_scale: float = 1.0) -> None:
        super().__init__()
        self.data_dim = self.num_params = check_positive_int("data_dim", data_dim)
        value = init_scale if scale is None else scale
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"scale: expected None or a positive finite float, got {value!r}")
        log_scale = torch.full((data_dim,), math.log(value))
        if scale is None:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        r = (x - params) * torch.exp(-self.log_scale)
        return (-0.5 * r * r - self.log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)

    def distribution(self, params: torch.Tensor) -> TorchDistribution:
        scale = self.log_scale.exp().expand(params.shape)
        return dist.Normal(params, scale).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params


def make_likelihood(name: str | Likelihood, data_dim: int) -> Likelihood:
    """A likelihood from its name: ``"bernoulli"``, ``"discretized_logistic"`` (256 levels) or
    ``"gaussian"`` (learned per-pixel scale).

    Example:
        >>> make_likelihood("bernoulli", 784).num_params
        784
    """
    if isinstance(name, Likelihood):
        return name
    if name == "bernoulli":
        return BernoulliLikelihood(data_dim)
    if name in ("discretized_logistic", "logistic"):
        return DiscretizedLogisticLikelihood(data_dim)
    if name == "gaussian":
        return GaussianLikelihood(data_dim)
    raise ValueError(
        "likelihood: expected 'bernoulli', 'discretized_logistic', 'gaussian' or a Likelihood, "
        f"got {name!r}"
    )
