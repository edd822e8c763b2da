r"""From a fitted flow guide to draws you can certify: :func:`refine` (NeuTra).

A fitted :class:`~pyro_nf.FlowGuide` maps a standard normal :math:`\varepsilon \in \mathbb R^D`
through its flow :math:`F` to the packed unconstrained latent :math:`u = F(\varepsilon)`, and
each site's block of :math:`u` through the bijection :math:`T` of its support
(``biject_to``) to the model's constrained values :math:`z = T(u)`. Pulling the posterior back
through both maps gives the density of :math:`\varepsilon` (Hoffman et al. 2019, "NeuTra")

.. math::

    \pi(\varepsilon) \propto p\bigl(x, T(F(\varepsilon))\bigr)\,
        \bigl\lvert\det J_T(F(\varepsilon))\bigr\rvert\,
        \bigl\lvert\det J_F(\varepsilon)\bigr\rvert,

and :func:`refine` runs NUTS on the potential :math:`U(\varepsilon) = -\log \pi(\varepsilon)`.
Where the guide is good, :math:`\pi` is close to :math:`\mathcal N(0, I)`: the sampler sees a
round, unit-scale target (a funnel or a -0.99 correlation has been straightened by the flow),
takes large steps and short trees, while its draws are exact asymptotically whatever the
guide missed. (No base-density term enters :math:`U`: the base :math:`\mathcal N(0, I)` is only
where the chains start and what the flow was trained against; Pyro's
:class:`~pyro.infer.reparam.NeuTraReparam` builds the same potential.)

* Chains start at draws of the guide (:math:`\varepsilon_0 \sim \mathcal N(0, I)`), so warm-up
  begins in the typical set; warm-up adapts the step size (dual averaging, Hoffman & Gelman
  2014) and a diagonal mass matrix in Stan's windows, in base space.
* The sampler is multinomial NUTS with Stan's generalized no-U-turn criterion (Betancourt
  2017; :mod:`pyro_nf.infer.nuts`, which knows nothing of flows or models: it sees
  :class:`BaseSpaceTarget` as a potential and its gradient), one chain per process (``fork``) where the machine has more than one core, else one
  chain after another; every chain has its own seeded generator, so the draws are the same
  either way.
* Divergences mean the flow did not straighten some region (a funnel's neck beyond where the
  flow was fitted). With the default ``target_accept_prob`` the target is 0.9; if those chains
  diverge, fresh chains run once at 0.95 (smaller steps) and are returned instead, whatever
  they show (:func:`sample_chains`): the second run is chosen before it is seen, so its draws
  are not selected for looking good.
* All draws are pushed through :math:`F` at once and unpacked into the sites (plates included)
  by reshapes and each support's bijection: no per-draw Python loop.
* The result is an ArviZ ``InferenceData`` (posterior with plate dimensions, ``sample_stats``,
  ``log_likelihood``, ``observed_data``; the settings and the diagnostics in ``attrs``). The
  rank-normalized split :math:`\hat R` and the bulk and tail ESS (Vehtari et al. 2021, by
  ArviZ) and the divergences are checked; a :class:`RefinementWarning` names the numbers when
  :math:`\hat R > 1.01`, an ESS is below 100 per chain, or a transition diverged.

References:
    Hoffman, Sountsov, Dillon, Langmore, Tran & Vasudevan, *NeuTra-lizing Bad Geometry in
    Hamiltonian Monte Carlo Using Neural Transport*, 2019.
    Hoffman & Gelman, *The No-U-Turn Sampler*, JMLR 2014.
    Betancourt, *A Conceptual Introduction to Hamiltonian Monte Carlo*, 2017.
    Vehtari, Gelman, Simpson, Carpenter & Bürkner, *Rank-normalization, folding, and
    localization: an improved R-hat*, Bayesian Analysis 2021.
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import site_is_subsample

from ..diagnostics.draws import check_callable, check_keywords, check_model_kwargs
from ..diagnostics.inference_data import flat_convergence, inference_data_from_samples
from ..transforms import ChainTransform
from ..utils.validation import check_positive_int
from ..utils.warn import warn_at_caller
from .nuts import MAX_INIT_TRIES, STAT_NAMES, ChainSettings, InitializationError, run_chain

__all__ = [
    "BaseSpaceTarget",
    "ESCALATED_ACCEPT_PROB",
    "JIT_CHECK_POINTS",
    "MAX_RHAT",
    "MIN_ESS_PER_CHAIN",
    "REFINE_KEYWORDS",
    "RefinementWarning",
    "TARGET_ACCEPT_PROB",
    "available_cores",
    "can_fork",
    "convergence_summary",
    "flat_labels",
    "refine",
    "sample_chains",
    "warn_if_unconverged",
]

#: Largest rank-normalized split R-hat accepted without a warning.
MAX_RHAT = 1.01
#: Smallest bulk and tail ESS per chain accepted without a warning.
MIN_ESS_PER_CHAIN = 100
#: The keywords :func:`refine` takes.
REFINE_KEYWORDS = (
    "model_kwargs", "num_chains", "num_warmup", "num_samples", "seed", "target_accept_prob",
    "max_tree_depth", "parallel", "log_likelihood", "jit_compile",
)  # fmt: skip
#: Standard-normal points at which a traced potential (``jit_compile=True``) must agree with
#: the model run eagerly, value and gradient, before it is used.
JIT_CHECK_POINTS = 4


#: :func:`refine`'s default adaptation target: above NUTS's usual 0.8, as Stan advises for
#: hierarchical posteriors, whose residual funnel in the flow's base space otherwise leaves
#: divergences (measured in ``benchmarks/time_to_accuracy.py``).
TARGET_ACCEPT_PROB = 0.9

#: Where chains run at the default target diverge, :func:`refine` runs fresh chains once at this
#: target and returns those (see :func:`sample_chains`).
ESCALATED_ACCEPT_PROB = 0.95


class RefinementWarning(UserWarning):
    """The refined draws failed a convergence check (R-hat, ESS or divergences)."""


# -- the target in base space -------------------------------------------------------------------
class BaseSpaceTarget:
    r"""The posterior of a model pulled back to the base space of a fitted flow guide.

    ``log_density(eps)`` is :math:`\log p(x, T(F(\varepsilon))) + \log\lvert\det J_T\rvert +
    \log\lvert\det J_F(\varepsilon)\rvert` for one point ``eps`` of shape ``(D,)``;
    :meth:`constrain` maps a batch ``(..., D)`` to ``{site: (..., *site_shape)}`` at once. It is
    a :class:`~pyro_nf.infer.nuts.Target` (``dim``, ``dtype``, ``device``,
    :meth:`potential_and_grad`).

    Example:
        >>> import pyro, pyro.distributions as dist, pyro_nf
        >>> def model():
        ...     pyro.sample("s", dist.HalfNormal(1.0))
        >>> guide = pyro_nf.FlowGuide(model, "planar", 2); _ = guide()
        >>> target = BaseSpaceTarget(model, guide, (), {})
        >>> target.dim, target.constrain(torch.zeros(5, 1))["s"].shape
        (1, torch.Size([5]))
    """

    def __init__(self, model: Callable, guide: Any, args: tuple, kwargs: dict) -> None:
        self.args, self.kwargs = args, kwargs
        #: a guide fitted on decentered location–scale sites works (and is refined) there; the
        #: draws are mapped back to the model's own sites (:mod:`pyro_nf.infer.reparam`)
        centering = getattr(guide, "centering", None)
        # a frozen copy: the centeredness is a constant of the target (and of a traced one)
        self.centering = None if centering is None else centering.frozen()
        self.model = model if self.centering is None else self.centering.reparameterized(model)
        # a frozen copy of the flow: no gradient w.r.t. the guide's parameters, and the guide
        # itself is left as it is
        flow = getattr(guide, "flow", None)
        if isinstance(flow, torch.nn.Module) and hasattr(flow, "build_transforms"):
            self.transform = ChainTransform(
                copy.deepcopy(flow).requires_grad_(False).build_transforms()
            )
        else:
            self.transform = guide.get_transform()
        self.sites: list[tuple[str, Any, tuple[int, ...], tuple[int, ...]]] = []
        for name, site in guide.prototype_trace.iter_stochastic_nodes():
            bijection = biject_to(site["fn"].support)
            shape = tuple(bijection.inv(site["value"]).shape)
            self.sites.append((name, bijection, shape, tuple(site["value"].shape)))
        self.dim = sum(math.prod(s[2]) for s in self.sites)
        if self.dim != guide.latent_dim:  # pragma: no cover - a FlowGuide is always consistent
            raise ValueError(f"guide: its sites add up to {self.dim}, not {guide.latent_dim}")
        #: a tensor with the guide's dtype and device (for new tensors)
        self.like = guide.get_base_dist().mean
        #: what :meth:`potential_and_grad` evaluates: :meth:`log_density`, or its trace
        self.density_fn: Callable[[torch.Tensor], torch.Tensor] = self.log_density

    @property
    def compiled(self) -> bool:
        """Whether :meth:`compile` replaced :meth:`log_density` by its trace."""
        return self.density_fn != self.log_density

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of base-space points (the guide's)."""
        return self.like.dtype

    @property
    def device(self) -> torch.device:
        """The device of base-space points (the guide's)."""
        return self.like.device

    @property
    def site_names(self) -> list[str]:
        """The latent sites, in the guide's packing order."""
        return [s[0] for s in self.sites]

    def unpack(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({site: constrained value}, log|det J_T|)`` of packed unconstrained ``u (..., D)``;
        the log-determinant has the batch shape ``u.shape[:-1]``."""
        batch = u.shape[:-1]
        values, log_det, pos = {}, u.new_zeros(batch), 0
        for name, bijection, shape, _ in self.sites:
            size = math.prod(shape)
            block = u[..., pos : pos + size].reshape(tuple(batch) + shape)
            value = bijection(block)
            ladj = bijection.log_abs_det_jacobian(block, value)
            log_det = log_det + ladj.reshape(tuple(batch) + (-1,)).sum(-1)
            values[name] = value
            pos += size
        return values, log_det

    @torch.no_grad()
    def constrain(self, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        """All base-space draws ``eps (..., D)`` as the model's constrained site values, in one
        pass (through the decentering map too, where the guide has one)."""
        values = self.unpack(self.transform(eps))[0]
        if self.centering is None:
            return values
        batch = tuple(eps.shape[:-1])
        flat = {k: v.reshape((-1,) + tuple(v.shape[len(batch) :])) for k, v in values.items()}
        out = self.centering.to_original_batched(flat, *self.args, **self.kwargs)
        return {k: v.reshape(batch + tuple(v.shape[1:])) for k, v in out.items()}

    def log_density(self, eps: torch.Tensor) -> torch.Tensor:
        r""":math:`\log \pi(\varepsilon)` up to a constant, for one point ``eps (D,)``."""
        u, log_det_flow = self.transform.forward_and_log_det(eps)
        values, log_det_t = self.unpack(u)
        conditioned = poutine.condition(self.model, data=values)
        # no argument checks or NaN hooks on every gradient evaluation (values are in their
        # supports by construction; a NaN or inf density is a divergence)
        with pyro.validation_enabled(False):
            trace = poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)
            return trace.log_prob_sum() + log_det_t + log_det_flow

    def potential_and_grad(self, eps: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(U, dU/deps)`` at ``eps``; ``(inf, 0)`` where the model raises or gives NaN."""
        eps = eps.detach().requires_grad_(True)
        with torch.enable_grad():
            try:
                potential = -self.density_fn(eps)
            except (ValueError, RuntimeError):
                return math.inf, torch.zeros_like(eps.detach())
            if not bool(torch.isfinite(potential)):
                return math.inf, torch.zeros_like(eps.detach())
            (grad,) = torch.autograd.grad(potential, eps)
        if not bool(torch.isfinite(grad).all()):
            return math.inf, torch.zeros_like(grad)
        return float(potential.detach()), grad

    def compile(self) -> str | None:
        """Trace :meth:`log_density` with ``torch.jit.trace`` (the tensor operations recorded
        once and replayed without the Python and Pyro overhead of a model run) and use the
        trace if it agrees with the model run eagerly, value and gradient, at
        :data:`JIT_CHECK_POINTS` standard-normal points. A model whose control flow depends on
        its values is traced along one branch only: the check catches that where a test point
        takes another branch. Returns ``None`` when the trace is used, else why not."""
        gen = torch.Generator(device="cpu").manual_seed(0)
        points = torch.randn(JIT_CHECK_POINTS, self.dim, generator=gen, dtype=torch.float64)
        points = points.to(self.like)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings: the check below decides
                with pyro.validation_enabled(False):
                    traced = torch.jit.trace(self.log_density, (points[0],), check_trace=False)
            eager = [self.potential_and_grad(x) for x in points]
            self.density_fn = traced
            replayed = [self.potential_and_grad(x) for x in points]
        except Exception as err:  # noqa: BLE001 - any failure to trace means: run eagerly
            self.density_fn = self.log_density
            return f"the model could not be traced ({type(err).__name__}: {str(err)[:120]})"
        tol = 1e-4 if self.like.dtype == torch.float32 else 1e-8
        for (u0, g0), (u1, g1) in zip(eager, replayed, strict=True):
            if not (math.isclose(u0, u1, rel_tol=tol, abs_tol=tol) and torch.allclose(
                g0, g1, rtol=tol * 10, atol=tol * 10
            )):  # fmt: skip
                self.density_fn = self.log_density
                return (
                    "the traced potential disagrees with the model at a test point "
                    f"({u1!r} vs {u0!r}; control flow that depends on the values?)"
                )
        return None

    def check_sites(self, eps: torch.Tensor) -> None:
        """Raise unless the model, conditioned on the guide's sites, has no other latent site."""
        with torch.no_grad():
            values, _ = self.unpack(self.transform(eps))
            conditioned = poutine.condition(self.model, data=values)
            trace = poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)
        extra = [
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample"
            and not site["is_observed"]
            and not site_is_subsample(site)
            and not site["infer"].get("is_auxiliary")
            and name not in values
        ]
        if extra:
            raise ValueError(
                f"guide: the model has latent sites the guide does not cover: {extra}; "
                "refine needs a guide fitted to this model"
            )


