r"""Rezende & Mohamed (2015), Figure 3: planar and radial flows fitted to the 2D energies U1–U4.

Each flow (``pyro_nf.planar(2, depth=K)`` / ``pyro_nf.radial(2, depth=K)``: a learnable diagonal
Gaussian base followed by K maps) is fitted to :math:`\tilde p = e^{-U}` by minimizing the
reverse KL with annealing, :math:`\beta_t = \min(1, 0.01 + t/T)` on the target term
(:func:`pyro_nf.reverse_kl.fit_reverse_kl`). The script then

* plots a grid: one row per energy, the true density :math:`e^{-U}` in the first column and the
  learned density :math:`q` of every (family, K) next to it — the exact density of the flow
  (pyro-nf scores any point through the inverse: closed form for radial, a safeguarded Newton
  solve for planar), on :math:`[-4, 4]^2` as in the paper;
* prints and saves (Markdown and JSON) :math:`\mathrm{KL}(q\,\|\,p) = \log Z - \mathrm{ELBO}`
  with its Monte-Carlo standard error (:func:`pyro_nf.reverse_kl.kl_estimate`, :math:`\log Z`
  from :data:`pyro_nf.targets.LOG_NORMALIZERS`).

U2–U4 carry pyro-nf's confinement :math:`\tfrac12(z_1/4)^2` (see :mod:`pyro_nf.targets`), so
they are normalizable and their mass extends beyond the plotted square along :math:`z_1`.

Usage::

    python examples/energies.py                   # the full grid, 10,000 steps per fit (long)
    python examples/energies.py --quick           # CI smoke run: seconds
    python examples/energies.py --energies U1 U2 --depths 32 --steps 5000 --out out/
    python examples/energies.py --energies U2 --families planar --depths 32 \
        --planar-init random --population 4 --batch-size 1024   # U2 KL about 0.02

References:
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

import pyro_nf
from pyro_nf.density.reverse_kl import fit_reverse_kl, kl_estimate
from pyro_nf.density.targets import get_target
from pyro_nf.flows.layers import MAP_INITS

ENERGIES = ("U1", "U2", "U3", "U4")
FAMILIES = ("planar", "radial", "iaf")
DEPTHS = (2, 8, 32)
LIMIT = 4.0  # the plotted square [-LIMIT, LIMIT]^2, as in the paper


def build_flow(
    family: str, depth: int, planar_init: str = "identity", radial_init: str = "identity"
) -> pyro_nf.Flow:
    """The flow of one grid cell (``planar_init``/``radial_init``: ``planar/radial(init=...)``)."""
    if family == "planar":
        return pyro_nf.planar(2, depth=depth, init=planar_init)
    if family == "radial":
        return pyro_nf.radial(2, depth=depth, init=radial_init)
    return pyro_nf.iaf(2, depth=depth, hidden=(64, 64))


def grid_points(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An ``n × n`` grid on the plotted square: the axis values and points of shape (n, n, 2)."""
    axis = torch.linspace(-LIMIT, LIMIT, n)
    z1, z2 = torch.meshgrid(axis, axis, indexing="xy")
    return axis, torch.stack([z1, z2], dim=-1)


@torch.no_grad()
def flow_density(flow: pyro_nf.Flow, points: torch.Tensor, chunk: int = 10_000) -> torch.Tensor:
    """``q(z)`` at ``points`` (..., 2) through the inverse; falls back to a histogram of samples
    if the inverse fails (it should not)."""
    q = flow()
    flat = points.reshape(-1, 2)
    try:
        dens = torch.cat(
            [q.log_prob(flat[i : i + chunk]).exp() for i in range(0, len(flat), chunk)]
        )
        return dens.reshape(points.shape[:-1])
    except Exception:  # noqa: BLE001 - fall back to a 2D histogram of samples
        n = points.shape[0]
        z = q.sample((400_000,))
        hist = torch.histogramdd(z, bins=[n, n], range=[-LIMIT, LIMIT, -LIMIT, LIMIT])[0]
        return hist.T / (400_000 * (2 * LIMIT / n) ** 2)


