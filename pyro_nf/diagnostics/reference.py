r"""Reference posteriors by NUTS, to check a guide against.

:func:`run_nuts` runs ``num_chains`` independent chains of Pyro's NUTS one after another, in
float64, each seeded ``seed + c`` and started by ``init_to_sample`` (or at ``init_values(c)``),
and returns the draws of chosen coordinates together with the convergence diagnostics that say
whether they can serve as a reference:

* split :math:`\hat R` per coordinate (Gelman et al. 2013; ``pyro.ops.stats``): values above
  about 1.01 mean the chains disagree and the draws are not yet a reference;
* the effective sample size per coordinate: the Monte-Carlo standard error of a posterior mean
  is about :math:`\mathrm{sd}/\sqrt{\mathrm{ESS}}`;
* the number of divergent transitions (a sign of geometry NUTS cannot explore, e.g. a funnel).

Both are Pyro's classic estimators (``pyro.ops.stats``, as in Stan 2.18), not the
rank-normalized versions of Vehtari et al. (2021). Running the chains sequentially keeps the call
cheap on a shared machine and its result independent of the number of cores. The chains run
with float64 as the default dtype; the caller's global random state (torch, numpy, random) is
restored afterwards.

References:
    Hoffman & Gelman, *The No-U-Turn Sampler*, JMLR 2014.
    Gelman et al., *Bayesian Data Analysis*, 3rd ed., 2013, Section 11.4.
"""

from __future__ import annotations

import platform
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyro
import torch

from ..utils.validation import check_positive_int

__all__ = ["NUTSDraws", "run_nuts"]

Coords = Callable[[dict[str, torch.Tensor], int], torch.Tensor]


class NUTSDraws(NamedTuple):
    """Draws of :func:`run_nuts`: ``draws`` of shape ``(chains, samples, P)`` (float64), split
    ``rhat`` and ``ess`` of shape ``(P,)``, and ``info``: the settings and diagnostics
    (JSON-ready)."""

    draws: torch.Tensor
    rhat: torch.Tensor
    ess: torch.Tensor
    info: dict[str, Any]


def _all_sites(samples: dict[str, torch.Tensor], num_samples: int) -> torch.Tensor:
    """Every latent site flattened, in the order of ``samples``."""
    return torch.cat([v.reshape(num_samples, -1) for v in samples.values()], dim=-1)


def run_nuts(
    model: Callable[..., Any],
    args: tuple = (),
    coords: Coords | None = None,
    *,
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
) -> NUTSDraws:
    r"""Run ``num_chains`` chains of NUTS on ``model(*args)`` (see the module docstring).

    Args:
        model, args: a Pyro model and its positional arguments (floating-point tensors are cast
            to float64).
        coords: ``(samples, num_samples) -> (num_samples, P)``: the coordinates to report from
            one chain's samples (a dict of constrained latent values, each of shape
            ``(num_samples, *site_shape)``), e.g. to undo a reparameterization. Default: every
            latent site flattened and concatenated.
        num_chains, warmup, num_samples: chains (at least 2 for :math:`\hat R`), warm-up
            (adaptation) steps and kept draws per chain.
        seed: chain ``c`` is seeded ``seed + c``.
        target_accept_prob, max_tree_depth, full_mass: NUTS's step-size adaptation target, its
            maximum tree depth, and whether to adapt a dense mass matrix (default diagonal).
        init_values: ``c -> {site: value}``: where chain ``c`` starts (dispersed starting points
            for models whose prior draws are too far out for the warm-up to recover); default
            ``init_to_sample``.
        jit_compile, progress: compile the potential energy with the PyTorch JIT (faster for
            long runs); show Pyro's progress bar.

    Returns:
        :class:`NUTSDraws`. ``info`` holds the settings, ``divergences``, the adapted
        ``step_sizes``, ``max_rhat``, ``min_ess``, ``elapsed_s`` and the library versions.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([0.5, 1.5, 1.0])  # conjugate: mu | y ~ N(3/4, 1/4)
        >>> out = run_nuts(model, (y,), num_chains=2, warmup=200, num_samples=300, jit_compile=False)
        >>> out.draws.shape, out.draws.dtype
        (torch.Size([2, 300, 1]), torch.float64)
        >>> abs(float(out.draws.mean()) - 0.75) < 0.1, out.info["max_rhat"] < 1.05
        (True, True)
    """
    settings = _NUTSSettings.checked(
        num_chains, warmup, num_samples, seed, target_accept_prob, max_tree_depth,
        full_mass, init_values, jit_compile, progress,
    )  # fmt: skip
    t0 = time.perf_counter()
    with _float64_default_and_restored_rng():
        chains = _run_chains(model, _as_float64(args), coords, settings)
    return _summarize(chains, settings, coords is None, t0)


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
        seed = check_positive_int("seed", seed, minimum=0)
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


