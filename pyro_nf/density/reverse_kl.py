r"""Reverse-KL fitting: fit a flow :math:`q` to an unnormalized target density :math:`\tilde p`.

With :math:`p = \tilde p / Z` and :math:`z \sim q`,

.. math::

    \mathrm{KL}(q \,\|\, p) = \mathbb E_q[\log q(z) - \log \tilde p(z)] + \log Z
                           = \log Z - \mathrm{ELBO},\qquad
    \mathrm{ELBO} = \mathbb E_q[\log \tilde p(z) - \log q(z)] \le \log Z,

so maximizing the ELBO minimizes the reverse KL without knowing :math:`Z`. A flow samples
:math:`z = f_\theta(\varepsilon)`, :math:`\varepsilon \sim \mathcal N(0, I)`, and returns
:math:`\log q_\theta(z)` with it (``rsample_and_log_prob``), so the ELBO gradient is the
reparameterization (pathwise) gradient of the Monte-Carlo average over a batch of :math:`B`
samples (Kingma & Welling 2014).

**Annealing** (Rezende & Mohamed 2015, Section 6.1). At step :math:`t` the loss is

.. math::

    \mathcal L_t = \frac1B \sum_{b=1}^{B} \bigl[\log q(z_b) - \beta_t \log \tilde p(z_b)\bigr],
    \qquad \beta_t = \min\bigl(1,\ \beta_0 + t / T_{\mathrm{anneal}}\bigr),

with :math:`\beta_0 = 0.01`: early on the target is flattened (:math:`\tilde p^{\beta}`), so
:math:`q` first spreads out and then contracts onto the target instead of collapsing on the
first mode it finds. From :math:`t \ge (1 - \beta_0) T_{\mathrm{anneal}}` on, :math:`\beta_t = 1`
and :math:`\mathcal L_t` is the negative ELBO estimate. :func:`annealing_beta` is the schedule.

**Estimates.** With :math:`S` independent draws, :math:`\log w_s = \log \tilde p(z_s) - \log
q(z_s)`, :func:`elbo_estimate` returns :math:`\bar w = \frac1S\sum_s \log w_s` with standard
error :math:`\hat\sigma(\log w)/\sqrt S`, and :func:`kl_estimate` returns
:math:`\log Z - \bar w` with the same standard error (:math:`\log Z` is a constant).

**Targets.** ``target`` is any of

* a callable ``log_p(z)`` mapping ``z`` of shape ``(..., D)`` to ``(...)``;
* a :class:`pyro_nf.targets.Target` (its ``log_prob``; its ``log_normalizer`` for the KL);
* a Pyro model taking no arguments (bind data with ``functools.partial``) whose only latent
  site is a vector of shape ``(D,)``, plus any ``pyro.factor`` / observed sites, e.g.
  :func:`pyro_nf.targets.as_pyro_model`. :math:`\log \tilde p(z)` is the sum of the log
  densities of all sites of the model conditioned on ``z`` (``poutine.condition`` +
  ``poutine.trace``), vectorized over a batch of ``z`` by an outer ``pyro.plate``.

A callable whose positional parameters all have defaults (or that has none) is taken to be a
Pyro model, any other callable a log density.

**Restarts.** The reverse KL is mode-seeking and its local optima are real: on U2 some planar
starts end as a straight band that ignores the sine, and which ones do is fixed by the initial
parameters, not by the sampling noise. ``restarts=R`` runs :math:`R` pilots from fresh initial
parameters for ``pilot_steps`` steps each (on the same learning-rate and annealing schedules as
the full run), keeps the pilot with the lowest mean loss over its last steps, and continues it to
``steps``. Start 0 is ``flow``'s current parameters; starts 1.. are drawn by
``flow.reset_parameters()`` (a pyro-nf :class:`~pyro_nf.Flow`), else by calling
``reset_parameters()`` on every top-most submodule that has one (Pyro's transforms,
``nn.Linear``, a wrapped pyro-nf flow). Restarts need a named ``optimizer`` or a factory (not an
instance); ``checkpoint`` then holds the continued run. The history returned is the kept
start's (pilot and continuation) and ``history.pilot_losses`` holds every pilot's final mean
loss. Cost: ``steps + (R - 1) * pilot_steps`` steps.

**Populations.** ``population=R`` trains :math:`R` starts *side by side* (a
:class:`pyro_nf.density.population.Population`; start 0 is ``flow``'s current parameters) for
``steps`` steps. Each step draws ``batch_size`` samples from every active member and minimizes
the sum of the members' own losses, so each member follows its own fit (Adam's updates are
element-wise; only ``clip_norm`` and a non-finite gradient act on all members; a non-finite
*loss* only drops its member, with a warning). At the steps of
:func:`pyro_nf.density.population.halving_steps` (:math:`R = 4`: :math:`T/4` and :math:`T/2`) the
half with the higher mean loss over the last :math:`\min(200, T/20)` steps is dropped, and the
member left is written into ``flow``. Cost: :math:`\sum_t |\mathcal A_t|` member-steps
(:math:`2T` for :math:`R = 4`), in ``steps`` optimizer steps; a pyro-nf flow of planar, radial
and affine layers is sampled for all members in one batched pass. Against restarts, it picks
later (at :math:`T/2` rather than after the pilots) and keeps the survivors training meanwhile.
Not together with ``restarts > 1``, ``pilot_steps``, ``checkpoint``, ``early_stopping`` or
``validate_fn``; needs a named optimizer or a factory. In the history returned, ``losses``,
``smoothed`` and ``best_step`` are the kept member's own (``lrs``, ``grad_norms`` and what a
``callback`` sees are the population's), and ``halvings`` lists ``(step, scores)`` with every
then active member's mean loss over the last steps. Measured comparisons of restarts,
populations and starts: the density tutorial (``docs/tutorials/density.md``) and ``docs/benchmarks.md``.

**Starts.** Planar and radial flows start at the identity by default (``q`` = the base), which
guides and VAEs need. For a reverse-KL fit from one start, a random start is often better
(``planar(init="pyro")``, Pyro's own start and parameter coordinates, on U2;
``radial(init="random")`` on U1), but neither start wins everywhere
(``docs/tutorials/density.md``).

References:
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
    Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014.
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..flows.flow import Flow
from ..training.loop import History, Plateau, train
from ..utils.validation import check_positive_int
from .population import (
    Population,
    draw_with_log_prob,
    halving_steps,
    make_population,
    reset_flow,
)
from .targets import Target

__all__ = [
    "MCEstimate",
    "annealing_beta",
    "as_log_density",
    "default_pilot_steps",
    "elbo_estimate",
    "fit_reverse_kl",
    "kl_estimate",
]

#: Default :math:`\beta_0` of the annealing schedule (Rezende & Mohamed 2015).
DEFAULT_BETA0 = 0.01
_PARTICLE_PLATE = "_reverse_kl_particles"

LogDensity = Callable[[torch.Tensor], torch.Tensor]


class MCEstimate(NamedTuple):
    """A Monte-Carlo estimate: ``value``, its standard error ``se`` and ``num_samples``.

    Example:
        >>> est = MCEstimate(0.0213, 0.0004, 100_000)
        >>> value, se, n = est
        >>> f"{est.value:.4f} ± {est.se:.4f}"
        '0.0213 ± 0.0004'
    """

    value: float
    se: float
    num_samples: int


# ------------------------------------------------------------------------------------------------
# Annealing
# ------------------------------------------------------------------------------------------------
def _check_beta0(beta0: Any) -> float:
    if (
        isinstance(beta0, bool)
        or not isinstance(beta0, int | float)
        or not math.isfinite(beta0)
        or not 0 < beta0 <= 1
    ):
        raise ValueError(f"beta0: expected a float in (0, 1], got {beta0!r}")
    return float(beta0)


def annealing_beta(step: int, anneal_steps: int, beta0: float = DEFAULT_BETA0) -> float:
    r"""The annealing weight :math:`\beta_t = \min(1, \beta_0 + t / T_{\mathrm{anneal}})`.

    Args:
        step: the step :math:`t \ge 0` (steps count from 0).
        anneal_steps: :math:`T_{\mathrm{anneal}} \ge 1`; :math:`\beta` reaches 1 at step
            :math:`(1 - \beta_0) T_{\mathrm{anneal}}`.
        beta0: the initial weight :math:`\beta_0 \in (0, 1]` (default 0.01).

    Returns:
        :math:`\beta_t` as a float in :math:`[\beta_0, 1]`.

    Example:
        >>> [round(annealing_beta(t, 1000), 3) for t in (0, 500, 990, 5000)]
        [0.01, 0.51, 1.0, 1.0]
        >>> annealing_beta(-1, 1000)
        Traceback (most recent call last):
        ...
        ValueError: step: expected an integer >= 0, got -1
    """
    step = check_positive_int("step", step, minimum=0)
    anneal_steps = check_positive_int("anneal_steps", anneal_steps)
    beta0 = _check_beta0(beta0)
    return min(1.0, beta0 + step / anneal_steps)


def _make_schedule(annealing: Any, steps: int, beta0: float) -> Callable[[int], float]:
    if annealing is None or annealing is False:
        return lambda step: 1.0
    if annealing is True:
        anneal_steps = _anneal_length(annealing, steps)
        return lambda step: annealing_beta(step, anneal_steps, beta0)
    if isinstance(annealing, int) and annealing >= 1:
        return lambda step: annealing_beta(step, annealing, beta0)
    if callable(annealing):

        def schedule(step: int) -> float:
            beta = annealing(step)
            if isinstance(beta, torch.Tensor) and beta.numel() == 1:
                beta = float(beta)
            if (
                isinstance(beta, bool)
                or not isinstance(beta, int | float)
                or not math.isfinite(beta)
                or beta < 0
            ):
                raise ValueError(
                    f"annealing: expected the schedule to return a finite float >= 0, got "
                    f"{beta!r} at step {step}"
                )
            return float(beta)

        return schedule
    raise ValueError(
        "annealing: expected True (T_anneal = steps // 10), an integer T_anneal >= 1, a "
        f"callable step -> beta, or False/None (off), got {annealing!r}"
    )


# ------------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------------
def _is_pyro_model(fn: Callable) -> bool:
    """A callable that can be called without arguments is a model; else a log density."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: treat as a log density
        return False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            return False
        if p.kind is p.VAR_POSITIONAL:
            return False
    return True