# -- chains in parallel or one after another ----------------------------------------------------
_CHILD_JOB: tuple[BaseSpaceTarget, ChainSettings] | None = None


def _chain_in_child(chain: int) -> dict[str, Any]:
    """Run in a forked worker: the job was set before the fork (nothing of it is pickled)."""
    assert _CHILD_JOB is not None
    return run_chain(_CHILD_JOB[0], chain, _CHILD_JOB[1])


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def can_fork(target: BaseSpaceTarget) -> bool:
    """Chains can run in forked processes: Linux, and the guide's tensors on the CPU."""
    return sys.platform.startswith("linux") and target.like.device.type == "cpu"


def _run_chains(
    target: BaseSpaceTarget,
    settings: ChainSettings,
    num_chains: int,
    processes: int,
    first_chain: int = 0,
) -> list[dict[str, Any]]:
    """Every chain's result, in chain order (chains ``first_chain, first_chain + 1, ...``, each
    with its own random stream): ``processes`` forked workers, or in this process one after
    another when ``processes`` is 1."""
    global _CHILD_JOB
    chain_ids = range(first_chain, first_chain + num_chains)
    try:
        if processes <= 1:
            return [run_chain(target, c, settings) for c in chain_ids]
        _CHILD_JOB = (target, settings)
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            return pool.map(_chain_in_child, chain_ids, chunksize=1)
    except InitializationError:
        raise ValueError(
            f"model: the log density is not finite at any of {MAX_INIT_TRIES} draws of the "
            "guide; refine needs a guide whose draws the model accepts"
        ) from None
    finally:
        _CHILD_JOB = None