def fit_cell(energy: str, family: str, depth: int, args: argparse.Namespace) -> dict[str, Any]:
    """Fit one flow; return the KL estimate, timings and the flow."""
    target = get_target(energy)
    torch.manual_seed(args.seed)
    flow = build_flow(family, depth, args.planar_init, args.radial_init)
    history = fit_reverse_kl(
        flow,
        target,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        annealing=args.anneal_steps,
        population=args.population,
        progress=False,
    )
    torch.manual_seed(args.seed + 1)
    kl, se, n = kl_estimate(flow, target, num_samples=args.kl_samples)
    return {
        "energy": energy,
        "family": family,
        "depth": depth,
        "kl": kl,
        "kl_se": se,
        "kl_samples": n,
        "log_normalizer": target.log_normalizer,
        "fit_s": history.elapsed,
        "nan_restores": history.num_nan_restores,
        "flow": flow,
    }


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def markdown_table(rows: list[dict[str, Any]], families: list[str], depths: list[int]) -> str:
    """KL(q||p) ± se, one row per energy, one column per (family, K)."""
    cols = [(f, k) for f in families for k in depths]
    head = "| energy | log Z | " + " | ".join(f"{f} K={k}" for f, k in cols) + " |"
    sep = "|---|---:|" + "---:|" * len(cols)
    lines = [head, sep]
    for energy in dict.fromkeys(r["energy"] for r in rows):
        cells = {(r["family"], r["depth"]): r for r in rows if r["energy"] == energy}
        log_z = next(iter(cells.values()))["log_normalizer"]
        vals = [
            f"{cells[c]['kl']:.4f} ± {cells[c]['kl_se']:.4f}" if c in cells else "" for c in cols
        ]
        lines.append(f"| {energy} | {log_z:.4f} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot_grid(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    """The Figure-3 grid: true density, then the learned densities, one row per energy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(f, k) for f in args.families for k in args.depths]
    fig, axes = plt.subplots(
        len(args.energies),
        len(cols) + 1,
        figsize=(2.2 * (len(cols) + 1), 2.2 * len(args.energies)),
        squeeze=False,
    )
    _, points = grid_points(args.grid)
    extent = (-LIMIT, LIMIT, -LIMIT, LIMIT)
    for i, energy in enumerate(args.energies):
        target = get_target(energy)
        true = target.log_prob(points).exp()
        axes[i, 0].imshow(true.numpy(), extent=extent, origin="lower", cmap="viridis")
        axes[i, 0].set_ylabel(energy)
        cells = {(r["family"], r["depth"]): r for r in rows if r["energy"] == energy}
        for j, cell in enumerate(cols, start=1):
            r = cells[cell]
            dens = flow_density(r["flow"], points)
            axes[i, j].imshow(dens.numpy(), extent=extent, origin="lower", cmap="viridis")
            axes[i, j].set_xlabel(f"KL {r['kl']:.3f}", fontsize=8)
    axes[0, 0].set_title("exp(-U)", fontsize=9)
    for j, (family, depth) in enumerate(cols, start=1):
        axes[0, j].set_title(f"{family} K={depth}", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Reverse-KL fits, {args.steps} steps, batch {args.batch_size}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--energies", nargs="+", default=list(ENERGIES), choices=ENERGIES)
    p.add_argument("--families", nargs="+", default=["planar", "radial"], choices=FAMILIES)
    p.add_argument("--depths", nargs="+", type=int, default=list(DEPTHS))
    p.add_argument("--steps", type=int, default=10_000, help="optimizer steps per fit")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (cosine decay)")
    p.add_argument(
        "--anneal-steps",
        type=int,
        default=None,
        help="T of beta_t = min(1, 0.01 + t/T) (default steps // 10)",
    )
    p.add_argument(
        "--planar-init",
        default="identity",
        choices=MAP_INITS,
        help="planar(init=...): start each map at the identity, at a random contraction, or as "
        "Pyro's Planar does (its start and coordinates: 'pyro')",
    )
    p.add_argument(
        "--radial-init",
        default="identity",
        choices=("identity", "random"),
        help="radial(init=...): start each map at the identity or at Pyro's random start",
    )
    p.add_argument(
        "--population",
        type=int,
        default=1,
        help="starts trained side by side with successive halving (fit_reverse_kl(population=)); "
        "--batch-size is per member",
    )
    p.add_argument("--kl-samples", type=int, default=200_000, help="draws for the KL estimate")
    p.add_argument("--grid", type=int, default=200, help="heatmap resolution per axis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: U1 and U2, K=2 and 8, 300 steps, 20k KL samples, 60x60 heatmaps",
    )
    p.add_argument("--out", type=Path, default=Path("out"), help="output directory")
    args = p.parse_args(argv)
    if args.quick:
        args.energies = [e for e in args.energies if e in ("U1", "U2")] or ["U1"]
        args.depths = [k for k in args.depths if k <= 8] or [2]
        args.steps, args.kl_samples, args.grid = 300, 20_000, 60
    if args.anneal_steps is None:
        args.anneal_steps = max(1, args.steps // 10)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for energy in args.energies:
        for family in args.families:
            for depth in args.depths:
                r = fit_cell(energy, family, depth, args)
                rows.append(r)
                print(
                    f"{energy} {family:6s} K={depth:<2d}: KL = {r['kl']:.4f} ± {r['kl_se']:.4f} "
                    f"({r['fit_s']:.1f} s)",
                    flush=True,
                )
    table = markdown_table(rows, args.families, args.depths)
    print()
    print(f"KL(q||p) = log Z - ELBO (nats) ± Monte-Carlo standard error, {args.steps} steps:\n")
    print(table)
    header = (
        "# Reverse-KL fits to the Rezende & Mohamed energies\n\n"
        f"KL(q||p) = log Z − ELBO in nats ± its Monte-Carlo standard error ({args.kl_samples} "
        f"draws); {args.steps} Adam steps, batch {args.batch_size}, lr {args.lr} with cosine "
        f"decay, annealing β_t = min(1, 0.01 + t/{args.anneal_steps}), seed {args.seed}.\n\n"
    )
    (args.out / "energies.md").write_text(header + table + "\n", encoding="utf-8")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results = [{k: v for k, v in r.items() if k != "flow"} for r in rows]
    payload = {"settings": settings, "results": results, "torch": torch.__version__}
    payload["elapsed_s"] = time.perf_counter() - t0
    (args.out / "energies.json").write_text(json.dumps(_finite(payload), indent=2) + "\n")
    if not args.no_plot:
        plot_grid(rows, args, args.out / "energies.png")
    print(f"\nSaved {args.out / 'energies.md'}, {args.out / 'energies.json'}", end="")
    print("" if args.no_plot else f", {args.out / 'energies.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
