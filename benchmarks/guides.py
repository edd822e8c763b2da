r"""Flow guides for Pyro models: pyro-nf's FlowGuide next to Pyro's autoguides, in one run.

Problems (definitions and references in ``examples/_models.py``):

* ``funnel10`` — Neal's funnel, 10-D; exact moments, log Z = 0 (so -ELBO = KL(q || p));
* ``eight_schools_centered`` — eight schools, centered (a funnel in (log tau, theta));
  NUTS reference from ``benchmarks/reference/eight_schools.json``;
* ``german_credit`` — Bayesian logistic regression, German credit (D = 25, N(0, 1) prior);
  NUTS reference from ``benchmarks/reference/german_credit.json``; skipped without the data.

Contenders: Pyro's ``AutoNormal``, ``AutoMultivariateNormal``, ``AutoIAFNormal`` (one
affine-autoregressive layer, its default) and ``AutoNormalizingFlow`` with 8 planar layers
(``partial(iterated, 8, T.planar)``), and pyro-nf's ``FlowGuide``: with the library defaults
(IAF and planar), and ``FlowGuide(iaf-tuned)`` = ``FlowGuide(model, flow="iaf",
depth=1, update="affine", init="loc", init_scale=1.0)`` (settings found to do better on these problems;
``--variant`` adds FlowGuides with other settings to the same run).

Equal budgets: every guide is fitted by :func:`pyro_nf.fit` with the same steps, Adam learning
rate, cosine schedule, particles per step (vectorized ``Trace_ELBO``) and seed. Then, per guide:

* **ELBO** — mean of ``log p(x, z) - log q(z)`` over ``--eval-samples`` draws ± its SE;
* **k̂** — PSIS Pareto k̂ of the same weights (``pyro_nf.psis_khat``'s estimator);
  k̂ < 0.7: usable;
* **mean err / sd** and **max |log sd ratio|** against the reference moments;
* **ms/step** — wall time of one SVI step (``differentiable_loss`` + backward + Adam step),
  median over interleaved repeats (``benchmarks/_common.py``), 1 thread; and its ratio to
  ``AutoIAFNormal``'s (the paired per-round ratio, median).

With ``--seeds N`` the fits are repeated with N seeds and the table shows medians over seeds
(with min-max of the ELBO). The verdict per problem checks the target: the best FlowGuide has
the best ELBO of all contenders, k̂ < 0.7, and no more ms/step than AutoIAFNormal.

Usage::

    python benchmarks/guides.py                    # full run, 3 seeds (~30 min on one core)
    python benchmarks/guides.py --quick            # smoke run (seconds)
    python benchmarks/guides.py --problems funnel10 --variant \
        'iaf-loc1={"flow": "iaf", "init": "loc", "init_scale": 1.0}'
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent / "examples"))

import _models as M  # noqa: E402
from _common import (  # noqa: E402
    format_table,
    interleaved_timings,
    paired_ratios,
    save_json,
    set_threads,
    summarize,
)

PROBLEMS = ("funnel10", "eight_schools_centered", "german_credit")
DEFAULT_GUIDES = (
    "AutoNormal",
    "AutoMultivariateNormal",
    "AutoIAFNormal",
    "AutoNormalizingFlow(planar8)",
    "FlowGuide(iaf)",
    "FlowGuide(planar)",
    "FlowGuide(iaf-tuned)",
)
DEFAULT_STEPS = {"funnel10": 3000, "eight_schools_centered": 3000, "german_credit": 2000}
TIMING_BASELINE = "AutoIAFNormal"
KHAT_OK = 0.7
DEFAULT_OUT = _HERE / "results" / "guides.json"
#: Hash of the FlowGuide source this run imported (its defaults are what is measured).
GUIDES_PY_SHA256 = hashlib.sha256(Path(M.pyro_nf.infer.guides.__file__).read_bytes()).hexdigest()[
    :16
]
QUICK_OUT = _HERE / "results" / "guides_quick.json"


def build_problem(name: str) -> M.Problem | None:
    """The problem ``name`` with its reference, or ``None`` (with a message) if data are absent."""
    if name == "funnel10":
        return M.funnel_problem(10)
    if name == "eight_schools_centered":
        ref = M.eight_schools_reference(allow_compute=False)
        if ref is None:
            print("  no cached eight-schools reference: run examples/eight_schools.py once")
        return M.eight_schools_problem(centered=True, reference=ref)
    if name == "german_credit":
        try:
            problem = M.german_credit_problem(1.0)
        except FileNotFoundError:
            print("  German credit data not found (set PYRO_NF_DATA): skipped")
            return None
        problem.reference = M.german_credit_reference(1.0, allow_compute=False)
        return problem
    raise ValueError(f"problem: expected one of {PROBLEMS}, got {name!r}")


def _median(values: Sequence[float | None]) -> float | None:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(xs) if xs else None


def _min(values: Sequence[float]) -> float | None:
    xs = [v for v in values if math.isfinite(v)]
    return min(xs) if xs else None


def _max(values: Sequence[float]) -> float | None:
    xs = [v for v in values if math.isfinite(v)]
    return max(xs) if xs else None


def run_problem(
    problem: M.Problem,
    guides: Sequence[str],
    settings: M.Settings,
    seeds: Sequence[int],
    time_repeats: int,
    progress: bool,
) -> dict[str, Any]:
    """Fit/evaluate every guide for every seed, time one SVI step of each; summarize."""
    per_seed: dict[str, list[dict[str, Any]]] = {g: [] for g in guides}
    fitted_last: dict[str, Any] = {}
    for seed in seeds:
        s = M.Settings(**{**dataclasses.asdict(settings), "seed": seed})
        print(f"  seed {seed}:", flush=True)
        for name in guides:
            t0 = time.perf_counter()
            try:
                guide, history, messages = M.fit_one(
                    problem,
                    name,
                    steps=s.steps,
                    lr=s.lr,
                    num_particles=s.num_particles,
                    seed=seed,
                    lr_schedule=s.lr_schedule,
                    progress=progress,
                    flow_kwargs=s.flow_kwargs,
                )
                fit_s = time.perf_counter() - t0
                row = M.evaluate(problem, guide, s.eval_samples, seed=seed + 1)
            except Exception as err:  # reported in the table, not fatal to the benchmark
                row = {k: v for k, v in M.failed_row(err).items() if not k.startswith("_")}
                row["seed"] = seed
                per_seed[name].append(row)
                print(f"    {name:<30} FAILED: {row['error']}", flush=True)
                continue
            row = {k: v for k, v in row.items() if not k.startswith("_")}
            row.update(
                seed=seed,
                fit_s=fit_s,
                fit_ms_per_step=1e3 * history.elapsed / max(1, history.num_steps),
                steps=history.num_steps,
                stop_reason=history.stop_reason,
                nan_restores=history.num_nan_restores,
                warnings=messages,
                num_params=sum(p.numel() for p in guide.parameters()),
            )
            info = getattr(guide, "_init_info", None)
            if isinstance(info, dict) and "init" in info:
                row["init"] = str(info["init"])
            per_seed[name].append(row)
            fitted_last[name] = guide
            print(
                f"    {name:<30} ELBO {row['elbo']:11.3f} ± {row['elbo_se']:.3f}"
                f"  k̂ {row['khat']:5.2f}  fit {fit_s:6.1f} s",
                flush=True,
            )
    timing: dict[str, dict[str, float]] = {}
    if time_repeats > 0:
        pyro.clear_param_store()
        fns = {
            name: M.step_fn(problem, g, settings.num_particles, settings.lr)
            for name, g in fitted_last.items()
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = interleaved_timings(fns, repeats=time_repeats, target_s=0.3)
        for name in fns:
            timing[name] = {f"ms_{k}": 1e3 * v for k, v in summarize(t.per_step[name]).items()}
            timing[name].pop("ms_n")
            if TIMING_BASELINE in t.per_step:
                ratios = paired_ratios(t.per_step[name], t.per_step[TIMING_BASELINE])
                timing[name]["ratio_to_baseline"] = statistics.median(ratios)
                timing[name]["ratio_min"], timing[name]["ratio_max"] = min(ratios), max(ratios)
    summary = {}
    for name in guides:
        runs = per_seed[name]
        summary[name] = {
            "library": "pyro" if name in M.PYRO_GUIDES else "pyro_nf",
            "elbo": _median([r["elbo"] for r in runs]),
            "elbo_min": _min([r["elbo"] for r in runs]),
            "elbo_max": _max([r["elbo"] for r in runs]),
            "failures": sum("error" in r for r in runs),
            "elbo_se": _median([r["elbo_se"] for r in runs]),
            "khat": _median([r["khat"] for r in runs]),
            "mean_err": _median([r.get("mean_err") for r in runs]),
            "log_sd_err": _median([r.get("log_sd_err") for r in runs]),
            "fit_ms_per_step": _median([r["fit_ms_per_step"] for r in runs]),
            **timing.get(name, {}),
        }
    return {"per_seed": per_seed, "summary": summary}


def verdict(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For every FlowGuide: does it meet the target (best ELBO of all contenders, k̂ < 0.7, no
    more ms/step than AutoIAFNormal)? Not decidable (``met`` false) without Pyro contenders."""
    valid = {n: s for n, s in summary.items() if s["elbo"] is not None}
    pyro_best = max(
        (s["elbo"] for s in valid.values() if s["library"] == "pyro"), default=-math.inf
    )
    out = {}
    for name, s in valid.items():
        if s["library"] != "pyro_nf":
            continue
        ratio = s.get("ratio_to_baseline")
        best_elbo = None if pyro_best == -math.inf else s["elbo"] >= pyro_best
        khat_ok = s["khat"] is not None and s["khat"] < KHAT_OK
        time_ok = ratio is None or ratio <= 1.0
        out[name] = {
            "elbo_gap_to_best_pyro": None if best_elbo is None else s["elbo"] - pyro_best,
            "best_elbo": best_elbo,
            "khat_below_0.7": khat_ok,
            "time_ratio_to_AutoIAFNormal": ratio,
            "time_ok": time_ok,
            "met": bool(best_elbo and khat_ok and time_ok and ratio is not None),
        }
    return out


