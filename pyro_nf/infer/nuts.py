r"""A No-U-Turn sampler (NUTS) for a differentiable target: one chain, warm-up included.

The sampler draws from :math:`\pi(z) \propto e^{-U(z)}`, :math:`z \in \mathbb R^D`, given only
the potential and its gradient, :math:`z \mapsto (U(z), \nabla U(z))` (a :class:`Target`; a
log-density callable becomes one with :class:`DensityTarget`). Hamiltonian dynamics with
kinetic energy :math:`K(p) = \tfrac12 p^\top M^{-1} p` (diagonal :math:`M^{-1}`, ``minv``) are
integrated by leapfrog steps of size :math:`\epsilon`.

* **Multinomial NUTS** (Betancourt 2017): each transition draws :math:`p \sim \mathcal N(0, M)`
  and doubles a trajectory forwards or backwards in time (a random direction per doubling) up
  to ``max_tree_depth`` doublings; the next state is drawn from the trajectory's points with
  weights :math:`e^{-H}`, :math:`H = U + K` (biased progressive sampling across doublings,
  uniform within a subtree). A point whose energy error :math:`H - H_0` exceeds
  :data:`MAX_ENERGY_ERROR` is a divergence and ends the trajectory.
* **Generalized no-U-turn criterion** with Stan's extra checks: with :math:`\rho` the summed
  momenta of a (sub)trajectory, it stops when :math:`p_\pm^\top M^{-1} \rho \le 0` at either
  end, across every merged trajectory *and* across the two halves joined with the neighbouring
  end point (which catches U-turns the plain check misses on near-Gaussian targets).
* **Step-size search** (Stan's heuristic): double or halve :math:`\epsilon` until one leapfrog
  step's acceptance probability crosses 0.8; run at the start and after every mass-matrix
  update.
* **Dual averaging** (Hoffman & Gelman 2014, Algorithm 5; :math:`\gamma = 0.05, t_0 = 10,
  \kappa = 0.75, \mu = \log 10\epsilon_0`): the mean acceptance probability of each transition
  is driven to ``target_accept_prob``; the averaged :math:`\bar\epsilon` is kept after warm-up.
* **Windowed diagonal mass adaptation** (Stan's schedule, :func:`mass_windows`): a fast
  initial buffer, doubling slow windows whose draws' variances (Welford, shrunk towards
  :math:`10^{-3}`) become :math:`M^{-1}`, and a fast terminal buffer.

Every chain has its own generator seeded by ``(seed, chain)`` (a NumPy ``SeedSequence``), all
random numbers are drawn in float64 and cast, and :func:`run_chain` runs on one intra-op
thread: the same ``(target, chain, settings)`` gives the same draws on any machine, in any
process. The chain starts at a standard normal draw where the potential is finite.

References:
    Hoffman & Gelman, *The No-U-Turn Sampler: Adaptively Setting Path Lengths in Hamiltonian
    Monte Carlo*, JMLR 2014.
    Betancourt, *A Conceptual Introduction to Hamiltonian Monte Carlo*, arXiv:1701.02434, 2017.

Example:
    A correlated 2-D Gaussian (:math:`\sigma = 1`, correlation 0.9):

    >>> import torch
    >>> cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    >>> precision = torch.linalg.inv(cov)
    >>> target = DensityTarget(lambda z: -0.5 * z @ precision @ z, dim=2, dtype=torch.float64)
    >>> settings = ChainSettings(num_warmup=200, num_samples=400, seed=0)
    >>> out = run_chain(target, 0, settings)
    >>> out["draws"].shape, out["draws"].dtype
    ((400, 2), dtype('float64'))
    >>> import numpy as np
    >>> bool(abs(np.corrcoef(out["draws"].T)[0, 1] - 0.9) < 0.1)
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..utils.validation import check_positive_int, check_seed

__all__ = [
    "ChainSettings",
    "DensityTarget",
    "InitializationError",
    "MAX_ENERGY_ERROR",
    "MAX_INIT_TRIES",
    "NUTS",
    "STAT_NAMES",
    "Target",
    "mass_windows",
    "run_chain",
]

#: A transition whose energy error exceeds this is divergent (Stan's threshold).
MAX_ENERGY_ERROR = 1000.0
#: Standard normal draws tried for a finite starting point of each chain.
MAX_INIT_TRIES = 100
#: The per-draw statistics :func:`run_chain` returns.
STAT_NAMES = ("diverging", "step_size", "tree_depth", "n_steps", "energy", "lp", "acceptance_rate")


class InitializationError(ValueError):
    """No starting point with a finite potential was found (:data:`MAX_INIT_TRIES` tries)."""


@runtime_checkable
class Target(Protocol):
    """What the sampler needs of a target: its dimension ``dim``, the ``dtype`` and ``device``
    of its points, and ``potential_and_grad(z) -> (U, dU/dz)`` for one point ``z (dim,)``,
    with ``U`` a Python float (``math.inf`` where the density is zero or undefined)."""

    dim: int

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def potential_and_grad(self, z: torch.Tensor) -> tuple[float, torch.Tensor]: ...


class DensityTarget:
    r"""A :class:`Target` from a log density ``log_density(z) -> scalar tensor`` (up to a
    constant) of one point ``z (dim,)``; the gradient by autograd.

    Example:
        >>> t = DensityTarget(lambda z: -0.5 * (z * z).sum(), dim=3)
        >>> u, g = t.potential_and_grad(torch.ones(3))
        >>> u, g.tolist(), t.dtype
        (1.5, [1.0, 1.0, 1.0], torch.float32)
    """

    def __init__(
        self,
        log_density: Callable[[torch.Tensor], torch.Tensor],
        dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if not callable(log_density):
            raise TypeError(f"log_density: expected a callable, got {type(log_density).__name__}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
        self.log_density, self.dim = log_density, check_positive_int("dim", dim)
        self.dtype, self.device = dtype, torch.device(device)

    def potential_and_grad(self, z: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(U, dU/dz)`` at ``z``; ``(inf, 0)`` where the log density is not finite."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            potential = -self.log_density(z)
            if not bool(torch.isfinite(potential)):
                return math.inf, torch.zeros_like(z.detach())
            (grad,) = torch.autograd.grad(potential, z)
        if not bool(torch.isfinite(grad).all()):
            return math.inf, torch.zeros_like(grad)
        return float(potential.detach()), grad


def _check_probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(f"target_accept_prob: expected a number in (0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ChainSettings:
    """The settings of one chain (checked on construction; ``ValueError`` naming the field).

    Example:
        >>> ChainSettings(num_warmup=10, num_samples=20).max_tree_depth
        10
        >>> ChainSettings(num_warmup=-1, num_samples=20)
        Traceback (most recent call last):
        ...
        ValueError: num_warmup: expected an integer >= 0, got -1
    """

    num_warmup: int
    num_samples: int
    seed: int = 0
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10

    def __post_init__(self) -> None:
        checked = {
            "num_warmup": check_positive_int("num_warmup", self.num_warmup, minimum=0),
            "num_samples": check_positive_int("num_samples", self.num_samples),
            "seed": check_seed(self.seed),
            "target_accept_prob": _check_probability(self.target_accept_prob),
            "max_tree_depth": check_positive_int("max_tree_depth", self.max_tree_depth),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


# -- the trajectory -----------------------------------------------------------------------------
@dataclass
class _Tree:
    """A NUTS trajectory segment: its two ends (``minus`` is earlier in time), the summed
    momentum ``rho``, the multinomial sample, its log total weight relative to the initial
    energy, and what was met on the way."""

    z_minus: torch.Tensor
    p_minus: torch.Tensor
    g_minus: torch.Tensor
    z_plus: torch.Tensor
    p_plus: torch.Tensor
    g_plus: torch.Tensor
    rho: torch.Tensor
    sample: tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]  # (z, p, U, grad)
    log_w: float
    valid: bool = True
    diverging: bool = False
    n_leapfrog: int = 0
    sum_accept: float = 0.0

    def end(self, direction: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z, p, grad)`` at the end the trajectory grows from in ``direction``."""
        if direction > 0:
            return self.z_plus, self.p_plus, self.g_plus
        return self.z_minus, self.p_minus, self.g_minus