# -- checks, diagnostics and the InferenceData --------------------------------------------------
def _check_guide(guide: Any) -> None:
    """Raise unless ``guide`` is a fitted flow guide (an ``AutoContinuous`` that has run)."""
    if not all(hasattr(guide, a) for a in ("get_transform", "get_base_dist", "get_posterior")):
        raise ValueError(
            "guide: expected a fitted pyro_nf.FlowGuide (an AutoContinuous guide with a flow), "
            f"got {type(guide).__name__}"
        )
    if getattr(guide, "prototype_trace", None) is None:
        raise ValueError(
            "guide: expected a fitted FlowGuide, got one that has never run; fit it first "
            "(pyro_nf.fit(model, guide, ...)) or call it once"
        )


def _processes(parallel: Any, num_chains: int, target: BaseSpaceTarget) -> int:
    """How many worker processes run the chains (1: in this process, one after another)."""
    if parallel is not None and not isinstance(parallel, bool):
        raise ValueError(f"parallel: expected None, True or False, got {parallel!r}")
    if parallel is True and not can_fork(target):
        raise ValueError(
            "parallel: True needs Linux and a guide on the CPU (chains run in forked "
            f"processes); got platform {sys.platform!r}, device {target.like.device}"
        )
    if parallel is False or num_chains == 1 or not can_fork(target):
        return 1
    cores = available_cores()
    if parallel is None and cores < 2:
        return 1
    return max(2, min(num_chains, cores))


