r"""Reverse-KL fits to the 2D energies U1–U4 (Rezende & Mohamed 2015): pyro-nf vs Pyro.

For every energy :math:`U`, family (planar, radial, IAF, the two neural spline flows) and depth :math:`K`, a flow is fitted to
:math:`\tilde p = e^{-U}` by minimizing the reverse KL with the *same* loop, budget and settings
for both libraries: :func:`pyro_nf.reverse_kl.fit_reverse_kl` (``steps`` Adam steps, batch 256,
lr 1e-2 with a cosine decay, annealing :math:`\beta_t = \min(1, 0.01 + t/T)`,
:math:`T` = steps/10, same seed), then

.. math::

    \mathrm{KL}(q\,\|\,p) = \log Z - \mathbb E_q[\log\tilde p(z) - \log q(z)]

is estimated with :func:`pyro_nf.reverse_kl.kl_estimate` from ``--kl-samples`` fresh draws
(:math:`\log Z` from :data:`pyro_nf.targets.LOG_NORMALIZERS`; U2–U4 carry the
:math:`\mathcal N(0, 4^2)`-shaped confinement of :math:`z_1`).

The flows:

* **pyro-nf**: ``pyro_nf.planar(2, depth=K)``, ``pyro_nf.radial(2, depth=K)``,
  ``pyro_nf.iaf(2, depth=K, hidden=(64, 64))``: a learnable diagonal Gaussian base (loc 0,
  scale 1) followed by the K maps, each initialised to the identity, or for planar and radial
  maps with ``--planar-init random`` / ``--radial-init random`` at Pyro's random start
  (``planar(init="random")``, ``radial(init="random")``; the table's ``init`` column), or
  with ``--planar-init pyro`` as Pyro's ``Planar`` in its start and parameter coordinates
  (``planar(init="pyro")``: under the same seed, the same maps and the same optimizer steps).
* **Pyro 1.9**: ``TransformedDistribution(Normal(loc, softplus(raw)).to_event(1), transforms)``
  with ``loc``/``raw`` learnable (same initial base) and ``transforms`` K of
  ``pyro.distributions.transforms.Planar(2)`` / ``Radial(2)`` / ``AffineAutoregressive(
  AutoRegressiveNN(2, [64, 64]), stable=True)`` with a coordinate reversal between IAF layers
  (Pyro's own parameter initialisation). Its ``log_prob`` of the sample goes through Pyro's
  transform cache.
* **Neural spline flows** (``--families spline_autoregressive spline_coupling``): pyro-nf's
  ``spline_autoregressive(2, K, invert=False)`` (IAF orientation) and ``spline_coupling(2, K)``
  against Pyro's ``SplineAutoregressive`` / ``SplineCoupling`` with ``order="quadratic"``; both
  8 bins, bound 5, hidden (64, 64), a coordinate reversal between layers, the same learnable
  diagonal base as above.

``--restarts R`` fits with ``fit_reverse_kl(restarts=R)`` for *both* libraries: R pilots from
fresh initial parameters (pyro-nf's ``Flow.reset_parameters``; Pyro's own ``reset_parameters``
of each transform), the best continued, ``steps + (R - 1) * pilot_steps`` steps in all (the
table's ``starts`` column: ``R pilots``).

``--population R`` fits with ``fit_reverse_kl(population=R)`` for *both* libraries: R starts
trained side by side, ``--batch-size`` draws per member and step, the worse half dropped by
its mean loss over the last min(200, steps/20) steps at ``pyro_nf.density.population.halving_steps`` (R = 4: steps
T/4 and T/2), ``steps`` steps in all (``starts``: ``R side by side``). pyro-nf stacks the
members' parameters and samples them in one batched pass; Pyro's flows are R module copies
sampled one after the other.

``p worse`` is a one-sided Mann–Whitney p-value for "pyro-nf's KLs are larger than Pyro's"
in one cell (>= 3 seeds per library); ``Holm`` adjusts it for the number of cells that have one
(:func:`holm`), so that "some cell is behind" is judged at a family-wise 5%.

Wall time is the time of the fit (``History.elapsed``) on one CPU thread; on a shared machine it
is noisy, so compare times from the same run only. With several ``--seeds`` the table shows
medians over seeds.

Usage::

    python benchmarks/energies.py --quick                          # smoke run (~1 min)
    python benchmarks/energies.py --energies U1 U2 --families planar radial --depths 32
    python benchmarks/energies.py --steps 2000 --out benchmarks/results/energies_2000.json
    python benchmarks/energies.py --energies U2 --families planar --depths 32 --restarts 4
    python benchmarks/energies.py --energies U2 --families planar --depths 32 --population 4 \
        --batch-size 1024
    python benchmarks/energies.py --resume ...                     # skip runs already saved

References:
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro.nn import AutoRegressiveNN, DenseNN
from scipy.stats import mannwhitneyu
from torch import nn

import pyro_nf
from pyro_nf.density.reverse_kl import default_pilot_steps, fit_reverse_kl, kl_estimate
from pyro_nf.density.targets import get_target
from pyro_nf.flows import spline_autoregressive, spline_coupling
from pyro_nf.flows.layers import MAP_INITS
from pyro_nf.training.loop import TrainingDivergedError

try:  # run as a script (benchmarks/ on sys.path) or as ``python -m benchmarks.energies``
    from _common import format_table, save_json, set_threads
except ImportError:  # pragma: no cover
    from benchmarks._common import format_table, save_json, set_threads

ENERGIES = ("U1", "U2", "U3", "U4")
FAMILIES = ("planar", "radial", "iaf", "spline_autoregressive", "spline_coupling")
INIT_FAMILIES = ("planar", "radial")  # families with pyro-nf's init= (identity/random/pyro)
DEPTHS = (2, 8, 32)
LIBRARIES = ("pyro_nf", "pyro")
IAF_HIDDEN = 64
SPLINE_BINS = 8
SPLINE_BOUND = 5.0
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "energies.json"
QUICK_OUT = RESULTS / "energies_quick.json"

#: Pyro 1.9.2 reference KLs from the issue (Adam, batch 256, annealed, 10,000 steps).
PYRO_REFERENCE = {
    ("planar", 32, "U1"): 0.021,
    ("planar", 32, "U2"): 0.082,
    ("radial", 32, "U1"): 0.033,
    ("radial", 32, "U2"): 0.136,
}
#: The issue's targets for pyro-nf (planar K=32, 10,000 steps).
TARGETS = {("planar", 32, "U1"): 0.02, ("planar", 32, "U2"): 0.05}


class PyroFlow(nn.Module):
    """Pyro's built-in flow on a learnable diagonal Gaussian base (the same base as pyro-nf's)."""

    def __init__(self, family: str, depth: int, dim: int = 2) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.raw_scale = nn.Parameter(torch.full((dim,), math.log(math.e - 1.0)))  # softplus⁻¹(1)
        layers: list[T.Transform] = []
        for k in range(depth):
            if family == "planar":
                layers.append(T.Planar(dim))
            elif family == "radial":
                layers.append(T.Radial(dim))
            elif family == "iaf":
                if k > 0:
                    layers.append(T.Permute(torch.arange(dim - 1, -1, -1)))
                net = AutoRegressiveNN(dim, [IAF_HIDDEN, IAF_HIDDEN], permutation=torch.arange(dim))
                layers.append(T.AffineAutoregressive(net, stable=True))
            elif family in ("spline_autoregressive", "spline_coupling"):
                if k > 0:
                    layers.append(T.Permute(torch.arange(dim - 1, -1, -1)))
                layers.append(_pyro_spline(family, dim))
            else:
                raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
        self.transforms = layers  # the permutations are not modules:
        self.layers = nn.ModuleList([t for t in layers if isinstance(t, nn.Module)])

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A fresh start for ``--restarts``: the base back to N(0, I), Pyro's own re-init of
        every transform (``Planar``/``Radial.reset_parameters``, the MADEs' linear layers)."""
        self.loc.zero_()
        self.raw_scale.fill_(math.log(math.e - 1.0))
        for m in self.layers.modules():
            if m is not self.layers and callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()

    def forward(self) -> dist.TransformedDistribution:
        base = dist.Normal(self.loc, F.softplus(self.raw_scale)).to_event(1)
        return dist.TransformedDistribution(base, list(self.transforms))


