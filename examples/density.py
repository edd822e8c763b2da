r"""Density estimation by maximum likelihood: two moons (short) and the Frey faces.

**Two moons** — a MAF (the fast density direction) against a full-covariance Gaussian, both
fitted by maximum likelihood with :class:`pyro_nf.density.DensityEstimator`.

**Frey faces** (1965 grey images, 28x20 = 560 pixels, levels 0..255; seeded 1565/200/200
split by ``pyro_nf.datasets.load_frey_faces(..., scale=False)``). The usual pipeline of
Papamakarios et al. (2017) and Dinh et al. (2017):

1. uniform dequantization ``s = x + u``, ``u ~ U[0, 1)^D`` (so ``s ∈ [0, 256)^D``; the test and
   validation images get one seeded draw, the training images ``--copies`` draws);
2. the logit transform ``y = logit(α + (1 − 2α) s / 256)`` with ``α = 0.05``;
3. a MAF fitted to ``y`` (standardized; AdamW with weight decay; early stopping on the
   validation images, whose best parameters are restored). With only 1565 training images a
   large MAF overfits within a few hundred steps, hence the small default (2 layers, 256
   hidden units).

Log-likelihoods are reported in the dequantized pixel space ``[0, 256)^D``, i.e. with the
Jacobian of step 2,

.. math::

    \log p(s) = \log p(y) + \sum_{i=1}^{D} \Bigl[\log(1 - 2\alpha) - \log 256
                - \log p_i - \log(1 - p_i)\Bigr], \qquad p_i = \alpha + (1 - 2\alpha) s_i/256,

in nats per image and in bits per dimension, ``−log p(s) / (D log 2)``. (The continuous
log-density of dequantized data is, in expectation, a lower bound on the discrete
log-likelihood of the integer images.) The baseline is the full-covariance Gaussian fitted by
maximum likelihood (closed form) in the same logit space. Without the data the Frey part is
skipped (it is looked up in ``pyro_nf.datasets.default_data_dir()`` or ``--data-dir``).

Prints one table and writes ``density.json``, ``density.md``, ``density_moons.png`` and
``density_frey_samples.png`` to ``--out``.

Usage::

    python examples/density.py            # full run (minutes on one CPU thread)
    python examples/density.py --quick    # smoke run (seconds)

References:
    Papamakarios, Pavlakou & Murray, *Masked Autoregressive Flow for Density Estimation*,
    NeurIPS 2017.
    Dinh, Sohl-Dickstein & Bengio, *Density estimation using Real NVP*, ICLR 2017.
    Theis, van den Oord & Bethge, *A note on the evaluation of generative models*, ICLR 2016.
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

LIM = ((-1.6, 2.6), (-1.1, 1.6))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run (seconds)")
    p.add_argument("--out", default="out", help="directory for PNG/JSON/Markdown (default out/)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--skip-moons", action="store_true", help="skip the two-moons part")
    p.add_argument("--skip-frey", action="store_true", help="skip the Frey-faces part")
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory of the Frey faces file (default pyro_nf.datasets.default_data_dir())",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="logit transform α (default 0.05)")
    p.add_argument("--depth", type=int, default=2, help="MAF layers for Frey (default 2)")
    p.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[256],
        help="MADE hidden widths for Frey (default 256)",
    )
    p.add_argument("--steps", type=int, default=3000, help="max steps for Frey (default 3000)")
    p.add_argument("--lr", type=float, default=1e-3, help="Frey learning rate (default 1e-3)")
    p.add_argument(
        "--weight-decay",
        type=float,
        default=1e-2,
        help="Frey AdamW weight decay (default 1e-2; 1565 images overfit fast)",
    )
    p.add_argument("--batch-size", type=int, default=100, help="Frey batch size (default 100)")
    p.add_argument(
        "--copies", type=int, default=4, help="dequantization draws per training image (default 4)"
    )
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


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


# -- two moons --------------------------------------------------------------------------------


def run_moons(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    n, steps = (2000, 150) if args.quick else (6000, 3000)
    x = pyro_nf.targets.two_moons(n, noise=0.05, generator=args.seed)
    tr, te = train_val_split(n, 0.25, seed=args.seed)
    x_train, x_test = x[tr], x[te]
    rows, fitted, lps = [], {}, {}
    for name, spec, lr in [
        ("gaussian", {"flow": "gaussian"}, 1e-2),
        ("maf5", {"flow": "maf", "depth": 5, "hidden": [64, 64]}, 1e-3),
    ]:
        torch.manual_seed(args.seed)
        est = DensityEstimator(dim=2, standardize=True, **spec)
        t0 = time.perf_counter()
        h = est.fit(
            x_train, steps=steps, lr=lr, lr_schedule="cosine", seed=args.seed, desc=f"moons/{name}"
        )
        with torch.no_grad():
            lp = est.log_prob(x_test)
        fitted[name], lps[name] = est, lp
        ll, se = mean_se(lp)
        rows.append(
            {
                "dataset": "two moons",
                "model": name,
                "unit": "nats/point",
                "params": sum(p.numel() for p in est.parameters()),
                "steps": h.num_steps,
                "seconds": time.perf_counter() - t0,
                "test_ll": ll,
                "test_ll_se": se,
                "bits_per_dim": -ll / (2 * math.log(2)),
            }
        )
    diff = lps["maf5"] - lps["gaussian"]
    rows[1]["margin"], rows[1]["margin_se"] = mean_se(diff)
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from pyro_nf.plotting import plot_density_2d, plot_samples_2d

        fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
        plot_samples_2d(x_train, ax=axes[0], lim=LIM, title="data")
        for ax, (name, est) in zip(axes[1:], fitted.items(), strict=True):
            plot_density_2d(est, ax=ax, lim=LIM, n=200, title=name)
        fig.tight_layout()
        fig.savefig(out / "density_moons.png", dpi=110)
        plt.close(fig)
    return rows


# -- Frey faces -------------------------------------------------------------------------------


def logit_transform(s: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = logit(α + (1 − 2α) s/256)`` and ``log|det ∂y/∂s|`` per row (float64 math)."""
    s = s.double()
    p = alpha + (1 - 2 * alpha) * s / 256.0
    y = torch.log(p) - torch.log1p(-p)
    log_det = math.log(1 - 2 * alpha) - math.log(256.0) - torch.log(p) - torch.log1p(-p)
    return y, log_det.sum(-1)


