r"""Is the fitted guide any good? Importance weights of a model/guide pair, and what they tell.

For :math:`z_s \sim q`, the log importance weights are
:math:`\log w_s = \log p(x, z_s) - \log q(z_s)`. From them:

* :func:`psis_khat` — the Pareto :math:`\hat k` of the weights (Yao et al. 2018; Vehtari et al.
  2024). :math:`\hat k < 0.5`: :math:`q` is close to the posterior and importance sampling
  converges quickly; :math:`0.5 \le \hat k < 0.7`: usable, more slowly; :math:`\hat k \ge 0.7`:
  :math:`q` misses mass of the posterior (too narrow tails, a missed mode, a funnel's neck) and
  neither the weights nor the guide's own summaries should be trusted. See
  :mod:`pyro_nf.psis` for the exact rule.
* :func:`log_evidence` — :math:`\log \frac1S \sum_s w_s`, an estimate of :math:`\log p(x)` that is
  a lower bound in expectation, with its delta-method standard error.
* :func:`to_inference_data` — an ArviZ ``InferenceData`` of guide draws of every latent site
  (or of PSIS-resampled draws) with the pointwise log-likelihood, the observed data, the log
  importance weights and :math:`\hat k`, for ``az.summary``, ``az.loo`` and ``az.plot_*``.

Every function here runs the user's model as ``model(*args, **model_kwargs)``; other unknown
keywords are refused with a ``TypeError`` naming them.

References:
    Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational Inference*,
    ICML 2018.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyro
import torch

from ..utils.validation import check_seed
from .draws import (
    check_keywords,
    check_weight_arguments,
    max_plate_nesting_of,
    trace_pair,
    weighted_draws,
)
from .inference_data import (
    add_groups,
    inference_data_from_samples,
    predictive_samples,
    prior_samples,
)
from .psis import (
    MIN_PSIS_SAMPLES,
    ImportanceDiagnostics,
    importance_diagnostics,
    importance_ess,
    khat_verdict,
    psis,
)
from .psis import log_evidence as _log_evidence_from_weights

__all__ = [
    "diagnose_importance",
    "log_evidence",
    "log_importance_weights",
    "psis_khat",
    "to_inference_data",
]


#: Why the PSIS diagnostics need ``num_samples >= MIN_PSIS_SAMPLES`` (for the error message).
_PSIS_WHY = "PSIS k-hat needs at least 21 draws"


def guess_max_plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    """The deepest plate nesting of one traced run of ``model`` and ``guide`` (0 if none)."""
    return max_plate_nesting_of(*trace_pair(model, guide, args, kwargs))


@torch.no_grad()
def log_importance_weights(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    max_plate_nesting: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    vectorize: bool = True,
    **unknown: Any,
) -> torch.Tensor:
    r"""``log p(x, z_s) - log q(z_s)`` for ``num_samples`` draws ``z_s ~ guide``; shape ``(S,)``.

    Runs vectorized over samples (one plate) when the model allows it, else one trace per sample
    (``vectorize=False`` forces that). ``model(*args, **model_kwargs)``; any other keyword is
    refused (``TypeError`` naming it).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> lw = log_importance_weights(model, guide, num_samples=100)
        >>> lw.shape, float(lw.abs().max())
        (torch.Size([100]), 0.0)
    """
    check_weight_arguments(
        model,
        guide,
        num_samples,
        max_plate_nesting=max_plate_nesting,
        model_kwargs=model_kwargs,
        vectorize=vectorize,
        **unknown,
    )
    kwargs = dict(model_kwargs or {})
    log_w, _ = weighted_draws(
        model,
        guide,
        args,
        kwargs,
        num_samples,
        max_plate_nesting=max_plate_nesting,
        vectorize=vectorize,
    )
    return log_w.detach()


def _weights(
    model: Callable,
    guide: Callable,
    args: tuple,
    num_samples: int,
    minimum: tuple[int, str],
    options: dict[str, Any],
) -> torch.Tensor:
    """Check the arguments (``minimum``: the least ``num_samples`` and why) and return
    :func:`log_importance_weights`."""
    check_weight_arguments(model, guide, num_samples, *minimum, **options)
    return log_importance_weights(model, guide, *args, num_samples=num_samples, **options)


def psis_khat(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    model_kwargs: dict[str, Any] | None = None,
    max_plate_nesting: int | None = None,
    vectorize: bool = True,
    **unknown: Any,
) -> float:
    r"""The Pareto-smoothed importance sampling :math:`\hat k` of the guide as a proposal for the
    posterior (smaller is better; :math:`\hat k < 0.7` means usable) from ``num_samples``
    draws (at least 21). Arguments as for :func:`log_importance_weights`.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("z", dist.StudentT(2.0, 0.0, 1.0))
        >>> def narrow_guide():
        ...     pyro.sample("z", dist.Normal(0.0, 0.3))
        >>> pyro.set_rng_seed(0)
        >>> psis_khat(model, narrow_guide, num_samples=2000) > 0.7   # too-light tails
        True
    """
    options = dict(model_kwargs=model_kwargs, max_plate_nesting=max_plate_nesting)
    options.update(vectorize=vectorize, **unknown)
    lw = _weights(model, guide, args, num_samples, (MIN_PSIS_SAMPLES, _PSIS_WHY), options)
    return float(psis(lw)[1])


def log_evidence(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    model_kwargs: dict[str, Any] | None = None,
    max_plate_nesting: int | None = None,
    vectorize: bool = True,
    **unknown: Any,
) -> tuple[float, float]:
    r"""Importance-weighted estimate of :math:`\log p(x)` and its standard error. Arguments as
    for :func:`log_importance_weights` (``num_samples >= 2``).

    Example:
        >>> import math, pyro, pyro.distributions as dist
        >>> def model():   # p(x=1) = N(1; 0, 2) after integrating z ~ N(0, 1)
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))
        >>> def guide():   # the exact posterior N(1/2, 1/2)
        ...     pyro.sample("z", dist.Normal(0.5, 0.5**0.5))
        >>> est, se = log_evidence(model, guide, num_samples=100)
        >>> abs(est - dist.Normal(0.0, 2**0.5).log_prob(torch.tensor(1.0)).item()) < 1e-5, se < 1e-5
        (True, True)
    """
    options = dict(model_kwargs=model_kwargs, max_plate_nesting=max_plate_nesting)
    options.update(vectorize=vectorize, **unknown)
    lw = _weights(model, guide, args, num_samples, (2, "the standard error needs 2"), options)
    est, se = _log_evidence_from_weights(lw)
    return float(est), float(se)


def diagnose_importance(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    model_kwargs: dict[str, Any] | None = None,
    max_plate_nesting: int | None = None,
    vectorize: bool = True,
    **unknown: Any,
) -> ImportanceDiagnostics:
    """k̂, its verdict, importance-sampling ESS and the log-evidence estimate in one object.
    Arguments as for :func:`log_importance_weights` (``num_samples >= 21``).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> d = diagnose_importance(model, model, num_samples=100)  # the exact posterior
        >>> d.verdict, d.ess
        ('good', 100.0)
    """
    options = dict(model_kwargs=model_kwargs, max_plate_nesting=max_plate_nesting)
    options.update(vectorize=vectorize, **unknown)
    lw = _weights(model, guide, args, num_samples, (MIN_PSIS_SAMPLES, _PSIS_WHY), options)
    return importance_diagnostics(lw)


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run the body seeded by ``seed`` (Pyro's global streams restored afterwards), or as is
    if ``seed`` is ``None``."""
    if seed is None:
        yield
        return
    state = pyro.util.get_rng_state()
    pyro.set_rng_seed(seed)
    try:
        yield
    finally:
        pyro.util.set_rng_state(state)