@dataclass
class _Chains:
    """What the chains of :func:`run_nuts` produced, accumulated one chain at a time."""

    draws: list[torch.Tensor] = field(default_factory=list)
    sites: dict[str, list[int]] = field(default_factory=dict)
    step_sizes: list[float] = field(default_factory=list)
    divergences: int = 0


def _run_chains(
    model: Callable[..., Any], args: tuple, coords: Coords | None, settings: _NUTSSettings
) -> _Chains:
    """The chains of :func:`run_nuts`, one after another: their coordinates, the latent sites'
    shapes, the adapted step sizes and the number of divergences."""
    chains = _Chains()
    for c in range(settings.num_chains):
        pyro.set_rng_seed(settings.seed + c)
        kernel = _nuts_kernel(model, settings, c)
        mcmc = _run_one_chain(kernel, args, settings)
        samples = mcmc.get_samples()
        if not samples:
            raise ValueError("model: expected at least one latent sample site, got none")
        chains.sites = {name: list(v.shape[1:]) for name, v in samples.items()}
        chains.divergences += len(mcmc.diagnostics()["divergences"]["chain 0"])
        chains.step_sizes.append(float(kernel.step_size))
        n = settings.num_samples
        value = coords(samples, n) if coords is not None else _all_sites(samples, n)
        chains.draws.append(_check_coords(value, n))
    return chains


def _nuts_kernel(model: Callable[..., Any], settings: _NUTSSettings, chain: int) -> Any:
    """The NUTS kernel of chain ``chain``, started by ``init_values(chain)`` or ``init_to_sample``."""
    from pyro.infer import NUTS
    from pyro.infer.autoguide.initialization import init_to_sample, init_to_value

    init = (
        init_to_sample
        if settings.init_values is None
        else init_to_value(values=settings.init_values(chain), fallback=init_to_sample)
    )
    return NUTS(
        model,
        target_accept_prob=settings.target_accept_prob,
        max_tree_depth=settings.max_tree_depth,
        full_mass=settings.full_mass,
        init_strategy=init,
        jit_compile=settings.jit_compile,
        ignore_jit_warnings=True,
    )


def _run_one_chain(kernel: Any, args: tuple, settings: _NUTSSettings) -> Any:
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
        mcmc.run(*args)
    return mcmc


def _check_coords(value: Any, num_samples: int) -> torch.Tensor:
    """Check that ``coords`` returned a ``(num_samples, P)`` tensor; return it in float64."""
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[0] != num_samples:
        got = (
            f"shape {tuple(value.shape)}"
            if isinstance(value, torch.Tensor)
            else type(value).__name__
        )
        raise ValueError(
            f"coords: expected a tensor of shape ({num_samples}, P) (draws, coordinates), got {got}"
        )
    return value.double()


def _summarize(
    chains: _Chains, settings: _NUTSSettings, default_coords: bool, t0: float
) -> NUTSDraws:
    """Stack the chains' draws and add split R-hat, ESS and the ``info`` record."""
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    x = torch.stack(chains.draws)
    rhat = split_gelman_rubin(x, chain_dim=0, sample_dim=1)
    ess = effective_sample_size(x, chain_dim=0, sample_dim=1)
    info = {
        **_settings_info(settings),
        "sites": chains.sites,
        "coords": (
            "every latent site flattened, in the order of 'sites'"
            if default_coords
            else "coords(samples, num_samples)"
        ),
        "divergences": chains.divergences,
        "step_sizes": chains.step_sizes,
        "max_rhat": float(rhat.max()),
        "min_ess": float(ess.min()),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    return NUTSDraws(x, rhat, ess, info)


def _settings_info(s: _NUTSSettings) -> dict[str, Any]:
    """The JSON-ready description of the sampler settings in :attr:`NUTSDraws.info`."""
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
        "dtype": "float64",
    }
