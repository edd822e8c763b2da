r"""Reference posteriors by NUTS, to check a guide against.

:func:`run_nuts` runs ``num_chains`` independent chains of Pyro's NUTS one after another, in
float64, each seeded ``seed + c`` and started by ``init_to_sample`` (or at ``init_values(c)``),
and returns an ArviZ ``InferenceData``: ``posterior`` (``chains x draws``, dims named after the
model's plates, plus any ``derived`` quantities), ``sample_stats`` (per draw, as Stan reports
them: ``diverging``, ``step_size``, ``tree_depth``, ``energy`` — the Hamiltonian after the
momentum refresh, for E-BFMI —, ``acceptance_rate`` and ``lp``, the log density on the
unconstrained space), ``log_likelihood`` and ``observed_data``; ``attrs`` holds the settings,
the number of divergences, the adapted step sizes, the convergence summary, the run time and
the library versions.

Whether the draws can serve as a reference is judged with ArviZ's rank-normalized split
:math:`\hat R` and bulk/tail effective sample sizes (Vehtari et al. 2021; ``az.rhat``,
``az.ess``) over every posterior variable: a :class:`ReferenceWarning` is issued if
:math:`\hat R > 1.01` anywhere, if a bulk or tail ESS is below ``100`` per chain, or if any
transition diverged (a sign of geometry NUTS cannot explore, e.g. a funnel). The Monte-Carlo
standard error of a posterior mean is about :math:`\mathrm{sd}/\sqrt{\mathrm{ESS_{bulk}}}`.

Running the chains sequentially keeps the call cheap on a shared machine and its result
independent of the number of cores. The chains run with float64 as the default dtype; the
caller's global random state (torch, numpy, random) is restored afterwards.
:func:`~pyro_nf.diagnostics.inference_data.flat_draws` and
:func:`~pyro_nf.diagnostics.inference_data.flat_convergence` give flat ``(chains, draws, P)``
draws and per-coordinate diagnostics of the result.

References:
    Hoffman & Gelman, *The No-U-Turn Sampler*, JMLR 2014.
    Vehtari, Gelman, Simpson, Carpenter & Bürkner, *Rank-normalization, folding, and
    localization: an improved R-hat for assessing convergence of MCMC*, Bayesian Analysis 2021.
    Betancourt, *Diagnosing Suboptimal Cotangent Disintegrations in Hamiltonian Monte Carlo*,
    2016 (E-BFMI).
"""

from __future__ import annotations

import math
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import NUTS

from ..utils.validation import check_positive_int, check_seed
from .draws import check_callable, check_model_kwargs
from .inference_data import flat_convergence, inference_data_from_samples

__all__ = ["RHAT_THRESHOLD", "ReferenceWarning", "run_nuts"]

#: Largest rank-normalized split R-hat of a usable reference (Vehtari et al. 2021).
RHAT_THRESHOLD = 1.01
#: Smallest bulk and tail ESS per chain of a usable reference (Vehtari et al. 2021).
_ESS_PER_CHAIN = 100
Derived = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class ReferenceWarning(UserWarning):
    """The NUTS draws of :func:`run_nuts` should not serve as a reference yet (R-hat, ESS or
    divergences; see the module docstring)."""


