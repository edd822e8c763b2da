"""Two moons by maximum likelihood: RealNVP, MAF, planar and radial flows against a Gaussian.

10,000 points of ``pyro_nf.targets.two_moons`` (noise 0.05) are split (seeded) into 8,000
training and 2,000 test points. Each model is fitted with :class:`pyro_nf.density.
DensityEstimator` (standardized data, minibatch Adam, 10% of the training points held out for
early stopping, best validation parameters restored):

* ``gaussian`` — the baseline: a full-covariance Gaussian ``N(loc, L Lᵀ)`` fitted by maximum
  likelihood (``Flow(2, [LowerTriangularAffineLayer(2)])``); its closed-form MLE is printed as a
  check;
* ``realnvp`` — affine coupling layers with alternating masks (Dinh et al. 2017);
* ``maf3`` — three MAF layers with the coordinates reversed between layers (Papamakarios et
  al. 2017);
* ``planar`` / ``radial`` — Rezende & Mohamed's flows, scored through their inverses (planar:
  safeguarded Newton with exact implicit gradients; radial: closed form).

The script prints one table with the held-out log-likelihood (nats per point, ± its standard
error) of every family and its margin over the Gaussian (± the paired standard error), and
writes ``two_moons_densities.png`` (data, learned densities, samples),
``two_moons_curves.png`` (training curves), ``two_moons.json`` and ``two_moons.md`` to
``--out``.

Usage::

    python examples/two_moons.py            # full run (several minutes on one CPU thread)
    python examples/two_moons.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

import pyro_nf
from pyro_nf.density.estimator import DensityEstimator, train_val_split

#: name -> (builder spec, steps, learning rate) of the full run.
FAMILIES: dict[str, tuple[dict[str, Any], int, float]] = {
    "gaussian": ({"flow": "gaussian", "dim": 2}, 2000, 1e-2),
    "realnvp": ({"flow": "realnvp", "dim": 2, "depth": 8, "hidden": [128, 128]}, 6000, 1e-3),
    "maf3": ({"flow": "maf", "dim": 2, "depth": 3, "hidden": [64, 64]}, 6000, 1e-3),
    "planar": ({"flow": "planar", "dim": 2, "depth": 32}, 5000, 1e-2),
    "radial": ({"flow": "radial", "dim": 2, "depth": 32}, 5000, 1e-2),
}
QUICK = {
    "realnvp": {"depth": 4, "hidden": [32, 32]},
    "maf3": {"hidden": [32, 32]},
    "planar": {"depth": 8},
    "radial": {"depth": 8},
}
LIM = ((-1.6, 2.6), (-1.1, 1.6))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 points, 150 steps")
    p.add_argument("--out", default="out", help="directory for PNG/JSON/Markdown (default out/)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, split, init (default 0)")
    p.add_argument("--n", type=int, default=None, help="number of points (default 10,000)")
    p.add_argument("--noise", type=float, default=0.05, help="noise of two_moons (default 0.05)")
    p.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILIES),
        default=list(FAMILIES),
        help="models to fit (default: all)",
    )
    p.add_argument("--steps", type=int, default=None, help="override every family's steps")
    p.add_argument("--batch-size", type=int, default=256, help="minibatch size (default 256)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    return p.parse_args(argv)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    fmt = lambda r: " | ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(headers), "-+-".join("-" * w for w in widths), *map(fmt, rows)])


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = args.n or (2000 if args.quick else 10_000)
    x = pyro_nf.targets.two_moons(n, noise=args.noise, generator=args.seed)
    tr, te = train_val_split(n, 0.2, seed=args.seed)
    x_train, x_test = x[tr], x[te]
    print(f"two moons: {len(x_train)} training and {len(x_test)} test points, noise {args.noise}")

    results: dict[str, dict[str, Any]] = {}
    fitted: dict[str, DensityEstimator] = {}
    test_lp: dict[str, torch.Tensor] = {}
    for name in args.families:
        spec, steps, lr = FAMILIES[name]
        spec = dict(spec)
        if args.quick:
            spec.update(QUICK.get(name, {}))
            steps = 150
        steps = args.steps or steps
        torch.manual_seed(args.seed)
        est = DensityEstimator(standardize=True, **spec)
        t0 = time.perf_counter()
        history = est.fit(
            x_train,
            steps=steps,
            lr=lr,
            batch_size=args.batch_size,
            lr_schedule="cosine",
            seed=args.seed,
            desc=name,
        )
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            lp = est.log_prob(x_test)
        fitted[name], test_lp[name] = est, lp
        results[name] = {
            "spec": {k: v for k, v in spec.items()},
            "params": sum(p.numel() for p in est.flow.parameters()),
            "steps": history.num_steps,
            "max_steps": steps,
            "lr": lr,
            "stop_reason": history.stop_reason,
            "best_val_nll": min(v for _, v in history.val_losses),
            "seconds": seconds,
            "test_ll": float(lp.mean()),
            "test_ll_se": float(lp.std() / math.sqrt(len(lp))),
        }
        print(
            f"  {name:9s} {history.num_steps:5d} steps ({history.stop_reason}), "
            f"{seconds:6.1f} s, test log-lik {float(lp.mean()):+.4f} nats/point",
            flush=True,
        )

    base = "gaussian" if "gaussian" in test_lp else None
    if base is not None:
        mle = torch.distributions.MultivariateNormal(
            x_train.mean(0), torch.cov(x_train.T, correction=0)
        )
        results["gaussian"]["closed_form_mle_test_ll"] = float(mle.log_prob(x_test).mean())
    headers = [
        "family",
        "params",
        "steps",
        "time (s)",
        "test log-lik (nats/pt)",
        "margin over Gaussian",
    ]
    rows = []
    for name, r in results.items():
        margin = "-"
        if base is not None and name != base:
            diff = test_lp[name] - test_lp[base]
            r["margin"] = float(diff.mean())
            r["margin_se"] = float(diff.std() / math.sqrt(len(diff)))
            margin = f"{r['margin']:+.3f} ± {r['margin_se']:.3f}"
        rows.append(
            [
                name,
                str(r["params"]),
                str(r["steps"]),
                f"{r['seconds']:.1f}",
                f"{r['test_ll']:+.4f} ± {r['test_ll_se']:.4f}",
                margin,
            ]
        )
    print()
    print(table(headers, rows))
    if base is not None:
        print(
            f"\nGaussian baseline: closed-form MLE test log-lik "
            f"{results[base]['closed_form_mle_test_ll']:+.4f} (the fitted one "
            f"{results[base]['test_ll']:+.4f})."
        )
        best = (
            max((r["margin"], k) for k, r in results.items() if k != base)
            if len(results) > 1
            else None
        )
        if best is not None:
            print(f"Best family: {best[1]}, {best[0]:+.3f} nats/point over the Gaussian.")

    payload = {
        "example": "two_moons",
        "quick": args.quick,
        "n": n,
        "noise": args.noise,
        "seed": args.seed,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "batch_size": args.batch_size,
        "results": results,
        "machine": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
    }
    (out / "two_moons.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "two_moons.md").write_text(markdown(headers, rows) + "\n")
    if not args.no_plots:
        plot(x_train, fitted, out)
    print(
        f"\nwrote {out / 'two_moons.json'}, {out / 'two_moons.md'}"
        + (
            ""
            if args.no_plots
            else f", {out / 'two_moons_densities.png'}, {out / 'two_moons_curves.png'}"
        )
    )
    return payload


def plot(x_train: torch.Tensor, fitted: dict[str, DensityEstimator], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyro_nf.plotting import plot_density_2d, plot_samples_2d, plot_training_curve

    k = len(fitted) + 1
    fig, axes = plt.subplots(2, k, figsize=(3.0 * k, 5.6), squeeze=False)
    plot_samples_2d(x_train[:4000], ax=axes[0, 0], lim=LIM, title="data")
    axes[1, 0].axis("off")
    torch.manual_seed(0)
    for j, (name, est) in enumerate(fitted.items(), start=1):
        plot_density_2d(est, ax=axes[0, j], lim=LIM, n=200, title=f"{name}: density")
        plot_samples_2d(est.sample(4000), ax=axes[1, j], lim=LIM, title=f"{name}: samples")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "two_moons_densities.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(fitted), figsize=(3.6 * len(fitted), 3.0), squeeze=False)
    for ax, (name, est) in zip(axes[0], fitted.items(), strict=True):
        plot_training_curve(est.history, ax=ax, title=name, ylabel="NLL (nats/point)")
        finite = [v for v in est.history.smoothed if math.isfinite(v)]
        if finite:
            ax.set_ylim(min(finite) - 0.3, finite[0] + 0.5)
    fig.tight_layout()
    fig.savefig(out / "two_moons_curves.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