def sample_chains(
    target: BaseSpaceTarget,
    settings: ChainSettings,
    num_chains: int,
    processes: int = 1,
    escalate: bool = False,
) -> tuple[list[dict[str, Any]], ChainSettings, dict[str, Any]]:
    """Run ``num_chains`` chains; with ``escalate``, where any of them diverged after warm-up,
    run ``num_chains`` fresh chains (their own random streams) once more at
    :data:`ESCALATED_ACCEPT_PROB` and return those, whatever they show. The second run does
    not depend on the first except through the decision to run it, so its draws are as valid
    as the first's; and there is no third run, so no run is picked for looking good.

    Returns ``(chains, the settings they ran with, first)``: ``first`` is empty, or describes
    the discarded run (``first_run_divergences``, ``first_run_target_accept_prob``,
    ``first_run_chain_elapsed_s``).
    """
    chains = _run_chains(target, settings, num_chains, processes)
    diverged = int(sum(c["diverging"].sum() for c in chains))
    if not escalate or diverged == 0 or settings.target_accept_prob >= ESCALATED_ACCEPT_PROB:
        return chains, settings, {}
    raised = replace(settings, target_accept_prob=ESCALATED_ACCEPT_PROB)
    first = {
        "first_run_divergences": diverged,
        "first_run_target_accept_prob": settings.target_accept_prob,
        "first_run_chain_elapsed_s": [round(float(c["elapsed_s"]), 3) for c in chains],
    }
    return _run_chains(target, raised, num_chains, processes, num_chains), raised, first