def run_nuts(
    model: Callable[..., Any],
    *args: Any,
    model_kwargs: dict[str, Any] | None = None,
    num_chains: int = 4,
    warmup: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    full_mass: bool = False,
    init_values: Callable[[int], dict[str, torch.Tensor]] | None = None,
    jit_compile: bool = True,
    progress: bool = False,
    derived: Derived | None = None,
    coords: dict | None = None,
    dims: dict | None = None,
    log_likelihood: bool = True,
) -> Any:
    r"""Run ``num_chains`` chains of NUTS on ``model(*args, **model_kwargs)`` (see the module
    docstring) and return their draws as an ArviZ ``InferenceData``.

    Args:
        model, args, model_kwargs: a Pyro model, its positional and keyword arguments
            (floating-point tensors are cast to float64).
        num_chains, warmup, num_samples: chains (at least 2, for :math:`\hat R`), warm-up
            (adaptation) steps and kept draws per chain.
        seed: chain ``c`` is seeded ``seed + c``.
        target_accept_prob, max_tree_depth, full_mass: NUTS's step-size adaptation target, its
            maximum tree depth, and whether to adapt a dense mass matrix (default diagonal).
        init_values: ``c -> {site: value}``: where chain ``c`` starts (dispersed starting points
            for models whose prior draws are too far out for the warm-up to recover); default
            ``init_to_sample``.
        jit_compile, progress: compile the potential energy with the PyTorch JIT (faster for
            long runs); show Pyro's progress bar.
        derived: ``{site: (chains, draws, *site_shape)} -> {name: (chains, draws, ...)}``:
            quantities computed from the draws (e.g. to undo a reparameterization), added to
            the posterior and checked for convergence like the sites.
        coords, dims: ArviZ labels (override the plate names; name the dims of ``derived``).
        log_likelihood: compute the pointwise ``log_likelihood`` group.

    Returns:
        ``InferenceData`` (ArviZ 1.x: ``DataTree``); ``attrs`` has the settings,
        ``divergences``, ``step_sizes``, ``max_rhat``, ``min_ess_bulk``, ``min_ess_tail``,
        ``elapsed_s`` and the versions.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([0.5, 1.5, 1.0])  # conjugate: mu | y ~ N(3/4, 1/4)
        >>> idata = run_nuts(model, y, num_chains=2, warmup=200, num_samples=400,
        ...                  jit_compile=False)
        >>> idata.posterior["mu"].shape, idata.log_likelihood["y"].dims
        ((2, 400), ('chain', 'draw', 'data'))
        >>> abs(float(idata.posterior["mu"].mean()) - 0.75) < 0.1, idata.attrs["max_rhat"] < 1.05
        (True, True)
    """
    check_callable("model", model, "a callable Pyro model")
    kwargs = check_model_kwargs(model_kwargs)
    settings = _NUTSSettings.checked(
        num_chains, warmup, num_samples, seed, target_accept_prob, max_tree_depth,
        full_mass, init_values, jit_compile, progress,
    )  # fmt: skip
    if derived is not None:
        check_callable("derived", derived, "a callable {site: tensor} -> {name: tensor}")
    t0 = time.perf_counter()
    with _float64_default_and_restored_rng():
        args = _as_float64(args)
        kwargs = dict(zip(kwargs, _as_float64(tuple(kwargs.values())), strict=True))
        chains = _run_chains(model, args, kwargs, settings)
        samples = chains.stacked()
        extra = _derived(derived, samples)
        idata = inference_data_from_samples(
            model, {**samples, **extra}, *args, model_kwargs=kwargs,
            sample_stats=chains.sample_stats(), coords=coords, dims=dims,
            attrs=_attrs(chains, settings), log_likelihood=log_likelihood,
        )  # fmt: skip
    return _check_convergence(idata, settings, chains.divergences, t0)


@dataclass(frozen=True)
class _NUTSSettings:
    """The validated settings of one :func:`run_nuts` call."""

    num_chains: int
    warmup: int
    num_samples: int
    seed: int
    target_accept_prob: float
    max_tree_depth: int
    full_mass: bool
    init_values: Callable[[int], dict[str, torch.Tensor]] | None
    jit_compile: bool
    progress: bool

    @classmethod
    def checked(
        cls,
        num_chains: int,
        warmup: int,
        num_samples: int,
        seed: int,
        target_accept_prob: float,
        max_tree_depth: int,
        *rest: Any,
    ) -> _NUTSSettings:
        """Validate the numeric settings (the error messages of :func:`run_nuts`) and pack them."""
        num_chains = check_positive_int("num_chains", num_chains, minimum=2)
        warmup = check_positive_int("warmup", warmup, minimum=0)
        num_samples = check_positive_int("num_samples", num_samples, minimum=4)
        max_tree_depth = check_positive_int("max_tree_depth", max_tree_depth)
        seed = check_seed(seed)
        _check_target_accept_prob(target_accept_prob)
        return cls(num_chains, warmup, num_samples, seed, target_accept_prob, max_tree_depth, *rest)


def _check_target_accept_prob(value: Any) -> None:
    """Raise unless ``value`` is a (non-bool) number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(f"target_accept_prob: expected a number in (0, 1), got {value!r}")


def _as_float64(args: tuple) -> tuple:
    """``args`` with every floating-point tensor cast to float64."""
    return tuple(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


@contextmanager
def _float64_default_and_restored_rng() -> Iterator[None]:
    """Run the body with float64 as the default dtype; restore the dtype and Pyro's RNG state."""
    rng_state, default_dtype = pyro.util.get_rng_state(), torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(default_dtype)
        pyro.util.set_rng_state(rng_state)


