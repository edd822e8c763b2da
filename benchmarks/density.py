"""Held-out log-likelihood and fit time of density flows: pyro-nf against zuko and Pyro.

Every contender is fitted to the same data with the same budget and the same loop: Adam
(``--lr``), ``--steps`` minibatch steps of ``--batch`` rows drawn with a seeded generator, the
gradient norm clipped at 10, and the parameters kept at their best validation log-likelihood
(checked every ``--eval-every`` steps). Contenders (all ``--depth`` layers, ``--bins`` bins,
hidden widths ``(H, H)``, ``H = min(max(64, 2D), 256)``, ReLU, coordinate order reversed
between layers, a standard normal base):

* pyro-nf: ``maf``, ``realnvp``, ``spline_autoregressive`` (MAF orientation), ``spline_coupling``
  (bound 5), each with its default learnable diagonal base;
* zuko: ``NSF`` (autoregressive), ``NSF(passes=2)`` (coupling), ``MAF``;
* Pyro: ``spline_autoregressive(order="quadratic")`` used in the density direction (its
  ``.inv`` in the sampling chain, so that ``log_prob`` is one pass) and ``SplineCoupling``
  (``order="quadratic"``, a ``DenseNN`` hypernetwork), bound 5, with ``Permute`` between layers.

Data (``/work/shared/data``, read-only; a data set whose file is absent is skipped, nothing is
downloaded): two moons (generated, seeded), Frey faces (560 pixels, dequantized ``(v + u)/256``,
split 1565/200/200 after a seeded shuffle), UCI German credit (24 features, integer columns
dequantized by ``+ u``, 700/100/200) and UCI Sonar (60 features, 148/20/40). Features are
standardized with the training mean and std; log-likelihoods are reported in the units of the
(dequantized) data, i.e. with the standardization's log-Jacobian added back, as mean ± standard
error over the test rows. The binary image sets (MNIST, Caltech silhouettes) are not continuous
tabular data and are not used.

Usage::

    python benchmarks/density.py --quick            # smoke run (minutes on one thread)
    python benchmarks/density.py                    # full run
    python benchmarks/density.py --datasets moons frey --steps 3000
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import AutoRegressiveNN, DenseNN
from torch import nn

import pyro_nf
from pyro_nf.flows import spline_autoregressive, spline_coupling

try:  # run as a script (benchmarks/ on sys.path) or as ``python -m benchmarks.density``
    from _common import format_table, save_json, set_threads
except ImportError:  # pragma: no cover
    from benchmarks._common import format_table, save_json, set_threads

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "density.json"
BOUND = 5.0
DATASETS = ("moons", "frey", "german", "sonar")
CONTENDERS = (
    "pyro-nf maf",
    "pyro-nf realnvp",
    "pyro-nf spline_autoregressive",
    "pyro-nf spline_coupling",
    "zuko NSF",
    "zuko NSF coupling",
    "zuko MAF",
    "Pyro spline_autoregressive",
    "Pyro spline_coupling",
)


def hidden_width(dim: int) -> int:
    return min(max(64, 2 * dim), 256)


# -- data ----------------------------------------------------------------------------------------


def two_moons(n: int, seed: int) -> np.ndarray:
    """``n`` points of the two interleaved half circles with N(0, 0.1²) noise."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, math.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return np.stack([x, y], 1) + 0.1 * rng.standard_normal((n, 2))