def _checked_settings(
    num_chains: Any, num_warmup: Any, num_samples: Any, seed: Any, accept: Any, depth: Any
) -> tuple[int, ChainSettings]:
    """``(num_chains, settings)``, checked in this order (``ValueError`` naming the first bad
    one); refine needs at least 4 draws a chain (split R-hat)."""
    num_chains = check_positive_int("num_chains", num_chains)
    check_positive_int("num_warmup", num_warmup, minimum=0)
    check_positive_int("num_samples", num_samples, minimum=4)
    settings = ChainSettings(num_warmup, num_samples, seed, accept, depth)
    return num_chains, settings


def convergence_summary(
    samples: dict[str, np.ndarray], chains: list[dict[str, Any]]
) -> dict[str, Any]:
    """Rank-normalized split R-hat, bulk/tail ESS (ArviZ) over every coordinate of every site,
    the worst coordinates, and the divergences (after warm-up)."""
    import arviz as az

    diag = flat_convergence(az.from_dict(posterior=samples))
    labels = flat_labels(samples)
    out: dict[str, Any] = {"divergences": int(sum(c["diverging"].sum() for c in chains))}
    for key, worst in (("rhat", "max"), ("ess_bulk", "min"), ("ess_tail", "min")):
        values = diag[key].nan_to_num(nan=math.inf if worst == "max" else 0.0)
        i = int(values.argmax() if worst == "max" else values.argmin())
        out[f"{worst}_{key}"], out[f"{worst}_{key}_at"] = float(diag[key][i]), labels[i]
    return out


def flat_labels(samples: dict[str, np.ndarray]) -> list[str]:
    """``site`` or ``site[i,j]`` for every coordinate, in the order of ``samples`` (C order)."""
    labels = []
    for name, value in samples.items():
        shape = value.shape[2:]
        labels += (
            [name]
            if not shape
            else [f"{name}[{','.join(map(str, i))}]" for i in np.ndindex(*shape)]
        )
    return labels