#: The per-draw statistics :class:`_RecordingNUTS` records (Stan's / ArviZ's names).
_STATS = ("diverging", "tree_depth", "energy", "acceptance_rate", "lp")


class _RecordingNUTS(NUTS):
    """Pyro's NUTS, recording for every transition what Stan reports: whether it diverged, the
    tree depth (number of doublings), the Hamiltonian after the momentum refresh, the
    acceptance statistic and the log density ``-potential`` of the new state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: dict[str, list[float]] = {key: [] for key in _STATS}
        self._depth, self._kinetic = 0, None

    def _kinetic_energy(self, r_unscaled: dict[str, torch.Tensor]) -> torch.Tensor:
        energy = super()._kinetic_energy(r_unscaled)
        if self._kinetic is None:  # the first call of a transition: the refreshed momentum
            self._kinetic = energy
        return energy

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):  # noqa: ANN001, ANN202
        self._depth = max(self._depth, tree_depth + 1)
        return super()._build_tree(z, r, z_grads, log_slice, direction, tree_depth, energy_current)

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z, potential, _ = self._fetch_from_cache()
        if z is None:
            potential = self.potential_fn(params)
        self._depth, self._kinetic = 0, None
        divergences, mean = len(self._divergences), self._mean_accept_prob
        out = super().sample(params)
        n = self._t - self._warmup_steps if self._t > self._warmup_steps else self._t
        new_potential = self._fetch_from_cache()[1]
        kinetic = float(self._kinetic) if self._kinetic is not None else math.nan
        self.records["diverging"].append(float(len(self._divergences) > divergences))
        self.records["tree_depth"].append(float(self._depth))
        self.records["energy"].append(kinetic + float(potential))
        self.records["acceptance_rate"].append(mean + n * (self._mean_accept_prob - mean))
        self.records["lp"].append(-float(new_potential) if new_potential is not None else math.nan)
        return out


@dataclass
class _Chains:
    """What the chains of :func:`run_nuts` produced, accumulated one chain at a time."""

    samples: list[dict[str, torch.Tensor]] = field(default_factory=list)
    stats: list[dict[str, list[float]]] = field(default_factory=list)
    step_sizes: list[float] = field(default_factory=list)
    divergences: int = 0

    def stacked(self) -> dict[str, torch.Tensor]:
        """``{site: (chains, draws, *site_shape)}`` in float64."""
        return {k: torch.stack([c[k] for c in self.samples]).double() for k in self.samples[0]}

    def sample_stats(self) -> dict[str, np.ndarray]:
        """``{stat: (chains, draws)}``: the recorded statistics and the step size."""
        n = len(self.stats[0]["lp"])
        out = {k: np.array([c[k] for c in self.stats]) for k in _STATS}
        out["diverging"] = out["diverging"].astype(bool)
        out["tree_depth"] = out["tree_depth"].astype(np.int64)
        out["step_size"] = np.repeat(np.array(self.step_sizes)[:, None], n, axis=1)
        return out


def _run_chains(
    model: Callable[..., Any], args: tuple, kwargs: dict, settings: _NUTSSettings
) -> _Chains:
    """The chains of :func:`run_nuts`, one after another: their draws, their per-draw
    statistics, the adapted step sizes and the number of divergences."""
    chains = _Chains()
    for c in range(settings.num_chains):
        pyro.set_rng_seed(settings.seed + c)
        kernel = _nuts_kernel(model, settings, c)
        mcmc = _run_one_chain(kernel, args, kwargs, settings)
        samples = mcmc.get_samples()
        if not samples:
            raise ValueError("model: expected at least one latent sample site, got none")
        chains.samples.append(samples)
        chains.stats.append({k: v[-settings.num_samples :] for k, v in kernel.records.items()})
        chains.divergences += len(mcmc.diagnostics()["divergences"]["chain 0"])
        chains.step_sizes.append(float(kernel.step_size))
    return chains


def _nuts_kernel(model: Callable[..., Any], settings: _NUTSSettings, chain: int) -> Any:
    """The NUTS kernel of chain ``chain``, started by ``init_values(chain)`` or ``init_to_sample``."""
    from pyro.infer.autoguide.initialization import init_to_sample, init_to_value

    init = (
        init_to_sample
        if settings.init_values is None
        else init_to_value(values=settings.init_values(chain), fallback=init_to_sample)
    )
    return _RecordingNUTS(
        model,
        target_accept_prob=settings.target_accept_prob,
        max_tree_depth=settings.max_tree_depth,
        full_mass=settings.full_mass,
        init_strategy=init,
        jit_compile=settings.jit_compile,
        ignore_jit_warnings=True,
    )


def _run_one_chain(kernel: Any, args: tuple, kwargs: dict, settings: _NUTSSettings) -> Any:
    """Warm up and sample one chain of ``kernel`` (JIT tracer warnings silenced); the MCMC."""
    from pyro.infer import MCMC

    mcmc = MCMC(
        kernel,
        num_samples=settings.num_samples,
        warmup_steps=settings.warmup,
        disable_progbar=not settings.progress,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        mcmc.run(*args, **kwargs)
    return mcmc


def _derived(derived: Derived | None, samples: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``derived(samples)`` checked: a dict of new names to ``(chains, draws, ...)`` tensors."""
    if derived is None:
        return {}
    out = derived(samples)
    lead = next(iter(samples.values())).shape[:2]
    if not isinstance(out, dict):
        raise ValueError(f"derived: expected to return a dict of tensors, got {type(out).__name__}")
    for name, value in out.items():
        if name in samples or not isinstance(value, torch.Tensor) or value.shape[:2] != lead:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"derived: expected {{new name: tensor of shape {tuple(lead)} + (...)}}, got "
                f"{name!r}: {'a latent site' if name in samples else got}"
            )
    return {k: v.double() for k, v in out.items()}


