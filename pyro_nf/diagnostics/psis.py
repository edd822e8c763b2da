r"""Importance-sampling diagnostics: Pareto-smoothed importance sampling (PSIS), k-hat, ESS.

Everything here works on **log importance weights**

.. math::

    \log w_s = \log p(x, z_s) - \log q(z_s), \qquad z_s \sim q, \quad s = 1, \dots, S,

given as a tensor of shape ``(..., S)``: the draws lie along the **last** dimension and any
leading dimensions are independent batches (one diagnostic per batch entry). The functions are
model-agnostic; they never see ``p`` or ``q``, only the weights. Results come back with the
device and dtype of the input (computations run in float64 internally).

**Pareto k-hat.** PSIS (Vehtari et al., 2024) fits a generalized Pareto distribution (GPD) with
shape :math:`k` to the largest weights. :math:`\hat k` estimates how heavy the right tail of
the weight distribution :math:`w = p/q` is: the weights have finite moments of order
:math:`< 1/k`, so :math:`\hat k` tells whether averages of ``p/q`` can be trusted (Yao et al.,
2018, use the same number to judge a variational approximation ``q``):

* :math:`\hat k < 0.5` — **good**. The weights have finite variance, the central limit theorem
  holds, importance-sampling estimates converge at the usual :math:`S^{-1/2}` rate, and ``q`` is
  close enough to ``p`` for the weights (and ``q`` itself) to be used with confidence.
* :math:`0.5 \le \hat k \le 0.7` — **ok**. The raw weights have infinite variance, so plain
  importance sampling is noisy and its error estimates are unreliable, but the Pareto-smoothed
  weights give usable estimates, converging more slowly than :math:`S^{-1/2}`. ``q`` is a
  usable but imperfect approximation of ``p``.
* :math:`\hat k > 0.7` — **bad** (unreliable). The sample size needed for a reliable estimate,
  about :math:`10^{1/(1-k)}`, is impractically large; even the smoothed weights give estimates
  with large bias and error, and ``q`` misses important parts of ``p``. For
  :math:`\hat k \ge 1` the weights do not even have a finite mean, and importance-sampling
  estimates do not converge at all.

With few draws the limit is stricter: Vehtari et al. (2024, Sec. 3.2.4, eq. 13) show that the
smoothed estimate is reliable only if :math:`\hat k < 1 - 1/\log_{10} S`, so the "bad" threshold
is :math:`\min(1 - 1/\log_{10} S,\ 0.7)` (0.5 at :math:`S = 100`, 0.67 at :math:`S = 1000`,
0.7 from :math:`S \approx 2200` on); see :func:`khat_threshold` and :func:`khat_verdict`.
:math:`\hat k` is itself a noisy estimate, and it cannot see regions of ``p`` that ``q`` never
visits: a good value is necessary, not sufficient.

**Zero weights.** A log weight of ``-inf`` (``p(x, z) = 0``) is a valid zero weight and is
accepted everywhere; ``NaN`` and ``+inf`` are rejected with a ``ValueError``, as is a batch entry
whose weights are all zero.

**Degenerate tails.** :func:`psis` cannot always fit a Pareto tail:

* if the largest weight is attained by :math:`M + 1` or more draws (e.g. constant weights, as
  with :math:`q = p`) the weights are bounded and no draw dominates; :math:`\hat k` is ``-inf``
  ("good") and the weights are only normalized (the reference implementations return ``+inf``
  here, as they cannot fit a GPD);
* if fewer than 5 draws exceed the threshold otherwise (ties at the threshold, or a few draws
  more than ~708 nats above all others) or the fit fails, :math:`\hat k` is ``+inf`` ("bad") and
  the weights are only normalized, as in the reference implementations.

Example:
    >>> import torch
    >>> from pyro_nf.psis import importance_diagnostics
    >>> p = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    >>> log_w = -0.2 * torch.log1p(-p)  # Pareto(k = 0.2) quantiles: E[w] = 1.25, log 1.25 = 0.223
    >>> diag = importance_diagnostics(log_w)
    >>> diag.verdict, diag.num_samples
    ('good', 1000)
    >>> print(diag)
    Importance sampling diagnostics (S = 1000 draws)
      Pareto k-hat : 0.24 (good; reliable below 0.67 for S = 1000)
      ESS          : 940.1 (94.0% of S)
      log evidence : 0.223 +/- 0.008

References:
    * Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling*, JMLR
      25(72):1-58, 2024 (arXiv:1507.02646).
    * Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational
      Inference*, ICML 2018.
    * Zhang & Stephens, *A New and Efficient Estimation Method for the Generalized Pareto
      Distribution*, Technometrics 51(3):316-325, 2009.
    * Kong, *A Note on Importance Sampling using Standardized Weights*, Tech. Rep. 348, Dept. of
      Statistics, University of Chicago, 1992 (the effective sample size).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..utils.validation import check_positive_int

__all__ = [
    "MIN_PSIS_SAMPLES",
    "ImportanceDiagnostics",
    "importance_diagnostics",
    "importance_ess",
    "khat_threshold",
    "khat_verdict",
    "log_evidence",
    "psis",
]

#: Smallest number of draws :func:`psis` accepts: the Pareto tail gets
#: ``ceil(min(S / 5, 3 sqrt(S)))`` draws, and fitting the GPD needs at least 5 of them.
MIN_PSIS_SAMPLES = 21

_MIN_TAIL = 5  # fewest tail draws the GPD fit accepts (as in the reference implementations)
_PRIOR_WEIGHT = 10.0  # weakly informative prior on k: 10 pseudo-observations ...
_PRIOR_K = 0.5  # ... at k = 0.5 (Vehtari et al., 2024, Appendix C)
_FIT_CHUNK = 1 << 22  # elements of the (rows, grid, tail) array built per chunk of the GPD fit


# ----------------------------------------------------------------------------------------------
# input checks and small helpers
# ----------------------------------------------------------------------------------------------


def _check_log_weights(name: str, value: object, min_samples: int) -> torch.Tensor:
    """Validate a ``(..., S)`` tensor of log weights (``-inf`` allowed) and return it."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{name}: expected a torch.Tensor of log weights with shape (..., S), "
            f"got {type(value).__name__}"
        )
    if not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    shape = tuple(value.shape)
    if value.dim() < 1 or value.shape[-1] < min_samples:
        raise ValueError(
            f"{name}: expected a tensor of shape (..., S) with at least {min_samples} samples "
            f"along the last dimension, got shape {shape}"
        )
    num_nan = int(torch.isnan(value).sum())
    if num_nan:
        raise ValueError(
            f"{name}: expected no NaN entries (use -inf for a zero weight), got {num_nan} NaN "
            f"entries in a tensor of shape {shape}"
        )
    num_posinf = int(torch.isposinf(value).sum())
    if num_posinf:
        raise ValueError(
            f"{name}: expected log weights < +inf, got {num_posinf} +inf entries in a tensor of "
            f"shape {shape}"
        )
    if value.numel():
        all_zero = torch.isneginf(value).all(dim=-1)
        num_all_zero = int(all_zero.sum())
        if num_all_zero:
            raise ValueError(
                f"{name}: expected at least one finite log weight in every batch entry, got "
                f"{num_all_zero} batch entries whose weights are all zero (-inf) in a tensor of "
                f"shape {shape}"
            )
    return value


