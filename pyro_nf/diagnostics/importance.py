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
* :func:`to_inference_data` — an ArviZ ``InferenceData`` with posterior samples of every latent
  site and the log importance weights, for ``az.summary`` and ``az.plot_*``.

References:
    Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational Inference*,
    ICML 2018.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .draws import check_weight_arguments, max_plate_nesting_of, trace_pair, weighted_draws
from .psis import MIN_PSIS_SAMPLES, ImportanceDiagnostics, importance_diagnostics, psis
from .psis import log_evidence as _log_evidence_from_weights

__all__ = [
    "log_importance_weights",
    "psis_khat",
    "log_evidence",
    "diagnose_importance",
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
) -> torch.Tensor:
    r"""``log p(x, z_s) - log q(z_s)`` for ``num_samples`` draws ``z_s ~ guide``; shape ``(S,)``.

    Runs vectorized over samples (one plate) when the model allows it, else one trace per sample
    (``vectorize=False`` forces that).

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


def psis_khat(
    model: Callable, guide: Callable, *args: Any, num_samples: int = 1000, **kwargs: Any
) -> float:
    r"""The Pareto-smoothed importance sampling :math:`\hat k` of the guide as a proposal for the
    posterior (smaller is better; :math:`\hat k < 0.7` means usable). ``kwargs`` as for
    :func:`log_importance_weights`.

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
    check_weight_arguments(model, guide, num_samples, MIN_PSIS_SAMPLES, _PSIS_WHY, **kwargs)
    lw = log_importance_weights(model, guide, *args, num_samples=num_samples, **kwargs)
    return float(psis(lw)[1])


def log_evidence(
    model: Callable, guide: Callable, *args: Any, num_samples: int = 1000, **kwargs: Any
) -> tuple[float, float]:
    r"""Importance-weighted estimate of :math:`\log p(x)` and its standard error.

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
    check_weight_arguments(model, guide, num_samples, 2, "the standard error needs 2", **kwargs)
    lw = log_importance_weights(model, guide, *args, num_samples=num_samples, **kwargs)
    est, se = _log_evidence_from_weights(lw)
    return float(est), float(se)


def diagnose_importance(
    model: Callable, guide: Callable, *args: Any, num_samples: int = 1000, **kwargs: Any
) -> ImportanceDiagnostics:
    """k̂, its verdict, importance-sampling ESS and the log-evidence estimate in one object."""
    check_weight_arguments(model, guide, num_samples, MIN_PSIS_SAMPLES, _PSIS_WHY, **kwargs)
    lw = log_importance_weights(model, guide, *args, num_samples=num_samples, **kwargs)
    return importance_diagnostics(lw)


@torch.no_grad()
def to_inference_data(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    model_kwargs: dict[str, Any] | None = None,
):
    """Posterior samples of every latent site, with their log importance weights, as an ArviZ
    ``InferenceData`` (one chain of ``num_samples`` draws; ``sample_stats.log_importance_weight``).

    Works with ArviZ 0.x (``InferenceData``) and 1.x (``DataTree``).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> idata = to_inference_data(model, guide, num_samples=50)
        >>> tuple(idata.posterior["mu"].shape)
        (1, 50)
    """
    import arviz as az

    check_weight_arguments(model, guide, num_samples, model_kwargs=model_kwargs)
    log_w, draws = weighted_draws(model, guide, args, dict(model_kwargs or {}), num_samples)
    post = {k: v.detach().cpu().numpy()[None] for k, v in draws.items()}
    return _arviz_data(az, post, {"log_importance_weight": log_w.double().cpu().numpy()[None]})


def _arviz_data(az: Any, posterior: dict[str, np.ndarray], sample_stats: dict[str, np.ndarray]):
    """An ArviZ ``InferenceData`` (0.x) or ``DataTree`` (1.x) of the two groups (``az``: arviz)."""
    if int(az.__version__.split(".")[0]) >= 1:  # pragma: no cover - arviz 1.x on Python >= 3.12
        return az.from_dict({"posterior": posterior, "sample_stats": sample_stats})
    return az.from_dict(posterior=posterior, sample_stats=sample_stats)
