"""Train-step throughput of pyro-nf's planar, radial and IAF flows next to Pyro's own.

One *step* is what a variational fit does per iteration with a directly parameterized flow:
draw a reparameterized batch, score it, form a loss, back-propagate and take an Adam step::

    pyro-nf:  q = flow();  z, log_q = q.rsample_and_log_prob((B,))
    Pyro:     q = TransformedDistribution(Normal(0, 1).to_event(1), transforms)
              z = q.rsample((B,));  log_q = q.log_prob(z)       # via Pyro's transform cache
    both:     loss = (log_q - log p(z)).mean();  zero_grad;  loss.backward();  adam.step()

with ``log p`` a standard normal (the same for both), ``torch.optim.Adam`` over the module
parameters in both cases, and pyro-nf built with ``base="standard"`` so the two flows are the
same model (pyro-nf's default ``base="diagonal"``, a learnable diagonal Gaussian base, is timed
as an extra, informational column). The IAF stacks are ``depth`` layers of Kingma et al.'s
sigmoid ("stable") update with MADE hidden sizes ``(H, H)``, ``H = max(64, 2D)``, and a
coordinate reversal between layers, in both libraries.

The three contenders of a configuration are timed with interleaved repeats (see
``benchmarks/_common.py``): warm-up, per-contender calibration of the steps per repeat, then
``--repeats`` rounds; the table shows the median ms/step with its min–max over repeats and the
throughput ratio ``(pyro-nf steps/s) / (Pyro steps/s)`` with the min–max of the per-round
(paired) ratios.

Usage::

    python benchmarks/flow_speed.py                 # full run (~5 min on 1 CPU thread)
    python benchmarks/flow_speed.py --quick         # smoke run (a few seconds)
    python benchmarks/flow_speed.py --dims 10 --depths 16 --families planar radial
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

import pyro_nf

try:  # run as a script (benchmarks/ on sys.path) or as ``python -m benchmarks.flow_speed``
    from _common import (
        format_table,
        interleaved_timings,
        linear_fit,
        loglog_slope,
        paired_ratios,
        save_json,
        set_threads,
        summarize,
    )
except ImportError:  # pragma: no cover
    from benchmarks._common import (
        format_table,
        interleaved_timings,
        linear_fit,
        loglog_slope,
        paired_ratios,
        save_json,
        set_threads,
        summarize,
    )

FAMILIES = ("planar", "radial", "iaf")
DEFAULT_DIMS = (2, 10, 100)
DEFAULT_DEPTHS = (4, 16, 64)
DEFAULT_IAF_DEPTHS = (2, 4, 8)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "flow_speed.json"
QUICK_OUT = Path(__file__).resolve().parent / "results" / "flow_speed_quick.json"
CONTENDERS = ("pyro_nf", "pyro", "pyro_nf_diag")
TARGET_RATIO_PLANAR_RADIAL = 3.0  # at D=10, K=16
TARGET_RATIO_IAF = 1.0

NOTES = [
    "One step = rsample + log_prob + loss.backward() + Adam step, batch of B samples.",
    "Pyro scores with q.log_prob(z) on the z it just sampled, i.e. through its transform cache "
    "(cache_size=1), which is how Pyro's guides score; pyro-nf uses rsample_and_log_prob.",
    "Both use one torch.optim.Adam (default settings, lr=1e-3) over the module parameters. "
    "Pyro's SVI would use pyro.optim.Adam, i.e. one torch Adam per parameter tensor, which is "
    "slower; plain torch Adam for both compares the flows themselves.",
    "Pyro's stacks have one parameter tensor per quantity and layer (planar 3K, radial 3K); "
    "pyro-nf's planar/radial stacks have one tensor per stack (see n_param_tensors), so the "
    "optimizer's per-tensor overhead is part of the measured difference.",
    "IAF: both use the sigmoid ('stable') update with MADE hidden sizes (H, H), H = max(64, 2D), "
    "ReLU, and a coordinate reversal between layers.",
    "ratio = pyro-nf steps/s / Pyro steps/s = median Pyro ms/step / median pyro-nf ms/step; "
    "ratio_paired is the same per interleaved round.",
]


def hidden_width(dim: int) -> int:
    """MADE hidden width used by both libraries' IAF layers: ``max(64, 2D)``."""
    return max(64, 2 * dim)


def target_log_density(z: torch.Tensor) -> torch.Tensor:
    """Standard normal log density over the last dimension (the target for both libraries)."""
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def _count(params: Sequence[nn.Parameter]) -> tuple[int, int]:
    return len(params), sum(p.numel() for p in params)


