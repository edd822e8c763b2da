"""The ``pyro-nf`` command: ``demo``, ``fit-density``, ``sample`` and ``bench``.

Every subcommand has ``--help``; bad paths or arguments end with a one-line error naming the
argument and exit status 2, never a traceback.

Example:
    >>> main(["--help"])  # doctest: +SKIP
    usage: pyro-nf [-h] {demo,fit-density,sample,bench} ...
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

BENCHMARKS = {
    "flow-speed": "flow_speed.py",
    "energies": "energies.py",
    "guides": "guides.py",
    "vae": "vae.py",
    "hard-posteriors": "hard_posteriors.py",
}
FAMILIES = ("maf", "iaf", "realnvp", "nice", "planar", "radial")


class CLIError(Exception):
    """A user error: printed as ``pyro-nf: error: ...`` with exit status 2."""


# -- demo -----------------------------------------------------------------------------------------


def _demo_energies(out: Path, steps: int, seed: int) -> list[dict[str, Any]]:
    """Fit planar, radial and IAF flows to U1 and U2 by reverse KL; plot them, return the rows."""
    from .density.targets import get_target
    from .flows.builders import iaf, planar, radial

    rows, fitted = [], []
    for energy in ("U1", "U2"):
        target = get_target(energy)
        for family, builder in (("planar", planar), ("radial", radial), ("iaf", iaf)):
            depth = 4 if family == "iaf" else 16
            row, flow = _fit_energy(energy, target, family, builder, depth, steps, seed)
            rows.append(row)
            fitted.append((energy, family, depth, target, flow))
    _plot_energies(fitted, out / "demo_energies.png")
    return rows


def _fit_energy(
    energy: str,
    target: Any,
    family: str,
    builder: Callable[..., Any],
    depth: int,
    steps: int,
    seed: int,
) -> tuple[dict[str, Any], Any]:
    """Fit one seeded 2D flow to ``target`` by reverse KL: its table row and the fitted flow."""
    import torch

    from .density.reverse_kl import fit_reverse_kl, kl_estimate

    torch.manual_seed(seed)
    flow = builder(2, depth=depth)
    start = time.perf_counter()
    fit_reverse_kl(flow, target, steps=steps, progress=False)
    elapsed = time.perf_counter() - start
    kl, se, _ = kl_estimate(flow, target, num_samples=20000)
    row = {
        "problem": f"{energy} (log Z = {target.log_normalizer:.4f})",
        "method": f"{family} K={depth}",
        "KL(q||p) nats": f"{float(kl):.4f} ± {float(se):.4f}",
        "time s": f"{elapsed:.1f}",
    }
    return row, flow


def _plot_energies(fitted: list, path: Path) -> None:
    """One row of panels per energy: the target, then each fitted flow's density."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the examples extra
        print("matplotlib is not installed (pip install 'pyro-nf[examples]'): skipping", path.name)
        return
    from .plotting import plot_density_2d

    energies = sorted({e for e, *_ in fitted})
    methods = [(f, d) for e, f, d, *_ in fitted if e == energies[0]]
    fig, axes = plt.subplots(
        len(energies), len(methods) + 1, figsize=(3 * (len(methods) + 1), 3 * len(energies))
    )
    for i, energy in enumerate(energies):
        entries = [x for x in fitted if x[0] == energy]
        plot_density_2d(entries[0][3], ax=axes[i, 0], lim=4.0, title=f"exp(-{energy})")
        for j, (_, family, depth, _, flow) in enumerate(entries, start=1):
            plot_density_2d(flow(), ax=axes[i, j], lim=4.0, title=f"{family} K={depth}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


EIGHT_SCHOOLS_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
EIGHT_SCHOOLS_SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


def _eight_schools(y: Any, sigma: Any) -> None:
    """The non-centered eight schools model, as a Pyro model."""
    import pyro
    import pyro.distributions as dist

    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        theta_raw = pyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * theta_raw, sigma), obs=y)


def _demo_bayes(out: Path, steps: int, seed: int) -> list[dict[str, Any]]:
    """Fit Pyro's autoguides and flow guides to eight schools; plot tau, return the rows."""
    import torch

    y, sigma = torch.tensor(EIGHT_SCHOOLS_Y), torch.tensor(EIGHT_SCHOOLS_SIGMA)
    rows, taus = [], {}
    for name, make in _eight_schools_guides().items():
        row, taus[name] = _fit_guide(name, make, y, sigma, steps, seed)
        rows.append(row)
    _plot_taus(taus, out / "demo_eight_schools.png")
    return rows


def _eight_schools_guides() -> dict[str, Callable[[], Any]]:
    """The guides the demo compares, by table name: each a factory of a fresh guide."""
    from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

    from .infer.guides import FlowGuide

    return {
        "Pyro AutoNormal": lambda: AutoNormal(_eight_schools),
        "Pyro AutoMultivariateNormal": lambda: AutoMultivariateNormal(_eight_schools),
        "pyro-nf FlowGuide (IAF)": lambda: FlowGuide(_eight_schools, flow="iaf"),
        "pyro-nf FlowGuide (planar)": lambda: FlowGuide(_eight_schools, flow="planar"),
    }