def _split(x: np.ndarray, sizes: tuple[int, int, int], seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(len(x))
    a, b, _ = sizes
    return [x[perm[:a]], x[perm[a : a + b]], x[perm[a + b :]]]


def load_dataset(name: str, seed: int, quick: bool) -> list[np.ndarray] | None:
    """``[train, val, test]`` (float64 arrays) of a data set, or ``None`` when its file is absent."""
    rng = np.random.default_rng(seed + 1)
    if name == "moons":
        n = (1000, 500, 1000) if quick else (4000, 1000, 2000)
        return _split(two_moons(sum(n), seed), n, seed)
    if name == "frey":
        path = DATA_DIR / "freyfaces_1965x28x20_uint8.npz"
        if not path.exists():
            return None
        v = np.load(path)["x"].reshape(1965, -1).astype(np.float64)
        return _split((v + rng.random(v.shape)) / 256.0, (1565, 200, 200), seed)
    if name == "german":
        path = DATA_DIR / "german.data-numeric"
        if not path.exists():
            return None
        v = np.loadtxt(path)[:, :24]
        return _split(v + rng.random(v.shape), (700, 100, 200), seed)
    if name == "sonar":
        path = DATA_DIR / "sonar.all-data"
        if not path.exists():
            return None
        rows = [line.strip().split(",") for line in path.read_text().splitlines() if line.strip()]
        v = np.array([[float(c) for c in r[:-1]] for r in rows])
        return _split(v, (148, 20, 40), seed)
    raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")


# -- contenders: each a module with log_prob(x) -> (N,) ---------------------------------------


class PyroNF(nn.Module):
    def __init__(self, flow: pyro_nf.Flow) -> None:
        super().__init__()
        self.flow = flow

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(x)


class Zuko(nn.Module):
    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(x)


class PyroDensity(nn.Module):
    """Pyro transforms in the density direction ``x -> z``; sampled through their ``.inv``."""

    def __init__(self, dim: int, density_transforms: list[Any]) -> None:
        super().__init__()
        self.parts = nn.ModuleList([t for t in density_transforms if isinstance(t, nn.Module)])
        self.density_transforms = density_transforms
        self.register_buffer("zero", torch.zeros(dim))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        base = dist.Normal(self.zero, 1.0).to_event(1)
        sampling = [t.inv for t in reversed(self.density_transforms)]
        return dist.TransformedDistribution(base, sampling).log_prob(x)


def _reverse(dim: int) -> T.Permute:
    return T.Permute(torch.arange(dim - 1, -1, -1))


def pyro_spline_autoregressive(dim: int, depth: int, hidden: int, bins: int) -> PyroDensity:
    parts: list[Any] = []
    for k in range(depth):
        if k:
            parts.append(_reverse(dim))
        # Pyro's helper gives a quadratic spline the linear spline's 4 outputs: build it here
        arn = AutoRegressiveNN(
            dim, [hidden, hidden], param_dims=[bins, bins, bins - 1], permutation=torch.arange(dim)
        )
        parts.append(T.SplineAutoregressive(dim, arn, bins, BOUND, order="quadratic"))
    return PyroDensity(dim, parts)


def pyro_spline_coupling(dim: int, depth: int, hidden: int, bins: int) -> PyroDensity:
    split = dim // 2
    parts: list[Any] = []
    for k in range(depth):
        if k:
            parts.append(_reverse(dim))
        free = dim - split
        net = DenseNN(split, [hidden, hidden], [free * bins, free * bins, free * (bins - 1)])
        parts.append(T.SplineCoupling(dim, split, net, bins, BOUND, order="quadratic"))
    return PyroDensity(dim, parts)


def make_contender(
    name: str, dim: int, depth: int, bins: int, hidden: int | None = None
) -> nn.Module:
    """The contender ``name`` for ``dim`` features (see the module docstring); hidden widths
    ``(hidden, hidden)``, by default :func:`hidden_width`."""
    import zuko

    h = hidden or hidden_width(dim)
    hid = (h, h)
    builders: dict[str, Callable[[], nn.Module]] = {
        "pyro-nf maf": lambda: PyroNF(pyro_nf.maf(dim, depth, hidden=hid)),
        "pyro-nf realnvp": lambda: PyroNF(pyro_nf.realnvp(dim, depth, hidden=hid)),
        "pyro-nf spline_autoregressive": lambda: PyroNF(
            spline_autoregressive(dim, depth, bins=bins, bound=BOUND, hidden=hid)
        ),
        "pyro-nf spline_coupling": lambda: PyroNF(
            spline_coupling(dim, depth, bins=bins, bound=BOUND, hidden=hid)
        ),
        "zuko NSF": lambda: Zuko(
            zuko.flows.NSF(dim, bins=bins, transforms=depth, hidden_features=hid)
        ),
        "zuko NSF coupling": lambda: Zuko(
            zuko.flows.NSF(dim, bins=bins, transforms=depth, hidden_features=hid, passes=2)
        ),
        "zuko MAF": lambda: Zuko(zuko.flows.MAF(dim, transforms=depth, hidden_features=hid)),
        "Pyro spline_autoregressive": lambda: pyro_spline_autoregressive(dim, depth, h, bins),
        "Pyro spline_coupling": lambda: pyro_spline_coupling(dim, depth, h, bins),
    }
    return builders[name]()


# -- fitting --------------------------------------------------------------------------------------


@torch.no_grad()
def mean_log_prob(model: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    return torch.cat([model.log_prob(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def fit(
    model: nn.Module,
    train: torch.Tensor,
    val: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The shared loop (module docstring); returns fit time, steps done and whether it diverged."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    best, best_state, diverged = -math.inf, copy.deepcopy(model.state_dict()), False
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train), (min(args.batch, len(train)),), generator=gen)
        loss = -model.log_prob(train[idx]).mean()
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            score = float(mean_log_prob(model, val).mean())
            if math.isfinite(score) and score > best:
                best, best_state = score, copy.deepcopy(model.state_dict())
    seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    return {"fit_s": seconds, "steps": step, "diverged": diverged, "best_val": best}


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    splits = load_dataset(name, args.seed, args.quick)
    if splits is None:
        print(f"  {name}: data file absent in {DATA_DIR}, skipped", file=sys.stderr, flush=True)
        return None
    train, val, test = (torch.as_tensor(s, dtype=torch.float32) for s in splits)
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    train, val, test = ((s - mean) / std for s in (train, val, test))
    jacobian = -float(std.double().log().sum())  # log|dz/dx| of the standardization
    dim = train.shape[1]
    rows = {}
    for contender in args.contenders:
        torch.manual_seed(args.seed)
        try:
            model = make_contender(contender, dim, args.depth, args.bins)
        except ValueError as err:  # e.g. Pyro's AutoRegressiveNN needs hidden >= D
            rows[contender] = {"not_run": f"{type(err).__name__}: {err}"}
            print(f"  {name} D={dim} {contender}: not run ({err})", file=sys.stderr, flush=True)
            continue
        info = fit(model, train, val, args)
        lp = mean_log_prob(model, test).double() + jacobian
        finite = torch.isfinite(lp)
        info.update(
            test_ll=float(lp[finite].mean()) if finite.any() else float("nan"),
            test_se=float(lp[finite].std() / math.sqrt(finite.sum())) if finite.sum() > 1 else 0.0,
            nonfinite_test_rows=int((~finite).sum()),
            params=sum(p.numel() for p in model.parameters()),
        )
        rows[contender] = info
        print(
            f"  {name} D={dim} {contender}: test LL {info['test_ll']:.3f} ± "
            f"{info['test_se']:.3f}, {info['fit_s']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    sizes = [len(train), len(val), len(test)]
    return {"dataset": name, "dim": dim, "sizes": sizes, "hidden": hidden_width(dim), "rows": rows}


def verdicts(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 19's target: each pyro-nf spline family within 1 SE of zuko's NSF (or better)."""
    out = []
    for r in results:
        zuko_nsf = r["rows"].get("zuko NSF")
        if zuko_nsf is None:
            continue
        for fam in ("pyro-nf spline_autoregressive", "pyro-nf spline_coupling"):
            ours = r["rows"].get(fam)
            if ours is None or "not_run" in ours or "not_run" in zuko_nsf:
                continue
            gap = ours["test_ll"] - zuko_nsf["test_ll"]
            se = math.hypot(ours["test_se"], zuko_nsf["test_se"])
            out.append(
                {"dataset": r["dataset"], "family": fam, "gap": gap, "se": se, "met": gap >= -se}
            )
    return out


def table(results: Sequence[dict[str, Any]]) -> str:
    headers = ["data", "D", "contender", "steps", "test LL ± SE", "fit s", "params"]
    rows = []
    for r in results:
        for name, info in r["rows"].items():
            if "not_run" in info:
                rows.append(
                    [r["dataset"], r["dim"], name, "", f"not run: {info['not_run']}", "", ""]
                )
                continue
            ll = f"{info['test_ll']:.3f} ± {info['test_se']:.3f}"
            if info["diverged"]:
                ll += " (diverged)"
            steps = info.get("steps", "")
            rows.append(
                [r["dataset"], r["dim"], name, steps, ll, f"{info['fit_s']:.1f}", info["params"]]
            )
    return format_table(headers, rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: moons + german, 150 steps")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=None)
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 2000)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--depth", type=int, default=4, help="flow layers, every contender")
    p.add_argument("--bins", type=int, default=8, help="spline bins, every spline contender")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--merge", nargs="+", default=None, help="run nothing: merge these JSON files into --out"
    )
    args = p.parse_args(argv)
    if args.datasets is None:
        args.datasets = ["moons", "german"] if args.quick else list(DATASETS)
    if args.steps is None:
        args.steps = 150 if args.quick else 2000
    return args


def report(
    results: Sequence[dict[str, Any]], args: argparse.Namespace, argv: Any, t0: float
) -> str:
    """Save the results so far (JSON) and return the table with the targets' verdicts."""
    text = table(results)
    vs = verdicts(results)
    lines = [text, "", "test LL: mean held-out log-likelihood (nats per row, data units) ± SE"]
    for v in vs:
        status = "met" if v["met"] else "NOT met"
        lines.append(
            f"target {v['dataset']} {v['family']}: LL - zuko NSF = {v['gap']:+.3f} "
            f"(1 SE = {v['se']:.3f}): {status}"
        )
    payload = {
        "benchmark": "density",
        "command": " ".join(["density.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": list(results),
        "verdicts": vs,
        "table": text,
        "total_wall_s": time.perf_counter() - t0,
    }
    save_json(args.out, payload)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    set_threads(args.threads)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    if args.merge:  # e.g. data sets run in parallel processes
        for path in args.merge:
            saved = json.loads(Path(path).read_text())
            results += saved["results"]
            args.settings_merged = [*getattr(args, "settings_merged", []), saved["settings"]]
        print(report(results, args, argv, t0))
        return results
    for name in args.datasets:  # saved after every data set, so that a cut run keeps its part
        r = run_dataset(name, args)
        if r is not None:
            results.append(r)
            text = report(results, args, argv, t0)
    print()
    print(text if results else "no data set available")
    print(f"wrote {args.out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
