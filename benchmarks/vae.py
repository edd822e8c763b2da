"""Epoch time and test NLL of VAE encoders: pyro-nf's flows next to Pyro's built-ins.

Every contender is the same VAE — a 784-300-300 MLP encoder (ELU), z = 40, a 40-300-300-784
MLP decoder, Bernoulli likelihood, static MNIST, batch 100, Adam lr 1e-3, the same seed and the
same seeded minibatch schedule — and differs only in the posterior and in how it is trained:

* **pyro-nf** (``diag``, ``planar`` K = 10, ``iaf`` K = 2): :func:`pyro_nf.vae.fit_vae`, the
  direct one-pass ELBO (encode, ``rsample_and_log_prob``, decode) with ``torch.optim.Adam``
  (fused update);
* **Pyro** (``pyro-diag``: a ``Normal`` encoder; ``pyro-planar``: ``ConditionalPlanar`` × 10 with
  its default hypernetwork ``300 → 400 → 400 → 81`` per layer; ``pyro-planar-linear``: the same
  with pyro-nf's hypernetwork, one linear ``300 → 81`` per layer — the identical architecture
  and parameter count to pyro-nf's planar; ``pyro-iaf``:
  ``ConditionalAffineAutoregressive`` × 2 with its default hidden ``[400]`` and a reversal
  between layers), all on the same diagonal Gaussian base through Pyro's
  ``ConditionalTransformedDistribution``, trained the Pyro way: ``SVI(model, guide,
  pyro.optim.Adam, Trace_ELBO())`` on :meth:`pyro_nf.vae.VAE.model` / ``guide``.

``--cross`` adds the two crossings that show where the time goes: pyro-nf's planar encoder
trained through Pyro's SVI, and Pyro's ConditionalPlanar trained by pyro-nf's direct loop.

Epoch time: each contender trains ``--epochs`` epochs on ``--train-size`` training images (a
seeded random subset); the time of every epoch is taken (wall clock and process CPU time, the device
synchronized at the boundaries) and the **median over the epochs after the first** is reported
(the first is warm-up). On a shared CPU the CPU time is the steadier number. Test NLL: the
importance-weighted -log p(x) (K = ``--num-samples``, default 5000) and the test ELBO on
``--test-size`` test images (a seeded random subset, never the first N: MNIST's test set is
ordered) after training, in nats.

Targets (pyro-nf's issue): planar K=10 epoch ≤ 1.5 × the diagonal Gaussian epoch; ≥ 2× faster
than Pyro's ConditionalPlanar K=10 on CPU (≥ 4× on GPU), with a test NLL at least as good.

Usage::

    python benchmarks/vae.py --cross              # CPU: 3 epochs of 10k images (~25 min)
    python benchmarks/vae.py --quick              # smoke run (seconds)
    python benchmarks/vae.py --device cuda --train-size 50000 --epochs 16 --test-size 10000
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_nf.datasets import random_subset
from pyro_nf.vae import EpochBatches, VAEData, evaluate_vae, fit_vae, flow_vae, load_vae_data

try:  # run as a script (benchmarks/ on sys.path) or as ``python -m benchmarks.vae``
    from _common import format_table, save_json, set_threads, synchronize
except ImportError:  # pragma: no cover
    from benchmarks._common import format_table, save_json, set_threads, synchronize

RESULTS = Path(__file__).resolve().parent / "results"

#: name -> (posterior kind, depth, trainer)
CONTENDERS: dict[str, tuple[str, int | None, str]] = {
    "pyro-nf diag": ("diag", None, "direct"),
    "pyro-nf planar K=10": ("planar", 10, "direct"),
    "pyro-nf iaf K=2": ("iaf", 2, "direct"),
    "Pyro diag (SVI)": ("pyro-diag", None, "svi"),
    "Pyro ConditionalPlanar K=10 (SVI)": ("pyro-planar", 10, "svi"),
    "Pyro ConditionalPlanar K=10, linear hypernet (SVI)": ("pyro-planar-linear", 10, "svi"),
    "Pyro ConditionalAffineAutoregressive K=2 (SVI)": ("pyro-iaf", 2, "svi"),
}
CROSS: dict[str, tuple[str, int | None, str]] = {
    "pyro-nf planar K=10 (via SVI)": ("planar", 10, "svi"),
    "Pyro ConditionalPlanar K=10 (direct loop)": ("pyro-planar", 10, "direct"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--train-size", type=int, default=10000, help="training images (default 10k)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per contender (default 3)")
    p.add_argument("--test-size", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--num-samples", type=int, default=5000, help="IWAE K (default 5000)")
    p.add_argument("--batch-size", type=int, default=100, help="default 100")
    p.add_argument("--z-dim", type=int, default=40, help="default 40")
    p.add_argument("--hidden", type=int, nargs="+", default=[300, 300], help="default 300 300")
    p.add_argument("--lr", type=float, default=1e-3, help="default 1e-3")
    p.add_argument("--only", nargs="+", default=None, help="substrings of contenders to run")
    p.add_argument("--cross", action="store_true", help="add the SVI/direct crossings")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run (seconds)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/vae*.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.train_size, args.epochs, args.test_size, args.num_samples = 300, 2, 20, 20
    if args.epochs < 2:
        p.error("--epochs: expected at least 2 (the first epoch is warm-up)")
    return args


class EpochClock:
    """Wall and CPU time of each epoch, from calls at the end of every step."""

    def __init__(self, steps_per_epoch: int, device: str) -> None:
        self.spe, self.device = steps_per_epoch, device
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.start()

    def start(self) -> None:
        synchronize(self.device)
        self._w, self._c = time.perf_counter(), time.process_time()

    def step_done(self, step: int) -> None:
        if (step + 1) % self.spe == 0:
            synchronize(self.device)
            w, c = time.perf_counter(), time.process_time()
            self.wall.append(w - self._w)
            self.cpu.append(c - self._c)
            self._w, self._c = w, c


def train_direct(vae, data: VAEData, args, clock: EpochClock) -> None:
    fit_vae(
        vae,
        data.train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=False,
        callback=lambda step, hist: clock.step_done(step),
    )


def train_svi(vae, data: VAEData, args, clock: EpochClock) -> None:
    pyro.clear_param_store()
    svi = pyro.infer.SVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": args.lr}), pyro.infer.Trace_ELBO()
    )
    sched = EpochBatches(len(data.train), args.batch_size, seed=args.seed)
    x = data.train.to(args.device)
    clock.start()
    for step in range(sched.steps_per_epoch * args.epochs):
        svi.step(x[sched(step).to(args.device)])
        clock.step_done(step)


TRAINERS: dict[str, Callable[..., None]] = {"direct": train_direct, "svi": train_svi}


def run(name: str, spec: tuple[str, int | None, str], data: VAEData, args) -> dict[str, Any]:
    kind, depth, trainer = spec
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    vae = flow_vae(
        data.data_dim, flow=kind, depth=depth, z_dim=args.z_dim, hidden=tuple(args.hidden)
    ).to(args.device)
    spe = EpochBatches(len(data.train), args.batch_size).steps_per_epoch
    clock = EpochClock(spe, args.device)
    TRAINERS[trainer](vae, data, args, clock)
    ev = evaluate_vae(vae, data.test, num_samples=args.num_samples, seed=args.seed)
    row = {
        "name": name,
        "posterior": kind,
        "depth": depth,
        "trainer": trainer,
        "params": sum(p.numel() for p in vae.parameters()),
        "posterior_params": sum(p.numel() for p in vae.posterior.parameters()),
        "epoch_wall_s": clock.wall,
        "epoch_cpu_s": clock.cpu,
        "median_epoch_wall_s": statistics.median(clock.wall[1:]),
        "median_epoch_cpu_s": statistics.median(clock.cpu[1:]),
        **{f"test_{k}": v for k, v in ev.as_dict().items()},
    }
    print(
        f"  {name}: {row['median_epoch_wall_s']:.2f} s/epoch wall, "
        f"{row['median_epoch_cpu_s']:.2f} s cpu, test NLL {ev.nll:.2f}, ELBO {ev.elbo:.2f}",
        flush=True,
    )
    return row


def ratio(rows: dict[str, dict], a: str, b: str, key: str) -> float:
    if a not in rows or b not in rows:
        return math.nan
    return rows[a][key] / rows[b][key]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    full = load_vae_data("mnist")
    data = VAEData(
        random_subset(full.train, args.train_size),  # seeded, not the first N rows
        full.valid[:0],
        random_subset(full.test, args.test_size),
        full.likelihood,
        full.image_shape,
    )
    specs = {**CONTENDERS, **(CROSS if args.cross else {})}
    if args.only:
        specs = {k: v for k, v in specs.items() if any(s in k for s in args.only)}
    print(
        f"MNIST VAE, {len(data.train)} training images x {args.epochs} epochs, batch "
        f"{args.batch_size}, {args.device}, {torch.get_num_threads()} thread(s); test NLL on "
        f"{len(data.test)} images with K = {args.num_samples}",
        flush=True,
    )
    rows = {name: run(name, spec, data, args) for name, spec in specs.items()}

    table = [
        [
            name,
            f"{r['params'] / 1e6:.2f}M",
            f"{r['median_epoch_wall_s']:.2f}",
            f"{r['median_epoch_cpu_s']:.2f}",
            f"{r['test_elbo']:.2f}",
            f"{r['test_nll']:.2f} ± {r['test_nll_se']:.2f}",
        ]
        for name, r in rows.items()
    ]
    print()
    print(
        format_table(
            ["contender", "params", "s/epoch (wall)", "s/epoch (cpu)", "test ELBO", "test NLL"],
            table,
        )
    )
    ratios = {}
    for label, a, b in [
        ("pyro-nf planar / pyro-nf diag (target <= 1.5)", "pyro-nf planar K=10", "pyro-nf diag"),
        (
            "Pyro ConditionalPlanar / pyro-nf planar (target >= 2 CPU, >= 4 GPU)",
            "Pyro ConditionalPlanar K=10 (SVI)",
            "pyro-nf planar K=10",
        ),
        (
            "Pyro ConditionalPlanar, linear hypernet / pyro-nf planar (same architecture)",
            "Pyro ConditionalPlanar K=10, linear hypernet (SVI)",
            "pyro-nf planar K=10",
        ),
        ("Pyro diag (SVI) / pyro-nf diag", "Pyro diag (SVI)", "pyro-nf diag"),
        (
            "Pyro ConditionalAffineAutoregressive / pyro-nf iaf",
            "Pyro ConditionalAffineAutoregressive K=2 (SVI)",
            "pyro-nf iaf K=2",
        ),
        (
            "pyro-nf planar via SVI / pyro-nf planar direct",
            "pyro-nf planar K=10 (via SVI)",
            "pyro-nf planar K=10",
        ),
        (
            "Pyro ConditionalPlanar direct loop / pyro-nf planar",
            "Pyro ConditionalPlanar K=10 (direct loop)",
            "pyro-nf planar K=10",
        ),
    ]:
        wall = ratio(rows, a, b, "median_epoch_wall_s")
        cpu = ratio(rows, a, b, "median_epoch_cpu_s")
        if not math.isnan(wall):
            ratios[label] = {"wall": wall, "cpu": cpu}
    if ratios:
        print()
        print(
            format_table(
                ["epoch-time ratio", "wall", "cpu"],
                [[k, f"{v['wall']:.2f}x", f"{v['cpu']:.2f}x"] for k, v in ratios.items()],
            )
        )
    a = "pyro-nf planar K=10"
    for b, name in [
        ("Pyro ConditionalPlanar K=10 (SVI)", "Pyro ConditionalPlanar"),
        ("Pyro ConditionalPlanar K=10, linear hypernet (SVI)", "Pyro ConditionalPlanar (linear)"),
    ]:
        if a in rows and b in rows:
            d = rows[b]["test_nll"] - rows[a]["test_nll"]
            se = math.hypot(rows[a]["test_nll_se"], rows[b]["test_nll_se"])
            print(
                f"test NLL, {name} - pyro-nf planar: {d:+.2f} nats (± {se:.2f}; > 0: pyro-nf better)"
            )

    suffix = "_quick" if args.quick else ("_" + torch.device(args.device).type)
    out = Path(args.out) if args.out else RESULTS / f"vae{suffix}.json"
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings["command"] = " ".join(["python", *sys.argv])
    save_json(
        out, {"settings": settings, "rows": list(rows.values()), "ratios": ratios}, args.device
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