def _fit_guide(
    name: str, make: Callable[[], Any], y: Any, sigma: Any, steps: int, seed: int
) -> tuple[dict[str, Any], Any]:
    """Fit one seeded guide to eight schools: its table row and 2000 posterior draws of tau."""
    import pyro
    import torch

    from .diagnostics.report import diagnose
    from .infer.svi import fit

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = make()
    start = time.perf_counter()
    fit(
        _eight_schools,
        guide,
        y,
        sigma,
        steps=steps,
        num_particles=8,
        progress=False,
        early_stopping=None,
    )
    elapsed = time.perf_counter() - start
    report = diagnose(_eight_schools, guide, y, sigma, num_samples=2000)
    row = {
        "problem": "eight schools (non-centered)",
        "method": name,
        "ELBO": f"{report.elbo:.3f} ± {report.elbo_se:.3f}",
        "k-hat": f"{report.khat:.2f} ({report.verdict})",
        "time s": f"{elapsed:.1f}",
    }
    with torch.no_grad():
        tau = torch.stack([guide()["tau"] for _ in range(2000)]).reshape(-1)
    return row, tau


def _plot_taus(taus: dict, path: Path) -> None:
    """Overlaid histograms of each guide's posterior draws of tau."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, tau in taus.items():
        ax.hist(tau.clamp(max=30).numpy(), bins=60, density=True, histtype="step", label=name)
    ax.set_xlabel("tau (between-school sd)")
    ax.set_title("eight schools: posterior of tau under each guide")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _print_table(rows: list[dict[str, Any]]) -> str:
    """Print ``rows`` as an aligned text table (columns in order of appearance); return it."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = [
        " | ".join(k.ljust(widths[k]) for k in keys),
        "-+-".join("-" * widths[k] for k in keys),
    ]
    lines += [" | ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def cmd_demo(args: argparse.Namespace) -> int:
    """``pyro-nf demo``: the energies and eight schools comparisons, tables, PNGs and JSON."""
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("pyro").setLevel(logging.WARNING)  # no "Guessed max_plate_nesting" chatter
    out = _out_dir(args.out)
    steps = 300 if args.quick else args.steps
    start = time.perf_counter()
    print(f"pyro-nf demo: 2D energies with exact log Z (reverse KL, {steps} steps each)")
    energy_rows = _demo_energies(out, steps, args.seed)
    _print_table(energy_rows)
    print(f"\nBayesian model: eight schools, {steps} SVI steps per guide, 8 particles")
    bayes_rows = _demo_bayes(out, steps, args.seed)
    _print_table(bayes_rows)
    (out / "demo_results.json").write_text(
        json.dumps({"energies": energy_rows, "bayes": bayes_rows}, indent=2)
    )
    print(
        f"\nwrote {out / 'demo_energies.png'}, {out / 'demo_eight_schools.png'}, {out / 'demo_results.json'}"
        f" in {time.perf_counter() - start:.0f} s"
    )
    return 0


# -- fit-density / sample -----------------------------------------------------------------------


def _read_csv(path: str) -> Any:
    """The numeric rows of a CSV file (an optional header line skipped) as a float64 tensor."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"data: no such file: {path}")
    rows = []
    with p.open(newline="") as handle:
        for i, row in enumerate(csv.reader(handle)):
            if not row or all(not c.strip() for c in row):
                continue
            try:
                rows.append([float(c) for c in row])
            except ValueError:
                if i == 0 and not rows:
                    continue  # a header line
                raise CLIError(f"data: line {i + 1} of {path} is not numeric: {row[:5]}") from None
    if not rows:
        raise CLIError(f"data: {path} holds no numeric rows")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise CLIError(
            f"data: expected the same number of columns on every row of {path}, got {sorted(widths)}"
        )
    return torch.tensor(rows, dtype=torch.float64)


def cmd_fit_density(args: argparse.Namespace) -> int:
    """``pyro-nf fit-density``: fit a flow to a CSV file by maximum likelihood and save it."""
    import torch

    from .density.estimator import DensityEstimator

    torch.manual_seed(args.seed)
    x = _read_csv(args.data)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise CLIError(f"--out: directory {out.parent} does not exist")
    try:
        estimator = DensityEstimator(
            args.flow, standardize=not args.no_standardize, dim=x.shape[-1], depth=args.depth
        )
        estimator = estimator.double()
        history = estimator.fit(
            x,
            steps=args.steps,
            batch_size=args.batch_size,
            val_fraction=args.val_fraction,
            lr=args.lr,
            progress=not args.quiet,
        )
    except ValueError as err:
        raise CLIError(str(err)) from None
    estimator.save(out)
    nll = estimator.nll(x)
    print(
        f"fitted {args.flow} (depth {args.depth}) to {x.shape[0]} rows x {x.shape[1]} columns: "
        f"mean log-likelihood {-nll:.4f} nats/row; {history.stop_reason} after {history.num_steps} steps"
    )
    print(f"saved {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """``pyro-nf sample``: draw samples from a saved density model, as CSV."""
    import torch

    from .density.estimator import DensityEstimator

    if not Path(args.model).is_file():
        raise CLIError(f"model: no such file: {args.model}")
    if args.n < 1:
        raise CLIError(f"-n: expected an integer >= 1, got {args.n}")
    try:
        estimator = DensityEstimator.load(args.model)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CLIError(f"model: {args.model} is not a pyro-nf density model ({err})") from None
    torch.manual_seed(args.seed)
    with torch.no_grad():
        samples = estimator.sample(args.n)
    handle = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.writer(handle)
        for row in samples.tolist():
            writer.writerow([f"{v:.8g}" for v in row])
    finally:
        if args.out:
            handle.close()
    return 0


# -- bench ----------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    """``pyro-nf bench``: run a benchmark script of a source checkout, passing ``extra`` on."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    script = root / BENCHMARKS[args.name]
    if not script.is_file():
        raise CLIError(
            f"bench: {script} not found; benchmarks run from a source checkout of pyro-nf "
            "(git clone, then pip install -e .)"
        )
    return subprocess.call([sys.executable, str(script), *extra])


# -- plumbing -------------------------------------------------------------------------------------


def _out_dir(path: str) -> Path:
    """The output directory ``path``, created if needed; a CLIError unless it is writable."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"--out: cannot create directory {path} ({err.strerror})") from None
    if not os.access(out, os.W_OK):
        raise CLIError(f"--out: directory {path} is not writable")
    return out


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not (0 < value < 1) or math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-nf`` argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(
        prog="pyro-nf",
        description="Normalizing flows for Pyro: demo, density fitting, sampling, benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(sub)
    _add_fit_density_parser(sub)
    _add_sample_parser(sub)
    _add_bench_parser(sub)
    return parser


def _add_demo_parser(sub: Any) -> None:
    """The ``demo`` subcommand and its options."""
    demo = sub.add_parser(
        "demo",
        help="fit flows on built-in problems; print a table, write PNGs",
        description="Fit planar, radial and IAF flows to the 2D energies U1 and U2 (exact log Z) by "
        "reverse KL, and flow guides vs Pyro's autoguides to eight schools; print the results and "
        "write PNGs and JSON to --out.",
    )
    demo.add_argument("--out", default="out", help="output directory (default: out)")
    demo.add_argument(
        "--steps",
        type=_positive_int,
        default=1000,
        help="optimization steps per fit (default: 1000; about half a minute of CPU in all)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="a few hundred steps (smoke test)")


def _add_fit_density_parser(sub: Any) -> None:
    """The ``fit-density`` subcommand and its options."""
    fit = sub.add_parser(
        "fit-density",
        help="fit a flow to a CSV file by maximum likelihood",
        description="Fit a flow to the rows of a numeric CSV file (a header line is skipped) by maximum "
        "likelihood with a validation split and early stopping; save it with --out.",
    )
    fit.add_argument("data", help="CSV file, one sample per row")
    fit.add_argument("--flow", choices=FAMILIES, default="maf")
    fit.add_argument("--depth", type=_positive_int, default=5)
    fit.add_argument("--out", required=True, help="where to save the fitted model (.pt)")
    fit.add_argument("--steps", type=_positive_int, default=5000)
    fit.add_argument("--batch-size", type=_positive_int, default=256)
    fit.add_argument("--val-fraction", type=_fraction, default=0.1)
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument(
        "--no-standardize", action="store_true", help="fit the raw columns (default: standardize)"
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_sample_parser(sub: Any) -> None:
    """The ``sample`` subcommand and its options."""
    sample = sub.add_parser(
        "sample",
        help="draw samples from a fitted density model",
        description="Draw samples from a model saved by fit-density; CSV to stdout or --out.",
    )
    sample.add_argument("model", help="a .pt file written by pyro-nf fit-density")
    sample.add_argument("-n", type=int, default=1000, help="number of samples (default: 1000)")
    sample.add_argument("--out", help="CSV output file (default: stdout)")
    sample.add_argument("--seed", type=int, default=0)


def _add_bench_parser(sub: Any) -> None:
    """The ``bench`` subcommand; its further arguments are passed on to the script."""
    bench = sub.add_parser(
        "bench",
        help="run a benchmark script (from a source checkout)",
        description="Run benchmarks/<name>.py; further arguments (e.g. --quick) are passed on.",
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyro-nf`` command with ``argv``; return its exit status (2 on a user error)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "fit-density":
            return cmd_fit_density(args)
        if args.command == "sample":
            return cmd_sample(args)
        return cmd_bench(args, extra)
    except CLIError as err:
        print(f"pyro-nf: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