def _trace_model(model: Callable) -> Trace:
    """One trace of ``model`` (it draws the latent), leaving the RNG state as it was."""
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            return poutine.trace(model).get_trace()
    except Exception as e:
        raise ValueError(
            f"target: expected a Pyro model that runs without arguments (bind them with "
            f"functools.partial), got one that raised {type(e).__name__}: {e}"
        ) from e


def _latent_site(trace: Trace, dim: int | None) -> tuple[str, int]:
    """Name and size ``D`` of the model's one latent site, a vector of shape ``(D,)``."""
    latent = [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]
    if len(latent) != 1:
        raise ValueError(
            f"target: expected a Pyro model with exactly one latent sample site, got "
            f"{len(latent)}: {[name for name, _ in latent]}"
        )
    name, site = latent[0]
    fn = site["fn"]
    if len(fn.event_shape) != 1 or len(fn.batch_shape) != 0:
        raise ValueError(
            f"target: expected the latent site {name!r} to be one vector (batch_shape (), "
            f"event_shape (D,); use .to_event(1)), got batch_shape {tuple(fn.batch_shape)} and "
            f"event_shape {tuple(fn.event_shape)}"
        )
    site_dim = int(fn.event_shape[0])
    if dim is not None and dim != site_dim:
        raise ValueError(
            f"target: expected a latent site of size {dim} (the flow's dim), got site {name!r} "
            f"of size {site_dim}"
        )
    return name, site_dim


