r"""Time to an accurate posterior: FlowGuide, FlowGuide + refine, Pyro's NUTS, NumPyro's NUTS.

On the hard posteriors of :mod:`hard_models` (centered eight schools, the 10-D funnel, the
centered hierarchical model, German credit with raw features, the badly scaled regression),
each method runs with **one thread**, chains one after another, for each seed:

* ``FlowGuide`` — ``pyro_nf.FlowGuide(model)`` fitted by ``pyro_nf.fit`` (``--steps`` budget,
  ``--lr``, early stopping as by default); its moments from ``--guide-samples`` draws;
* ``FlowGuide+refine`` — the same fitted guide, then :func:`pyro_nf.refine`'s sampler (NUTS in
  the flow's base space, through :func:`pyro_nf.infer.refine.sample_chains`, the code
  :func:`pyro_nf.refine` runs with its defaults, chains one after another, to get the time of
  every draw, including the second run at a higher target where the first diverges); its time
  includes the fit and any discarded first run;
* ``FlowGuide+refine[jit]`` — the same with ``refine(..., jit_compile=True)`` (the potential
  traced by ``torch.jit.trace`` and checked against the model; the tracing and the check are
  timed);
* ``Pyro NUTS`` — ``pyro.infer.NUTS(model)`` with Pyro's defaults (``init_to_uniform``,
  diagonal mass, no JIT), the time of every draw from MCMC's ``hook_fn``;
* ``NumPyro NUTS`` — the same model written for NumPyro (JAX on the CPU, one XLA thread),
  ``MCMC(NUTS(model))`` with its defaults; the time of draw ``k`` is interpolated linearly
  within the sampling phase (JIT compilation and warm-up counted before the first draw).

**Time to accuracy.** After every checkpoint ``k`` (draws per chain, 20 checkpoints) the pooled
first ``k`` draws of all chains give means and sds of every coordinate, compared with the cached
long reference (``benchmarks/reference/hard_*.json``): accurate when ``max |mean err| <= 0.1``
reference sd and ``max |log sd ratio| <= 0.1``. The time to accuracy is the wall (and CPU) time
at which the run would have stopped had it asked for the first ``k`` from which every later
checkpoint stays accurate (chains in sequence: the sum over chains of each chain's time to its
``k``-th draw; CPU time scaled by the run's CPU/wall ratio). ``never`` when the full run does
not get there. ESS/s: the smallest bulk ESS (ArviZ, rank-normalized) over coordinates of the
full run, per second of its wall time. Medians over seeds.

Usage::

    python benchmarks/time_to_accuracy.py --quick                      # smoke run
    python benchmarks/time_to_accuracy.py --models eight_schools funnel --seeds 0 1 2
    python benchmarks/time_to_accuracy.py                                # all five models

References:
    Hoffman et al., *NeuTra-lizing Bad Geometry in Hamiltonian Monte Carlo Using Neural
    Transport*, 2019.
"""

from __future__ import annotations

import os

# one XLA thread for NumPyro (before jax is imported)
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

import pyro_nf  # noqa: E402
from pyro_nf.infer.nuts import ChainSettings  # noqa: E402
from pyro_nf.infer.refine import (  # noqa: E402
    TARGET_ACCEPT_PROB,
    BaseSpaceTarget,
    sample_chains,
)

try:  # run as a script (benchmarks/ on sys.path) or imported as ``benchmarks.time_to_accuracy``
    import hard_models as hm
    from _common import (
        format_table,
        load_results,
        machine_info,
        merged_rows,
        save_json,
        set_threads,
    )
except ImportError:  # pragma: no cover
    from benchmarks import hard_models as hm
    from benchmarks._common import (
        format_table,
        load_results,
        machine_info,
        merged_rows,
        save_json,
        set_threads,
    )

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "time_to_accuracy.json"
QUICK_OUT = RESULTS / "time_to_accuracy_quick.json"
TOL_MEAN, TOL_LOG_SD = 0.1, 0.1
METHODS = (
    "FlowGuide", "FlowGuide+refine", "FlowGuide+refine[jit]", "Pyro NUTS", "NumPyro NUTS",
    "exact draws",
)  # fmt: skip
REFINES = ("FlowGuide+refine", "FlowGuide+refine[jit]")
CHECKPOINTS = 20
FUNNEL_WHITENED = "funnel[v, x e^(-v/2)]"

