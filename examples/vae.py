"""VAEs with flow encoders on real data: diagonal Gaussian, planar, radial and IAF posteriors.

A VAE with prior N(0, I), an MLP decoder and an amortized posterior q(z|x) built on an MLP (or
conv) encoder context h(x) (see :mod:`pyro_nf.vae`) is trained by minibatch Adam on the direct
ELBO (:func:`pyro_nf.vae.fit_vae`: seeded minibatches, optional KL warm-up, early stopping on
the validation ELBO with best-parameter restore) and evaluated on the test set
(:func:`pyro_nf.vae.evaluate_vae`): the test ELBO and the importance-weighted estimate of
-log p(x) with K samples (K = 5000 by default), both in nats per image.

Datasets (``--dataset``): ``mnist`` (static binarization, 50k/10k/10k, Bernoulli), ``caltech``
(silhouettes, Bernoulli), ``frey`` (grey levels, discretized logistic with 256 levels: NLLs are
discrete, in nats per image) and ``digits`` (scikit-learn's 8x8 digits, binarized: no download).

Posteriors (``--flow``): ``diag`` (the depth-0 case), ``planar`` / ``radial`` (Rezende & Mohamed
2015: K maps whose per-image parameters come from one linear map of h), ``iaf`` (Kingma et al.
2016: MADEs reading h), and Pyro's built-ins ``pyro-planar`` (``ConditionalPlanar`` with its
default hypernetwork), ``pyro-planar-linear`` (``ConditionalPlanar`` with pyro-nf's linear
hypernetwork: the identical architecture to ``planar``), ``pyro-iaf``
(``ConditionalAffineAutoregressive``), ``pyro-diag`` (a plain ``Normal``) on the same encoder,
decoder and diagonal Gaussian base, trained by the same loop.

``--table`` trains the comparison rows (static MNIST: diag; planar K=4, 16; radial K=16; IAF
K=2, 4; Pyro's ConditionalPlanar K=16 with its default and with the linear hypernetwork, and
ConditionalAffineAutoregressive K=2) with the same
encoder, decoder, epochs and seed, and writes a Markdown table (with the published reference
numbers) to ``--out/vae_table_<dataset>.md``. A full-size run is for a GPU; ``--train-size``,
``--test-size`` and ``--epochs`` shrink it for a CPU (the table states the settings used), and
``--rows`` picks a subset of the rows.

Usage::

    python examples/vae.py                                  # digits, planar K=10 (a minute)
    python examples/vae.py --quick                          # smoke run (seconds)
    python examples/vae.py --dataset mnist --flow iaf --depth 2 --epochs 100 --device cuda
    python examples/vae.py --dataset mnist --table --epochs 10 --train-size 10000 --test-size 1000
    python examples/vae.py --dataset mnist --table --rows diag planar:16 iaf:2 --epochs 100 \
        --patience 10                                       # converged rows (CPU: ~2 hours)
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
from pyro_nf.datasets import random_subset
from pyro_nf.vae import DATASETS, FLOWS, VAEData, evaluate_vae, fit_vae, flow_vae, load_vae_data

#: (flow, depth) rows of ``--table``.
TABLE_ROWS: list[tuple[str, int | None]] = [
    ("diag", None),
    ("planar", 4),
    ("planar", 16),
    ("radial", 16),
    ("iaf", 2),
    ("iaf", 4),
    ("pyro-planar", 16),
    ("pyro-planar-linear", 16),
    ("pyro-iaf", 2),
]


def _clip_norm(text: str) -> float | str | None:
    """``--clip-norm``: ``auto``, ``off`` or a positive number."""
    if text in ("auto", "off"):
        return None if text == "off" else text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, off or a number, got {text!r}") from None


def _row(text: str) -> tuple[str, int | None]:
    """Parse a ``--rows`` entry ``FLOW[:DEPTH]`` (e.g. ``planar:16``, ``diag``)."""
    flow, _, depth = text.partition(":")
    if flow not in FLOWS or (depth and not depth.isdigit()) or depth == "0":
        raise argparse.ArgumentTypeError(
            f"expected FLOW[:DEPTH] with FLOW one of {list(FLOWS)} and DEPTH >= 1, got {text!r}"
        )
    return flow, int(depth) if depth else None


#: published reference rows (static/binarized MNIST, -log p(x) in nats); numbers are quoted only
#: where we could check them, otherwise the row points to the paper.
REFERENCES = [
    (
        "Rezende & Mohamed 2015, DLGM + NF (K = 80)",
        "≤ 85.10",
        "binarized MNIST; a deeper DLGM than the 784-300-300 MLP here",
    ),
    (
        "Kingma et al. 2016, VAE + IAF",
        "see paper (Table 1)",
        "a different, deeper architecture; numbers not quoted here",
    ),
]

LABELS = {
    "diag": "diagonal Gaussian",
    "planar": "planar (pyro-nf)",
    "radial": "radial (pyro-nf)",
    "iaf": "IAF (pyro-nf)",
    "pyro-diag": "diagonal Gaussian (Pyro Normal)",
    "pyro-planar": "ConditionalPlanar (Pyro)",
    "pyro-planar-linear": "ConditionalPlanar (Pyro), linear hypernetwork",
    "pyro-iaf": "ConditionalAffineAutoregressive (Pyro)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="default: digits")
    p.add_argument("--flow", choices=FLOWS, default="planar", help="posterior (default planar)")
    p.add_argument("--depth", type=int, default=None, help="flow layers (default 10; IAF 2)")
    p.add_argument("--epochs", type=float, default=None, help="default: 50 (digits 100)")
    p.add_argument("--batch-size", type=int, default=100, help="minibatch size (default 100)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--z-dim", type=int, default=None, help="latent size (default 40; digits 8)")
    p.add_argument(
        "--hidden", type=int, nargs="+", default=None, help="encoder widths (default 300 300)"
    )
    p.add_argument("--encoder", choices=["mlp", "conv"], default="mlp", help="default mlp")
    p.add_argument("--kl-warmup", type=float, default=0.0, help="KL warm-up epochs (default 0)")
    p.add_argument("--patience", type=float, default=None, help="early stopping, in epochs")
    p.add_argument(
        "--lr-decays",
        type=int,
        default=0,
        help="with --patience: divide the lr by 10 at this many plateaus before stopping",
    )
    p.add_argument(
        "--clip-norm",
        type=_clip_norm,
        default="auto",
        help="gradient-norm clipping: auto (spikes above 5x the recent median; default), off, "
        "or a fixed norm",
    )
    p.add_argument("--num-samples", type=int, default=5000, help="K of the IWAE (default 5000)")
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="use N training points (a seeded random subset)",
    )
    p.add_argument(
        "--valid-size",
        type=int,
        default=None,
        help="use N validation points (a seeded random subset)",
    )
    p.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="evaluate on N test points (a seeded random subset)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of init and batches (default 0)")
    p.add_argument("--table", action="store_true", help="train the comparison rows, write a table")
    p.add_argument(
        "--rows",
        nargs="+",
        type=_row,
        default=None,
        metavar="FLOW[:DEPTH]",
        help="with --table: only these rows, e.g. diag planar:16 iaf:2 (default: all)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run (seconds)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", default="out", help="directory for PNG/JSON/Markdown (default out/)")
    args = p.parse_args(argv)
    if args.quick:
        args.train_size = min(args.train_size or 600, 600)
        args.valid_size = min(args.valid_size or 100, 100)
        args.test_size = min(args.test_size or 100, 100)
        args.epochs = 1 if args.epochs is None else min(args.epochs, 1)
        args.num_samples = min(args.num_samples, 50)
    small = args.dataset == "digits"
    args.epochs = args.epochs if args.epochs is not None else (100 if small else 50)
    args.z_dim = args.z_dim or (8 if small else 40)
    args.hidden = tuple(args.hidden or ((128, 128) if small else (300, 300)))
    return args


def load(args: argparse.Namespace) -> VAEData:
    data = load_vae_data(args.dataset)
    # seeded random subsets, never the first N rows: MNIST's test set is ordered (cleaner
    # writers first), see pyro_nf.datasets.random_subset
    return VAEData(
        random_subset(data.train, args.train_size),
        random_subset(data.valid, args.valid_size),
        random_subset(data.test, args.test_size),
        data.likelihood,
        data.image_shape,
    )


def run_one(args: argparse.Namespace, data: VAEData, flow: str, depth: int | None) -> dict:
    torch.manual_seed(args.seed)
    vae = flow_vae(
        data.data_dim,
        flow=flow,
        depth=depth,
        z_dim=args.z_dim,
        hidden=args.hidden,
        likelihood=data.likelihood,
        encoder=args.encoder,
        image_shape=data.image_shape if args.encoder == "conv" else None,
    ).to(args.device)
    num_params = sum(p.numel() for p in vae.parameters())
    post_params = sum(p.numel() for p in vae.posterior.parameters())
    label = LABELS[flow] + (
        "" if flow in ("diag", "pyro-diag") else f", K = {vae_depth(flow, depth)}"
    )
    t0 = time.perf_counter()
    hist = fit_vae(
        vae,
        data.train,
        data.valid,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        kl_warmup=args.kl_warmup,
        patience=args.patience,
        lr_decays=args.lr_decays,
        clip_norm=args.clip_norm,
        seed=args.seed,
        progress=not args.no_progress,
        desc=label,
    )
    train_s = time.perf_counter() - t0
    steps_per_epoch = math.ceil(len(data.train) / args.batch_size)
    epochs_done = hist.num_steps / steps_per_epoch
    ev = evaluate_vae(vae, data.test, num_samples=args.num_samples, seed=args.seed)
    return {
        "flow": flow,
        "depth": vae_depth(flow, depth),
        "label": label,
        "params": num_params,
        "posterior_params": post_params,
        "steps": hist.num_steps,
        "epochs": epochs_done,
        "train_seconds": train_s,
        "seconds_per_epoch": train_s / max(epochs_done, 1e-9),
        "best_val_elbo": -min(v for _, v in hist.val_losses) if hist.val_losses else None,
        "stop_reason": hist.stop_reason,
        "losses": epoch_means(hist.losses, steps_per_epoch),  # per-step losses: MBs of JSON
        "val_losses": hist.val_losses,
        **{f"test_{k}": v for k, v in ev.as_dict().items()},
        "_vae": vae,
    }


def vae_depth(flow: str, depth: int | None) -> int:
    if flow in ("diag", "pyro-diag"):
        return 0
    if depth is not None:
        return depth
    return 2 if flow in ("iaf", "pyro-iaf") else 10


def settings(args: argparse.Namespace, data: VAEData) -> dict[str, Any]:
    return {
        "dataset": args.dataset,
        "likelihood": data.likelihood,
        "train/valid/test": [len(data.train), len(data.valid), len(data.test)],
        "encoder": f"{args.encoder} {data.data_dim}-" + "-".join(map(str, args.hidden)),
        "decoder": f"mlp {args.z_dim}-"
        + "-".join(map(str, args.hidden[::-1]))
        + f"-{data.data_dim}",
        "z_dim": args.z_dim,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "kl_warmup_epochs": args.kl_warmup,
        "patience_epochs": args.patience,
        "lr_decays": args.lr_decays,
        "clip_norm": args.clip_norm,
        "iwae_samples": args.num_samples,
        "seed": args.seed,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "pyro_nf": pyro_nf.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
    }


def epoch_means(losses: list[float], steps_per_epoch: int) -> list[float]:
    """The mean training loss of each epoch (the last one possibly partial).

    Example:
        >>> epoch_means([1.0, 3.0, 5.0, 7.0, 9.0], 2)
        [2.0, 6.0, 9.0]
    """
    return [
        sum(chunk) / len(chunk)
        for chunk in (
            losses[i : i + steps_per_epoch] for i in range(0, len(losses), steps_per_epoch)
        )
    ]


def markdown(rows: list[dict], info: dict[str, Any]) -> str:
    lines = [
        f"### VAE on {info['dataset']}: test ELBO and IWAE -log p(x) (nats per image)",
        "",
        "| posterior | params (posterior) | epochs | s/epoch | test ELBO | test -log p(x) (K = "
        f"{info['iwae_samples']}) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['params'] / 1e6:.2f}M ({r['posterior_params'] / 1e3:.0f}k) | "
            f"{r['epochs']:.1f} | {r['seconds_per_epoch']:.1f} | {r['test_elbo']:.2f} ± "
            f"{r['test_elbo_se']:.2f} | {r['test_nll']:.2f} ± {r['test_nll_se']:.2f} |"
        )
    if info["dataset"] == "mnist":
        for name, value, note in REFERENCES:
            lines.append(f"| *{name}* ({note}) | | | | | {value} |")
    lines += [
        "",
        "Settings: "
        + "; ".join(f"{k} = {v}" for k, v in info.items() if k not in ("date", "python"))
        + f" ({info['date']}). ± is the standard error over test images; s/epoch is the wall clock "
        "of training including the per-epoch validation pass (indicative only on a shared "
        "machine; benchmarks/vae.py measures epoch times). Every row has the same "
        "encoder, decoder, epochs and seed; Pyro's rows use its ConditionalPlanar / "
        "ConditionalAffineAutoregressive (default hypernetworks, or pyro-nf's linear one where "
        "the row says so) on the same diagonal Gaussian base, trained by the same loop.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], data: VAEData, out: Path, stem: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is an optional extra
        return []
    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r["val_losses"]:
            steps, vals = zip(*r["val_losses"], strict=True)
            ax.plot(steps, vals, label=r["label"])
    ax.set_xlabel("step")
    ax.set_ylabel("validation -ELBO (nats)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}_curves.png", dpi=120)
    plt.close(fig)
    files.append(f"{stem}_curves.png")
    h, w = data.image_shape
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.1 * len(rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows, strict=True):
        torch.manual_seed(0)
        imgs = r["_vae"].sample(10).cpu().reshape(10, h, w)
        ax.imshow(torch.cat(list(imgs), dim=1), cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(r["label"], fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / f"{stem}_samples.png", dpi=120)
    plt.close(fig)
    files.append(f"{stem}_samples.png")
    return files


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load(args)
    warm = VAEData(
        data.train[:200], data.valid[:50], data.test[:10], data.likelihood, data.image_shape
    )
    run_one(
        argparse.Namespace(
            **{**vars(args), "epochs": 1, "num_samples": 2, "no_progress": True, "batch_size": 50}
        ),
        warm,
        "diag",
        None,
    )  # warm-up, so that the first row's time is not inflated
    rows_spec = (args.rows or TABLE_ROWS) if args.table else [(args.flow, args.depth)]
    rows = [run_one(args, data, flow, depth) for flow, depth in rows_spec]
    info = settings(args, data)

    header = f"{'posterior':<46} {'s/epoch':>8} {'test ELBO':>16} {'-log p(x)':>16}"
    print(f"\n{args.dataset}: K = {args.num_samples} importance samples, nats per image")
    print(header)
    print("-" * len(header))
    for r in rows:
        elbo = f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f}"
        nll = f"{r['test_nll']:.2f} ± {r['test_nll_se']:.2f}"
        print(f"{r['label']:<46} {r['seconds_per_epoch']:>8.2f} {elbo:>16} {nll:>16}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"vae_table_{args.dataset}" if args.table else f"vae_{args.dataset}_{args.flow}"
    (out / f"{stem}.md").write_text(markdown(rows, info), encoding="utf-8")
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    payload = {"settings": info, "rows": clean}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    files = [f"{stem}.md", f"{stem}.json", *plot(rows, data, out, stem)]
    print(f"\nwrote {', '.join(str(out / f) for f in files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
