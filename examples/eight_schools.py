r"""Eight schools, centered and non-centered: Pyro's autoguides next to pyro-nf's FlowGuides.

The model (Rubin 1981; BDA3 §5.5) has the estimated effects y_j of coaching in 8 schools with
known standard errors sigma_j:

    mu ~ N(0, 5),  tau ~ HalfCauchy(5),  theta_j ~ N(mu, tau),  y_j ~ N(theta_j, sigma_j).

*Centered*, theta is sampled directly: the posterior of (log tau, theta) is a funnel, hard for
every variational family (and for HMC). *Non-centered*, theta_j = mu + tau * theta_tilde_j with
theta_tilde_j ~ N(0, 1): the same posterior over (mu, tau, theta), in coordinates where it is
much closer to Gaussian. Comparing the two shows how much of the difficulty a flow absorbs.

The reference is a long NUTS run on the non-centered model (4 chains, split R-hat <= 1.01 on
every reported coordinate), cached in ``benchmarks/reference/eight_schools.json`` with its
settings; ``--recompute-reference`` reruns it (several minutes on one core). Every guide gets
the same budget through :func:`pyro_nf.fit`; the table reports the ELBO (mean of log p - log q
over --eval-samples draws, with its standard error), PSIS k-hat, max |mean error| / reference sd
and max |log sd ratio| over (mu, tau, theta_1..8), and the training time per step. ``--out``
gets ``eight_schools_{centered,noncentered}.{md,json,png}`` (the PNG: draws of
(theta[0], log tau)).

Usage::

    python examples/eight_schools.py                       # both parameterizations
    python examples/eight_schools.py --param centered      # one of them
    python examples/eight_schools.py --quick               # smoke run (seconds)

References:
    Rubin, *Estimation in Parallel Randomized Experiments*, J. Educational Statistics 6(4), 1981.
    Gelman, Carlin, Stern, Dunson, Vehtari & Rubin, *Bayesian Data Analysis* (3rd ed.), §5.5.
    Betancourt & Girolami, *Hamiltonian Monte Carlo for Hierarchical Models*, 2015.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import (  # noqa: E402
    EIGHT_SCHOOLS_NAMES,
    common_parser,
    eight_schools_problem,
    eight_schools_reference,
    plot_pairs,
    run_comparison,
)


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run the comparison; returns ``{parameterization: [result dict per guide]}``."""
    parser = common_parser(__doc__, default_steps=3000)
    parser.add_argument(
        "--param",
        choices=["centered", "noncentered", "both"],
        default="both",
        help="which parameterization(s) to fit",
    )
    parser.add_argument(
        "--recompute-reference", action="store_true", help="rerun NUTS and overwrite the cache"
    )
    args = parser.parse_args(argv)
    # Never start a multi-minute NUTS run in a smoke run: without a cached reference, --quick
    # simply reports no moment errors.
    reference = eight_schools_reference(
        recompute=args.recompute_reference, allow_compute=not args.quick
    )
    params = ["centered", "noncentered"] if args.param == "both" else [args.param]
    out: dict[str, list[dict[str, Any]]] = {}
    for param in params:
        problem = eight_schools_problem(centered=param == "centered", reference=reference)

        def plot(path: Path, results: list[dict[str, Any]], param: str = param) -> Path | None:
            return plot_pairs(
                path,
                results,
                EIGHT_SCHOOLS_NAMES,
                2,
                1,
                log_j=True,
                title=f"eight schools ({param}): draws of (theta[0], log tau)",
            )

        notes = [
            f"Eight schools, {param} parameterization (10 latent coordinates); errors over "
            "(mu, tau, theta[0..7]) against a NUTS reference (non-centered model).",
            "Errors: max_i |mean_i(q) - mean_i| / sd_i and max_i |log(sd_i(q) / sd_i)|.",
        ]
        out[param] = run_comparison(
            problem,
            args,
            title=f"Eight schools ({param})",
            notes=notes,
            stem=f"eight_schools_{param}",
            plot=plot,
        )
        print()
    return out


if __name__ == "__main__":
    main()