Transform = Callable[[np.ndarray], np.ndarray]


class OverBudget(Exception):
    """A sampler ran past its time budget."""


class NotApplicable(Exception):
    """A method that does not apply to a problem (exact draws where there is no exact sampler)."""


# -- accuracy along a run -----------------------------------------------------------------------
def errors(draws: np.ndarray, ref: hm.Reference) -> tuple[float, float]:
    """``(max |mean err| / sd, max |log sd ratio|)`` of pooled draws ``(n, P)``."""
    mean, sd = ref.tensors()
    m, s = draws.mean(0), draws.std(0, ddof=1)
    return (
        float(np.max(np.abs(m - mean.numpy()) / sd.numpy())),
        float(np.max(np.abs(np.log(np.maximum(s, 1e-300) / sd.numpy())))),
    )


def time_to_accuracy(
    draws: np.ndarray, times: np.ndarray, ref: hm.Reference, offset: float = 0.0
) -> dict[str, Any]:
    """Draws ``(C, S, P)`` with ``times (C, S)`` (each chain's seconds to each draw): the time
    from which every later checkpoint is accurate, and the errors of the full run."""
    num = draws.shape[1]
    ks = sorted({max(2, int(round(num * (i + 1) / CHECKPOINTS))) for i in range(CHECKPOINTS)})
    ok = []
    for k in ks:
        e_mean, e_sd = errors(draws[:, :k].reshape(-1, draws.shape[2]), ref)
        ok.append(e_mean <= TOL_MEAN and e_sd <= TOL_LOG_SD)
    first = None
    for i in range(len(ks) - 1, -1, -1):
        if not ok[i]:
            break
        first = ks[i]
    e_mean, e_sd = errors(draws.reshape(-1, draws.shape[2]), ref)
    reached = None if first is None else offset + float(times[:, first - 1].sum())
    return {"time_to_acc_s": reached, "draws_needed": first, "mean_err": e_mean, "log_sd_err": e_sd}


def chain_diagnostics(draws: np.ndarray) -> dict[str, float]:
    """Smallest bulk ESS and largest rank-normalized R-hat over coordinates (ArviZ)."""
    import arviz as az

    ds = az.convert_to_dataset({"x": draws})
    ess = float(az.ess(ds, method="bulk")["x"].min())
    rhat = float(az.rhat(ds)["x"].max()) if draws.shape[0] > 1 else math.nan
    return {"min_ess_bulk": ess, "max_rhat": rhat}


# -- the methods -------------------------------------------------------------------------------
def fit_flowguide(problem: hm.HardProblem, opts: argparse.Namespace, seed: int) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    w0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guide = pyro_nf.FlowGuide(problem.model)
        guide(*problem.args)
        history = pyro_nf.fit(
            problem.model, guide, *problem.args, steps=opts.steps, lr=opts.lr, progress=False
        )
    return {
        "guide": guide,
        "wall": time.perf_counter() - w0,
        "cpu": time.process_time() - c0,
        "steps": history.num_steps,
    }


@dataclass
class Run:
    """What one method produced, before it is scored.

    ``draws``: ``(C, S, P)`` chains (a sampler) or ``(1, n, P)`` (a fitted guide's independent
    draws); ``times``: ``(C, S)``, each chain's seconds to each draw, or ``None`` where all draws
    come at once after ``wall`` seconds (a guide); ``offset``: seconds spent before the first
    chain (the fit, for refine); ``extra``: the method's own diagnostics (divergences, ...).
    """

    draws: np.ndarray
    times: np.ndarray | None
    wall: float
    cpu: float
    offset: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def score(run: Run, ref: hm.Reference, transform: Transform | None = None) -> dict[str, Any]:
    """The row of ``run`` against ``ref``, on ``transform(draws)`` where a transform is given."""
    draws = run.draws if transform is None else transform(run.draws)
    if run.times is None:  # a guide: its draws are all there once it is fitted
        e_mean, e_sd = errors(draws.reshape(-1, draws.shape[-1]), ref)
        accurate = e_mean <= TOL_MEAN and e_sd <= TOL_LOG_SD
        return {
            "time_to_acc_s": run.wall if accurate else None,
            "cpu_to_acc_s": run.cpu if accurate else None,
            "mean_err": e_mean, "log_sd_err": e_sd, "wall_s": run.wall, "cpu_s": run.cpu,
        } | run.extra  # fmt: skip
    out = time_to_accuracy(draws, run.times, ref, offset=run.offset)
    return _finish(out, draws, run.wall, run.cpu) | run.extra