def make_pyro_nf_step(
    family: str, dim: int, depth: int, base: str, batch: int, device: torch.device, lr: float
) -> tuple[Callable[[], torch.Tensor], dict[str, int]]:
    """Build a pyro-nf flow and return its train step and parameter counts."""
    if family == "planar":
        flow = pyro_nf.planar(dim, depth=depth, base=base)
    elif family == "radial":
        flow = pyro_nf.radial(dim, depth=depth, base=base)
    elif family == "iaf":
        h = hidden_width(dim)
        flow = pyro_nf.iaf(dim, depth=depth, hidden=(h, h), base=base)
    else:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    flow = flow.to(device)
    params = list(flow.parameters())
    opt = torch.optim.Adam(params, lr=lr)

    def step() -> torch.Tensor:
        q = flow()
        z, log_q = q.rsample_and_log_prob((batch,))
        loss = (log_q - target_log_density(z)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    n_tensors, n_params = _count(params)
    return step, {"n_param_tensors": n_tensors, "n_params": n_params}


def make_pyro_step(
    family: str, dim: int, depth: int, batch: int, device: torch.device, lr: float
) -> tuple[Callable[[], torch.Tensor], dict[str, int]]:
    """Build the equivalent Pyro transform stack and return its train step and counts."""
    transforms: list[Any] = []
    if family == "planar":
        transforms = [T.Planar(dim) for _ in range(depth)]
    elif family == "radial":
        transforms = [T.Radial(dim) for _ in range(depth)]
    elif family == "iaf":
        h = hidden_width(dim)
        for k in range(depth):
            if k > 0:
                transforms.append(T.Permute(torch.arange(dim - 1, -1, -1, device=device)))
            transforms.append(T.affine_autoregressive(dim, hidden_dims=[h, h], stable=True))
    else:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    modules = nn.ModuleList([t for t in transforms if isinstance(t, nn.Module)]).to(device)
    params = list(modules.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    loc = torch.zeros(dim, device=device)
    scale = torch.ones(dim, device=device)

    def step() -> torch.Tensor:
        q = dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), transforms)
        z = q.rsample((batch,))
        log_q = q.log_prob(z)
        loss = (log_q - target_log_density(z)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    n_tensors, n_params = _count(params)
    return step, {"n_param_tensors": n_tensors, "n_params": n_params}


def run_config(
    family: str,
    dim: int,
    depth: int,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """Time the three contenders of one (family, D, K) configuration."""
    steps: dict[str, Callable[[], torch.Tensor]] = {}
    counts: dict[str, dict[str, int]] = {}
    torch.manual_seed(args.seed)
    steps["pyro_nf"], counts["pyro_nf"] = make_pyro_nf_step(
        family, dim, depth, "standard", args.batch, device, args.lr
    )
    torch.manual_seed(args.seed)
    steps["pyro"], counts["pyro"] = make_pyro_step(family, dim, depth, args.batch, device, args.lr)
    torch.manual_seed(args.seed)
    steps["pyro_nf_diag"], counts["pyro_nf_diag"] = make_pyro_nf_step(
        family, dim, depth, "diagonal", args.batch, device, args.lr
    )
    t0 = time.perf_counter()
    timings = interleaved_timings(
        steps,
        repeats=args.repeats,
        target_s=args.target_time,
        device=device,
        warmup_steps=args.warmup,
    )
    wall = time.perf_counter() - t0
    final_loss = {name: float(fn()) for name, fn in steps.items()}
    summaries = {name: summarize(timings.per_step[name]) for name in steps}
    pyro_nf_t, pyro_t = timings.per_step["pyro_nf"], timings.per_step["pyro"]
    paired = paired_ratios(pyro_t, pyro_nf_t)  # Pyro time / pyro-nf time = throughput ratio
    return {
        "family": family,
        "dim": dim,
        "depth": depth,
        "hidden": [hidden_width(dim)] * 2 if family == "iaf" else None,
        "batch": args.batch,
        "per_step_s": timings.per_step,
        "steps_per_repeat": timings.steps,
        "round_order": timings.order,
        "summary_s": summaries,
        "median_ms": {k: 1e3 * v["median"] for k, v in summaries.items()},
        "steps_per_s": {k: 1.0 / v["median"] for k, v in summaries.items()},
        "ratio": summaries["pyro"]["median"] / summaries["pyro_nf"]["median"],
        "ratio_paired": summarize(paired),
        "ratio_diag": summaries["pyro"]["median"] / summaries["pyro_nf_diag"]["median"],
        "param_counts": counts,
        "final_loss": final_loss,
        "wall_s": wall,
    }


def _ms(s: dict[str, float]) -> str:
    return f"{1e3 * s['median']:.3g} [{1e3 * s['min']:.3g}–{1e3 * s['max']:.3g}]"


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """The human-readable table of all configurations."""
    headers = [
        "family",
        "D",
        "K",
        "pyro-nf ms/step [min–max]",
        "Pyro ms/step [min–max]",
        "pyro-nf it/s",
        "Pyro it/s",
        "ratio [paired min–max]",
        "pyro-nf diag ms/step",
    ]
    rows = []
    for r in results:
        s = r["summary_s"]
        rp = r["ratio_paired"]
        rows.append(
            [
                r["family"],
                r["dim"],
                r["depth"],
                _ms(s["pyro_nf"]),
                _ms(s["pyro"]),
                f"{r['steps_per_s']['pyro_nf']:.0f}",
                f"{r['steps_per_s']['pyro']:.0f}",
                f"{r['ratio']:.2f}x [{rp['min']:.2f}–{rp['max']:.2f}]",
                _ms(s["pyro_nf_diag"]),
            ]
        )
    return format_table(headers, rows)


def scaling_summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per family: ms/step per extra layer (slope over K at fixed D) and the exponent p of
    ms/step ∝ D^p at fixed K, for pyro-nf and Pyro."""
    out: dict[str, Any] = {}
    for family in FAMILIES:
        rows = [r for r in results if r["family"] == family]
        if not rows:
            continue
        dims = sorted({r["dim"] for r in rows})
        depths = sorted({r["depth"] for r in rows})
        per_layer: dict[str, dict[str, float]] = {}
        d_exponent: dict[str, dict[str, float]] = {}
        for who in ("pyro_nf", "pyro"):
            per_layer[who] = {}
            for d in dims:
                sel = sorted((r["depth"], r["median_ms"][who]) for r in rows if r["dim"] == d)
                if len({k for k, _ in sel}) >= 2:
                    per_layer[who][str(d)] = linear_fit(*zip(*sel, strict=True))[0]
            d_exponent[who] = {}
            for k in depths:
                sel = sorted((r["dim"], r["median_ms"][who]) for r in rows if r["depth"] == k)
                if len({d for d, _ in sel}) >= 2:
                    d_exponent[who][str(k)] = loglog_slope(*zip(*sel, strict=True))
        out[family] = {"ms_per_layer_at_D": per_layer, "D_exponent_at_K": d_exponent}
    return out


def scaling_text(scaling: dict[str, Any]) -> str:
    """Render :func:`scaling_summary` as a few lines of text."""
    lines = []
    for family, s in scaling.items():
        pl, de = s["ms_per_layer_at_D"], s["D_exponent_at_K"]
        if pl["pyro_nf"]:
            parts = [f"D={d}: {pl['pyro_nf'][d]:.3f} vs {pl['pyro'][d]:.3f}" for d in pl["pyro_nf"]]
            lines.append(
                f"  {family:6s} ms/step per extra layer (pyro-nf vs Pyro): " + "; ".join(parts)
            )
        if de["pyro_nf"]:
            parts = [f"K={k}: {de['pyro_nf'][k]:.2f} vs {de['pyro'][k]:.2f}" for k in de["pyro_nf"]]
            lines.append(
                f"  {family:6s} exponent p in ms/step ∝ D^p (pyro-nf vs Pyro): " + "; ".join(parts)
            )
    return "\n".join(lines)


def verdicts(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the targets: >= 3x Pyro at D=10, K=16 for planar/radial; IAF no slower than Pyro."""
    out = []
    for r in results:
        fam, ratio, rp = r["family"], r["ratio"], r["ratio_paired"]
        if fam in ("planar", "radial") and (r["dim"], r["depth"]) == (10, 16):
            goal = TARGET_RATIO_PLANAR_RADIAL
        elif fam == "iaf":
            goal = TARGET_RATIO_IAF
        else:
            continue
        if ratio >= goal:
            status = "met"
        elif rp["max"] >= goal:
            status = "missed (median), within round-to-round noise"
        else:
            status = "missed"
        out.append(
            {
                "family": fam,
                "dim": r["dim"],
                "depth": r["depth"],
                "target_ratio": goal,
                "ratio": ratio,
                "ratio_paired_min": rp["min"],
                "ratio_paired_max": rp["max"],
                "status": status,
                "shortfall": 0.0 if ratio >= goal else 1.0 - ratio / goal,
            }
        )
    return out


def verdict_text(vs: Sequence[dict[str, Any]]) -> str:
    lines = []
    for v in vs:
        extra = f", {100 * v['shortfall']:.0f}% short" if v["shortfall"] > 0 else ""
        lines.append(
            f"  {v['family']:6s} D={v['dim']:<3d} K={v['depth']:<2d} target >= {v['target_ratio']:.0f}x: "
            f"{v['ratio']:.2f}x [paired {v['ratio_paired_min']:.2f}–{v['ratio_paired_max']:.2f}]"
            f" -> {v['status']}{extra}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train-step throughput of pyro-nf's planar/radial/IAF flows vs Pyro's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny smoke run (D=2, K=4/2, few steps)")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--dims", nargs="+", type=int, default=list(DEFAULT_DIMS), help="event dims D")
    p.add_argument(
        "--depths", nargs="+", type=int, default=list(DEFAULT_DEPTHS), help="planar/radial K"
    )
    p.add_argument("--iaf-depths", nargs="+", type=int, default=list(DEFAULT_IAF_DEPTHS))
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats per contender")
    p.add_argument("--target-time", type=float, default=0.4, help="seconds per repeat")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps per contender")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON output (default {DEFAULT_OUT}; {QUICK_OUT.name} with --quick)",
    )
    args = p.parse_args(argv)
    if args.quick:
        explicit = set(argv if argv is not None else sys.argv[1:])
        if "--dims" not in explicit:
            args.dims = [2]
        if "--depths" not in explicit:
            args.depths = [4]
        if "--iaf-depths" not in explicit:
            args.iaf_depths = [2]
        if "--repeats" not in explicit:
            args.repeats = 3
        if "--target-time" not in explicit:
            args.target_time = 0.03
        if "--warmup" not in explicit:
            args.warmup = 2
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    if args.repeats < 1 or args.batch < 1 or args.target_time <= 0:
        p.error("--repeats and --batch must be positive, --target-time > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    configs = [
        (fam, d, k)
        for fam in args.families
        for d in args.dims
        for k in (args.iaf_depths if fam == "iaf" else args.depths)
    ]
    print(
        f"flow_speed: {len(configs)} configs, batch {args.batch}, {args.repeats} repeats of "
        f"~{args.target_time:g}s, threads {torch.get_num_threads()}, device {device}",
        file=sys.stderr,
        flush=True,
    )
    t_start = time.perf_counter()
    results = []
    for i, (fam, d, k) in enumerate(configs, 1):
        r = run_config(fam, d, k, args, device)
        results.append(r)
        print(
            f"  [{i}/{len(configs)}] {fam} D={d} K={k}: pyro-nf {r['median_ms']['pyro_nf']:.3g} "
            f"ms, Pyro {r['median_ms']['pyro']:.3g} ms, ratio {r['ratio']:.2f}x "
            f"({r['wall_s']:.1f}s)",
            file=sys.stderr,
            flush=True,
        )
    total = time.perf_counter() - t_start

    table = results_table(results)
    scaling = scaling_summary(results)
    vs = verdicts(results)
    hiddens = sorted({hidden_width(d) for d in args.dims}) if "iaf" in args.families else []
    print()
    print(table)
    print()
    print("ratio = pyro-nf steps/s ÷ Pyro steps/s (>1: pyro-nf faster); ms/step is the median.")
    if hiddens:
        print(
            "IAF hidden sizes (H, H), H = max(64, 2D): "
            + ", ".join(f"D={d}: H={hidden_width(d)}" for d in args.dims)
        )
    print("Both use torch.optim.Adam over module params (Pyro's SVI would use pyro.optim: one")
    print("Adam per tensor, slower). Pyro scores via its transform cache (q.log_prob(z)).")
    text = scaling_text(scaling)
    if text:
        print("\nScaling:")
        print(text)
    if vs:
        print("\nTargets:")
        print(verdict_text(vs))
    print(f"\ntotal {total:.0f}s")

    payload = {
        "benchmark": "flow_speed",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "settings": {
            "families": args.families,
            "dims": args.dims,
            "depths": args.depths,
            "iaf_depths": args.iaf_depths,
            "iaf_hidden": {str(d): [hidden_width(d)] * 2 for d in args.dims},
            "batch": args.batch,
            "repeats": args.repeats,
            "target_time_s": args.target_time,
            "warmup_steps": args.warmup,
            "threads": args.threads,
            "lr": args.lr,
            "seed": args.seed,
            "device": str(device),
            "quick": args.quick,
            "target_density": "standard normal",
            "optimizer": "torch.optim.Adam (defaults) over module parameters, both",
            "contenders": {
                "pyro_nf": "pyro_nf.<family>(D, depth=K, base='standard'), rsample_and_log_prob",
                "pyro": "dist.TransformedDistribution(Normal(0,1).to_event(1), transforms), "
                "rsample + log_prob (cached)",
                "pyro_nf_diag": "pyro_nf.<family>(D, depth=K) with the default base='diagonal'",
            },
        },
        "notes": NOTES,
        "results": results,
        "scaling": scaling,
        "verdicts": vs,
        "table": table,
        "total_wall_s": total,
    }
    path = save_json(args.out, payload, device=device)
    print(f"wrote {path}", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