def _pyro_spline(family: str, dim: int) -> T.Transform:
    """One of Pyro's quadratic spline layers (IAF orientation), SPLINE_BINS bins, bound
    SPLINE_BOUND, hidden (64, 64); built here since Pyro's helpers give a quadratic spline the
    linear spline's outputs (``spline_autoregressive``) or no ``order`` (``spline_coupling``)."""
    k, hidden = SPLINE_BINS, [IAF_HIDDEN, IAF_HIDDEN]
    if family == "spline_autoregressive":
        net = AutoRegressiveNN(dim, hidden, param_dims=[k, k, k - 1], permutation=torch.arange(dim))
        return T.SplineAutoregressive(dim, net, k, SPLINE_BOUND, order="quadratic")
    split = dim // 2
    net = DenseNN(split, hidden, [(dim - split) * k, (dim - split) * k, (dim - split) * (k - 1)])
    return T.SplineCoupling(dim, split, net, k, SPLINE_BOUND, order="quadratic")


def build_flow(library: str, family: str, depth: int, init: str | None = None) -> nn.Module:
    """The flow of ``library`` (``"pyro_nf"`` or ``"pyro"``) for one grid cell; ``init`` is
    pyro-nf's ``planar(init=...)`` / ``radial(init=...)`` (default the identity; Pyro's maps
    always start at its own random init)."""
    if library == "pyro":
        return PyroFlow(family, depth)
    if family == "planar":
        return pyro_nf.planar(2, depth=depth, init=init or "identity")
    if family == "radial":
        return pyro_nf.radial(2, depth=depth, init=init or "identity")
    if family == "iaf":
        return pyro_nf.iaf(2, depth=depth, hidden=(IAF_HIDDEN, IAF_HIDDEN))
    if family == "spline_autoregressive":  # IAF orientation: one-pass sampling and scoring
        return spline_autoregressive(
            2, depth, bins=SPLINE_BINS, bound=SPLINE_BOUND, hidden=(IAF_HIDDEN,) * 2, invert=False
        )
    if family == "spline_coupling":
        hidden = (IAF_HIDDEN, IAF_HIDDEN)
        return spline_coupling(2, depth, bins=SPLINE_BINS, bound=SPLINE_BOUND, hidden=hidden)
    raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")