def run_flowguide(
    problem: hm.HardProblem, fitted: dict[str, Any], opts: argparse.Namespace, seed: int
) -> Run:
    pyro.set_rng_seed(10_000 + seed)
    with torch.no_grad():
        samples = fitted["guide"].sample_posterior(opts.guide_samples)
    draws = problem.coords(samples, opts.guide_samples).numpy()[None]
    return Run(draws, None, fitted["wall"], fitted["cpu"], extra={"fit_steps": fitted["steps"]})


def run_refine(
    problem: hm.HardProblem,
    fitted: dict[str, Any],
    opts: argparse.Namespace,
    seed: int,
    jit: bool = False,
) -> Run:
    settings = ChainSettings(opts.num_warmup, opts.num_samples, seed, TARGET_ACCEPT_PROB, 10)
    target = BaseSpaceTarget(problem.model, fitted["guide"], problem.args, {})
    w0, c0 = time.perf_counter(), time.process_time()
    why = target.compile() if jit else None
    if why is not None:
        print(f"  jit_compile not used: {why}", flush=True)
    chains, settings, first = sample_chains(target, settings, opts.chains, escalate=True)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    eps = torch.from_numpy(np.stack([c["draws"] for c in chains])).to(target.like)
    values = target.constrain(eps)
    n = opts.chains * opts.num_samples
    flat = {k: v.reshape(n, *v.shape[2:]) for k, v in values.items()}
    draws = problem.coords(flat, n).numpy().reshape(opts.chains, opts.num_samples, -1)
    times = np.stack([c["draw_times"] for c in chains])
    extra = {
        "divergences": int(sum(c["diverging"].sum() for c in chains)),
        "mean_tree_depth": float(np.mean([c["tree_depth"].mean() for c in chains])),
        "step_sizes": [float(c["step_size"][0]) for c in chains],
        "gradient_evaluations": int(sum(c["n_steps"].sum() for c in chains)),
        "jit_compile": bool(target.compiled),
        "target_accept_prob": settings.target_accept_prob,
        **first,
    }
    # a discarded first run (refine's escalation) counts before the first kept draw
    offset = fitted["wall"] + sum(first.get("first_run_chain_elapsed_s", []))
    total_wall, total_cpu = wall + fitted["wall"], cpu + fitted["cpu"]
    return Run(draws, times, total_wall, total_cpu, offset=offset, extra=extra)


def run_exact(problem: hm.HardProblem, opts: argparse.Namespace, seed: int) -> Run:
    """Independent exact draws, as many as the samplers keep: the Monte Carlo floor of the
    criterion, not a contender (no times: its time to accuracy is 0, its ESS/s not given)."""
    if problem.name != "funnel":
        raise NotApplicable("no exact sampler for this posterior")
    gen = torch.Generator().manual_seed(20_000 + seed)
    n = opts.chains * opts.num_samples
    exact = pyro_nf.targets.NealFunnel(hm.FUNNEL_DIM).sample(n, generator=gen, dtype=torch.float64)
    draws = exact.numpy().reshape(opts.chains, opts.num_samples, -1)
    return Run(draws, np.zeros(draws.shape[:2]), wall=math.nan, cpu=math.nan)


def _finish(out: dict, draws: np.ndarray, wall: float, cpu: float) -> dict:
    """Add CPU time to accuracy (scaled by the run's CPU/wall ratio), ESS/s and R-hat."""
    diag = chain_diagnostics(draws)
    ratio = cpu / wall if wall > 0 else 1.0
    t = out["time_to_acc_s"]
    return {
        **out,
        "cpu_to_acc_s": None if t is None else t * ratio,
        "wall_s": wall,
        "cpu_s": cpu,
        "ess_per_s": diag["min_ess_bulk"] / wall,
        "ess_per_cpu_s": diag["min_ess_bulk"] / cpu if cpu > 0 else math.nan,
        **diag,
    }