def _attrs(chains: _Chains, settings: _NUTSSettings) -> dict[str, Any]:
    """The settings and the sampler's record for ``attrs`` (plain numbers, strings, lists)."""
    return {
        **_settings_info(settings),
        "divergences": chains.divergences,
        "step_sizes": chains.step_sizes,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def _check_convergence(idata: Any, settings: _NUTSSettings, divergences: int, t0: float) -> Any:
    """Add the rank-normalized R-hat and bulk/tail ESS summary to ``idata.attrs`` and warn
    (:class:`ReferenceWarning`) when the draws should not serve as a reference."""
    conv = flat_convergence(idata)
    summary = {
        "max_rhat": float(conv["rhat"].max()),
        "min_ess_bulk": float(conv["ess_bulk"].min()),
        "min_ess_tail": float(conv["ess_tail"].min()),
        "convergence": "rank-normalized split R-hat, bulk/tail ESS (arviz.rhat, arviz.ess)",
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }
    idata.attrs.update(summary)
    problems = []
    if not summary["max_rhat"] <= RHAT_THRESHOLD:
        problems.append(f"R-hat up to {summary['max_rhat']:.3f} > {RHAT_THRESHOLD}")
    least = _ESS_PER_CHAIN * settings.num_chains
    worst = min(summary["min_ess_bulk"], summary["min_ess_tail"])
    if not worst >= least:
        problems.append(f"ESS (bulk/tail) down to {worst:.0f} < {least}")
    if divergences:
        problems.append(f"{divergences} divergent transitions")
    if problems:
        warnings.warn(
            "run_nuts: not a reference yet: " + "; ".join(problems)
            + " (run longer, raise target_accept_prob or reparameterize)",
            ReferenceWarning,
            stacklevel=3,
        )  # fmt: skip
    return idata


def _settings_info(s: _NUTSSettings) -> dict[str, Any]:
    """The JSON-ready description of the sampler settings (``attrs`` of :func:`run_nuts`)."""
    return {
        "sampler": f"pyro.infer.NUTS (jit_compile={s.jit_compile})",
        "mass_matrix": "dense (adapted)" if s.full_mass else "diagonal (adapted)",
        "num_chains": s.num_chains,
        "warmup": s.warmup,
        "num_samples_per_chain": s.num_samples,
        "seed": s.seed,
        "seeds": [s.seed + c for c in range(s.num_chains)],
        "target_accept_prob": s.target_accept_prob,
        "max_tree_depth": s.max_tree_depth,
        "init_strategy": "init_to_sample" if s.init_values is None else "init_values (dispersed)",
        "full_mass": int(s.full_mass),
        "dtype": "float64",
    }
