"""Compute the NUTS reference that ``pyro-nf demo`` overlays on its eight schools figure.

Run once (about a minute per chain on an idle core; chains run in parallel processes); the demo never runs NUTS itself::

    python benchmarks/reference/make_demo_reference.py   # writes pyro_nf/datasets/eight_schools_nuts.json

The posterior is the eight schools model's (Rubin 1981; Gelman et al. 2013, Section 5.5):
``mu ~ N(0, 5^2)``, ``tau ~ HalfCauchy(5)``, ``theta_j ~ N(mu, tau^2)``,
``y_j ~ N(theta_j, sigma_j^2)``. NUTS samples its non-centered form
(``theta = mu + tau * theta_raw``, the same posterior over ``mu, tau, theta``, without the funnel
that makes NUTS diverge); the demo fits guides to the centered form, whose funnel between
``tau`` and ``theta`` is what a Gaussian guide cannot follow.

The file holds, per parameter (``mu``, ``tau``, ``theta[0..7]``): mean, sd, the quantiles at
levels 0.01..0.99 (from all draws), the joint density of ``(theta[0], log tau)`` as a
60 x 60 histogram (from all draws), and 1000 evenly thinned draws (4 significant digits) for the
figure; and its provenance: seed, chains, warmup, draws per chain, target acceptance, split
R-hat and ESS per parameter, divergences, versions and the date.

It uses Pyro's ``MCMC``/``NUTS`` directly (float64, each chain in its own process, seeded
``seed + c``), not
``pyro_nf.diagnostics.reference.run_nuts``, so that it stays a self-contained one-off script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_sample
from pyro.ops.stats import effective_sample_size, split_gelman_rubin

Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
NAMES = ["mu", "tau"] + [f"theta[{j}]" for j in range(8)]
THETA0_RANGE, LOG_TAU_RANGE = (-20.0, 45.0), (-5.0, 4.0)
OUT = Path(__file__).resolve().parents[2] / "pyro_nf" / "datasets" / "eight_schools_nuts.json"


def noncentered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    """Non-centered eight schools (``theta = mu + tau * theta_raw``)."""
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("schools", y.shape[-1]):
        theta_raw = pyro.sample("theta_raw", dist.Normal(y.new_tensor(0.0), 1.0))
        pyro.deterministic("theta", mu + tau * theta_raw)
        pyro.sample("obs", dist.Normal(mu + tau * theta_raw, sigma), obs=y)


def run_chain(seed: int, warmup: int, samples: int, accept: float) -> tuple[torch.Tensor, int]:
    """One seeded chain: draws ``(samples, 10)`` of mu, tau, theta and its divergences."""
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(seed)
    y, sigma = torch.tensor(Y, dtype=torch.float64), torch.tensor(SIGMA, dtype=torch.float64)
    kernel = NUTS(noncentered, target_accept_prob=accept, init_strategy=init_to_sample,
                  jit_compile=True, ignore_jit_warnings=True)  # fmt: skip
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    mcmc.run(y, sigma)
    s = mcmc.get_samples()
    theta = s["mu"][:, None] + s["tau"][:, None] * s["theta_raw"]
    draws = torch.cat([s["mu"][:, None], s["tau"][:, None], theta], dim=-1)
    divergences = len(mcmc.diagnostics()["divergences"]["chain 0"])
    return draws, divergences


def funnel_histogram(theta0: torch.Tensor, log_tau: torch.Tensor, bins: int = 60) -> dict:
    """The joint density of ``(theta[0], log tau)`` (the funnel) on a fixed grid, from all draws:
    ``density[i][j]`` over ``log tau`` bin ``i`` and ``theta[0]`` bin ``j``."""
    (xlo, xhi), (ylo, yhi) = THETA0_RANGE, LOG_TAU_RANGE
    ix = ((theta0 - xlo) / (xhi - xlo) * bins).floor().long()
    iy = ((log_tau - ylo) / (yhi - ylo) * bins).floor().long()
    inside = (ix >= 0) & (ix < bins) & (iy >= 0) & (iy < bins)
    counts = torch.zeros(bins * bins, dtype=torch.float64)
    counts.index_add_(0, iy[inside] * bins + ix[inside], torch.ones_like(theta0[inside]))
    area = (xhi - xlo) * (yhi - ylo) / bins**2
    density = counts.reshape(bins, bins) / (theta0.numel() * area)
    return {
        "x": "theta[0]",
        "y": "log tau",
        "x_range": list(THETA0_RANGE),
        "y_range": list(LOG_TAU_RANGE),
        "bins": bins,
        "fraction_outside": float(1 - inside.double().mean()),
        "density": [[float(f"{v:.4g}") for v in row] for row in density.tolist()],
    }


def summarize(chains: torch.Tensor, settings: dict) -> dict:
    """The JSON record of ``chains`` ``(C, S, 10)``."""
    flat = chains.reshape(-1, chains.shape[-1])
    levels = [round(0.01 * k, 2) for k in range(1, 100)]
    q = torch.quantile(flat, torch.tensor(levels, dtype=flat.dtype), dim=0)  # (99, 10)
    thin = flat[torch.linspace(0, flat.shape[0] - 1, 1000).round().long()]
    hist = funnel_histogram(flat[:, 2], flat[:, 1].log())
    rhat = split_gelman_rubin(chains, chain_dim=0, sample_dim=1)
    ess = effective_sample_size(chains, chain_dim=0, sample_dim=1)
    settings.update(max_rhat=float(rhat.max()), min_ess=float(ess.min()),
                    rhat=dict(zip(NAMES, map(float, rhat), strict=True)),
                    ess=dict(zip(NAMES, map(float, ess), strict=True)))  # fmt: skip
    return {
        "model": "eight schools (Rubin 1981): mu ~ N(0, 5^2), tau ~ HalfCauchy(5), "
        "theta_j ~ N(mu, tau^2), y_j ~ N(theta_j, sigma_j^2)",
        "data": {"y": Y, "sigma": SIGMA},
        "names": NAMES,
        "mean": flat.mean(0).tolist(),
        "sd": flat.std(0).tolist(),
        "quantile_levels": levels,
        "quantiles": {n: q[:, j].tolist() for j, n in enumerate(NAMES)},
        "funnel_histogram": hist,
        "draws": {n: [float(f"{v:.4g}") for v in thin[:, j].tolist()] for j, n in enumerate(NAMES)},
        "provenance": settings,
    }


def dump(record: dict) -> str:
    """``record`` as JSON text, one top-level field a line (a compact, diffable file)."""
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=2000, help="draws per chain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=4, help="chains run at once (processes)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    start = time.perf_counter()
    seeds = [args.seed + c for c in range(args.chains)]
    with ProcessPoolExecutor(args.jobs) as pool:  # one process per chain (independent seeds)
        futures = [pool.submit(run_chain, s, args.warmup, args.samples, 0.95) for s in seeds]
        results = [f.result() for f in futures]
    draws = [d for d, _ in results]
    divergences = sum(div for _, div in results)
    print(f"{args.chains} chains, {divergences} divergences, {time.perf_counter() - start:.0f} s")
    settings = {
        "script": "benchmarks/reference/make_demo_reference.py",
        "sampler": "pyro.infer.NUTS (jit_compile=True; non-centered: theta = mu + tau * theta_raw)",
        "num_chains": args.chains,
        "warmup": args.warmup,
        "num_samples_per_chain": args.samples,
        "seed": args.seed,
        "seeds": seeds,
        "target_accept_prob": 0.95,
        "init_strategy": "init_to_sample",
        "dtype": "float64",
        "divergences": divergences,
        "elapsed_s": round(time.perf_counter() - start, 1),
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }
    record = summarize(torch.stack(draws), settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(record))
    print(
        f"wrote {args.out}: max R-hat {settings['max_rhat']:.4f}, min ESS {settings['min_ess']:.0f}"
    )


if __name__ == "__main__":
    main()