class NUTS:
    """Multinomial NUTS transitions with a diagonal inverse mass matrix ``minv`` (shape
    ``(D,)``, the points' dtype and device) and step size ``step``; ``potential(z) -> (U,
    grad)``, random numbers from ``gen``. See the module docstring for the algorithm.

    Example:
        >>> t = DensityTarget(lambda z: -0.5 * (z * z).sum(), dim=2, dtype=torch.float64)
        >>> z = torch.zeros(2, dtype=torch.float64)
        >>> gen, minv = torch.Generator().manual_seed(0), torch.ones(2, dtype=torch.float64)
        >>> nuts = NUTS(t.potential_and_grad, gen, 10, minv)
        >>> nuts.step = 0.5
        >>> out = nuts.transition(z, *t.potential_and_grad(z))
        >>> out["state"][0].shape, out["tree_depth"] >= 1
        (torch.Size([2]), True)
    """

    def __init__(
        self, potential: Callable, gen: torch.Generator, max_depth: int, minv: torch.Tensor
    ) -> None:
        self.potential, self.gen, self.max_depth = potential, gen, max_depth
        self.minv = minv
        self.step = 1.0

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.gen, dtype=torch.float64))

    def momentum(self, like: torch.Tensor) -> torch.Tensor:
        """``p ~ N(0, M)`` with ``M = diag(1 / minv)``."""
        noise = torch.randn(like.shape, generator=self.gen, dtype=torch.float64)
        return noise.to(like) / self.minv.sqrt()

    def kinetic(self, p: torch.Tensor) -> float:
        """``K(p) = p^T M^{-1} p / 2``."""
        return 0.5 * float((p * p * self.minv).sum())

    def leapfrog(self, z, p, g, step):
        """One leapfrog step of size ``step`` (negative: backwards): ``(z, p, grad, U)``."""
        p = p - 0.5 * step * g
        z = z + step * self.minv * p
        u, g = self.potential(z)
        return z, p - 0.5 * step * g, g, u

    def _leaf(self, z, p, g, direction: int, h0: float) -> _Tree:
        z, p, g, u = self.leapfrog(z, p, g, direction * self.step)
        h = u + self.kinetic(p) if math.isfinite(u) else math.inf
        h = h if math.isfinite(h) else math.inf
        diverging = h - h0 > MAX_ENERGY_ERROR
        accept = math.exp(min(0.0, h0 - h))
        return _Tree(z, p, g, z, p, g, p, (z, p, u, g), h0 - h, not diverging, diverging, 1, accept)

    def _no_uturn(self, p_minus, p_plus, rho) -> bool:
        return (
            float((self.minv * p_minus * rho).sum()) > 0
            and float((self.minv * p_plus * rho).sum()) > 0
        )

    def _merge(self, old: _Tree, new: _Tree, direction: int, biased: bool) -> _Tree:
        """``old`` extended by ``new`` (grown in ``direction``), with the generalized no-U-turn
        checks across the merged trajectory and across the two halves (Stan's criteria)."""
        lo, hi = (old, new) if direction > 0 else (new, old)
        log_w = float(np.logaddexp(old.log_w, new.log_w))
        log_accept = new.log_w - (old.log_w if biased else log_w)
        sample = new.sample if math.log(max(self._uniform(), 1e-300)) < log_accept else old.sample
        rho = lo.rho + hi.rho
        valid = (
            new.valid
            and self._no_uturn(lo.p_minus, hi.p_plus, rho)
            and self._no_uturn(lo.p_minus, hi.p_minus, lo.rho + hi.p_minus)
            and self._no_uturn(lo.p_plus, hi.p_plus, hi.rho + lo.p_plus)
        )
        return _Tree(
            lo.z_minus, lo.p_minus, lo.g_minus, hi.z_plus, hi.p_plus, hi.g_plus, rho, sample,
            log_w, valid, old.diverging or new.diverging,
            old.n_leapfrog + new.n_leapfrog, old.sum_accept + new.sum_accept,
        )  # fmt: skip

    def _build(self, z, p, g, direction: int, depth: int, h0: float) -> _Tree:
        if depth == 0:
            return self._leaf(z, p, g, direction, h0)
        first = self._build(z, p, g, direction, depth - 1, h0)
        if not first.valid:
            return first
        second = self._build(*first.end(direction), direction, depth - 1, h0)
        if not second.valid:
            return replace(
                second,
                n_leapfrog=first.n_leapfrog + second.n_leapfrog,
                sum_accept=first.sum_accept + second.sum_accept,
            )
        return self._merge(first, second, direction, biased=False)

    def transition(self, z: torch.Tensor, u: float, g: torch.Tensor) -> dict[str, Any]:
        """One NUTS transition from ``(z, U, grad)``: the new state and the draw's statistics."""
        p = self.momentum(z)
        h0 = u + self.kinetic(p)
        tree = _Tree(z, p, g, z, p, g, p, (z, p, u, g), 0.0)
        depth, n, total, diverging = 0, 0, 0.0, False
        while depth < self.max_depth:
            direction = 1 if self._uniform() < 0.5 else -1
            new = self._build(*tree.end(direction), direction, depth, h0)
            n, total = n + new.n_leapfrog, total + new.sum_accept
            diverging = diverging or new.diverging
            if not new.valid:
                break
            depth += 1
            tree = self._merge(tree, new, direction, biased=True)
            if not tree.valid:
                break
        z1, p1, u1, g1 = tree.sample
        return {
            "state": (z1, u1, g1),
            "accept": total / max(n, 1),
            "diverging": diverging,
            "tree_depth": depth,
            "n_steps": n,
            "energy": u1 + self.kinetic(p1),
            "lp": -u1,
        }

    def find_step(self, z: torch.Tensor, u: float, g: torch.Tensor) -> None:
        """Stan's heuristic: double or halve the step until one leapfrog step's acceptance
        probability crosses 0.8."""
        direction = 0
        for _ in range(100):
            p = self.momentum(z)
            h0 = u + self.kinetic(p)
            _, p1, _, u1 = self.leapfrog(z, p, g, self.step)
            h1 = u1 + self.kinetic(p1) if math.isfinite(u1) else math.inf
            delta = h0 - h1 if math.isfinite(h1) else -math.inf
            up = delta > math.log(0.8)
            direction = direction or (1 if up else -1)
            if (direction == 1) != up:
                break
            self.step = self.step * 2.0 if direction == 1 else self.step / 2.0
            if not 1e-8 < self.step < 1e4:
                break


