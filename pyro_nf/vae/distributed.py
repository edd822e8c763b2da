r"""Data-parallel VAE training with ``torch.distributed`` and ``DistributedDataParallel``.

Launch one process per device with ``torchrun`` (gloo on CPU, NCCL on GPU)::

    torchrun --nproc_per_node=2 -m pyro_nf.vae.distributed --dataset digits --flow planar --epochs 5
    torchrun --nproc_per_node=8 -m pyro_nf.vae.distributed --dataset mnist --device cuda --batch-size 800

or, on one machine without ``torchrun``, :func:`launch_local` (``torch.multiprocessing`` on a free
loopback port). Each process calls :func:`init_distributed` (reads ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` as set by ``torchrun``) and then
:func:`fit_vae_distributed`, which runs the loop of :func:`pyro_nf.vae.fit_vae`
(:func:`pyro_nf.vae.training.train_vae`) data-parallel through :func:`pyro_nf.training.train`
(see :mod:`pyro_nf.training.distributed`, where the generic pieces re-exported here live):

* every rank holds the same seeded minibatch schedule (:class:`pyro_nf.vae.EpochBatches`, like
  ``DistributedSampler``) and trains on its shard ``batch[rank::W]`` of each global batch;
* DDP all-reduces (averages) the gradients during ``backward``; each rank's loss is
  :math:`-\frac{W}{B}\sum_{i\in\text{shard}}\mathcal L(x_i)`, so the averaged gradient is the
  full batch's; every rank then takes the same optimizer step and the parameters stay identical
  (DDP also broadcasts rank 0's initial parameters);
* with ``seeded_noise=True`` (the default here) the base noise of step ``t`` is drawn for the
  whole batch from a ``(seed, t)``-seeded generator and each rank uses its rows, so a ``W``-rank
  run reproduces the single-process run (``fit_vae(..., seeded_noise=True)``) up to
  floating-point reduction order;
* the reported loss and the validation ELBO are all-reduced, so NaN handling, early stopping and
  best-parameter restore take the same decision on every rank; only rank 0 shows progress;
  with ``checkpoint=path`` rank ``r`` writes ``path.rank{r}`` and resumes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..training.distributed import (
    DistributedContext,
    free_port,
    init_distributed,
    launch_local,
    shutdown,
)
from ..training.loop import History
from .model import VAE
from .training import VAETrainConfig, train_vae

__all__ = [
    "DistributedContext",
    "fit_vae_distributed",
    "free_port",
    "init_distributed",
    "launch_local",
    "main",
    "shutdown",
]


def fit_vae_distributed(
    vae: VAE,
    train_data: torch.Tensor,
    valid_data: torch.Tensor | None = None,
    *,
    epochs: float = 10,
    batch_size: int = 100,
    lr: float = 1e-3,
    num_particles: int = 1,
    kl_warmup: float = 0.0,
    seed: int = 0,
    patience: float | None = None,
    lr_decays: int = 0,
    validate_every: int | None = None,
    valid_batch_size: int = 1000,
    seeded_noise: bool = True,
    drop_last: bool = False,
    optimizer: Any = "adam",
    lr_schedule: Any = None,
    clip_norm: float | str | None = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    nan_policy: str = "raise",
    progress: bool | None = None,
    desc: str = "vae-ddp",
    callback: Callable[[int, History], bool | None] | None = None,
) -> History:
    r"""Train ``vae`` data-parallel over the initialized process group (see the module docstring).

    Call it on every rank with the same arguments and the *whole* training data (each rank
    indexes its own shard of every batch). ``batch_size`` is the global batch size. ``vae`` must
    already sit on this rank's device (``ctx.device`` of :func:`init_distributed`). Without an
    initialized process group this is a single-process run, identical to
    :func:`pyro_nf.vae.fit_vae` with ``seeded_noise=True``. The arguments are those of
    :func:`~pyro_nf.vae.fit_vae` (the fields of :class:`~pyro_nf.vae.training.VAETrainConfig`).

    Returns:
        The :class:`~pyro_nf.History` (the same on every rank: losses are all-reduced).

    Example:
        >>> from pyro_nf.vae import flow_vae
        >>> x = (torch.rand(64, 8) < 0.5).float()
        >>> vae = flow_vae(8, flow="planar", depth=2, z_dim=2, hidden=(16,))
        >>> fit_vae_distributed(vae, x, epochs=1, batch_size=32, progress=False).num_steps
        2
    """
    config = VAETrainConfig.from_arguments(locals(), distributed=None)
    return train_vae(vae, train_data, valid_data, config)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of :func:`main`."""
    from . import DATASETS, FLOWS

    parser = argparse.ArgumentParser(
        prog="python -m pyro_nf.vae.distributed",
        description="Data-parallel VAE training (launch with torchrun --nproc_per_node=N).",
    )
    parser.add_argument("--dataset", choices=DATASETS, default="digits")
    parser.add_argument("--flow", choices=FLOWS, default="planar")
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--z-dim", type=int, default=None)
    parser.add_argument("--hidden", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--batch-size", type=int, default=100, help="global batch size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1000, help="K of the test IWAE")
    parser.add_argument("--out", default=None, help="directory for the model and metrics")
    return parser.parse_args(argv)


def _build_vae(args: argparse.Namespace, data: Any, device: torch.device) -> VAE:
    """The VAE of the command line (the same on every rank: seeded by ``--seed``)."""
    from . import flow_vae

    small = args.dataset == "digits"
    torch.manual_seed(args.seed)
    return flow_vae(
        data.data_dim,
        flow=args.flow,
        depth=args.depth,
        z_dim=args.z_dim or (8 if small else 40),
        hidden=tuple(args.hidden or ((128,) if small else (300, 300))),
        likelihood=data.likelihood,
    ).to(device)


def _report(
    args: argparse.Namespace,
    ctx: DistributedContext,
    vae: VAE,
    data: Any,
    hist: History,
    seconds: float,
) -> None:
    """Rank 0: evaluate the trained VAE, print the metrics as JSON and save them (``--out``)."""
    from . import evaluate_vae

    ev = evaluate_vae(vae, data.test, num_samples=args.num_samples)
    result = {
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "device": str(ctx.device),
        "dataset": args.dataset,
        "flow": args.flow,
        "steps": hist.num_steps,
        "train_seconds": seconds,
        **ev.as_dict(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(vae.state_dict(), out / "vae_ddp.pt")
        (out / "vae_ddp.json").write_text(json.dumps(result, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``torchrun ... -m pyro_nf.vae.distributed`` entry point: train a VAE, rank 0 evaluates it."""
    from . import load_vae_data

    args = _parse_args(argv)
    ctx = init_distributed(device=args.device)
    torch.set_num_threads(1) if ctx.device.type == "cpu" else None
    try:
        data = load_vae_data(args.dataset)
        vae = _build_vae(args, data, ctx.device)
        t0 = time.perf_counter()
        hist = fit_vae_distributed(
            vae,
            data.train,
            data.valid,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
        )
        if ctx.is_main:
            _report(args, ctx, vae, data, hist, time.perf_counter() - t0)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
