r"""Models, reference posteriors and the guide-comparison harness shared by the flow-guide examples
(``eight_schools.py``, ``funnel.py``, ``logistic_regression.py``) and ``benchmarks/guides.py``.

**Models.**

* *Eight schools* (Rubin 1981; Gelman et al., BDA3 §5.5): :math:`y_j \sim \mathcal N(\theta_j,
  \sigma_j)` with known :math:`\sigma_j`, :math:`\mu \sim \mathcal N(0, 5)`,
  :math:`\tau \sim \mathrm{HalfCauchy}(5)`. *Centered*: :math:`\theta_j \sim \mathcal N(\mu,
  \tau)` (a funnel between :math:`\log\tau` and :math:`\theta`); *non-centered*:
  :math:`\tilde\theta_j \sim \mathcal N(0, 1)`, :math:`\theta_j = \mu + \tau\tilde\theta_j`.
  Both have the same posterior over :math:`(\mu, \tau, \theta)`; these 10 coordinates are
  reported.
* *Neal's funnel*, 10-D (:class:`pyro_nf.targets.NealFunnel`): :math:`v \sim \mathcal N(0, 3^2)`,
  :math:`x_i \mid v \sim \mathcal N(0, e^{v})`. The "posterior" is the funnel itself, so the
  reference moments are exact: :math:`\mathbb E v = \mathbb E x_i = 0`, :math:`\mathrm{sd}(v) = 3`,
  :math:`\mathrm{sd}(x_i) = \sqrt{\mathbb E e^{v}} = e^{9/4}`, and :math:`\log Z = 0`, so
  :math:`-\mathrm{ELBO}` is the KL divergence :math:`\mathrm{KL}(q \,\|\, p)`.
* *Bayesian logistic regression* on UCI German credit (1000 × 24 features standardized, plus an
  intercept: :math:`D = 25`), :math:`y_n \sim \mathrm{Bernoulli}(\mathrm{sigmoid}(x_n^\top
  \beta))` with :math:`\beta_d \sim \mathcal N(0, 1)`. The unit-scale prior on standardized
  features is the convention of the Inference Gym (``GermanCreditNumericLogisticRegression``)
  and of most VI/HMC papers using this data set; ``prior_scale=10`` gives the "weakly
  informative" variant (a sharper, likelihood-dominated posterior). The likelihood is one
  ``to_event(1)`` Bernoulli site (no plate), which vectorizes cleanly over particles.

**References.** Eight schools and German credit have no closed-form posterior: a long run of
Pyro's NUTS (several chains, split-:math:`\hat R \le 1.01` on every reported coordinate
required) gives posterior means and standard deviations, cached as small JSON files in
``benchmarks/reference/`` with the settings that produced them, so that examples and CI need
not rerun NUTS.

**Metrics** (:func:`evaluate`), from :math:`S` draws :math:`z_s \sim q` (one vectorized pass):

* ELBO :math:`= \frac1S \sum_s \log w_s`, :math:`\log w_s = \log p(x, z_s) - \log q(z_s)`, with
  its standard error :math:`\mathrm{sd}(\log w) / \sqrt S`;
* PSIS :math:`\hat k` of the same weights (what :func:`pyro_nf.psis_khat` computes);
* ``mean_err`` :math:`= \max_i |\hat m_i - m_i| / s_i` and ``log_sd_err``
  :math:`= \max_i |\log(\hat s_i / s_i)|` over the reported coordinates, with
  :math:`\hat m, \hat s` the guide's own (unweighted) moments and :math:`m, s` the reference's.

References:
    Rubin, *Estimation in Parallel Randomized Experiments*, J. Educational Statistics 6(4), 1981.
    Neal, *Slice Sampling*, Annals of Statistics 31(3), 2003.
    Hoffman & Gelman, *The No-U-Turn Sampler*, JMLR 15, 2014.
    Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational Inference*,
    ICML 2018.
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, *Improved Variational Inference
    with Inverse Autoregressive Flow*, NeurIPS 2016.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)
from pyro.infer.importance import vectorized_importance_weights

import pyro_nf
from pyro_nf.diagnostics.inference_data import flat_convergence, flat_draws
from pyro_nf.diagnostics.psis import psis
from pyro_nf.diagnostics.reference import run_nuts

__all__ = [
    "EIGHT_SCHOOLS_SIGMA",
    "EIGHT_SCHOOLS_Y",
    "GUIDES",
    "Problem",
    "Reference",
    "REFERENCE_DIR",
    "compare_guides",
    "eight_schools_centered",
    "eight_schools_noncentered",
    "eight_schools_problem",
    "evaluate",
    "funnel_problem",
    "german_credit_problem",
    "logistic_regression",
    "make_guide",
    "nuts_reference",
]

#: Where cached NUTS reference posteriors live (committed to the repository).
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "reference"

# -- models -----------------------------------------------------------------------------------

#: Estimated coaching effects and their standard errors (Rubin 1981; BDA3 Table 5.2).
EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


def eight_schools_centered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    r"""Centered eight schools: :math:`\theta_j \sim \mathcal N(\mu, \tau)`; ``y, sigma: (8,)``.

    Example:
        >>> y, s = torch.tensor(EIGHT_SCHOOLS_Y), torch.tensor(EIGHT_SCHOOLS_SIGMA)
        >>> tr = pyro.poutine.trace(eight_schools_centered).get_trace(y, s)
        >>> [n for n, site in tr.nodes.items() if site["type"] == "sample"]
        ['mu', 'tau', 'schools', 'theta', 'obs']
    """
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("schools", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    r"""Non-centered eight schools: :math:`\theta_j = \mu + \tau\tilde\theta_j`,
    :math:`\tilde\theta_j \sim \mathcal N(0, 1)` (``theta`` is a deterministic site).

    Example:
        >>> y, s = torch.tensor(EIGHT_SCHOOLS_Y), torch.tensor(EIGHT_SCHOOLS_SIGMA)
        >>> tr = pyro.poutine.trace(eight_schools_noncentered).get_trace(y, s)
        >>> tr.nodes["theta"]["value"].shape
        torch.Size([8])
    """
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("schools", y.shape[-1]):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(y.new_tensor(0.0), 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_tilde)
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def logistic_regression(x: torch.Tensor, y: torch.Tensor, prior_scale: float = 1.0) -> None:
    r"""Bayesian logistic regression, :math:`\beta \sim \mathcal N(0, s^2 I)`,
    :math:`y \sim \mathrm{Bernoulli}(\mathrm{logits} = X\beta)`; ``x: (N, D)``, ``y: (N,)``.

    Example:
        >>> x, y = torch.randn(20, 3), torch.randint(0, 2, (20,)).float()
        >>> tr = pyro.poutine.trace(logistic_regression).get_trace(x, y)
        >>> tr.nodes["beta"]["value"].shape, tr.nodes["y"]["fn"].event_shape
        (torch.Size([3]), torch.Size([20]))
    """
    prior = dist.Normal(x.new_zeros(x.shape[-1]), prior_scale).to_event(1)
    beta = pyro.sample("beta", prior)
    pyro.sample("y", dist.Bernoulli(logits=beta @ x.T).to_event(1), obs=y)


# -- problems and references ------------------------------------------------------------------


@dataclass
class Reference:
    """Posterior means and standard deviations of the reported coordinates.

    Attributes:
        names: coordinate names (``"theta[0]"`` ...), length ``P``.
        mean, sd: lists of length ``P``.
        source: ``"exact"`` or ``"nuts"``.
        settings: how it was produced (chains, draws, seed, versions, R-hat, ESS, time).

    Example:
        >>> ref = Reference.load(reference_path("eight_schools"))
        >>> ref.source, ref.names[:2], ref.settings["max_rhat"] <= 1.01
        ('nuts', ['mu', 'tau'], True)
    """

    names: list[str]
    mean: list[float]
    sd: list[float]
    source: str
    settings: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclass
class Problem:
    """A model with its arguments, how to read the reported coordinates, and its reference.

    Attributes:
        name: short name (used in tables and file names).
        model: the Pyro model.
        args: the model's positional arguments.
        max_plate_nesting: for vectorized particles.
        coords: ``(latent samples dict, S) -> (S, P)`` tensor of the reported coordinates;
            the dict holds every latent site's values with ``S`` leading draws.
        names: the ``P`` coordinate names.
        reference: posterior moments, or ``None`` if unavailable.
        log_z: exact log evidence if known (the funnel: 0).
        latent_sites: the latent sample sites ``coords`` reads.

    Example:
        >>> p = eight_schools_problem(centered=True)
        >>> p.coords({"mu": torch.zeros(2), "tau": torch.ones(2), "theta": torch.ones(2, 8)}, 2).shape
        torch.Size([2, 10])
    """

    name: str
    model: Callable[..., Any]
    args: tuple
    max_plate_nesting: int
    coords: Callable[[dict[str, torch.Tensor], int], torch.Tensor]
    names: list[str]
    reference: Reference | None = None
    log_z: float | None = None
    latent_sites: tuple[str, ...] = ()


def _flat(samples: dict[str, torch.Tensor], sites: Sequence[str], n: int) -> torch.Tensor:
    return torch.cat([samples[s].reshape(n, -1) for s in sites], dim=-1)


def funnel_problem(dim: int = 10) -> Problem:
    """Neal's funnel in ``dim`` dimensions with its exact moments (``v`` first, then ``x``).

    Example:
        >>> p = funnel_problem(3)
        >>> p.names, [round(s, 3) for s in p.reference.sd]
        (['v', 'x[0]', 'x[1]'], [3.0, 9.488, 9.488])
    """
    target = pyro_nf.targets.NealFunnel(dim)
    model = pyro_nf.targets.as_pyro_model(target, name="z")
    sd_x = math.exp(9.0 / 4.0)  # sd(x_i) = sqrt(E e^v) = sqrt(exp(9/2))
    names = ["v"] + [f"x[{i}]" for i in range(dim - 1)]
    ref = Reference(
        names=names,
        mean=[0.0] * dim,
        sd=[3.0] + [sd_x] * (dim - 1),
        source="exact",
        settings={"note": "analytic: v ~ N(0, 3^2), sd(x_i) = exp(9/4)"},
    )
    return Problem(
        name=f"funnel{dim}",
        model=model,
        args=(),
        max_plate_nesting=0,
        coords=lambda s, n: _flat(s, ["z"], n),
        names=names,
        reference=ref,
        log_z=0.0,
        latent_sites=("z",),
    )


def _eight_schools_coords(samples: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    mu, tau = samples["mu"].reshape(n, 1), samples["tau"].reshape(n, 1)
    if "theta_tilde" in samples:
        theta = mu + tau * samples["theta_tilde"].reshape(n, -1)
    else:
        theta = samples["theta"].reshape(n, -1)
    return torch.cat([mu, tau, theta], dim=-1)


EIGHT_SCHOOLS_NAMES = ["mu", "tau"] + [f"theta[{j}]" for j in range(8)]


def eight_schools_problem(
    centered: bool = True, reference: Reference | None = None, dtype: torch.dtype = torch.float32
) -> Problem:
    """Eight schools (centered or not), reporting ``mu, tau, theta[0..7]``.

    Example:
        >>> p = eight_schools_problem(centered=False)
        >>> p.name, p.latent_sites, len(p.names)
        ('eight_schools_noncentered', ('mu', 'tau', 'theta_tilde'), 10)
    """
    y = torch.tensor(EIGHT_SCHOOLS_Y, dtype=dtype)
    sigma = torch.tensor(EIGHT_SCHOOLS_SIGMA, dtype=dtype)
    return Problem(
        name="eight_schools_" + ("centered" if centered else "noncentered"),
        model=eight_schools_centered if centered else eight_schools_noncentered,
        args=(y, sigma),
        max_plate_nesting=1,
        coords=_eight_schools_coords,
        names=list(EIGHT_SCHOOLS_NAMES),
        reference=reference,
        latent_sites=("mu", "tau", "theta" if centered else "theta_tilde"),
    )


def german_credit_problem(
    prior_scale: float = 1.0, reference: Reference | None = None, dtype: torch.dtype = torch.float32
) -> Problem:
    """Logistic regression on German credit (standardized, intercept last: ``D = 25``).

    Raises ``FileNotFoundError`` if the data are absent from
    :func:`pyro_nf.datasets.default_data_dir`.

    Example:
        >>> p = german_credit_problem()  # doctest: +SKIP
        >>> p.names[-1], p.args[0].shape  # doctest: +SKIP
        ('beta[intercept]', torch.Size([1000, 25]))
    """
    data = pyro_nf.datasets.load_german_credit(standardize=True, intercept=True, dtype=dtype)
    model = partial(logistic_regression, prior_scale=float(prior_scale))
    return Problem(
        name="german_credit" if prior_scale == 1.0 else f"german_credit_prior{prior_scale:g}",
        model=model,
        args=(data.x, data.y),
        max_plate_nesting=0,
        coords=lambda s, n: _flat(s, ["beta"], n),
        names=[f"beta[{name}]" for name in data.feature_names],
        reference=reference,
        latent_sites=("beta",),
    )


def reference_path(name: str) -> Path:
    """The cached reference file of problem ``name`` (``REFERENCE_DIR / f"{name}.json"``)."""
    return REFERENCE_DIR / f"{name}.json"


def _reported(
    coords: Callable[[dict[str, torch.Tensor], int], torch.Tensor],
) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``run_nuts``'s ``derived``: a problem's reported coordinates as the posterior variable
    ``reported`` of shape ``(chains, draws, P)``."""

    def derived(samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        chains, draws = next(iter(samples.values())).shape[:2]
        flat = {k: v.reshape(chains * draws, *v.shape[2:]) for k, v in samples.items()}
        return {"reported": coords(flat, chains * draws).double().reshape(chains, draws, -1)}

    return derived


def nuts_reference(
    model: Callable[..., Any],
    args: tuple,
    coords: Callable[[dict[str, torch.Tensor], int], torch.Tensor],
    names: Sequence[str],
    *,
    num_chains: int = 4,
    warmup: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    target_accept_prob: float = 0.8,
    max_rhat: float = 1.01,
    progress: bool = True,
) -> Reference:
    r"""Posterior moments from ``num_chains`` independent runs of Pyro's NUTS (float64), by
    :func:`pyro_nf.diagnostics.reference.run_nuts`.

    Chains run one after another (cheap on a shared machine), each seeded ``seed + c`` and
    initialised by ``init_to_sample`` from the prior. The rank-normalized split-:math:`\hat R`
    and the bulk/tail effective sample sizes (``az.rhat``, ``az.ess``) of every reported
    coordinate go into ``settings``; a ``RuntimeError`` is raised if any :math:`\hat R`
    exceeds ``max_rhat`` (the reference would not be trustworthy).

    Example:
        >>> p = eight_schools_problem(centered=False)
        >>> ref = nuts_reference(p.model, p.args, p.coords, p.names, warmup=50,
        ...                      num_samples=50, max_rhat=2.0, progress=False)  # doctest: +SKIP
        >>> len(ref.mean), ref.settings["num_chains"]  # doctest: +SKIP
        (10, 4)
    """
    idata = run_nuts(
        model,
        *args,
        derived=_reported(coords),
        num_chains=num_chains,
        warmup=warmup,
        num_samples=num_samples,
        seed=seed,
        target_accept_prob=target_accept_prob,
        progress=progress,
    )
    draws, _ = flat_draws(idata, ["reported"])
    conv = flat_convergence(idata, ["reported"])
    rhat, ess = conv["rhat"], conv["ess_bulk"]
    flat = draws.reshape(-1, draws.shape[-1])
    settings = {
        **dict(idata.attrs),
        "rhat": [float(r) for r in rhat],
        "ess": [float(e) for e in ess],
        "ess_tail": [float(e) for e in conv["ess_tail"]],
        "min_ess": float(ess.min()),
        "mcse_mean_over_sd_max": float((1.0 / ess.sqrt()).max()),
    }
    if not bool((rhat <= max_rhat).all()):
        raise RuntimeError(
            f"NUTS reference: rank-normalized R-hat up to {float(rhat.max()):.4f} > {max_rhat}; "
            "run longer (more warmup/samples) before trusting it"
        )
    return Reference(
        names=list(names),
        mean=[float(m) for m in flat.mean(0)],
        sd=[float(s) for s in flat.std(0)],
        source="nuts",
        settings=settings,
    )


def load_or_compute_reference(
    name: str,
    compute: Callable[[], Reference],
    *,
    recompute: bool = False,
    allow_compute: bool = True,
) -> Reference | None:
    """The cached reference ``benchmarks/reference/{name}.json``; computed (and cached) by
    ``compute()`` if absent or ``recompute``; ``None`` if absent and ``allow_compute`` is false."""
    path = reference_path(name)
    if path.exists() and not recompute:
        return Reference.load(path)
    if not allow_compute and not recompute:
        return None
    print(f"computing the NUTS reference for {name} (cached in {path}) ...", flush=True)
    ref = compute()
    ref.save(path)
    return ref


def eight_schools_reference(recompute: bool = False, allow_compute: bool = True, **nuts_kwargs):
    """NUTS reference for eight schools, sampled on the (well-mixing) non-centered model; the
    moments of ``mu, tau, theta`` are those of both parameterizations."""
    nc = eight_schools_problem(centered=False)
    nuts_kwargs = {"num_chains": 4, "warmup": 1000, "num_samples": 2500, **nuts_kwargs}
    # a high acceptance target keeps the non-centered model free of divergences
    nuts_kwargs.setdefault("target_accept_prob", 0.95)
    return load_or_compute_reference(
        "eight_schools",
        lambda: nuts_reference(nc.model, nc.args, nc.coords, nc.names, **nuts_kwargs),
        recompute=recompute,
        allow_compute=allow_compute,
    )


def german_credit_reference(
    prior_scale: float = 1.0, recompute: bool = False, allow_compute: bool = True, **nuts_kwargs
):
    """NUTS reference for German credit logistic regression (4 chains × 1000 by default)."""
    p = german_credit_problem(prior_scale)
    return load_or_compute_reference(
        p.name,
        lambda: nuts_reference(p.model, p.args, p.coords, p.names, **nuts_kwargs),
        recompute=recompute,
        allow_compute=allow_compute,
    )


# -- guides -------------------------------------------------------------------------------------


def _pyro_planar_guide(model: Callable[..., Any], depth: int = 8) -> AutoNormalizingFlow:
    return AutoNormalizingFlow(model, partial(T.iterated, depth, T.planar))


#: FlowGuide settings that did better than the library defaults on all three example problems
#: (funnel, eight schools, German credit) in our runs: one IAF layer with the affine (not the
#: sigmoid) update, started from ``init_loc_fn`` with unit scale instead of at the Laplace
#: approximation (whose mode lies in the neck of a funnel). Numbers: ``benchmarks/guides.py``.
TUNED_FLOWGUIDE: dict[str, Any] = {
    "flow": "iaf",
    "depth": 1,
    "update": "affine",
    "init": "loc",
    "init_scale": 1.0,
}

#: Guide name -> builder ``model -> guide``. Pyro's guides with their defaults; pyro-nf's
#: FlowGuide with its defaults for each family (IAF depth 2, planar/radial 8, RealNVP 4), and
#: with :data:`TUNED_FLOWGUIDE`.
GUIDES: dict[str, Callable[..., Any]] = {
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoIAFNormal": AutoIAFNormal,
    "AutoNormalizingFlow(planar8)": _pyro_planar_guide,
    "FlowGuide(iaf)": partial(pyro_nf.FlowGuide, flow="iaf"),
    "FlowGuide(planar)": partial(pyro_nf.FlowGuide, flow="planar"),
    "FlowGuide(realnvp)": partial(pyro_nf.FlowGuide, flow="realnvp"),
    "FlowGuide(radial)": partial(pyro_nf.FlowGuide, flow="radial"),
    "FlowGuide(iaf-tuned)": partial(pyro_nf.FlowGuide, **TUNED_FLOWGUIDE),
}

#: The guides an example compares by default (all but radial, which is built for local
#: corrections and did worst of the flows on every problem here).
DEFAULT_GUIDES = tuple(g for g in GUIDES if g != "FlowGuide(radial)")

#: The guides of a ``--quick`` smoke run (one of each kind of code path).
QUICK_GUIDES = ("AutoNormal", "AutoNormalizingFlow(planar8)", "FlowGuide(iaf)", "FlowGuide(planar)")

PYRO_GUIDES = (
    "AutoNormal",
    "AutoMultivariateNormal",
    "AutoIAFNormal",
    "AutoNormalizingFlow(planar8)",
)


def add_flowguide_variant(name: str, kwargs: dict[str, Any]) -> None:
    """Register ``name`` in :data:`GUIDES` as ``FlowGuide(model, **kwargs)`` (for benchmarks of
    non-default settings, e.g. ``{"flow": "iaf", "init_scale": 1.0}``).

    Example:
        >>> add_flowguide_variant("iaf-deep", {"flow": "iaf", "depth": 4})
        >>> make_guide("iaf-deep", funnel_problem(3).model)._depth
        4
    """
    if not name or name in PYRO_GUIDES:
        raise ValueError(f"name: expected a new guide name, got {name!r}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"kwargs: expected a dict of FlowGuide arguments, got {kwargs!r}")
    GUIDES[name] = partial(pyro_nf.FlowGuide, **kwargs)


def make_guide(name: str, model: Callable[..., Any], **flow_kwargs: Any) -> Any:
    """Build guide ``name`` (a key of :data:`GUIDES`) for ``model``; ``flow_kwargs`` go to
    pyro-nf's ``FlowGuide`` variants only (e.g. ``init_scale=1.0``).

    Example:
        >>> type(make_guide("FlowGuide(iaf)", funnel_problem(3).model)).__name__
        'FlowGuide'
    """
    if name not in GUIDES:
        raise ValueError(f"name: expected one of {sorted(GUIDES)}, got {name!r}")
    if name in PYRO_GUIDES:
        return GUIDES[name](model)
    return GUIDES[name](model, **flow_kwargs)


def initialize(problem: Problem, guide: Any) -> None:
    """Create the guide's parameters (one trace), so that modules exist before fitting/timing."""
    guide(*problem.args)


# -- fitting and evaluation ---------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    problem: Problem, guide: Any, num_samples: int = 4000, seed: int = 0, chunk: int = 4000
) -> dict[str, Any]:
    """ELBO ± SE, PSIS k̂ and moment errors of ``guide`` from ``num_samples`` vectorized draws.

    Example:
        >>> p = funnel_problem(3)
        >>> g = make_guide("AutoNormal", p.model)
        >>> r = evaluate(p, g, num_samples=500)
        >>> sorted(k for k in r if not k.startswith("_"))[:4]
        ['elbo', 'elbo_se', 'khat', 'log_sd_err']
    """
    pyro.set_rng_seed(seed)
    lws, coords = [], []
    left = num_samples
    while left > 0:
        n = min(chunk, left)
        lw, model_trace, _ = vectorized_importance_weights(
            problem.model,
            guide,
            *problem.args,
            num_samples=n,
            max_plate_nesting=problem.max_plate_nesting,
        )
        latent = {
            name: site["value"]
            for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and name in problem.latent_sites
        }
        lws.append(lw.reshape(n).double())
        coords.append(problem.coords(latent, n).double())
        left -= n
    lw = torch.cat(lws)
    z = torch.cat(coords)
    finite = torch.isfinite(lw)
    out: dict[str, Any] = {
        "elbo": float(lw[finite].mean()) if finite.any() else float("nan"),
        "elbo_se": float(lw[finite].std() / math.sqrt(int(finite.sum()))),
        "nonfinite_weights": int((~finite).sum()),
    }
    out["khat"] = float(psis(lw)[1]) if bool(finite.all()) else float("inf")
    est, se = pyro_nf.psis.log_evidence(lw)
    out["log_z_is"], out["log_z_is_se"] = float(est), float(se)
    mean, sd = z.mean(0), z.std(0)
    out["_mean"], out["_sd"], out["_z"] = mean.tolist(), sd.tolist(), z.float()
    if problem.reference is not None:
        ref_mean = torch.tensor(problem.reference.mean, dtype=torch.float64)
        ref_sd = torch.tensor(problem.reference.sd, dtype=torch.float64)
        mean_err = (mean - ref_mean).abs() / ref_sd
        sd_err = (sd / ref_sd).log().abs()
        out["mean_err"] = float(mean_err.max())
        out["mean_err_at"] = problem.names[int(mean_err.argmax())]
        out["log_sd_err"] = float(sd_err.max())
        out["log_sd_err_at"] = problem.names[int(sd_err.argmax())]
    return out


def failed_row(err: BaseException) -> dict[str, Any]:
    """The metrics of a guide whose construction, fit or evaluation raised ``err``."""
    nan = float("nan")
    return {
        "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
        "elbo": nan,
        "elbo_se": nan,
        "khat": nan,
        "fit_ms_per_step": nan,
        "warnings": [],
        "_z": None,
    }


def step_fn(problem: Problem, guide: Any, num_particles: int, lr: float) -> Callable[[], float]:
    """One SVI step (negative ELBO, backward, Adam step) of an already fitted ``guide``, for timing.

    The step is the same for every guide: ``Trace_ELBO(num_particles, vectorized)`` through
    ``differentiable_loss`` and ``torch.optim.Adam`` over the guide's parameters (collected after
    one call, so that Pyro's ``PyroModule`` guides have synced them with the param store).
    """
    loss = pyro_nf.make_elbo(
        "trace", num_particles=num_particles, max_plate_nesting=problem.max_plate_nesting
    )
    loss.differentiable_loss(problem.model, guide, *problem.args)
    opt = torch.optim.Adam([p for p in guide.parameters() if p.requires_grad], lr=lr)

    def step() -> float:
        opt.zero_grad()
        value = loss.differentiable_loss(problem.model, guide, *problem.args)
        value.backward()
        opt.step()
        return float(value)

    return step


def fit_one(
    problem: Problem,
    name: str,
    *,
    steps: int,
    lr: float,
    num_particles: int,
    seed: int,
    lr_schedule: str | None = "cosine",
    progress: bool = False,
    flow_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, pyro_nf.History, list[str]]:
    """Build guide ``name`` and fit it with :func:`pyro_nf.fit` (same loop and budget for all:
    exactly ``steps`` steps, early stopping off).

    Returns the guide, the history and the distinct warning messages raised while building and
    fitting it (e.g. a Laplace fallback, NaN restores), so they can be reported, not lost.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guide = make_guide(name, problem.model, **(flow_kwargs or {}))
        initialize(problem, guide)
        history = pyro_nf.fit(
            problem.model,
            guide,
            *problem.args,
            steps=steps,
            lr=lr,
            num_particles=num_particles,
            max_plate_nesting=problem.max_plate_nesting,
            lr_schedule=lr_schedule,
            early_stopping=None,  # equal budgets: every guide takes exactly ``steps`` steps
            progress=progress,
            desc=name,
        )
    return guide, history, summarize_warnings(caught)


def summarize_warnings(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """One line per kind of warning (numbers ignored), with its count and first message;
    ``ConvergenceWarning`` (expected with fixed budgets) is left out.

    Example:
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     for step in (3, 7):
        ...         warnings.warn(f"step {step}: non-finite loss")
        >>> summarize_warnings(caught)
        ['UserWarning (x2): step 3: non-finite loss']
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for w in caught:
        category = w.category.__name__
        if category == "ConvergenceWarning":  # fixed budgets: expected, not news
            continue
        text = str(w.message).splitlines()[0] if str(w.message) else ""
        key = (category, re.sub(r"[-+]?\d[\d.e+-]*", "#", text)[:80])
        groups.setdefault(key, []).append(text)
    return [
        f"{category}{f' (x{len(texts)})' if len(texts) > 1 else ''}: {texts[0][:160]}"
        for (category, _), texts in groups.items()
    ]


@dataclass
class Settings:
    """The budget shared by every guide of a comparison (``pyro_nf.fit`` arguments and more)."""

    steps: int = 3000
    lr: float = 1e-2
    num_particles: int = 8
    eval_samples: int = 4000
    seed: int = 0
    lr_schedule: str | None = "cosine"
    time_repeats: int = 0  # > 0: also time one SVI step per guide with interleaved repeats
    flow_kwargs: dict[str, Any] = field(default_factory=dict)


def compare_guides(
    problem: Problem,
    guides: Sequence[str],
    settings: Settings,
    progress: bool = False,
    verbose: bool = True,
    keep_samples: int = 1000,
) -> list[dict[str, Any]]:
    """Fit every guide with the same budget and evaluate it; one result dict per guide.

    Keys: ``guide``, ``library``, ``elbo``, ``elbo_se``, ``khat``, ``mean_err``,
    ``log_sd_err`` (and where they peak), ``log_z_is`` (importance-sampled log evidence),
    ``fit_s``, ``fit_ms_per_step`` (the whole fit loop), ``ms_per_step`` (interleaved timing of one
    SVI step, if ``settings.time_repeats``), ``warnings``; ``_z``: up to ``keep_samples`` draws
    of the reported coordinates (not saved to JSON).
    """
    results, fitted = [], {}
    for name in guides:
        t0 = time.perf_counter()
        row: dict[str, Any] = {
            "guide": name,
            "library": "pyro" if name in PYRO_GUIDES else "pyro_nf",
        }
        try:
            guide, history, messages = fit_one(
                problem,
                name,
                steps=settings.steps,
                lr=settings.lr,
                num_particles=settings.num_particles,
                seed=settings.seed,
                lr_schedule=settings.lr_schedule,
                progress=progress,
                flow_kwargs=settings.flow_kwargs,
            )
            fit_s = time.perf_counter() - t0
            row.update(evaluate(problem, guide, settings.eval_samples, seed=settings.seed + 1))
        except Exception as err:  # a guide that fails is reported, not fatal to the comparison
            row.update(failed_row(err))
            results.append(row)
            print(f"  {name:<30} FAILED: {row['error']}", flush=True)
            continue
        row["_z"] = row.pop("_z")[:keep_samples]
        row["fit_s"] = fit_s
        row["fit_ms_per_step"] = 1e3 * history.elapsed / max(1, history.num_steps)
        row["steps"] = history.num_steps
        row["final_loss_smoothed"] = history.smoothed[-1] if history.smoothed else None
        row["nan_restores"] = history.num_nan_restores
        row["num_params"] = sum(p.numel() for p in guide.parameters())
        info = getattr(guide, "_init_info", None)
        if isinstance(info, dict) and "init" in info:
            row["init"] = str(info["init"])
        row["warnings"] = messages
        fitted[name] = guide
        results.append(row)
        if verbose:
            print(
                f"  {name:<30} ELBO {row['elbo']:10.3f} ± {row['elbo_se']:.3f}  k̂ {row['khat']:5.2f}"
                f"  ({fit_s:.1f} s)",
                flush=True,
            )
    if settings.time_repeats > 0:
        time_steps(problem, fitted, results, settings)
    return results


def time_steps(
    problem: Problem, fitted: dict[str, Any], results: list[dict[str, Any]], settings: Settings
) -> None:
    """Median ms per SVI step of every fitted guide (interleaved repeats), into ``results``."""
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from _common import interleaved_timings, summarize

    pyro.clear_param_store()
    fns = {
        name: step_fn(problem, g, settings.num_particles, settings.lr) for name, g in fitted.items()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timings = interleaved_timings(fns, repeats=settings.time_repeats, target_s=0.25)
    for row in results:
        if row["guide"] not in timings.per_step:
            continue
        s = summarize(timings.per_step[row["guide"]])
        row["ms_per_step"] = 1e3 * s["median"]
        row["ms_per_step_min"], row["ms_per_step_max"] = 1e3 * s["min"], 1e3 * s["max"]


# -- tables, plots and outputs ----------------------------------------------------------------


def _fmt(x: Any, spec: str) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


TABLE_HEADERS = ["guide", "ELBO ± SE", "k̂", "mean err / sd", "max |log sd ratio|", "ms/step"]


def table_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Rows of the comparison table (headers: :data:`TABLE_HEADERS`); ``*`` marks the best
    ELBO; ``ms/step`` is the interleaved SVI-step time if measured, else the fit loop's mean."""
    finite = [r["elbo"] for r in results if math.isfinite(r["elbo"])]
    best = max(finite) if finite else float("nan")
    rows = []
    for r in results:
        ms = r.get("ms_per_step", r["fit_ms_per_step"])
        mark = " *" if r["elbo"] == best else ""
        rows.append(
            [
                r["guide"],
                f"{_fmt(r['elbo'], '.3f')} ± {_fmt(r['elbo_se'], '.3f')}{mark}",
                _fmt(r["khat"], ".2f"),
                _fmt(r.get("mean_err"), ".3f"),
                _fmt(r.get("log_sd_err"), ".3f"),
                _fmt(ms, ".2f"),
            ]
        )
    return rows


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table (first column left-aligned, the others right-aligned).

    Example:
        >>> print(text_table(["guide", "k̂"], [["a", "0.5"], ["bb", "1.25"]]))
        guide |   k̂
        ------+-----
        a     |  0.5
        bb    | 1.25
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), "-+-".join("-" * w for w in widths), *map(line, rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table.

    Example:
        >>> print(markdown_table(["a", "b"], [["x", "1"]]))
        | a | b |
        |:---|---:|
        | x | 1 |
    """
    align = "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"
    return "\n".join(
        ["| " + " | ".join(headers) + " |", align, *("| " + " | ".join(r) + " |" for r in rows)]
    )


def write_outputs(
    out_dir: Path,
    stem: str,
    title: str,
    notes: Sequence[str],
    results: Sequence[dict[str, Any]],
    payload: dict[str, Any],
) -> list[Path]:
    """Save ``{stem}.md`` (title, notes, table) and ``{stem}.json`` (payload + results)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", "", *notes, "", markdown_table(TABLE_HEADERS, table_rows(results)), ""]
    md_path = out_dir / f"{stem}.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(
        json.dumps(_finite({**payload, "results": clean}), indent=1) + "\n", encoding="utf-8"
    )
    return [md_path, json_path]


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def plot_pairs(
    path: Path,
    results: Sequence[dict[str, Any]],
    names: Sequence[str],
    i: int,
    j: int,
    *,
    log_j: bool = False,
    reference: torch.Tensor | None = None,
    title: str = "",
) -> Path | None:
    """Scatter coordinate ``j`` (log if ``log_j``) against ``i`` for every guide's draws, next
    to ``reference`` draws if given; ``None`` (and a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    panels = ([("exact", reference)] if reference is not None else []) + [
        (r["guide"], r["_z"]) for r in results if r.get("_z") is not None
    ]
    if not panels:
        return None
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    first = panels[0][1]
    xs = first[:, i]
    ys = first[:, j].log() if log_j else first[:, j]
    xlim = (float(xs.quantile(0.005)), float(xs.quantile(0.995)))
    ylim = (float(ys.quantile(0.005)), float(ys.quantile(0.995)))
    for ax, (label, z) in zip(axes.flat, panels, strict=False):
        y = z[:, j].log() if log_j else z[:, j]
        ax.scatter(z[:, i].numpy(), y.numpy(), s=2, alpha=0.4)
        ax.set_title(label, fontsize=9)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_xlabel(names[i], fontsize=8)
        ax.set_ylabel(f"log {names[j]}" if log_j else names[j], fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- command line ---------------------------------------------------------------------------------


def common_parser(description: str, default_steps: int) -> argparse.ArgumentParser:
    """The arguments shared by the three examples."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (CI)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output directory")
    parser.add_argument("--steps", type=int, default=default_steps, help="SVI steps per guide")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    parser.add_argument(
        "--lr-schedule", default="cosine", choices=["cosine", "none"], help="learning-rate decay"
    )
    parser.add_argument("--particles", type=int, default=8, help="ELBO particles per step")
    parser.add_argument(
        "--eval-samples", type=int, default=4000, help="draws for the ELBO, k̂ and moments"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--guides",
        nargs="+",
        default=None,
        choices=list(GUIDES),
        metavar="GUIDE",
        help=f"guides to compare, from: {', '.join(GUIDES)} (default: all but radial; --quick: "
        f"{', '.join(QUICK_GUIDES)})",
    )
    parser.add_argument(
        "--flow-kwargs",
        type=json.loads,
        default={},
        help="JSON dict of extra FlowGuide arguments, e.g. '{\"init_scale\": 1.0}'",
    )
    parser.add_argument(
        "--time", action="store_true", help="also time one SVI step per guide (interleaved)"
    )
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (needs matplotlib)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The budget from parsed arguments; ``--quick`` shrinks it to a smoke run."""
    schedule = None if args.lr_schedule == "none" else args.lr_schedule
    if args.quick:
        return Settings(
            steps=min(args.steps, 20),
            lr=args.lr,
            num_particles=2,
            eval_samples=200,
            seed=args.seed,
            lr_schedule=schedule,
            flow_kwargs=args.flow_kwargs,
        )
    return Settings(
        steps=args.steps,
        lr=args.lr,
        num_particles=args.particles,
        eval_samples=args.eval_samples,
        seed=args.seed,
        lr_schedule=schedule,
        time_repeats=5 if args.time else 0,
        flow_kwargs=args.flow_kwargs,
    )


def run_comparison(
    problem: Problem,
    args: argparse.Namespace,
    *,
    title: str,
    notes: Sequence[str],
    stem: str,
    plot: Callable[[Path, list[dict[str, Any]]], Path | None] | None = None,
) -> list[dict[str, Any]]:
    """Fit, evaluate, print the table and write ``--out``: the body of every example."""
    torch.set_num_threads(1)
    settings = settings_from_args(args)
    budget = (
        f"{settings.steps} steps of Adam (lr {settings.lr:g}, {settings.lr_schedule or 'constant'}"
        f" schedule), {settings.num_particles} particles per step, ELBO/k̂/moments from "
        f"{settings.eval_samples} draws, seed {settings.seed}"
    )
    print(f"{title}\n{budget}", flush=True)
    guides = args.guides or list(QUICK_GUIDES if args.quick else DEFAULT_GUIDES)
    results = compare_guides(problem, guides, settings, progress=args.progress)
    rows = table_rows(results)
    print()
    print(text_table(TABLE_HEADERS, rows))
    for r in results:
        for m in r["warnings"]:
            print(f"  note: {r['guide']}: {m}")
    ref = problem.reference
    ref_note = (
        "no reference posterior: moment errors not computed"
        if ref is None
        else f"reference: {ref.source} ({json.dumps({k: ref.settings[k] for k in list(ref.settings)[:6]})})"
    )
    print(ref_note)
    timing = (
        "median of interleaved repeats of one SVI step (1 thread)"
        if settings.time_repeats
        else "mean over the fit loop (1 thread; use --time for interleaved timings)"
    )
    all_notes = [
        *notes,
        "",
        f"Budget: {budget}. `*`: best ELBO. ms/step: {timing}.",
        "",
        f"{ref_note}.",
    ]
    payload = {
        "problem": problem.name,
        "settings": asdict(settings),
        "quick": bool(args.quick),
        "reference": None if ref is None else {"source": ref.source, "settings": ref.settings},
        "coordinate_names": problem.names,
        "versions": {"torch": torch.__version__, "pyro": pyro.__version__},
    }
    paths = write_outputs(args.out, stem, title, all_notes, results, payload)
    if plot is not None and not args.no_plot:
        png = plot(args.out / f"{stem}.png", results)
        if png is not None:
            paths.append(png)
    print("wrote " + ", ".join(str(p) for p in paths))
    return results
