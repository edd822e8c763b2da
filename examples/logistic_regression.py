r"""Bayesian logistic regression on German credit: Pyro's autoguides next to pyro-nf's FlowGuides.

UCI Statlog German credit (numeric version): 1000 applicants, 24 features standardized to mean
0 and (population) sd 1, plus an intercept column: D = 25 coefficients,

    beta ~ N(0, s^2 I),   y_n ~ Bernoulli(sigmoid(x_n . beta)),

with s = 1 by default (``--prior-scale``). The unit-scale prior on standardized features is the
Inference Gym's ``GermanCreditNumericLogisticRegression`` and the common benchmark choice; s = 10
is the "weakly informative" variant, whose posterior is dominated by the likelihood. The
posterior is close to Gaussian with correlated coefficients: a full-covariance Gaussian should
already do well, and a flow guide must not do worse.

The reference is a NUTS run (4 chains x 1000 draws after 1000 warm-up steps, split R-hat <= 1.01
on every coefficient), cached in ``benchmarks/reference/german_credit.json`` (per prior scale)
with its settings; ``--recompute-reference`` reruns it. Every guide gets the same budget through
:func:`pyro_nf.fit`; the table reports the ELBO (mean of log p - log q over --eval-samples draws,
with its standard error), PSIS k-hat, max |mean error| / reference sd and max |log sd ratio|
over the 25 coefficients, and the training time per step. ``--out`` gets
``logistic_regression.{md,json,png}`` (the PNG: draws of the two most correlated coefficients).

The data are read from :func:`pyro_nf.datasets.default_data_dir` (``$PYRO_NF_DATA``); the
script exits with a message if they are absent.

Usage::

    python examples/logistic_regression.py
    python examples/logistic_regression.py --prior-scale 10
    python examples/logistic_regression.py --quick

References:
    Dua & Graff, *UCI Machine Learning Repository* (Statlog German credit data).
    Hoffman, Sountsov, Dillon, Langmore, Tran & Vasudevan, *NeuTra-lizing Bad Geometry in
    Hamiltonian Monte Carlo Using Neural Transport*, 2019 (German credit logistic regression).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import (  # noqa: E402
    common_parser,
    german_credit_problem,
    german_credit_reference,
    plot_pairs,
    run_comparison,
)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the comparison; returns one result dict per guide (see ``_models.compare_guides``)."""
    parser = common_parser(__doc__, default_steps=2000)
    parser.add_argument(
        "--prior-scale", type=float, default=1.0, help="prior sd of every coefficient (> 0)"
    )
    parser.add_argument(
        "--recompute-reference", action="store_true", help="rerun NUTS and overwrite the cache"
    )
    args = parser.parse_args(argv)
    if not args.prior_scale > 0:
        parser.error(f"--prior-scale: expected a positive number, got {args.prior_scale}")
    try:
        problem = german_credit_problem(args.prior_scale)
    except FileNotFoundError as err:
        print(f"German credit data not found ({err}); set PYRO_NF_DATA to the data directory.")
        raise SystemExit(2) from err
    problem.reference = german_credit_reference(
        args.prior_scale, recompute=args.recompute_reference, allow_compute=not args.quick
    )

    def plot(path: Path, results: list[dict[str, Any]]) -> Path | None:
        # the two coefficients with the strongest posterior correlation under the first guide
        z = results[0]["_z"]
        corr = torch.corrcoef(z.T).abs().fill_diagonal_(0.0)
        i, j = divmod(int(corr.argmax()), corr.shape[0])
        return plot_pairs(
            path,
            results,
            problem.names,
            i,
            j,
            title=f"German credit (prior sd {args.prior_scale:g}): draws of two coefficients",
        )

    notes = [
        f"Bayesian logistic regression on German credit (N = 1000, D = 25 with intercept), "
        f"prior beta ~ N(0, {args.prior_scale:g}^2 I); errors over the 25 coefficients against "
        "a NUTS reference.",
        "Errors: max_i |mean_i(q) - mean_i| / sd_i and max_i |log(sd_i(q) / sd_i)|.",
    ]
    return run_comparison(
        problem,
        args,
        title=f"Logistic regression, German credit (prior sd {args.prior_scale:g})",
        notes=notes,
        stem="logistic_regression",
        plot=plot,
    )


if __name__ == "__main__":
    main()