def run_pyro_nuts(problem: hm.HardProblem, opts: argparse.Namespace, seed: int) -> Run:
    from pyro.infer import MCMC, NUTS

    w0, c0 = time.perf_counter(), time.process_time()
    chains, times, divergences = [], [], 0
    for c in range(opts.chains):
        pyro.set_rng_seed(1000 * seed + c)
        stamps: list[float] = []
        start = time.perf_counter()

        def hook(kernel, samples, stage, i, stamps=stamps, start=start, c=c):
            if stage == "Sample":
                stamps.append(time.perf_counter() - start)
            if time.perf_counter() - w0 > opts.budget:
                raise OverBudget(f"chain {c}, {stage} iteration {i}")

        mcmc = MCMC(
            NUTS(problem.model), opts.num_samples, warmup_steps=opts.num_warmup,
            hook_fn=hook, disable_progbar=True,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mcmc.run(*problem.args)
        divergences += len(mcmc.diagnostics()["divergences"]["chain 0"])
        chains.append(problem.coords(mcmc.get_samples(), opts.num_samples).numpy())
        times.append(stamps)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    extra = {"divergences": divergences}
    return Run(np.stack(chains), np.asarray(times), wall, cpu, extra=extra)


# -- NumPyro ------------------------------------------------------------------------------------
def numpyro_model(name: str) -> tuple[Callable, Callable[[dict, int], np.ndarray]]:
    """The problem ``name`` written for NumPyro, and ``coords(samples, n) -> (n, P)``."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    def linreg(x, y):
        beta = numpyro.sample(
            "beta", nd.Normal(jnp.zeros(x.shape[-1]), hm.LINREG_PRIOR_SCALE).to_event(1)
        )
        sigma = numpyro.sample("sigma", nd.HalfNormal(hm.LINREG_SIGMA_PRIOR))
        numpyro.sample("y", nd.Normal(x @ beta, sigma).to_event(1), obs=y)

    def german(x, y):
        beta = numpyro.sample(
            "beta", nd.Normal(jnp.zeros(x.shape[-1]), hm.GERMAN_PRIOR_SCALE).to_event(1)
        )
        numpyro.sample("y", nd.Bernoulli(logits=x @ beta).to_event(1), obs=y)

    def eight_schools(y, sigma):
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
        with numpyro.plate("schools", y.shape[-1]):
            theta = numpyro.sample("theta", nd.Normal(mu, tau))
            numpyro.sample("obs", nd.Normal(theta, sigma), obs=y)

    def funnel():
        v = numpyro.sample("v", nd.Normal(0.0, 3.0))
        numpyro.sample("x", nd.Normal(0.0, jnp.exp(v / 2)).expand([hm.FUNNEL_DIM - 1]).to_event(1))

    def hierarchical(x, group, y, num_groups=hm.HIER_GROUPS):
        mu_a = numpyro.sample("mu_a", nd.Normal(0.0, 5.0))
        mu_b = numpyro.sample("mu_b", nd.Normal(0.0, 5.0))
        sigma_a = numpyro.sample("sigma_a", nd.HalfNormal(1.0))
        sigma_b = numpyro.sample("sigma_b", nd.HalfNormal(1.0))
        sigma_y = numpyro.sample("sigma_y", nd.HalfNormal(1.0))
        with numpyro.plate("groups", num_groups):
            a = numpyro.sample("a", nd.Normal(mu_a, sigma_a))
            b = numpyro.sample("b", nd.Normal(mu_b, sigma_b))
        with numpyro.plate("obs", y.shape[-1]):
            numpyro.sample("y", nd.Normal(a[group] + b[group] * x, sigma_y), obs=y)

    def sites(names):
        return lambda s, n: np.concatenate([np.asarray(s[k]).reshape(n, -1) for k in names], -1)

    table = {
        "linreg": (linreg, sites(("beta", "sigma"))),
        "german_credit": (german, sites(("beta",))),
        "eight_schools": (eight_schools, sites(("mu", "tau", "theta"))),
        "funnel": (funnel, sites(("v", "x"))),
        "hierarchical": (
            hierarchical,
            sites(("mu_a", "mu_b", "sigma_a", "sigma_b", "sigma_y", "a", "b")),
        ),
    }
    return table[name]


def run_numpyro_nuts(problem: hm.HardProblem, opts: argparse.Namespace, seed: int) -> Run:
    import jax
    from numpyro.infer import MCMC, NUTS

    model, coords = numpyro_model(problem.name)
    args = tuple(np.asarray(a) for a in problem.args)
    w0, c0 = time.perf_counter(), time.process_time()
    chains, times, divergences = [], [], 0
    for c in range(opts.chains):
        mcmc = MCMC(NUTS(model), num_warmup=opts.num_warmup, num_samples=opts.num_samples,
                    num_chains=1, progress_bar=False)  # fmt: skip
        t0 = time.perf_counter()
        mcmc.warmup(jax.random.PRNGKey(1000 * seed + c), *args, extra_fields=("diverging",))
        t1 = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(1000 * seed + c + 1), *args, extra_fields=("diverging",))
        samples = mcmc.get_samples()
        jax.block_until_ready(samples)
        t2 = time.perf_counter()
        divergences += int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
        chains.append(coords(samples, opts.num_samples).astype(np.float64))
        k = np.arange(1, opts.num_samples + 1)
        times.append((t1 - t0) + k / opts.num_samples * (t2 - t1))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    extra = {"divergences": divergences}
    return Run(np.stack(chains), np.stack(times), wall, cpu, extra=extra)


# -- main ----------------------------------------------------------------------------------------
def funnel_whitened(draws: np.ndarray) -> np.ndarray:
    """``(..., P)`` funnel draws ``(v, x)`` → ``(v, x e^{-v/2})``: exactly N(0, 3²) × N(0, I)."""
    v = draws[..., :1]
    return np.concatenate([v, draws[..., 1:] * np.exp(-v / 2)], axis=-1)


#: Scorings besides a problem's own coordinates: ``{problem: [(label, reference, transform)]}``
#: (see :func:`scorings`).
EXTRA_SCORINGS: dict[str, list[tuple[str, hm.Reference, Transform]]] = {
    "funnel": [(
        FUNNEL_WHITENED,
        hm.Reference(
            model=FUNNEL_WHITENED,
            names=["v"] + [f"x[{i}] e^(-v/2)" for i in range(1, hm.FUNNEL_DIM)],
            mean=[0.0] * hm.FUNNEL_DIM, sd=[3.0] + [1.0] * (hm.FUNNEL_DIM - 1), source="exact",
        ),
        funnel_whitened,
    )],
}  # fmt: skip


def scorings(name: str, ref: hm.Reference) -> list[tuple[str, hm.Reference, Transform | None]]:
    r"""How the draws of problem ``name`` are scored: ``(label, reference, transform)``.

    Every problem is scored on its own coordinates. The funnel is scored a second time on
    :math:`(v, x_i e^{-v/2})`, a bijection of the same draws whose moments a few thousand draws
    can estimate: :math:`\mathrm{sd}(x_i)` cannot be (the sample variance of :math:`x_i` has
    relative variance about :math:`3e^9/n`, 12 at :math:`n = 2000`; measured, the worst of the
    nine :math:`\mathrm{sd}(x_i)` of 2000 exact independent draws is off by a median factor
    :math:`e^{0.43}`: the ``exact draws`` row). The second scoring tests the marginal of
    :math:`v` and the average conditional scale; an error confined to the far tails of
    :math:`v` (a few per cent of the mass) moves it little.
    """
    return [(name, ref, None), *EXTRA_SCORINGS.get(name, [])]


#: The row labels in table order: each problem, then its extra scorings.
TABLE_MODELS = [
    label for name in hm.MODELS for label in (name, *(e[0] for e in EXTRA_SCORINGS.get(name, [])))
]


def run_method(
    problem: hm.HardProblem, method: str, fitted: Any, opts: argparse.Namespace, seed: int
) -> Run:
    if method == "FlowGuide":
        return run_flowguide(problem, fitted, opts, seed)
    if method in REFINES:
        return run_refine(problem, fitted, opts, seed, jit=method != REFINES[0])
    if method == "Pyro NUTS":
        return run_pyro_nuts(problem, opts, seed)
    if method == "exact draws":
        return run_exact(problem, opts, seed)
    return run_numpyro_nuts(problem, opts, seed)


def run_model(name: str, opts: argparse.Namespace) -> list[dict[str, Any]]:
    problem, ref = hm.get_problem(name), hm.load_reference(name)
    if ref is None:
        raise SystemExit(f"no cached reference for {name}; run benchmarks/hard_models.py {name}")
    rows = []
    for seed in opts.seeds:
        fitted = None
        for method in opts.methods:
            if method in ("FlowGuide", *REFINES) and fitted is None:
                fitted = fit_flowguide(problem, opts, seed)
            try:
                run = run_method(problem, method, fitted, opts, seed)
            except NotApplicable:
                continue
            except OverBudget as err:
                run = None
                over = {"time_to_acc_s": None, "cpu_to_acc_s": None, "over_budget": str(err)}
            for label, r, transform in scorings(name, ref):
                row = over if run is None else score(run, r, transform)
                rows.append({"model": label, "method": method, "seed": seed, **row})
                print(_one_line(rows[-1]), flush=True)
    return rows


def _one_line(r: dict[str, Any]) -> str:
    t = r.get("time_to_acc_s")
    return (
        f"  {r['model']:<21} {r['method']:<21} seed {r['seed']}: to accuracy "
        f"{'never' if t is None else f'{t:.1f}s'}; err {_f(r.get('mean_err'))} / "
        f"{_f(r.get('log_sd_err'))}; wall {_f(r.get('wall_s'), '.1f')}s"
        + (f" [over budget: {r['over_budget']}]" if "over_budget" in r else "")
    )


def _f(x: Any, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _median(values: Sequence[Any]) -> float | None:
    """Median treating ``None`` (never reached) as infinite; ``None`` if the median is."""
    xs = [math.inf if v is None else float(v) for v in values]
    if not xs:
        return None
    m = statistics.median(xs)
    return None if math.isinf(m) else m


HEADERS = ["model", "method", "seeds", "reached", "wall to acc s", "CPU to acc s",
           "mean err", "log sd", "ESS/s", "ESS/CPU-s", "R-hat", "div"]  # fmt: skip


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"]), []).append(r)
    out = []
    for (model, method), rs in groups.items():
        out.append({
            "model": model, "method": method, "seeds": len(rs),
            "reached": sum(r.get("time_to_acc_s") is not None for r in rs),
            "wall_to_acc_s": _median([r.get("time_to_acc_s") for r in rs]),
            "cpu_to_acc_s": _median([r.get("cpu_to_acc_s") for r in rs]),
            "mean_err": _median([r.get("mean_err", math.inf) for r in rs]),
            "log_sd_err": _median([r.get("log_sd_err", math.inf) for r in rs]),
            "ess_per_s": _median([r.get("ess_per_s") for r in rs]),
            "ess_per_cpu_s": _median([r.get("ess_per_cpu_s") for r in rs]),
            "max_rhat": _median([r.get("max_rhat") for r in rs]),
            "divergences": _median([r.get("divergences") for r in rs]),
        })  # fmt: skip
    return sorted(out, key=_table_order)


def _table_order(row: dict[str, Any]) -> tuple[int, int]:
    """Problems in :data:`hard_models.MODELS` order (a second scoring after its problem), then
    methods in :data:`METHODS` order; anything else last."""
    model, method = row["model"], row["method"]
    return (
        TABLE_MODELS.index(model) if model in TABLE_MODELS else len(TABLE_MODELS),
        METHODS.index(method) if method in METHODS else len(METHODS),
    )


def table(summary: Sequence[dict[str, Any]]) -> str:
    body = [
        [s["model"], s["method"], s["seeds"], f"{s['reached']}/{s['seeds']}",
         "never" if s["wall_to_acc_s"] is None else f"{s['wall_to_acc_s']:.1f}",
         "never" if s["cpu_to_acc_s"] is None else f"{s['cpu_to_acc_s']:.1f}",
         _f(s["mean_err"]), _f(s["log_sd_err"]), _f(s["ess_per_s"], ".1f"),
         _f(s.get("ess_per_cpu_s"), ".2f"),
         _f(s["max_rhat"]), _f(s["divergences"], ".0f")]
        for s in summary
    ]  # fmt: skip
    return format_table(HEADERS, body)


def verdicts(summary: Sequence[dict[str, Any]]) -> list[str]:
    """Per model, the targets of FlowGuide + refine: accurate, and CPU time to accuracy at most
    1/3 of Pyro NUTS's and at most 2x NumPyro NUTS's (medians over seeds; ``never`` counts as
    infinitely slow)."""
    out = []
    for model in dict.fromkeys(s["model"] for s in summary):
        by = {s["method"]: s for s in summary if s["model"] == model}
        out += [_verdict(model, method, by) for method in REFINES if method in by]
    return out


def _verdict(model: str, method: str, by: dict[str, dict[str, Any]]) -> str:
    """One refine method's verdict on one model (see :func:`verdicts`)."""
    ours = by[method]
    t = ours["cpu_to_acc_s"]
    parts = [f"{model}: {method} accurate in {ours['reached']}/{ours['seeds']} seeds"]
    parts.append("never accurate" if t is None else f"CPU to accuracy {t:.1f} s")
    for peer, limit in (("Pyro NUTS", 1 / 3), ("NumPyro NUTS", 2.0)):
        other = by.get(peer)
        if other is None:
            continue
        theirs = other["cpu_to_acc_s"]
        if t is None:
            parts.append(f"vs {peer}: n/a")
        elif theirs is None:
            parts.append(f"vs {peer}: {peer} never accurate (target met)")
        else:
            ratio = t / theirs
            mark = "met" if ratio <= limit else "NOT met"
            parts.append(f"vs {peer}: {ratio:.2f}x (target <= {limit:.2g}x: {mark})")
    return "; ".join(parts)


def merge(paths: Sequence[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The runs of several result files (a later run replaces one of the same model, method and
    seed) and each file's settings."""
    payloads = load_results(paths)
    settings = []
    for path, payload in zip(paths, payloads, strict=True):
        own = payload.get("settings", {})
        if isinstance(own, list):  # a merged file: its parts' settings, as they were
            settings += own
        else:
            settings.append({"file": str(path), **own})
    return merged_rows(payloads, "runs", ("model", "method", "seed")), settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=hm.MODELS, default=list(hm.MODELS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--num-warmup", type=int, default=500)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--steps", type=int, default=5000, help="FlowGuide fit budget")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--guide-samples", type=int, default=20000)
    p.add_argument("--budget", type=float, default=1800.0, help="seconds per Pyro NUTS run")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 chains, short runs")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="run nothing: merge these into --out"
    )
    opts = p.parse_args(argv)
    if opts.quick:
        opts.chains, opts.num_warmup, opts.num_samples = 2, 100, 200
        opts.steps, opts.guide_samples, opts.budget, opts.seeds = 500, 4000, 120.0, [0]
        if "--models" not in (argv if argv is not None else sys.argv):
            opts.models = ["eight_schools", "funnel"]
    return opts


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_args(argv)
    out = opts.out or (QUICK_OUT if opts.quick else DEFAULT_OUT)
    if opts.merge:
        rows, settings = merge(opts.merge)
    else:
        set_threads(1)
        rows = []
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}
        for name in opts.models:
            print(f"{name}:", flush=True)
            rows += run_model(name, opts)
            save_results(out, settings, rows, quiet=True)  # a killed run keeps its models
    summary = save_results(out, settings, rows)
    print(table(summary))
    print("\n".join(verdicts(summary)))


def save_results(out: Path, settings: Any, rows: list[dict[str, Any]], quiet: bool = False):
    """Write the runs, their summary over seeds, the table and the verdicts to ``out``."""
    summary = summary_rows(rows)
    load = os.getloadavg()
    save_json(out, {"settings": settings, "load_average_at_end": load, "summary": summary,
                    "runs": rows, "table": table(summary), "verdicts": verdicts(summary),
                    "doc": __doc__})  # fmt: skip
    if not quiet:
        print(f"wrote {out} (load average {load[0]:.1f} on {machine_info()['cpu_count']} cores)")
    return summary


if __name__ == "__main__":
    main()