def warn_if_unconverged(summary: dict[str, Any], num_chains: int, num_samples: int) -> list[str]:
    """Issue a :class:`RefinementWarning` naming each failed check; return the messages."""
    problems = []
    if num_chains > 1 and not summary["max_rhat"] <= MAX_RHAT:
        problems.append(f"R-hat {summary['max_rhat']:.3f} > {MAX_RHAT} at {summary['max_rhat_at']}")
    floor = MIN_ESS_PER_CHAIN * num_chains
    for kind in ("bulk", "tail"):
        ess = summary[f"min_ess_{kind}"]
        if not ess >= floor:
            problems.append(
                f"{kind} ESS {ess:.0f} < {floor} ({MIN_ESS_PER_CHAIN} per chain) at "
                f"{summary[f'min_ess_{kind}_at']}"
            )
    if summary["divergences"]:
        total = num_chains * num_samples
        problems.append(f"{summary['divergences']} divergent transitions of {total}")
    if problems:
        warn_at_caller(  # at the user's line, via refine() or report.refine() alike
            "refine: the draws failed a convergence check: "
            + "; ".join(problems)
            + ". Run longer (num_warmup, num_samples), raise target_accept_prob, or fit the "
            "guide better (divergences mean geometry the flow did not straighten)",
            RefinementWarning,
        )
    return problems


def _stack_chains(target: BaseSpaceTarget, chains: list[dict[str, Any]]) -> tuple[dict, dict]:
    """``({site: (C, S, *shape)}, {stat: (C, S)})``: all base-space draws pushed through the flow
    and the bijections in one vectorized pass."""
    eps = torch.from_numpy(np.stack([c["draws"] for c in chains])).to(target.like)
    values = target.constrain(eps)
    samples = {k: v.detach().cpu().numpy() for k, v in values.items()}
    stats = {name: np.stack([c[name] for c in chains]) for name in STAT_NAMES}
    return samples, stats


def refine(
    model: Callable,
    guide: Any,
    *args: Any,
    model_kwargs: dict[str, Any] | None = None,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    seed: int = 0,
    target_accept_prob: float | None = None,
    max_tree_depth: int = 10,
    parallel: bool | None = None,
    log_likelihood: bool = True,
    jit_compile: bool = False,
    **unknown: Any,
) -> Any:
    r"""Refine a fitted flow guide to asymptotically exact posterior draws: NUTS in the flow's
    base space (NeuTra; see the module docstring).

    Args:
        model: the Pyro model the guide was fitted to; ``*args`` and ``model_kwargs`` are its
            positional and keyword arguments (nothing else is passed to it).
        guide: a fitted :class:`~pyro_nf.FlowGuide`.
        num_chains, num_warmup, num_samples: chains, warm-up (adaptation) iterations and kept
            draws per chain.
        seed: chain ``c`` has its own generator seeded by ``(seed, c)``; the global random
            state is neither used nor changed.
        target_accept_prob, max_tree_depth: NUTS's adaptation target and largest tree depth.
            ``None`` (default): :data:`TARGET_ACCEPT_PROB`, and where those chains diverge,
            fresh chains once at :data:`ESCALATED_ACCEPT_PROB`, which are returned (the
            first run is described in ``attrs``: ``first_run_divergences``, ...). A number:
            that target, no second run.
        parallel: ``None``: chains in forked processes (Linux, CPU) when the machine has more
            than one core, else one after another; ``True``/``False`` force either. The
            draws are the same either way.
        log_likelihood: add the ``log_likelihood`` group (for ``az.loo``).
        jit_compile: trace the potential once with ``torch.jit.trace`` and replay the trace
            (:meth:`BaseSpaceTarget.compile`; about half the time per gradient on a
            logistic regression). Used only if it agrees with the model at
            :data:`JIT_CHECK_POINTS` test points; otherwise a :class:`RefinementWarning` says
            why and the model runs as written. Opt-in, as Pyro's ``jit_compile``: a model
            whose control flow depends on its values is traced along one branch.
        Any other keyword is refused (``TypeError`` naming it).

    Returns:
        An ArviZ ``InferenceData`` with ``posterior`` (plate dimensions named),
        ``sample_stats`` (:data:`STAT_NAMES`; ``lp`` is the base-space log density),
        ``log_likelihood``, ``observed_data``, and in ``attrs`` the settings, the worst
        R-hat and ESS (and where), the divergences and the time. A
        :class:`RefinementWarning` names the numbers of every failed check.

    Example:
        >>> import pyro, pyro.distributions as dist, pyro_nf
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("obs", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([0.5, 1.5, 1.0])   # mu | y ~ N(0.75, 0.5^2)
        >>> guide = pyro_nf.FlowGuide(model, "planar", 1); _ = guide(y)
        >>> with warnings.catch_warnings():   # 30 draws a chain: too few for the ESS check
        ...     warnings.simplefilter("ignore", RefinementWarning)
        ...     idata = refine(model, guide, y, num_chains=2, num_warmup=30, num_samples=30,
        ...                    parallel=False)
        >>> idata.posterior["mu"].shape, idata.log_likelihood["y"].dims
        ((2, 30), ('chain', 'draw', 'obs'))
    """
    check_keywords("refine", unknown, REFINE_KEYWORDS)
    accept = TARGET_ACCEPT_PROB if target_accept_prob is None else target_accept_prob
    target, kwargs, num_chains, settings, processes = _prepared(
        model, guide, args, model_kwargs,
        (num_chains, num_warmup, num_samples, seed, accept, max_tree_depth),
        parallel, log_likelihood, jit_compile,
    )  # fmt: skip
    t0 = time.perf_counter()
    escalate = target_accept_prob is None
    chains, settings, first = sample_chains(target, settings, num_chains, processes, escalate)
    elapsed = time.perf_counter() - t0
    samples, stats = _stack_chains(target, chains)
    summary = convergence_summary(samples, chains)
    attrs = _attrs(settings, num_chains, processes, summary, chains, elapsed) | first
    attrs["jit_compile"] = int(target.compiled)
    warn_if_unconverged(summary, num_chains, settings.num_samples)
    return inference_data_from_samples(
        model, {k: torch.from_numpy(v) for k, v in samples.items()}, *args,
        model_kwargs=kwargs, sample_stats=stats, attrs=attrs, log_likelihood=log_likelihood,
    )  # fmt: skip


