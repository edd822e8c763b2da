"""Training-step throughput of pyro-nf's spline flows next to Pyro's and zuko's.

One *step* is a maximum-likelihood density step on a batch of ``--batch`` standard normal
rows: ``loss = -log_prob(x).mean()``, ``zero_grad``, ``backward``, ``torch.optim.Adam`` step. The
contenders of a family share the number of layers, bins, bound (5), hidden widths ``(H, H)``
and the coordinate order reversed between layers (see ``benchmarks/density.py`` for the exact
models):

* autoregressive: pyro-nf ``spline_autoregressive`` (MAF orientation), Pyro
  ``SplineAutoregressive(order="quadratic")`` used through its ``.inv`` (one-pass density), zuko
  ``NSF``;
* coupling: pyro-nf ``spline_coupling``, Pyro ``SplineCoupling(order="quadratic")``, zuko
  ``NSF(passes=2)``.

The contenders of a configuration are timed with interleaved repeats (``benchmarks/_common.py``):
warm-up, calibration, then ``--repeats`` rounds in alternating order; the table gives median
ms/step and the throughput ratios ``pyro-nf steps/s ÷ other steps/s`` (median of the per-round
paired ratios, with their min–max). Issue 19's targets: ratio ≥ 1 against Pyro and ≥ 0.8
against zuko.

Usage::

    python benchmarks/spline_speed.py --quick       # smoke run
    python benchmarks/spline_speed.py               # D in 2, 8, 32; 4 layers; H = 64
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

try:  # run as a script (benchmarks/ on sys.path) or as ``python -m benchmarks.spline_speed``
    from _common import (
        format_table,
        interleaved_timings,
        paired_ratios,
        save_json,
        set_threads,
        summarize,
    )
    from density import RESULTS, make_contender
except ImportError:  # pragma: no cover
    from benchmarks._common import (
        format_table,
        interleaved_timings,
        paired_ratios,
        save_json,
        set_threads,
        summarize,
    )
    from benchmarks.density import RESULTS, make_contender

OUT = RESULTS.with_name("spline_speed.json")
FAMILIES = {
    "autoregressive": {
        "pyro-nf": "pyro-nf spline_autoregressive",
        "Pyro": "Pyro spline_autoregressive",
        "zuko": "zuko NSF",
    },
    "coupling": {
        "pyro-nf": "pyro-nf spline_coupling",
        "Pyro": "Pyro spline_coupling",
        "zuko": "zuko NSF coupling",
    },
}


def make_step(name: str, dim: int, args: argparse.Namespace) -> Callable[[], torch.Tensor]:
    """One density training step of contender ``name`` on fixed standard normal data."""
    torch.manual_seed(args.seed)
    model = make_contender(name, dim, args.depth, args.bins, args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, dim, generator=torch.Generator().manual_seed(args.seed))

    def step() -> torch.Tensor:
        # a fresh tensor each step (as a data loader gives): Pyro's transforms cache by identity
        loss = -model.log_prob(x.clone()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def run_config(family: str, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    names = FAMILIES[family]
    steps = {who: make_step(name, dim, args) for who, name in names.items()}
    timings = interleaved_timings(
        steps, repeats=args.repeats, target_s=args.target_time, warmup_steps=args.warmup
    )
    per = timings.per_step
    summaries = {who: summarize(per[who]) for who in steps}
    ratios = {
        other: summarize(paired_ratios(per[other], per["pyro-nf"])) for other in ("Pyro", "zuko")
    }
    return {
        "family": family,
        "dim": dim,
        "contenders": names,
        "per_step_s": per,
        "steps_per_repeat": timings.steps,
        "median_ms": {k: 1e3 * v["median"] for k, v in summaries.items()},
        "ratio_vs": ratios,
    }


def table(results: Sequence[dict[str, Any]]) -> str:
    headers = ["family", "D", "pyro-nf ms", "Pyro ms", "zuko ms", "vs Pyro", "vs zuko"]
    rows = []
    for r in results:
        ms = r["median_ms"]
        cells = [r["family"], r["dim"], f"{ms['pyro-nf']:.2f}", f"{ms['Pyro']:.2f}"]
        cells.append(f"{ms['zuko']:.2f}")
        for other in ("Pyro", "zuko"):
            s = r["ratio_vs"][other]
            cells.append(f"{s['median']:.2f}x [{s['min']:.2f}, {s['max']:.2f}]")
        rows.append(cells)
    return format_table(headers, rows)


def verdicts(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        vp, vz = r["ratio_vs"]["Pyro"]["median"], r["ratio_vs"]["zuko"]["median"]
        out.append(
            {
                "family": r["family"],
                "dim": r["dim"],
                "vs_pyro": vp,
                "vs_zuko": vz,
                "met": vp >= 1.0 and vz >= 0.8,
            }  # fmt: skip
        )
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: D=2, 3 short repeats")
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    p.add_argument("--dims", nargs="+", type=int, default=None, help="default 2 8 32")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--bins", type=int, default=8)
    p.add_argument("--hidden", type=int, default=None, help="H (default min(max(64, 2D), 256))")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=None, help="default 9 (3 with --quick)")
    p.add_argument("--target-time", type=float, default=None, help="s per repeat (0.4)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    args.dims = args.dims or ([2] if args.quick else [2, 8, 32])
    args.repeats = args.repeats or (3 if args.quick else 9)
    args.target_time = args.target_time or (0.1 if args.quick else 0.4)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)
    t0 = time.perf_counter()
    results = []
    for fam in args.families:
        for dim in args.dims:
            r = run_config(fam, dim, args)
            results.append(r)
            print(f"  {fam} D={dim}: {r['median_ms']}", file=sys.stderr, flush=True)
    text = table(results)
    vs = verdicts(results)
    print()
    print(text)
    print("\nms: median per step; vs X: pyro-nf steps/s ÷ X steps/s, median [min, max] of the")
    print("per-round paired ratios (>1: pyro-nf faster). Targets: vs Pyro >= 1, vs zuko >= 0.8.")
    for v in vs:
        print(
            f"target {v['family']} D={v['dim']}: vs Pyro {v['vs_pyro']:.2f}x, vs zuko "
            f"{v['vs_zuko']:.2f}x: {'met' if v['met'] else 'NOT met'}"
        )
    payload = {
        "benchmark": "spline_speed",
        "command": " ".join(["spline_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
        "verdicts": vs,
        "table": text,
        "total_wall_s": time.perf_counter() - t0,
    }
    print(f"wrote {save_json(args.out, payload)}", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