# -- adaptation ---------------------------------------------------------------------------------
class _DualAveraging:
    """Step-size adaptation of Hoffman & Gelman (2014), Algorithm 5 (Stan's constants)."""

    def __init__(self, step: float, target: float) -> None:
        self.mu, self.target = math.log(10.0 * step), target
        self.t, self.h_bar, self.log_step_bar = 0, 0.0, 0.0

    def update(self, accept: float) -> float:
        self.t += 1
        eta = 1.0 / (self.t + 10.0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target - accept)
        log_step = self.mu - math.sqrt(self.t) / 0.05 * self.h_bar
        weight = self.t**-0.75
        self.log_step_bar = weight * log_step + (1 - weight) * self.log_step_bar
        return math.exp(log_step)

    @property
    def final(self) -> float:
        return math.exp(self.log_step_bar)


def mass_windows(num_warmup: int) -> tuple[int, list[int]]:
    """Stan's warm-up schedule: ``(start, ends)``, the iteration where the first mass-matrix
    window begins and the iterations where each window ends (the mass matrix is re-estimated
    there). No windows for fewer than 20 warm-up iterations (step size only).

    Example:
        >>> mass_windows(1000)
        (75, [100, 150, 250, 450, 950])
        >>> mass_windows(100)
        (15, [90])
    """
    if num_warmup < 20:
        return num_warmup, []
    if num_warmup < 150:
        start, term = int(0.15 * num_warmup), int(0.1 * num_warmup)
        return start, [num_warmup - term]
    start, term, size, ends = 75, 50, 25, []
    while True:
        end = start + size
        if end + 2 * size > num_warmup - term:
            return 75, [*ends, num_warmup - term]
        ends.append(end)
        start, size = end, 2 * size