def _work_dtype(value: torch.Tensor) -> torch.dtype:
    """float64 for the internal arithmetic, except on devices without float64 support."""
    return torch.float32 if value.device.type == "mps" else torch.float64


def _tail_length(num_samples: int) -> int:
    """``M = ceil(min(S / 5, 3 sqrt(S)))``: the number of draws in the Pareto tail."""
    return int(math.ceil(min(num_samples / 5.0, 3.0 * num_samples**0.5)))


def _as_float(name: str, value: float | torch.Tensor) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name}: expected a single number, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name}: expected a number (+-inf allowed), got nan")
    return value


def _as_num_samples(value: object) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    return check_positive_int("num_samples", value, 2)


# ----------------------------------------------------------------------------------------------
# generalized Pareto fit (Zhang & Stephens, 2009) and smoothing
# ----------------------------------------------------------------------------------------------


def _gpd_fit(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Empirical-Bayes GPD fit to positive exceedances ``y`` of shape ``(B, n)``, sorted ascending.

    With the GPD written through :math:`\theta = -k/\sigma`, the profile log-likelihood is
    :math:`\ell(\theta) = n\,[\log(-\theta/k(\theta)) - k(\theta) - 1]` with
    :math:`k(\theta) = \frac1n\sum_i \log(1 - \theta y_i)`. :math:`\theta` is averaged over
    the grid
    :math:`\theta_j = 1/y_{(n)} + (1 - \sqrt{m/(j - 1/2)})/(3\,y_{(\lfloor n/4 + 1/2\rfloor)})`,
    :math:`j = 1..m`, :math:`m = 30 + \lfloor\sqrt n\rfloor`, with weights
    :math:`\propto e^{\ell(\theta_j)}` (weights below :math:`10\,\epsilon` dropped). Then
    :math:`\hat k = k(\hat\theta)`, :math:`\hat\sigma = -\hat k/\hat\theta`, and :math:`\hat k` is
    shrunk toward 0.5 by the weakly informative prior,
    :math:`(n \hat k + 10 \cdot 0.5)/(n + 10)` (:math:`\hat\sigma` is kept from before the
    shrinkage, as in the PSIS reference implementations). Returns ``(k, sigma)`` of shape ``(B,)``.
    """
    n = y.shape[-1]
    m = 30 + int(math.sqrt(n))
    eps = torch.finfo(y.dtype).eps
    grid = torch.arange(1, m + 1, dtype=y.dtype, device=y.device)
    quartile = y[:, int(n / 4 + 0.5) - 1 : int(n / 4 + 0.5)]  # (B, 1)
    theta = 1.0 / y[:, -1:] + (1.0 - torch.sqrt(m / (grid - 0.5))) / (3.0 * quartile)  # (B, m)
    k_grid = torch.log1p(-theta.unsqueeze(-1) * y.unsqueeze(-2)).mean(-1)  # (B, m)
    # -theta / k(theta) -> 1 / mean(y) as theta -> 0
    ratio = torch.where(theta == 0, 1.0 / y.mean(-1, keepdim=True), -theta / k_grid)
    profile = n * (torch.log(ratio) - k_grid - 1.0)
    weights = torch.softmax(profile, dim=-1)
    weights = torch.where(weights >= 10 * eps, weights, torch.zeros_like(weights))
    weights = weights / weights.sum(-1, keepdim=True)
    theta_hat = (weights * theta).sum(-1, keepdim=True)  # (B, 1)
    k_hat = torch.log1p(-theta_hat * y).mean(-1)  # (B,)
    theta_hat = theta_hat.squeeze(-1)
    sigma = torch.where(theta_hat == 0, y.mean(-1), -k_hat / theta_hat)
    k_hat = (n * k_hat + _PRIOR_WEIGHT * _PRIOR_K) / (n + _PRIOR_WEIGHT)
    return k_hat, sigma


def _gpd_log_order_statistics(n: int, k: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    r"""``log F^{-1}((i - 1/2)/n)`` for ``i = 1..n`` under GPD(k, sigma): shape ``(B, n)``.

    :math:`F^{-1}(p) = \sigma\,((1 - p)^{-k} - 1)/k`, or :math:`-\sigma\log(1 - p)` for
    :math:`k = 0`.
    """
    p = (torch.arange(n, dtype=k.dtype, device=k.device) + 0.5) / n
    log1m_p = torch.log1p(-p)  # (n,)
    k_ = k.unsqueeze(-1)
    small = k_.abs() < torch.finfo(k.dtype).eps
    safe_k = torch.where(small, torch.ones_like(k_), k_)
    quantile = torch.where(small, -log1m_p, torch.expm1(-safe_k * log1m_p) / safe_k)
    return torch.log(quantile) + torch.log(sigma).unsqueeze(-1)


def psis(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Pareto-smoothed importance sampling: smoothed, normalized log weights and Pareto k-hat.

    For each batch entry (draws along the last dimension, :math:`S` of them):

    1. Shift so that :math:`\max_s \log w_s = 0` and take the tail of the
       :math:`M = \lceil\min(S/5,\ 3\sqrt S)\rceil` largest weights; the threshold :math:`u` is
       the :math:`(M+1)`-th largest weight (but at least the smallest normal float times the
       largest weight), and the tail is the draws with :math:`w_s > u`.
    2. Fit a generalized Pareto distribution to the exceedances :math:`w_s - u` with the
       Zhang & Stephens (2009) empirical-Bayes estimator and the weakly informative prior of
       Vehtari et al. (2024), :math:`\hat k \leftarrow (M \hat k + 10 \cdot 0.5) / (M + 10)`.
    3. Replace the :math:`i`-th smallest tail weight by :math:`u + F^{-1}((i - 1/2)/M)`, the
       expected order statistics of the fitted GPD, and truncate at the largest raw weight.
    4. Normalize: :math:`\log \tilde w_s - \operatorname{logsumexp}_s \log \tilde w_s`.

    This is the algorithm of the reference implementations (R ``loo`` and ``arviz.psislw``
    with ``reff=1``, the right choice for independent draws from ``q``); degenerate tails get
    :math:`\hat k = \pm\infty` (see the module docstring). Read :math:`\hat k` with
    :func:`khat_verdict`. The result is a diagnostic, computed without gradients.

    Args:
        log_weights: log importance weights, shape ``(..., S)`` with ``S >= 21``
            (:data:`MIN_PSIS_SAMPLES`); ``-inf`` entries are zero weights.

    Returns:
        ``(smoothed_log_weights, khat)``: shapes ``(..., S)`` (with ``logsumexp = 0`` along the
        last dimension) and ``(...)``, in the dtype and on the device of ``log_weights``.

    Raises:
        ValueError: ``log_weights`` is not a floating tensor of shape ``(..., S >= 21)``, or
            holds NaN or ``+inf``, or a batch entry whose weights are all zero.

    Example:
        >>> import torch
        >>> p = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
        >>> log_w = -0.8 * torch.log1p(-p)  # quantiles of a Pareto tail with shape k = 0.8
        >>> smoothed, khat = psis(log_w)
        >>> smoothed.shape, round(float(khat), 2)  # pulled a little toward 0.5 by the prior
        (torch.Size([1000]), 0.76)
        >>> float(torch.logsumexp(smoothed, dim=-1))
        0.0
        >>> psis(torch.zeros(2, 100))[1]  # constant weights: no tail at all
        tensor([-inf, -inf])
    """
    lw = _check_log_weights("log_weights", log_weights, MIN_PSIS_SAMPLES)
    x = lw.detach().to(_work_dtype(lw)).reshape(-1, lw.shape[-1])
    x = x - x.max(dim=-1, keepdim=True).values  # max = 0; -inf stays -inf
    tail = _find_tails(x)
    out, khat = x.clone(), _initial_khat(tail.num_tail, x.dtype)
    for n in torch.unique(tail.num_tail[tail.num_tail >= _MIN_TAIL]).tolist():
        for rows in _row_chunks(tail.num_tail == n, n):
            _smooth_rows(out, khat, tail, rows, n)
    out = out - torch.logsumexp(out, dim=-1, keepdim=True)
    return out.reshape(lw.shape).to(lw.dtype), khat.reshape(lw.shape[:-1]).to(lw.dtype)


@dataclass(frozen=True)
class _Tails:
    """The Pareto tail of each row ``(B, S)`` of shifted log weights (step 1 of :func:`psis`)."""

    sorted_x: torch.Tensor  # (B, M + 1): the M + 1 largest log weights, descending
    order: torch.Tensor  # (B, M + 1): their indices in the row (ties in any order)
    cutoff: torch.Tensor  # (B,): the log threshold, log u
    num_tail: torch.Tensor  # (B,): draws above the threshold (a prefix of sorted_x)


def _find_tails(x: torch.Tensor) -> _Tails:
    """The tails of the rows of ``x`` (max 0): threshold, tail length and the sorted tail."""
    tail_len = _tail_length(x.shape[-1])
    log_tiny = math.log(torch.finfo(x.dtype).tiny)
    sorted_x, order = torch.topk(x, tail_len + 1, dim=-1, largest=True, sorted=True)
    cutoff = sorted_x[:, tail_len].clamp(min=log_tiny)  # (B,)
    num_tail = (sorted_x[:, :tail_len] > cutoff.unsqueeze(-1)).sum(-1)  # tail = a sorted prefix
    return _Tails(sorted_x, order, cutoff, num_tail)


def _initial_khat(num_tail: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """k-hat before any fit: ``-inf`` for rows without a tail (bounded weights), else ``+inf``."""
    khat = torch.full(num_tail.shape, math.inf, dtype=dtype, device=num_tail.device)
    return torch.where(num_tail == 0, torch.full_like(khat, -math.inf), khat)


def _row_chunks(mask: torch.Tensor, n: int) -> Iterator[torch.Tensor]:
    """The indices of the rows in ``mask``, in chunks small enough for a GPD fit of ``n`` draws."""
    rows_all = torch.nonzero(mask).squeeze(-1)
    chunk = max(1, _FIT_CHUNK // (n * (30 + int(math.sqrt(n)))))
    for start in range(0, rows_all.numel(), chunk):
        yield rows_all[start : start + chunk]


def _smooth_rows(
    out: torch.Tensor, khat: torch.Tensor, tail: _Tails, rows: torch.Tensor, n: int
) -> None:
    """Steps 2 and 3 of :func:`psis` for ``rows`` with ``n`` tail draws, in place in ``out``/``khat``."""
    u = tail.cutoff[rows].unsqueeze(-1)  # (b, 1)
    excess = tail.sorted_x[rows, :n].flip(-1) - u  # ascending, > 0
    # exceedances w - u = e^u expm1(x - u), rescaled so that the largest is exactly 1
    scale = torch.expm1(excess[:, -1:])
    k, sigma = _gpd_fit(torch.expm1(excess) / scale)
    ok = torch.isfinite(k) & torch.isfinite(sigma) & (sigma > 0)
    log_tail = torch.logaddexp(
        u, _gpd_log_order_statistics(n, k, sigma) + u + torch.log(scale)
    ).clamp(max=0.0)  # truncate at the largest raw weight
    tail_idx = tail.order[rows, :n].flip(-1)
    smoothed = out[rows].scatter(-1, tail_idx, log_tail)
    out[rows] = torch.where(ok.unsqueeze(-1), smoothed, out[rows])
    khat[rows] = torch.where(ok, k, torch.full_like(k, math.inf))


# ----------------------------------------------------------------------------------------------
# k-hat thresholds
# ----------------------------------------------------------------------------------------------


def khat_threshold(num_samples: int) -> float:
    r"""The sample-size dependent k-hat threshold :math:`\min(1 - 1/\log_{10} S,\ 0.7)`.

    Vehtari et al. (2024, Sec. 3.2.4, eq. 13): with :math:`S` draws the Pareto-smoothed estimate
    is reliable (small probability of a large error) only for :math:`\hat k` below
    :math:`1 - 1/\log_{10} S`, i.e. it needs :math:`S \gtrsim 10^{1/(1-k)}` draws; above 0.7 no
    practical sample size suffices, hence the cap.

    Args:
        num_samples: the number of draws :math:`S` (an integer ``>= 2``).

    Returns:
        The threshold as a float (negative for :math:`S < 10`: no k-hat is reliable then).

    Example:
        >>> khat_threshold(100), round(khat_threshold(1000), 4), khat_threshold(10_000)
        (0.5, 0.6667, 0.7)
    """
    num_samples = _as_num_samples(num_samples)
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def khat_verdict(khat: float | torch.Tensor, num_samples: int | None = None) -> str:
    r"""Classify a Pareto :math:`\hat k` as ``"good"``, ``"ok"`` or ``"bad"``.

    * ``"good"``: :math:`\hat k < 0.5` — finite-variance weights, :math:`S^{-1/2}` convergence.
    * ``"ok"``: :math:`0.5 \le \hat k \le t` — infinite variance, but the Pareto-smoothed
      estimates are usable (slower convergence).
    * ``"bad"``: :math:`\hat k > t` — unreliable; the weights ``p/q`` should not be trusted.

    Here :math:`t = 0.7` (Yao et al., 2018; Vehtari et al., 2024) or, if ``num_samples`` is
    given, :math:`t = \min(1 - 1/\log_{10} S,\ 0.7)` (:func:`khat_threshold`), which is
    stricter for :math:`S \lesssim 2200`; for :math:`S < 100` it is below 0.5 and values in
    :math:`(t, 0.5)` are then "bad" too. The module docstring explains the three regimes.

    Args:
        khat: a k-hat value (float or one-element tensor); ``+-inf`` allowed, NaN is not.
        num_samples: the number of draws :math:`S` the k-hat came from (optional, ``>= 2``).

    Returns:
        ``"good"``, ``"ok"`` or ``"bad"``.

    Example:
        >>> khat_verdict(0.3), khat_verdict(0.6), khat_verdict(0.8)
        ('good', 'ok', 'bad')
        >>> khat_verdict(0.6, num_samples=1000), khat_verdict(0.6, num_samples=100)
        ('ok', 'bad')
    """
    k = _as_float("khat", khat)
    threshold = 0.7 if num_samples is None else khat_threshold(num_samples)
    if k > threshold:
        return "bad"
    if k >= 0.5:
        return "ok"
    return "good"


# ----------------------------------------------------------------------------------------------
# effective sample size and evidence
# ----------------------------------------------------------------------------------------------


def importance_ess(log_weights: torch.Tensor, *, pareto_smoothed: bool = False) -> torch.Tensor:
    r"""Importance-sampling effective sample size :math:`(\sum_s w_s)^2 / \sum_s w_s^2`.

    Kong's (1992) effective sample size: the number of independent draws from ``p`` that would
    estimate an expectation about as precisely as the :math:`S` weighted draws from ``q``. It is
    computed in log space, :math:`\exp(2\operatorname{logsumexp}(\log w) -
    \operatorname{logsumexp}(2\log w))`, so any scale of the weights works, and lies in
    :math:`[1, S]` (:math:`S` for equal weights, 1 when one weight dominates; the result is
    clamped to that range against rounding). With ``pareto_smoothed=True`` it is computed from
    the PSIS-smoothed weights of :func:`psis` (the ESS that Vehtari et al., 2024, report for
    PSIS; needs :math:`S \ge 21`). The ESS is only meaningful when :math:`\hat k` is
    small: with heavy-tailed weights it overestimates the efficiency.

    Args:
        log_weights: log importance weights, shape ``(..., S)``; ``-inf`` entries are zero
            weights.
        pareto_smoothed: compute the ESS of the Pareto-smoothed weights instead of the raw ones.

    Returns:
        The ESS, shape ``(...)``, in the dtype and on the device of ``log_weights``.

    Example:
        >>> import torch
        >>> importance_ess(torch.zeros(50))  # equal weights
        tensor(50.)
        >>> importance_ess(torch.tensor([0.0, 0.0, -float("inf"), -float("inf")]))
        tensor(2.)
        >>> importance_ess(torch.tensor([[0.0, 1e4, -1e4], [5.0, 5.0, 5.0]], dtype=torch.float64))
        tensor([1., 3.], dtype=torch.float64)
    """
    min_samples = MIN_PSIS_SAMPLES if pareto_smoothed else 1
    lw = _check_log_weights("log_weights", log_weights, min_samples)
    if pareto_smoothed:
        lw = psis(lw)[0]
    num_samples = lw.shape[-1]
    x = lw.to(_work_dtype(lw))
    x = x - x.detach().max(dim=-1, keepdim=True).values
    log_ess = 2.0 * torch.logsumexp(x, dim=-1) - torch.logsumexp(2.0 * x, dim=-1)
    ess = torch.exp(log_ess).clamp(min=1.0, max=float(num_samples))
    return ess.to(lw.dtype)


def log_evidence(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Importance-sampling estimate of :math:`\log Z = \log \int p(x, z)\,dz` and its std. error.

    The estimate is :math:`\log \hat Z = \log\frac1S\sum_s w_s =
    \operatorname{logsumexp}_s(\log w_s) - \log S` (unbiased for :math:`Z` itself, a lower bound
    on :math:`\log Z` in expectation). Its standard error comes from the delta method,
    :math:`\operatorname{se}(\log \hat Z) \approx \operatorname{se}(\hat Z)/\hat Z`:

    .. math::

        \operatorname{se} = \sqrt{\frac{1}{S(S-1)} \sum_s \Bigl(\frac{w_s}{\bar w} - 1\Bigr)^2},
        \qquad \frac{w_s}{\bar w} - 1 = \operatorname{expm1}(\log w_s - \log \bar w),

    computed from the log weights only (no overflow or underflow for log weights of any size,
    e.g. around :math:`\pm 10^4`). The standard error assumes finite-variance weights, i.e.
    :math:`\hat k < 0.5` (see :func:`psis`); for heavier tails it is itself unreliable and
    typically too small. Differentiable with respect to ``log_weights``.

    Args:
        log_weights: log importance weights, shape ``(..., S)`` with ``S >= 2``; ``-inf``
            entries are zero weights.

    Returns:
        ``(estimate, standard_error)``, each of shape ``(...)``, in the dtype and on the device
        of ``log_weights``.

    Example:
        >>> import torch
        >>> est, se = log_evidence(torch.full((10,), 1e4, dtype=torch.float64))
        >>> est, se
        (tensor(10000., dtype=torch.float64), tensor(0., dtype=torch.float64))
        >>> est, se = log_evidence(torch.log(torch.tensor([1.0, 3.0])))
        >>> round(float(est), 4), round(float(se), 4)  # log 2, sqrt((0.5**2 + 0.5**2) / 2)
        (0.6931, 0.5)
    """
    lw = _check_log_weights("log_weights", log_weights, 2)
    num_samples = lw.shape[-1]
    x = lw.to(_work_dtype(lw))
    log_mean = torch.logsumexp(x, dim=-1) - math.log(num_samples)
    rel = torch.expm1(x - log_mean.unsqueeze(-1))  # w_s / mean(w) - 1, in [-1, S - 1]
    se = torch.sqrt((rel * rel).sum(-1) / (num_samples * (num_samples - 1)))
    return log_mean.to(lw.dtype), se.to(lw.dtype)


# ----------------------------------------------------------------------------------------------
# one-shot report
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportanceDiagnostics:
    r"""All importance-sampling diagnostics of one set of :math:`S` log weights.

    Attributes:
        khat: Pareto :math:`\hat k` of the weights (:func:`psis`).
        ess: effective sample size of the raw weights, in :math:`[1, S]` (:func:`importance_ess`).
        log_evidence: :math:`\log\frac1S\sum_s w_s` (:func:`log_evidence`).
        log_evidence_se: its delta-method standard error.
        num_samples: the number of draws :math:`S`.
        verdict: ``"good"``, ``"ok"`` or ``"bad"`` from :func:`khat_verdict` with the
            sample-size dependent threshold.

    Example:
        >>> d = ImportanceDiagnostics(0.62, 310.5, -1.25, 0.031, 1000, "ok")
        >>> d.khat_threshold, d.ess_fraction
        (0.666..., 0.3105)
        >>> print(d)
        Importance sampling diagnostics (S = 1000 draws)
          Pareto k-hat : 0.62 (ok; reliable below 0.67 for S = 1000)
          ESS          : 310.5 (31.1% of S)
          log evidence : -1.250 +/- 0.031
    """

    khat: float
    ess: float
    log_evidence: float
    log_evidence_se: float
    num_samples: int
    verdict: str

    @property
    def khat_threshold(self) -> float:
        r""":math:`\min(1 - 1/\log_{10} S,\ 0.7)`, see :func:`khat_threshold`."""
        return khat_threshold(self.num_samples)

    @property
    def ess_fraction(self) -> float:
        """ESS as a fraction of the number of draws."""
        return self.ess / self.num_samples

    def __str__(self) -> str:
        return "\n".join(
            [
                f"Importance sampling diagnostics (S = {self.num_samples} draws)",
                f"  Pareto k-hat : {self.khat:.2f} ({self.verdict}; reliable below "
                f"{self.khat_threshold:.2f} for S = {self.num_samples})",
                f"  ESS          : {self.ess:.1f} ({100 * self.ess_fraction:.1f}% of S)",
                f"  log evidence : {self.log_evidence:.3f} +/- {self.log_evidence_se:.3f}",
            ]
        )


def importance_diagnostics(log_weights: torch.Tensor) -> ImportanceDiagnostics:
    r"""Compute :math:`\hat k`, ESS, :math:`\log\hat Z` with its standard error, and the verdict.

    A convenience wrapper around :func:`psis`, :func:`importance_ess` (raw weights),
    :func:`log_evidence` and :func:`khat_verdict` (with the sample-size dependent threshold) for
    a single set of draws.

    Args:
        log_weights: log importance weights of shape ``(S,)``, ``S >= 21``; ``-inf`` entries are
            zero weights.

    Returns:
        An :class:`ImportanceDiagnostics` holding plain Python numbers.

    Example:
        >>> import torch
        >>> d = importance_diagnostics(torch.zeros(400))  # q = p: all weights equal
        >>> d.khat, d.ess, d.log_evidence, d.log_evidence_se, d.verdict
        (-inf, 400.0, 0.0, 0.0, 'good')
    """
    if isinstance(log_weights, torch.Tensor) and log_weights.dim() != 1:
        raise ValueError(
            "log_weights: expected a 1-D tensor of shape (S,) (use psis, importance_ess and "
            f"log_evidence for batches), got shape {tuple(log_weights.shape)}"
        )
    lw = _check_log_weights("log_weights", log_weights, MIN_PSIS_SAMPLES)
    num_samples = lw.shape[-1]
    khat = float(psis(lw)[1])
    estimate, se = log_evidence(lw.detach())
    return ImportanceDiagnostics(
        khat=khat,
        ess=float(importance_ess(lw.detach())),
        log_evidence=float(estimate),
        log_evidence_se=float(se),
        num_samples=num_samples,
        verdict=khat_verdict(khat, num_samples),
    )