def _f(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def print_table(problem: str, summary: dict[str, dict[str, Any]], nseeds: int) -> str:
    """Print (and return) the table of one problem; with several seeds, the metrics are
    medians over the seeds whose fit succeeded (``ok`` counts them)."""
    headers = ["guide", "ELBO", "SE", "k̂", "mean err/sd", "|log sd ratio|", "ms/step", "× IAF"]
    if nseeds > 1:
        headers[2:2] = ["ELBO min..max", "ok"]
    best = max((s["elbo"] for s in summary.values() if s["elbo"] is not None), default=None)
    rows = []
    for name, s in summary.items():
        row = [
            name + (" *" if s["elbo"] == best else ""),
            _f(s["elbo"], ".3f"),
            _f(s["elbo_se"], ".3f"),
            _f(s["khat"], ".2f"),
            _f(s["mean_err"], ".3f"),
            _f(s["log_sd_err"], ".3f"),
            _f(s.get("ms_median", s["fit_ms_per_step"]), ".2f"),
            _f(s.get("ratio_to_baseline"), ".2f"),
        ]
        if nseeds > 1:
            ok = nseeds - s.get("failures", 0)
            row[2:2] = [f"{_f(s['elbo_min'], '.2f')}..{_f(s['elbo_max'], '.2f')}", f"{ok}/{nseeds}"]
        rows.append(row)
    table = format_table(headers, rows)
    print(f"\n{problem}\n{table}")
    return table


def print_verdicts(verdicts: dict[str, dict[str, Any]]) -> None:
    """One line per FlowGuide: is the target met on this problem?"""
    for name, v in verdicts.items():
        ratio, gap = v["time_ratio_to_AutoIAFNormal"], v["elbo_gap_to_best_pyro"]
        print(
            f"  target, {name}: ELBO - best Pyro ELBO = {'n/a' if gap is None else f'{gap:+.3f}'}, "
            f"k̂ < 0.7: {v['khat_below_0.7']}, ms/step vs AutoIAFNormal: "
            f"{'n/a' if ratio is None else f'{ratio:.2f}x'} -> {'MET' if v['met'] else 'not met'}",
            flush=True,
        )


def render(path: Path) -> dict[str, Any]:
    """Print the tables and verdicts of a saved run (``--render PATH``) without rerunning it."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    for pname, res in payload["problems"].items():
        res["table"] = print_table(pname, res["summary"], len(res["settings"]["seeds"]))
        print_verdicts(verdict(res["summary"]))
    return payload


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (seconds)")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument(
        "--guides",
        nargs="+",
        default=None,
        metavar="GUIDE",
        help=f"contenders (default: {', '.join(DEFAULT_GUIDES)}); any of {', '.join(M.GUIDES)}",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="add a FlowGuide with these keyword arguments, e.g. "
        '\'iaf-s1={"flow": "iaf", "init_scale": 1.0}\' (repeatable)',
    )
    parser.add_argument("--steps", type=int, default=None, help="steps (default per problem)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--eval-samples", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--render", type=Path, default=None, help="print a saved run's tables")
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render)
    set_threads(1)

    guides = list(args.guides or DEFAULT_GUIDES)
    for spec in args.variant:
        name, _, kw = spec.partition("=")
        M.add_flowguide_variant(name, json.loads(kw))
        guides.append(name)
    unknown = [g for g in guides if g not in M.GUIDES]
    if unknown:
        parser.error(f"--guides: unknown {unknown}; expected any of {list(M.GUIDES)}")
    out_path = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)

    results: dict[str, Any] = {}
    t_start = time.perf_counter()
    for pname in args.problems:
        print(f"== {pname}", flush=True)
        problem = build_problem(pname)
        if problem is None:
            continue
        steps = args.steps or DEFAULT_STEPS[pname]
        settings = M.Settings(
            steps=min(steps, 15) if args.quick else steps,
            lr=args.lr,
            num_particles=2 if args.quick else args.particles,
            eval_samples=200 if args.quick else args.eval_samples,
            lr_schedule="cosine",
        )
        seeds = list(range(1 if args.quick else max(1, args.seeds)))
        res = run_problem(
            problem,
            guides,
            settings,
            seeds,
            time_repeats=2 if args.quick else args.repeats,
            progress=args.progress,
        )
        res["settings"] = {**dataclasses.asdict(settings), "seeds": seeds}
        res["reference"] = (
            None
            if problem.reference is None
            else {"source": problem.reference.source, "settings": problem.reference.settings}
        )
        res["table"] = print_table(pname, res["summary"], len(seeds))
        res["verdict"] = verdict(res["summary"])
        print_verdicts(res["verdict"])
        results[pname] = res
    payload = {
        "benchmark": "guides",
        # the FlowGuide defaults measured here are those of this version of pyro_nf/infer/guides.py
        "guides_py_sha256": GUIDES_PY_SHA256,
        "quick": bool(args.quick),
        "guides": guides,
        "variants": args.variant,
        "elapsed_s": time.perf_counter() - t_start,
        "argv": list(sys.argv[1:] if argv is None else argv),
        "problems": results,
    }
    path = save_json(out_path, payload)
    print(f"\nsaved {path}")
    return payload


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