def _plate_nesting(trace: Trace) -> int:
    """How many batch dimensions the model's vectorized plates use (the particle plate goes
    to the left of them)."""
    nesting = 0
    for node in trace.nodes.values():
        if node["type"] == "sample":
            for frame in node["cond_indep_stack"]:
                if frame.vectorized:
                    nesting = max(nesting, -frame.dim)
    return nesting


def _summed_log_prob(trace: Trace, nesting: int) -> torch.Tensor:
    """Per particle, the sum of every sample site's log density (summed over the model's own
    plates) of a trace run inside the particle plate."""
    trace.compute_log_prob()
    total = None
    for node in trace.nodes.values():
        if node["type"] != "sample" or site_is_subsample(node):
            continue
        lp = node["log_prob"]
        if lp.dim() > nesting + 1:
            raise ValueError(
                f"target: site {node['name']!r} has log_prob shape {tuple(lp.shape)}: more "
                f"batch dimensions than the model's plates ({nesting}); declare its batch "
                "dimensions with pyro.plate or .to_event()"
            )
        lp = lp.reshape((1,) * (nesting + 1 - lp.dim()) + lp.shape)
        if nesting:
            lp = lp.sum(dim=tuple(range(1, nesting + 1)))
        total = lp if total is None else total + lp
    return total