class _Welford:
    """Running mean and variance of the warm-up draws of one mass-matrix window."""

    def __init__(self, like: torch.Tensor) -> None:
        self.n, self.mean, self.m2 = 0, torch.zeros_like(like), torch.zeros_like(like)

    def add(self, z: torch.Tensor) -> None:
        self.n += 1
        delta = z - self.mean
        self.mean = self.mean + delta / self.n
        self.m2 = self.m2 + delta * (z - self.mean)

    def regularized_variance(self) -> torch.Tensor:
        """Stan's shrunk estimate ``n/(n+5) var + 1e-3 * 5/(n+5)``."""
        var = self.m2 / max(self.n - 1, 1)
        return (self.n / (self.n + 5.0)) * var + 1e-3 * (5.0 / (self.n + 5.0))


def _warmup(nuts: NUTS, state: tuple, settings: ChainSettings) -> tuple[tuple, int]:
    """Adapt the step size and the diagonal mass matrix; the last state and its divergences."""
    nuts.find_step(*state)
    adapter = _DualAveraging(nuts.step, settings.target_accept_prob)
    start, ends = mass_windows(settings.num_warmup)
    window, divergences = _Welford(state[0]), 0
    for i in range(settings.num_warmup):
        out = nuts.transition(*state)
        state, divergences = out["state"], divergences + int(out["diverging"])
        nuts.step = adapter.update(out["accept"])
        if ends and start <= i < ends[-1]:
            window.add(state[0])
        if i + 1 in ends:
            nuts.minv = window.regularized_variance()
            window = _Welford(state[0])
            nuts.find_step(*state)
            adapter = _DualAveraging(nuts.step, settings.target_accept_prob)
    if settings.num_warmup:
        nuts.step = adapter.final
    return state, divergences