def _check_flags(seed: Any, **flags: Any) -> None:
    """Refuse a non-bool flag or a seed that is not ``None`` or an integer ``>= 0``."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected True or False, got {value!r}")
    check_seed(seed, allow_none=True)


def _weighted_posterior(
    log_w: torch.Tensor, draws: dict[str, torch.Tensor], resample: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """``(samples (1, S, ...), sample_stats (1, S), attrs)`` of the guide draws, or of ``S``
    draws resampled with probabilities the PSIS-smoothed weights (with replacement)."""
    smoothed, khat = psis(log_w)
    num_samples = log_w.shape[0]
    attrs = {
        "draws": "psis_resampled" if resample else "guide",
        "num_samples": num_samples,
        "psis_khat": float(khat),
        "psis_khat_verdict": khat_verdict(float(khat), num_samples),
        "importance_ess": float(importance_ess(log_w)),
    }
    stats = {"log_importance_weight": log_w, "psis_log_weight": smoothed}
    if resample:
        index = torch.multinomial(smoothed.double().exp(), num_samples, replacement=True)
        draws = {k: v[index] for k, v in draws.items()}
        stats = {**{k: v[index] for k, v in stats.items()}, "resample_index": index}
    samples = {k: v[None] for k, v in draws.items()}
    return samples, {k: v[None] for k, v in stats.items()}, attrs


#: the keywords :func:`to_inference_data` takes (any other is refused, naming it)
TO_INFERENCE_DATA_KEYWORDS = (
    "num_samples", "model_kwargs", "coords", "dims", "posterior_predictive", "prior", "resample",
    "seed",
)  # fmt: skip


@torch.no_grad()
def to_inference_data(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    model_kwargs: dict[str, Any] | None = None,
    coords: dict | None = None,
    dims: dict | None = None,
    posterior_predictive: bool = False,
    prior: bool = False,
    resample: bool = False,
    seed: int | None = None,
    **unknown: Any,
) -> Any:
    r"""``num_samples`` draws of ``guide`` (one chain) as an ArviZ ``InferenceData``.

    Groups: ``posterior`` (every latent site, dims named after the model's plates),
    ``log_likelihood`` (pointwise, for ``az.loo``/``az.waic``; one vectorized model run),
    ``observed_data``, ``sample_stats`` (``log_importance_weight``
    :math:`\log p(x, z_s) - \log q(z_s)`, ``psis_log_weight`` the normalized Pareto-smoothed
    log weights, and the scalar ``psis_khat``); with ``posterior_predictive``, draws of the
    observed sites given each posterior draw; with ``prior``, ``prior`` and ``prior_predictive``
    groups of ``num_samples`` draws. ``attrs``: ``draws`` (``"guide"`` or
    ``"psis_resampled"``), ``psis_khat``, its verdict and the importance ESS.

    Args:
        model, guide, args, model_kwargs: as for :func:`log_importance_weights`.
        num_samples: draws (at least 21, for :math:`\hat k`).
        coords, dims: ArviZ labels (override the plate names).
        posterior_predictive, prior: add those groups.
        resample: replace the guide's draws by ``num_samples`` draws resampled (with
            replacement) with the PSIS weights, i.e. approximate posterior draws — the choice
            when the trust report says the guide's own draws should not be used. The resampled
            draws have repeats: their real information is the importance ESS (in ``attrs``),
            not what ``az.ess`` reports; and :math:`\hat k > 0.7` makes them unreliable too.
        seed: seed the draws (the global random state is restored afterwards).

    Works with ArviZ 0.x (``InferenceData``) and 1.x (``DataTree``).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> def guide(y):
        ...     pyro.sample("mu", dist.Normal(0.5, 0.6))
        >>> idata = to_inference_data(model, guide, torch.tensor([0.3, 1.2]), num_samples=50)
        >>> tuple(idata.posterior["mu"].shape), idata.log_likelihood["y"].dims
        ((1, 50), ('chain', 'draw', 'data'))
        >>> idata.attrs["draws"], idata.attrs["psis_khat"] < 0.7
        ('guide', True)
    """
    import xarray as xr

    check_keywords("to_inference_data", sorted(unknown), TO_INFERENCE_DATA_KEYWORDS)
    check_weight_arguments(
        model, guide, num_samples, MIN_PSIS_SAMPLES, _PSIS_WHY, model_kwargs=model_kwargs
    )
    _check_flags(seed, posterior_predictive=posterior_predictive, prior=prior, resample=resample)
    kwargs = dict(model_kwargs or {})
    with _seeded(seed):
        log_w, draws = weighted_draws(model, guide, args, kwargs, num_samples)
        samples, stats, attrs = _weighted_posterior(log_w, draws, resample)
        idata = inference_data_from_samples(
            model, samples, *args, model_kwargs=kwargs, sample_stats=stats,
            coords=coords, dims=dims, attrs=attrs,
        )  # fmt: skip
        groups = {}
        if posterior_predictive:
            groups["posterior_predictive"] = predictive_samples(
                model, samples, *args, model_kwargs=kwargs
            )
        if prior:
            groups["prior"] = prior_samples(model, num_samples, *args, model_kwargs=kwargs)
            groups["prior_predictive"] = predictive_samples(
                model, groups["prior"], *args, model_kwargs=kwargs
            )
    idata = add_groups(idata, groups, coords, dims) if any(groups.values()) else idata
    idata.sample_stats["psis_khat"] = xr.DataArray(np.asarray(attrs["psis_khat"]))
    return idata