def run_one(
    library: str, energy: str, family: str, depth: int, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Fit one flow and estimate its KL; returns a JSON-ready record."""
    target = get_target(energy)
    torch.manual_seed(seed)
    flow = build_flow(library, family, depth, _init(library, family, args))
    n_params = sum(p.numel() for p in flow.parameters())
    torch.manual_seed(10_000 + seed)  # the same sampling noise stream for both libraries
    record: dict[str, Any] = {
        **_cell(library, energy, family, depth, seed, args),
        "n_params": n_params,
    }
    t0 = time.perf_counter()
    try:
        history = fit_reverse_kl(
            flow,
            target,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            annealing=args.anneal_steps,
            restarts=args.restarts,
            pilot_steps=args.pilot_steps,
            population=args.population,
            progress=False,
        )
        # with restarts the kept history holds one start only: time the whole call
        fit_s = history.elapsed if args.restarts == 1 else time.perf_counter() - t0
        total_steps = history.num_steps + (args.restarts - 1) * (args.pilot_steps or 0)
        record.update(
            fit_s=fit_s,
            ms_per_step=1e3 * fit_s / total_steps,
            final_loss=statistics.fmean(history.losses[-100:]),
            nan_restores=history.num_nan_restores,
            pilot_losses=history.pilot_losses,
            status="ok",
        )
    except TrainingDivergedError as e:
        record.update(fit_s=time.perf_counter() - t0, ms_per_step=math.nan, status="diverged")
        record["error"] = str(e)[:200]
    except Exception as e:  # noqa: BLE001 - a crash of one contender is a result, not a failure
        record.update(fit_s=time.perf_counter() - t0, ms_per_step=math.nan, status="error")
        record["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    if record["status"] == "ok":
        torch.manual_seed(20_000 + seed)
        try:
            kl, se, _ = kl_estimate(flow, target, num_samples=args.kl_samples)
        except Exception as e:  # noqa: BLE001
            kl, se = math.nan, math.nan
            record["error"] = f"kl_estimate: {type(e).__name__}: {str(e)[:200]}"
        record.update(kl=kl, kl_se=se)
    else:
        record.update(kl=math.nan, kl_se=math.nan)
    return record


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _cell(
    library: str, energy: str, family: str, depth: int, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The settings that identify one run (what :func:`_key` compares for ``--resume``)."""
    return {
        "library": library,
        "energy": energy,
        "family": family,
        "depth": depth,
        "seed": seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "anneal_steps": args.anneal_steps,
        "restarts": args.restarts,
        "pilot_steps": args.pilot_steps if args.restarts > 1 else None,
        "population": args.population,
        "init": _init(library, family, args),
    }


def _key(r: dict[str, Any]) -> tuple:
    return (
        r["library"],
        r["energy"],
        r["family"],
        r["depth"],
        r["seed"],
        r["steps"],
        r["batch_size"],
        r["lr"],
        r["anneal_steps"],
        r.get("restarts", 1),
        r.get("pilot_steps"),
        r.get("population", 1),
        record_init(r),
    )


def _init(library: str, family: str, args: argparse.Namespace) -> str | None:
    """pyro-nf's planar or radial init for the run (``None`` where it does not apply)."""
    if library != "pyro_nf" or family not in INIT_FAMILIES:
        return None
    return args.planar_init if family == "planar" else args.radial_init


def record_init(r: dict[str, Any]) -> str | None:
    """The init of a saved run: ``"identity"``, ``"random"`` or (planar) ``"pyro"`` for pyro-nf's
    planar and radial maps, ``None`` otherwise (records from before the key existed were
    identity starts)."""
    if r["library"] != "pyro_nf" or r["family"] not in INIT_FAMILIES:
        return None
    return r.get("init") or "identity"


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if isinstance(x, float) and math.isfinite(x)]
    return statistics.median(xs) if xs else math.nan