def _prepared(
    model: Any,
    guide: Any,
    args: tuple,
    model_kwargs: Any,
    numbers: tuple,
    parallel: Any,
    log_likelihood: Any,
    jit_compile: Any = False,
) -> tuple[BaseSpaceTarget, dict, int, ChainSettings, int]:
    """Check :func:`refine`'s arguments (before any sampling) and build the target:
    ``(target, model kwargs, num_chains, settings, processes)``."""
    check_callable("model", model, "a callable Pyro model")
    _check_guide(guide)
    kwargs = check_model_kwargs(model_kwargs)
    num_chains, settings = _checked_settings(*numbers)
    for name, flag in (("log_likelihood", log_likelihood), ("jit_compile", jit_compile)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}: expected True or False, got {flag!r}")
    target = BaseSpaceTarget(model, guide, args, kwargs)
    target.check_sites(torch.zeros_like(target.like))
    if jit_compile:
        why = target.compile()
        if why is not None:
            warn_at_caller(f"jit_compile: {why}; running the model as written", RefinementWarning)
    return target, kwargs, num_chains, settings, _processes(parallel, num_chains, target)


def _attrs(
    settings: ChainSettings,
    num_chains: int,
    processes: int,
    summary: dict[str, Any],
    chains: list[dict[str, Any]],
    elapsed: float,
) -> dict[str, Any]:
    """The ``attrs`` of the result: settings, diagnostics and timing (netCDF-safe values)."""
    return {
        "refine_method": "NeuTra: multinomial NUTS in the flow guide's base space",
        "num_chains": num_chains,
        "num_warmup": settings.num_warmup,
        "num_samples": settings.num_samples,
        "seed": settings.seed,
        "target_accept_prob": settings.target_accept_prob,
        "max_tree_depth": settings.max_tree_depth,
        "mass_matrix": "diagonal (adapted in base space)",
        "processes": processes,
        "elapsed_s": round(elapsed, 3),
        "chain_elapsed_s": [round(float(c["elapsed_s"]), 3) for c in chains],
        "warmup_divergences": int(sum(c["warmup_divergences"] for c in chains)),
        "gradient_evaluations": int(sum(c["n_steps"].sum() for c in chains)),
        **summary,
    }