# -- one chain ----------------------------------------------------------------------------------
def _chain_generator(seed: int, chain: int) -> torch.Generator:
    """The generator of chain ``chain`` (independent streams for every ``(seed, chain)``)."""
    state = np.random.SeedSequence([seed, chain]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _initial_point(target: Target, gen: torch.Generator) -> tuple:
    """A standard normal draw where the potential is finite: ``(z, U, grad)``."""
    for _ in range(MAX_INIT_TRIES):
        noise = torch.randn(target.dim, generator=gen, dtype=torch.float64)
        z = noise.to(device=target.device, dtype=target.dtype)
        u, g = target.potential_and_grad(z)
        if math.isfinite(u):
            return z, u, g
    raise InitializationError(
        f"target: the potential is not finite at any of {MAX_INIT_TRIES} standard normal "
        "starting points"
    )


def _check_chain_arguments(target: Any, chain: Any, settings: Any) -> None:
    if not isinstance(target, Target):
        raise TypeError(
            "target: expected an object with dim, dtype, device and potential_and_grad, "
            f"got {type(target).__name__}"
        )
    check_positive_int("target.dim", target.dim)
    check_positive_int("chain", chain, minimum=0)
    if not isinstance(settings, ChainSettings):
        raise TypeError(f"settings: expected a ChainSettings, got {type(settings).__name__}")


def run_chain(target: Target, chain: int, settings: ChainSettings) -> dict[str, Any]:
    r"""Warm up and run chain ``chain`` of NUTS on ``target`` (one intra-op thread, restored
    afterwards, so that the result does not depend on the machine's thread count).

    Returns ``{"draws": (S, D) draws, <stat>: (S,) for each of STAT_NAMES,
    "warmup_divergences": int, "warmup_s": float, "draw_times": (S,) seconds from the chain's
    start to each draw, "elapsed_s": float}`` as NumPy arrays (``draws`` in the target's
    dtype). Raises :class:`InitializationError` where no finite starting point is found.
    """
    _check_chain_arguments(target, chain, settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        gen = _chain_generator(settings.seed, chain)
        state = _initial_point(target, gen)
        nuts = NUTS(
            target.potential_and_grad, gen, settings.max_tree_depth, torch.ones_like(state[0])
        )
        state, warm_div = _warmup(nuts, state, settings)
        warmup_s = time.perf_counter() - t0
        draws, stats, times = [], {name: [] for name in STAT_NAMES}, []
        for _ in range(settings.num_samples):
            out = nuts.transition(*state)
            state = out["state"]
            draws.append(state[0])
            times.append(time.perf_counter() - t0)
            out["step_size"], out["acceptance_rate"] = nuts.step, out["accept"]
            for name in STAT_NAMES:
                stats[name].append(out[name])
    finally:
        torch.set_num_threads(threads)
    result: dict[str, Any] = {name: np.asarray(v) for name, v in stats.items()}
    result["draws"] = torch.stack(draws).cpu().numpy()
    result["warmup_divergences"] = warm_div
    result["warmup_s"], result["draw_times"] = warmup_s, np.asarray(times)
    result["elapsed_s"] = time.perf_counter() - t0
    return result