def inverse_logit_transform(y: torch.Tensor, alpha: float) -> torch.Tensor:
    return (torch.sigmoid(y.double()) - alpha) / (1 - 2 * alpha) * 256.0


def dequantize(x: torch.Tensor, copies: int, gen: torch.Generator) -> torch.Tensor:
    x = x.double().repeat(copies, 1)
    return x + torch.rand(x.shape, generator=gen, dtype=x.dtype)


def run_frey(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    data_dir = Path(args.data_dir) if args.data_dir else pyro_nf.datasets.default_data_dir()
    file = None if data_dir is None else data_dir / pyro_nf.datasets.FREY_FACES_FILE
    if file is None or not file.exists():
        print(
            f"Frey faces: {pyro_nf.datasets.FREY_FACES_FILE} not found (data dir: "
            f"{data_dir}); skipping. Set PYRO_NF_DATA or --data-dir."
        )
        return []
    frey = pyro_nf.datasets.load_frey_faces(file, seed=args.seed, scale=False, dtype=torch.float64)
    train_x, val_x, test_x = frey.train, frey.valid, frey.test
    steps, copies, depth, hidden = args.steps, args.copies, args.depth, args.hidden
    if args.quick:
        steps, copies, depth, hidden = 30, 1, 1, [64]
    dim = train_x.shape[1]
    gen = torch.Generator().manual_seed(args.seed)
    s_train = dequantize(train_x, copies, gen)
    s_val, s_test = dequantize(val_x, 1, gen), dequantize(test_x, 1, gen)
    (y_train, _), (y_val, _), (y_test, jac_test) = (
        logit_transform(s, args.alpha) for s in (s_train, s_val, s_test)
    )
    print(
        f"Frey faces: {len(train_x)} training images x {copies} dequantizations, "
        f"{len(val_x)} validation, {len(test_x)} test; D = {dim}"
    )

    rows = []
    # baseline: full-covariance Gaussian, closed-form maximum likelihood in logit space
    t0 = time.perf_counter()
    mean, cov = y_train.mean(0), torch.cov(y_train.T, correction=0)
    if torch.linalg.cholesky_ex(cov).info != 0:  # fewer images than pixels: add a small ridge
        cov = cov + 1e-6 * cov.diagonal().mean() * torch.eye(dim, dtype=cov.dtype)
    gauss = torch.distributions.MultivariateNormal(mean, cov)
    lp_gauss = gauss.log_prob(y_test) + jac_test
    ll, se = mean_se(lp_gauss)
    rows.append(
        {
            "dataset": "frey faces",
            "model": "gaussian (full cov, ML)",
            "unit": "nats/image",
            "params": dim + dim * (dim + 1) // 2,
            "steps": 0,
            "seconds": time.perf_counter() - t0,
            "test_ll": ll,
            "test_ll_se": se,
            "bits_per_dim": -ll / (dim * math.log(2)),
            "val_ll": float((gauss.log_prob(y_val) + logit_transform(s_val, args.alpha)[1]).mean()),
        }
    )

    torch.manual_seed(args.seed)
    est = DensityEstimator("maf", dim=dim, depth=depth, hidden=hidden, standardize=True)
    t0 = time.perf_counter()
    h = est.fit(
        y_train.float(),
        x_val=y_val.float(),
        steps=steps,
        lr=args.lr,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        validate_every=25,
        seed=args.seed,
        desc="frey/maf",
    )
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        lp_maf = est.log_prob(y_test.float()).double() + jac_test
    ll, se = mean_se(lp_maf)
    best_val = min(v for _, v in h.val_losses)
    rows.append(
        {
            "dataset": "frey faces",
            "model": f"maf{depth} ({'x'.join(map(str, hidden))})",
            "unit": "nats/image",
            "params": sum(p.numel() for p in est.parameters()),
            "steps": h.num_steps,
            "stop_reason": h.stop_reason,
            "best_step": h.best_step,
            "seconds": seconds,
            "test_ll": ll,
            "test_ll_se": se,
            "bits_per_dim": -ll / (dim * math.log(2)),
            "val_ll": -best_val + float(logit_transform(s_val, args.alpha)[1].mean()),
        }
    )
    rows[1]["margin"], rows[1]["margin_se"] = mean_se(lp_maf - lp_gauss)

    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        torch.manual_seed(args.seed)
        samples = inverse_logit_transform(est.sample(8), args.alpha).clamp(0, 255.999).floor()
        fig, axes = plt.subplots(2, 8, figsize=(8, 2.9))
        for j in range(8):
            axes[0, j].imshow(test_x[j].view(28, 20).numpy(), cmap="gray", vmin=0, vmax=255)
            axes[1, j].imshow(samples[j].view(28, 20).numpy(), cmap="gray", vmin=0, vmax=255)
        for ax in axes.flat:
            ax.axis("off")
        axes[0, 0].set_title("test images", loc="left", fontsize=9)
        axes[1, 0].set_title("MAF samples", loc="left", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "density_frey_samples.png", dpi=110)
        plt.close(fig)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if not args.skip_moons:
        rows += run_moons(args, out)
    if not args.skip_frey:
        rows += run_frey(args, out)
    headers = [
        "dataset",
        "model",
        "params",
        "steps",
        "time (s)",
        "test log-lik",
        "unit",
        "bits/dim",
        "margin over Gaussian",
    ]
    cells = [
        [
            r["dataset"],
            r["model"],
            str(r["params"]),
            str(r["steps"]),
            f"{r['seconds']:.1f}",
            f"{r['test_ll']:+.2f} ± {r['test_ll_se']:.2f}"
            if r["unit"] == "nats/image"
            else f"{r['test_ll']:+.4f} ± {r['test_ll_se']:.4f}",
            r["unit"],
            f"{r['bits_per_dim']:.4f}",
            f"{r['margin']:+.2f} ± {r['margin_se']:.2f}" if "margin" in r else "-",
        ]
        for r in rows
    ]
    print()
    print(table(headers, cells))
    payload = {
        "example": "density",
        "quick": args.quick,
        "seed": args.seed,
        "alpha": args.alpha,
        "frey": {
            "depth": args.depth,
            "hidden": args.hidden,
            "steps": args.steps,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "batch_size": args.batch_size,
            "copies": args.copies,
        },
        "results": rows,
        "machine": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
    }
    (out / "density.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "density.md").write_text(markdown(headers, cells) + "\n")
    print(f"\nwrote {out / 'density.json'} and {out / 'density.md'}")
    return payload


if __name__ == "__main__":
    main()
