r"""Neal's funnel in 10 dimensions: Pyro's autoguides next to pyro-nf's FlowGuides.

The model has one latent site ``z = (v, x_1, ..., x_9)`` whose density is Neal's funnel
(:class:`pyro_nf.targets.NealFunnel`, wrapped by :func:`pyro_nf.targets.as_pyro_model`):

    v ~ N(0, 3^2),   x_i | v ~ N(0, e^v)   (i = 1..9).

The "posterior" is the funnel itself, so everything is known exactly: log Z = 0 (so -ELBO is
KL(q || p)), E v = E x_i = 0, sd(v) = 3, sd(x_i) = exp(9/4) = 9.49. The neck (v << 0, where the
x_i are squeezed to a width e^{v/2}) is the classic failure of variational families: every guide
misses part of it, and the PSIS k-hat should say so (k-hat > 0.7).

Every guide (Pyro's AutoNormal, AutoMultivariateNormal, AutoIAFNormal, AutoNormalizingFlow with 8
planar layers; pyro-nf's FlowGuide with IAF, planar, radial and RealNVP flows) gets the same
budget through :func:`pyro_nf.fit`: the same steps, learning rate and schedule, particles and
seed. The table reports the ELBO (mean of log p - log q over --eval-samples draws, with its
standard error), PSIS k-hat, max_i |mean error_i| / sd_i and max_i |log(sd_i(q) / sd_i)| against
the exact moments, and the training time per step. ``--out`` gets ``funnel.md``,
``funnel.json`` and ``funnel.png`` (draws of (x[0], v) from the exact funnel and from every guide).

Usage::

    python examples/funnel.py                 # full comparison (a few minutes on one core)
    python examples/funnel.py --quick         # smoke run (seconds)
    python examples/funnel.py --flow-kwargs '{"init_scale": 1.0}' --guides "FlowGuide(iaf)"

References:
    Neal, *Slice Sampling*, Annals of Statistics 31(3), 2003.
    Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational Inference*,
    ICML 2018.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import common_parser, funnel_problem, plot_pairs, run_comparison  # noqa: E402


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the comparison; returns one result dict per guide (see ``_models.compare_guides``)."""
    parser = common_parser(__doc__, default_steps=3000)
    parser.add_argument("--dim", type=int, default=10, help="funnel dimension (>= 2)")
    args = parser.parse_args(argv)
    if args.dim < 2:
        parser.error(f"--dim: expected an integer >= 2, got {args.dim}")
    problem = funnel_problem(args.dim)
    exact = problem.model.target.sample(1000, generator=torch.Generator().manual_seed(args.seed))

    def plot(path: Path, results: list[dict[str, Any]]) -> Path | None:
        return plot_pairs(
            path,
            results,
            problem.names,
            1,
            0,
            reference=exact,
            title=f"{args.dim}-D funnel: draws of (x[0], v)",
        )

    notes = [
        f"Neal's funnel, D = {args.dim}: exact reference (log Z = 0, so -ELBO = KL(q || p); "
        "E v = E x_i = 0, sd(v) = 3, sd(x_i) = exp(9/4)).",
        "Errors: max_i |mean_i(q) - mean_i| / sd_i and max_i |log(sd_i(q) / sd_i)|.",
    ]
    return run_comparison(
        problem, args, title=f"Neal's funnel ({args.dim}-D)", notes=notes, stem="funnel", plot=plot
    )


if __name__ == "__main__":
    main()