def _model_log_density(model: Callable, dim: int | None) -> tuple[LogDensity, int]:
    """The log density ``z (..., D) -> (...)`` of a Pyro model with one latent vector site:
    the model conditioned on a batch of ``z``, vectorized by an outer particle plate."""
    trace = _trace_model(model)
    name, site_dim = _latent_site(trace, dim)
    nesting = _plate_nesting(trace)

    def log_density(z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        n = math.prod(batch)
        flat = z.reshape((n,) + (1,) * nesting + (site_dim,))
        with pyro.plate(_PARTICLE_PLATE, n, dim=-(nesting + 1)):
            tr = poutine.trace(poutine.condition(model, data={name: flat})).get_trace()
        return _summed_log_prob(tr, nesting).expand(n).reshape(batch)

    return log_density, site_dim


def as_log_density(target: Any, dim: int | None = None) -> tuple[LogDensity, int | None]:
    r"""Turn a target into a log-density function ``z (..., D) -> log p̃(z) (...)``.

    Args:
        target: a callable log density, a :class:`~pyro_nf.targets.Target` or a Pyro model
            with one vector latent site (see the module docstring).
        dim: the expected event size ``D`` (checked against the target when it knows its own).

    Returns:
        ``(log_density, dim)``; ``dim`` is ``None`` for a plain callable (it cannot tell).

    Example:
        >>> from pyro_nf.targets import as_pyro_model, get_target
        >>> target = get_target("U1")
        >>> z = torch.randn(5, 2)
        >>> from_model, d = as_log_density(as_pyro_model(target))
        >>> d, torch.equal(from_model(z), target.log_prob(z))
        (2, True)
        >>> as_log_density(target, dim=3)
        Traceback (most recent call last):
        ...
        ValueError: target: expected a target of dimension 3 (the flow's dim), got U1 of dimension 2
    """
    if isinstance(target, Target):
        if dim is not None and target.dim != dim:
            raise ValueError(
                f"target: expected a target of dimension {dim} (the flow's dim), got "
                f"{target.name} of dimension {target.dim}"
            )
        return target.log_prob, target.dim
    if not callable(target):
        raise ValueError(
            "target: expected a callable log density z -> log p(z), a pyro_nf.targets.Target or "
            f"a Pyro model, got {type(target).__name__}"
        )
    if _is_pyro_model(target):
        return _model_log_density(target, dim)
    return target, dim


def _log_normalizer_of(target: Any) -> float | None:
    if isinstance(target, Target):
        return target.log_normalizer
    inner = getattr(target, "target", None)  # models from targets.as_pyro_model
    return inner.log_normalizer if isinstance(inner, Target) else None


# ------------------------------------------------------------------------------------------------
# Flows
# ------------------------------------------------------------------------------------------------
def _flow_dim(flow: Any) -> int:
    """Check ``flow`` and return its event size ``D``."""
    if isinstance(flow, Flow):
        if flow.context_dim is not None:
            raise ValueError(
                f"flow: expected a directly parameterized flow (context_dim=None), got an "
                f"amortized flow with context_dim={flow.context_dim}"
            )
        return flow.dim
    if not isinstance(flow, nn.Module):
        raise ValueError(
            "flow: expected a pyro_nf.Flow or an nn.Module whose call flow() returns a "
            f"reparameterizable distribution, got {type(flow).__name__}"
        )
    q = flow()
    shape = getattr(q, "event_shape", None)
    if not getattr(q, "has_rsample", False) or shape is None or len(shape) != 1:
        raise ValueError(
            "flow: expected flow() to return a reparameterizable distribution with event_shape "
            f"(D,), got {type(q).__name__} with event_shape {shape}"
        )
    if len(getattr(q, "batch_shape", ())) != 0:
        raise ValueError(
            f"flow: expected flow() to have batch_shape (), got {tuple(q.batch_shape)}"
        )
    return int(shape[0])


# ------------------------------------------------------------------------------------------------
# Fitting
# ------------------------------------------------------------------------------------------------
def fit_reverse_kl(
    flow: nn.Module,
    target: Any,
    steps: int = 10_000,
    batch_size: int = 256,
    lr: float = 1e-2,
    annealing: bool | int | Callable[[int], float] | None = True,
    *,
    beta0: float = DEFAULT_BETA0,
    restarts: int = 1,
    pilot_steps: int | None = None,
    population: int = 1,
    **train_kwargs: Any,
) -> History:
    r"""Fit ``flow`` to the unnormalized ``target`` by minimizing the reverse KL: each step takes
    the annealed loss ``mean(log q(z) - beta_t * log p̃(z))`` over ``batch_size`` draws ``z``.

    Args:
        flow: a directly parameterized :class:`~pyro_nf.Flow` of dim ``D``, or an ``nn.Module``
            whose ``flow()`` is a reparameterizable distribution with event shape ``(D,)``.
        target: a callable ``log p̃`` (``(..., D) -> (...)``), a
            :class:`~pyro_nf.targets.Target`, or a Pyro model with one latent vector site.
        steps, batch_size, lr: optimizer steps, samples per step ``B`` (per member with a
            population), learning rate (Adam unless ``optimizer=`` is given).
        annealing: ``True`` (:math:`T_{\mathrm{anneal}}` = ``steps // 10``), an integer
            :math:`T_{\mathrm{anneal}} \ge 1`, a callable ``step -> beta``, or ``False``/``None``.
        beta0: :math:`\beta_0` of the built-in schedule (default 0.01).
        restarts, pilot_steps: :math:`R` starts run as pilots of ``pilot_steps`` steps
            (default :func:`default_pilot_steps`), the best continued (module docstring).
        population: :math:`R` starts side by side, with successive halving (module docstring).
        **train_kwargs: to :func:`pyro_nf.training.train` (the loop); ``lr_schedule`` defaults to
            ``"cosine"`` here (``None``: a constant rate) and ``desc`` to ``"reverse KL"``.

    Returns:
        The :class:`~pyro_nf.training.History`; ``losses`` are the annealed losses
        :math:`\mathcal L_t` (negative ELBO estimates once :math:`\beta_t = 1`).

    Example:
        >>> import pyro_nf
        >>> from pyro_nf.targets import get_target
        >>> _ = torch.manual_seed(0)
        >>> flow, u1 = pyro_nf.planar(2, depth=8), get_target("U1")
        >>> _ = fit_reverse_kl(flow, u1, steps=300, progress=False)
        >>> kl, se, _ = kl_estimate(flow, u1, num_samples=20_000)
        >>> kl < 0.5, se < 0.05
        (True, True)
        >>> history = fit_reverse_kl(flow, u1, steps=300, restarts=3, pilot_steps=100, progress=False)
        >>> history.num_steps, len(history.pilot_losses)
        (300, 3)
    """
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    _check_lr(lr)
    schedule = _make_schedule(annealing, steps, _check_beta0(beta0))
    _check_reserved_keys(train_kwargs)
    restarts, population, pilot_steps = _check_starts(
        restarts, population, pilot_steps, steps, annealing
    )
    log_density, _ = as_log_density(target, _flow_dim(flow))
    train_kwargs = {"lr_schedule": "cosine", "desc": "reverse KL", **train_kwargs}
    member_losses = _annealed_losses(log_density, schedule)
    if population > 1:
        return _fit_population(flow, member_losses, steps, batch_size, lr, population, train_kwargs)

    def loss_fn(step: int) -> torch.Tensor:
        return member_losses(step, *draw_with_log_prob(flow, batch_size))

    if restarts == 1:
        return train(loss_fn, flow, steps, lr=lr, **train_kwargs)
    return _fit_with_restarts(loss_fn, flow, steps, lr, restarts, pilot_steps, train_kwargs)


def _check_lr(lr: Any) -> None:
    """Raise unless ``lr`` is a positive finite float."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr: expected a positive finite float, got {lr!r}")


def _check_reserved_keys(train_kwargs: dict[str, Any]) -> None:
    """Raise if ``train_kwargs`` sets what :func:`fit_reverse_kl` builds itself."""
    for key in ("loss_fn", "params"):
        if key in train_kwargs:
            raise ValueError(f"{key}: fit_reverse_kl builds it itself; got {key}= in train_kwargs")


def _check_starts(
    restarts: Any, population: Any, pilot_steps: Any, steps: int, annealing: Any
) -> tuple[int, int, int]:
    """Checked ``(restarts, population, pilot_steps)``: one multi-start strategy at most, and
    the pilot length (default :func:`default_pilot_steps`) at most ``steps``."""
    restarts = check_positive_int("restarts", restarts)
    population = check_positive_int("population", population)
    if population > 1 and restarts > 1:
        raise ValueError(
            f"population: expected 1 when restarts > 1 (they are two multi-start strategies), "
            f"got population={population} with restarts={restarts}"
        )
    if population > 1 and pilot_steps is not None:
        raise ValueError(
            f"pilot_steps: expected None with population > 1 (pilots belong to restarts), got "
            f"{pilot_steps!r}"
        )
    if pilot_steps is None:
        pilot_steps = default_pilot_steps(steps, annealing)
    pilot_steps = check_positive_int("pilot_steps", pilot_steps)
    if pilot_steps > steps:
        raise ValueError(f"pilot_steps: expected at most steps={steps}, got {pilot_steps}")
    return restarts, population, pilot_steps


def _annealed_losses(
    log_density: LogDensity, schedule: Callable[[int], float]
) -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(step, z, log_q) ->`` the annealed loss ``log q - beta_t log p̃`` averaged over the
    sample dimension (dim 0), one value per member for a population's draws."""

    def member_losses(step: int, z: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        log_p = log_density(z)
        if not isinstance(log_p, torch.Tensor) or log_p.shape != log_q.shape:
            got = tuple(log_p.shape) if isinstance(log_p, torch.Tensor) else type(log_p).__name__
            raise ValueError(
                f"target: expected log densities of shape {tuple(log_q.shape)} for z of shape "
                f"{tuple(z.shape)}, got {got}"
            )
        return (log_q - schedule(step) * log_p).mean(0)

    return member_losses


def _anneal_length(annealing: Any, steps: int) -> int:
    """``T_anneal`` of a built-in schedule (0 for none or a callable)."""
    if annealing is True:
        return max(1, steps // 10)
    if isinstance(annealing, int) and not isinstance(annealing, bool):
        return annealing
    return 0


def default_pilot_steps(steps: int, annealing: Any = True) -> int:
    """The pilot length ``fit_reverse_kl(restarts=...)`` uses when ``pilot_steps`` is not given:
    twice the annealing length (at most ``steps``), or ``steps // 5`` without built-in annealing.

    Example:
        >>> default_pilot_steps(10_000), default_pilot_steps(10_000, 300), default_pilot_steps(10_000, False)
        (2000, 600, 2000)
    """
    anneal = _anneal_length(annealing, steps)
    return min(steps, 2 * anneal) if anneal else max(1, steps // 5)


def _fit_with_restarts(
    loss_fn: Callable[[int], torch.Tensor],
    flow: nn.Module,
    steps: int,
    lr: float,
    restarts: int,
    pilot_steps: int,
    train_kwargs: dict[str, Any],
) -> History:
    """Pilots from ``restarts`` fresh starts; continue the best one (lowest final mean loss)."""
    _check_fresh_optimizer(train_kwargs, "restarts")
    user_callback = train_kwargs.pop("callback", None)
    final_path = train_kwargs.pop("checkpoint", None)
    window = max(1, min(200, pilot_steps // 5))
    scores: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pyro_nf_restarts_") as tmp:
        paths = [os.path.join(tmp, f"start{r}.pt") for r in range(restarts)]
        for r, path in enumerate(paths):
            if r > 0:
                reset_flow(flow)

            def stop_after_pilot(step: int, history: History) -> bool:
                stop = bool(user_callback(step, history)) if user_callback else False
                return stop or step + 1 >= pilot_steps

            history = train(
                loss_fn, flow, steps, lr=lr, checkpoint=path, resume=False,
                callback=stop_after_pilot, **train_kwargs,
            )  # fmt: skip
            scores.append(_finite_mean(history.losses[-window:]))
        best = min(range(restarts), key=scores.__getitem__)
        if final_path is not None:
            os.replace(paths[best], final_path)
            paths[best] = os.fspath(final_path)
        history = train(
            loss_fn, flow, steps, lr=lr, checkpoint=paths[best], resume=True,
            callback=user_callback, **train_kwargs,
        )  # fmt: skip
    history.pilot_losses = scores
    return history


def _check_fresh_optimizer(train_kwargs: dict[str, Any], strategy: str) -> None:
    if isinstance(train_kwargs.get("optimizer"), torch.optim.Optimizer):
        raise ValueError(
            f"optimizer: {strategy} need a fresh optimizer; pass a name or a factory "
            "callable(list_of_tensors) -> Optimizer, not an optimizer instance"
        )


def _finite_mean(values: list[float]) -> float:
    """The mean of the finite ``values`` (``inf`` if none): how starts are ranked."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.inf


def _fit_population(
    flow: nn.Module,
    member_losses: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    batch_size: int,
    lr: float,
    population: int,
    train_kwargs: dict[str, Any],
) -> History:
    """``population`` starts side by side, the worse half dropped at :func:`halving_steps`, a
    member with a non-finite loss dropped at once; the best member left is written into
    ``flow``."""
    _check_population_kwargs(train_kwargs)
    cuts = set(halving_steps(steps, population))
    pop = make_population(flow, population)
    loss = _PopulationLoss(pop, member_losses, cuts, max(1, min(200, steps // 20)), batch_size)
    history = train(loss, pop, steps, lr=lr, **train_kwargs)
    final = loss.scores()
    best = min(pop.active, key=final.__getitem__)
    pop.copy_member_into(best, flow)
    history.losses = [row[best] for row in loss.rows]
    history.smoothed = _smoothed(history.losses)
    finite = [(v, i) for i, v in enumerate(history.smoothed) if math.isfinite(v)]
    history.best_step = min(finite)[1] if finite else None
    history.halvings = loss.halvings
    return history


def _check_population_kwargs(train_kwargs: dict[str, Any]) -> None:
    """Raise on the training options a population cannot honour."""
    for key, why in (
        ("checkpoint", "the halving state is not checkpointed"),
        ("early_stopping", "the summed loss of a shrinking population is no convergence signal"),
        ("validate_fn", "it would score the flow, which only receives the kept member at the end"),
    ):
        value = train_kwargs.get(key)
        if value not in (None, False):
            raise ValueError(f"{key}: expected None with population > 1 ({why}), got {value!r}")
    _check_fresh_optimizer(train_kwargs, "populations")


class _PopulationLoss:
    """The loss of a population step (the sum of the active members' own losses), which halves
    the population at the ``cuts`` and drops members with a non-finite loss.

    ``rows`` holds every step's losses, one per member (NaN when inactive); ``halvings`` the
    ``(step, scores)`` of every halving.
    """

    def __init__(
        self,
        pop: Population,
        member_losses: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
        cuts: set[int],
        window: int,
        batch_size: int,
    ) -> None:
        self.pop, self.member_losses, self.cuts = pop, member_losses, cuts
        self.window, self.batch_size = window, batch_size
        self.rows: list[list[float]] = []
        self.halvings: list[tuple[int, dict[int, float]]] = []

    def scores(self) -> dict[int, float]:
        """Every active member's mean finite loss over the last ``window`` steps."""
        recent = self.rows[-self.window :]
        return {r: _finite_mean([row[r] for row in recent]) for r in self.pop.active}

    def _halve(self, step: int) -> None:
        """Keep the better half (rounded up) of the active members."""
        score = self.scores()
        self.halvings.append((step, score))
        ranked = sorted(self.pop.active, key=score.__getitem__)
        self.pop.keep(ranked[: math.ceil(len(ranked) / 2)])

    def _draw_losses(self, step: int) -> tuple[torch.Tensor, list[float]]:
        """The active members' losses; members with a non-finite loss are dropped (with a
        warning) and the rest drawn again, so a dropped member is not in the graph."""
        losses = self.member_losses(step, *self.pop.draw(self.batch_size))
        values = losses.detach().tolist()
        finite = [r for r, v in zip(self.pop.active, values, strict=True) if math.isfinite(v)]
        if finite and len(finite) < len(self.pop.active):
            warnings.warn(
                f"population: members {sorted(set(self.pop.active) - set(finite))} had a "
                f"non-finite loss at step {step} and were dropped; {len(finite)} remain",
                RuntimeWarning,
                stacklevel=3,
            )
            self.pop.keep(finite)
            losses = self.member_losses(step, *self.pop.draw(self.batch_size))
            values = losses.detach().tolist()
        return losses, values

    def __call__(self, step: int) -> torch.Tensor:
        if step in self.cuts and len(self.pop.active) > 1 and self.rows:
            self._halve(step)
        losses, values = self._draw_losses(step)
        row = [math.nan] * self.pop.size
        for r, v in zip(self.pop.active, values, strict=True):
            row[r] = v
        self.rows.append(row)
        return losses.sum()  # each member gets the gradient of its own mean loss


def _smoothed(values: list[float]) -> list[float]:
    """The smoothing :func:`pyro_nf.training.train` applies to its losses, applied to ``values``."""
    tracker, out = Plateau(0.05), []
    for step, value in enumerate(values):
        tracker.update(step, value)
        out.append(tracker.ema)
    return out


# ------------------------------------------------------------------------------------------------
# Estimates
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def _log_weights(flow: nn.Module, target: Any, num_samples: int, chunk_size: int) -> torch.Tensor:
    num_samples = check_positive_int("num_samples", num_samples, minimum=2)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    dim = _flow_dim(flow)
    log_density, _ = as_log_density(target, dim)
    chunks = []
    for start in range(0, num_samples, chunk_size):
        n = min(chunk_size, num_samples - start)
        z, log_q = draw_with_log_prob(flow, n)
        chunks.append((log_density(z) - log_q).to(torch.float64))
    return torch.cat(chunks)


def _mean_and_se(log_w: torch.Tensor) -> tuple[float, float]:
    return float(log_w.mean()), float(log_w.std() / math.sqrt(log_w.numel()))


def elbo_estimate(
    flow: nn.Module, target: Any, num_samples: int = 100_000, *, chunk_size: int = 50_000
) -> MCEstimate:
    r"""Monte-Carlo ELBO :math:`\mathbb E_q[\log \tilde p(z) - \log q(z)]` and its standard error.

    Args:
        flow, target: as for :func:`fit_reverse_kl`.
        num_samples: number of draws :math:`S \ge 2` from ``flow``.
        chunk_size: draws per batch (bounds memory).

    Returns:
        :class:`MCEstimate` ``(value, se, num_samples)``; ``se`` is
        :math:`\hat\sigma(\log w) / \sqrt S`, computed in float64.

    Example:
        >>> import pyro_nf
        >>> flow = pyro_nf.planar(2, depth=2)          # the identity: q = N(0, I)
        >>> log_p = lambda z: -0.5 * (z**2).sum(-1)    # unnormalized N(0, I): log Z = log 2 pi
        >>> est = elbo_estimate(flow, log_p, num_samples=1000)
        >>> round(est.value, 6), round(est.se, 6)       # exact: log w = log 2 pi
        (1.837877, 0.0)
    """
    value, se = _mean_and_se(_log_weights(flow, target, num_samples, chunk_size))
    return MCEstimate(value, se, num_samples)


def kl_estimate(
    flow: nn.Module,
    target: Any,
    log_normalizer: float | None = None,
    num_samples: int = 100_000,
    *,
    chunk_size: int = 50_000,
) -> MCEstimate:
    r"""Monte-Carlo :math:`\mathrm{KL}(q \,\|\, p) = \log Z - \mathrm{ELBO}` and its standard error.

    Args:
        flow, target: as for :func:`fit_reverse_kl`.
        log_normalizer: :math:`\log Z = \log \int \tilde p`; default: ``target.log_normalizer``
            of a :class:`~pyro_nf.targets.Target` (or of the target wrapped by
            :func:`~pyro_nf.targets.as_pyro_model`).
        num_samples: number of draws :math:`S \ge 2` from ``flow``.
        chunk_size: draws per batch (bounds memory).

    Returns:
        :class:`MCEstimate` ``(value, se, num_samples)``; ``se`` as for :func:`elbo_estimate`.

    Example:
        >>> import pyro_nf
        >>> from pyro_nf.targets import get_target
        >>> kl, se, n = kl_estimate(pyro_nf.planar(2, depth=2), get_target("U2"), num_samples=10_000)
        >>> kl > 3.0, se < 0.2, n     # q = N(0, I) vs the wide U2 (sd 4 along z1): a poor fit
        (True, True, 10000)
        >>> kl_estimate(pyro_nf.planar(2), lambda z: -(z**2).sum(-1))
        Traceback (most recent call last):
        ...
        ValueError: log_normalizer: expected a finite float (the target does not know its own), got None
    """
    if log_normalizer is None:
        log_normalizer = _log_normalizer_of(target)
    if (
        isinstance(log_normalizer, bool)
        or not isinstance(log_normalizer, int | float)
        or not math.isfinite(log_normalizer)
    ):
        detail = " (the target does not know its own)" if log_normalizer is None else ""
        raise ValueError(f"log_normalizer: expected a finite float{detail}, got {log_normalizer!r}")
    elbo, se = _mean_and_se(_log_weights(flow, target, num_samples, chunk_size))
    return MCEstimate(float(log_normalizer) - elbo, se, num_samples)