def starts(record: dict[str, Any]) -> str:
    """How a run used several starts: ``"1"``, ``"R pilots"`` (``--restarts R``) or
    ``"R side by side"`` (``--population R``)."""
    if record.get("population", 1) > 1:
        return f"{record['population']} side by side"
    if record.get("restarts", 1) > 1:
        return f"{record['restarts']} pilots"
    return "1"


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (energy, family, depth, steps, batch, starts): medians over seeds, both
    libraries."""
    nf_runs: dict[tuple, list[dict[str, Any]]] = {}
    pyro_runs: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        key = (r["energy"], r["family"], r["depth"], r["steps"], r["batch_size"], starts(r))
        if r["library"] == "pyro_nf":
            nf_runs.setdefault((*key, record_init(r) or ""), []).append(r)
        else:
            pyro_runs.setdefault(key, []).append(r)
    # Pyro's runs are compared with pyro-nf's under every init of the same settings
    cells = {k: {"pyro_nf": v, "pyro": pyro_runs.get(k[:-1], [])} for k, v in nf_runs.items()}
    for key, runs in pyro_runs.items():
        if not any(k[:-1] == key for k in cells):
            cells[(*key, "")] = {"pyro_nf": [], "pyro": runs}
    rows = []
    for (energy, family, depth, steps, batch, how, init), libs in sorted(cells.items()):
        row: dict[str, Any] = {
            "energy": energy,
            "family": family,
            "depth": depth,
            "steps": steps,
            "batch_size": batch,
            "starts": how,
            "init": init,
        }
        for lib in LIBRARIES:
            rs = libs.get(lib, [])
            row[f"{lib}_kl"] = _median([r["kl"] for r in rs])
            row[f"{lib}_kl_se"] = _median([r["kl_se"] for r in rs])
            row[f"{lib}_fit_s"] = _median([r["fit_s"] for r in rs])
            row[f"{lib}_seeds"] = len(rs)
            row[f"{lib}_failed"] = sum(r["status"] != "ok" for r in rs)
        row["kl_ratio"] = row["pyro_nf_kl"] / row["pyro_kl"] if row["pyro_kl"] else math.nan
        row["p_worse"] = p_worse(
            [r["kl"] for r in libs["pyro_nf"]], [r["kl"] for r in libs["pyro"]]
        )
        row["speedup"] = row["pyro_fit_s"] / row["pyro_nf_fit_s"]
        row["reference_pyro_kl"] = PYRO_REFERENCE.get((family, depth, energy))
        row["target_kl"] = TARGETS.get((family, depth, energy)) if steps >= 10_000 else None
        rows.append(row)
    for row, adjusted in zip(rows, holm([row["p_worse"] for row in rows]), strict=True):
        row["p_worse_holm"] = adjusted
    return rows


def holm(pvalues: list[float]) -> list[float]:
    r"""Holm's step-down adjustment of ``pvalues`` for the number of finite ones, ``m``.

    With the finite p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`, the adjusted value
    of :math:`p_{(i)}` is :math:`\max_{j \le i} \min(1, (m - j + 1)\,p_{(j)})`; NaN stays
    NaN. "Adjusted p < 0.05 in some cell" then has probability at most 0.05 when pyro-nf is
    behind Pyro in no cell (family-wise error), however many cells the table holds; a raw
    p-value below 0.05 in one of m cells happens by chance alone with probability up to
    ``1 - 0.95**m``.

    Example:
        >>> holm([0.01, 0.04, float("nan"), 0.03])
        [0.03, 0.06, nan, 0.06]
    """
    finite = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


def p_worse(nf_kls: list[float], pyro_kls: list[float], min_seeds: int = 3) -> float:
    """One-sided Mann–Whitney p-value for "pyro-nf's KL is stochastically larger than Pyro's"
    (small: pyro-nf worse beyond seed-to-seed chance); NaN with fewer than ``min_seeds`` finite
    runs per library. With 3 seeds each the smallest possible value is 0.05."""
    a = [x for x in nf_kls if math.isfinite(x)]
    b = [x for x in pyro_kls if math.isfinite(x)]
    if min(len(a), len(b)) < min_seeds:
        return math.nan
    return float(mannwhitneyu(a, b, alternative="greater").pvalue)


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.{digits}f}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The printed table (KL medians ± their standard errors, ratios, fit times)."""
    headers = [
        "U",
        "family",
        "K",
        "steps",
        "B",
        "starts",
        "init",
        "seeds",
        "KL pyro-nf",
        "KL Pyro",
        "KL ratio",
        "p worse",
        "Holm",
        "fit s pyro-nf",
        "fit s Pyro",
        "speedup",
        "Pyro ref",
        "target",
    ]
    body = []
    for r in rows:
        ref, tgt = r["reference_pyro_kl"], r["target_kl"]
        kl = r["pyro_nf_kl"]
        target = (
            ""
            if tgt is None or not math.isfinite(kl)
            else f"<= {tgt} " + ("met" if kl <= tgt else "MISSED")
        )
        body.append([
            r["energy"], r["family"], r["depth"], r["steps"], r["batch_size"], r["starts"],
            r["init"],
            f"{r['pyro_nf_seeds']}/{r['pyro_seeds']}",
            f"{_fmt(r['pyro_nf_kl'])} ± {_fmt(r['pyro_nf_kl_se'])}",
            f"{_fmt(r['pyro_kl'])} ± {_fmt(r['pyro_kl_se'])}",
            f"{_fmt(r['kl_ratio'], 2)}x", _fmt(r.get("p_worse", math.nan), 2),
            _fmt(r.get("p_worse_holm", math.nan), 2),
            _fmt(r["pyro_nf_fit_s"], 1), _fmt(r["pyro_fit_s"], 1),
            f"{_fmt(r['speedup'], 2)}x", "" if ref is None else f"{ref}", target,
        ])  # fmt: skip
    return format_table(headers, body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--energies", nargs="+", default=list(ENERGIES), choices=ENERGIES)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--depths", nargs="+", type=int, default=list(DEPTHS))
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=10_000, help="optimizer steps per fit")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument(
        "--anneal-steps",
        type=int,
        default=None,
        help="T of beta_t = min(1, 0.01 + t/T) (default: steps // 10)",
    )
    p.add_argument(
        "--restarts",
        type=int,
        default=1,
        help="starts per fit, the best pilot continued (fit_reverse_kl(restarts=...)); both "
        "libraries (default 1)",
    )
    p.add_argument(
        "--pilot-steps", type=int, default=None, help="pilot length (default 2 x anneal steps)"
    )
    p.add_argument(
        "--population",
        type=int,
        default=1,
        help="starts trained side by side with successive halving, batch per member "
        "(fit_reverse_kl(population=...)); both libraries (default 1)",
    )
    p.add_argument(
        "--planar-init",
        default="identity",
        choices=MAP_INITS,
        help="pyro-nf's planar(init=...): the identity, a random contraction per map, or "
        "Pyro's start and coordinates ('pyro')",
    )
    p.add_argument(
        "--radial-init",
        default="identity",
        choices=("identity", "random"),
        help="pyro-nf's radial(init=...): the identity or Pyro's random start (init='pyro' is "
        "the same start)",
    )
    p.add_argument("--kl-samples", type=int, default=200_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: U1, planar and radial, K=2, 200 steps, 20k KL samples",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in --out with the same settings and skip them",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON file (default results/energies.json)"
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="run nothing: merge the runs of these JSON files (e.g. from parallel runs) into "
        "--out and print the combined table",
    )
    p.add_argument(
        "--note", action="append", default=[], help="a note stored with the results (repeatable)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.energies, args.families, args.depths = ["U1"], ["planar", "radial"], [2]
        args.steps, args.kl_samples = 200, 20_000
    if args.anneal_steps is None:
        args.anneal_steps = max(1, args.steps // 10)
    if args.restarts > 1 and args.population > 1:
        p.error("--restarts and --population are two multi-start strategies: use one")
    if args.restarts > 1 and args.pilot_steps is None:
        args.pilot_steps = default_pilot_steps(args.steps, args.anneal_steps)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    records: list[dict[str, Any]] = []
    if args.resume and args.out.exists():
        records = json.loads(args.out.read_text(encoding="utf-8")).get("runs", [])
    for path in args.merge or ():
        records += json.loads(path.read_text(encoding="utf-8")).get("runs", [])
    done = {_key(r) for r in records}
    payload = {
        "benchmark": "energies",
        "description": "KL(q||p) = log Z - ELBO after reverse-KL fits to U1-U4; pyro-nf vs Pyro "
        "built-in flows, equal budgets (same loop, steps, batch, Adam lr + cosine "
        "decay, annealing, seeds).",
        "command": " ".join(
            ["python benchmarks/energies.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "settings": {k: _jsonable(v) for k, v in vars(args).items()},
        "notes": [
            "KL(q||p) = log Z - ELBO (nats), median over seeds, ± its Monte Carlo standard "
            "error; KL ratio < 1: pyro-nf closer to p; speedup = Pyro fit time / pyro-nf's "
            "(one CPU thread, shared machine: compare within a row only).",
            "Both libraries: the same loop (fit_reverse_kl), steps, batch (B, per member with a "
            "population), Adam lr 1e-2 with cosine decay, annealing over steps/10, seeds. Rows "
            "with 2000 steps come from a separate, shorter run of the whole grid.",
            *args.note,
        ],
        "pyro_reference": {f"{f}/K={k}/{u}": v for (f, k, u), v in PYRO_REFERENCE.items()},
        "targets": {f"{f}/K={k}/{u}": v for (f, k, u), v in TARGETS.items()},
    }
    if args.merge:
        rows = summarize(records)
        save_json(
            args.out, {**payload, "summary": rows, "table": format_rows(rows), "runs": records}
        )
    grid = (
        []
        if args.merge
        else [
            (u, f, k, s)
            for f in args.families
            for k in args.depths
            for u in args.energies
            for s in args.seeds
        ]
    )
    for i, (energy, family, depth, seed) in enumerate(grid):
        order = args.libraries if i % 2 == 0 else args.libraries[::-1]  # alternate: fair drift
        for library in order:
            if _key(_cell(library, energy, family, depth, seed, args)) in done:
                continue
            r = run_one(library, energy, family, depth, seed, args)
            records.append(r)
            print(
                f"[{i + 1}/{len(grid)}] {library:8s} {energy} {family:6s} K={depth:<2d} "
                f"seed={seed} steps={args.steps}: KL={_fmt(r['kl'])} ± {_fmt(r['kl_se'])} "
                f"fit {r['fit_s']:.1f}s ({r['status']})",
                flush=True,
            )
            rows = summarize(records)
            table = format_rows(rows)
            save_json(args.out, {**payload, "summary": rows, "table": table, "runs": records})
    rows = summarize(records)
    print()
    print(format_rows(rows))
    print(
        f"\nKL ratio = pyro-nf KL / Pyro KL (< 1: pyro-nf closer to the target); p worse = "
        f"one-sided Mann-Whitney p-value that pyro-nf's KLs are larger than Pyro's (>= 3 seeds "
        f"each); Holm = p worse adjusted for the number of cells with one (pyro-nf is behind "
        f"Pyro beyond chance where it is < 0.05); speedup = Pyro fit time / pyro-nf fit time. "
        f"Saved {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
