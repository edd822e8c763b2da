r"""Data-parallel VAE training with ``torch.distributed`` and ``DistributedDataParallel``.

Launch one process per device with ``torchrun`` (gloo on CPU, NCCL on GPU)::

    torchrun --nproc_per_node=2 -m pyro_nf.vae.distributed --dataset digits --flow planar --epochs 5
    torchrun --nproc_per_node=8 -m pyro_nf.vae.distributed --dataset mnist --device cuda --batch-size 800

or, on one machine without ``torchrun``, :func:`launch_local` (``torch.multiprocessing`` on a free
loopback port). Each process calls :func:`init_distributed` (reads ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` as set by ``torchrun``) and then
:func:`fit_vae_distributed`, which wraps the VAE in ``DistributedDataParallel`` and runs the same
loop as :func:`pyro_nf.vae.fit_vae`:

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
import datetime
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..training.loop import History
from .model import VAE
from .training import _fit

__all__ = [
    "DistributedContext",
    "init_distributed",
    "shutdown",
    "fit_vae_distributed",
    "free_port",
    "launch_local",
    "main",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device`` and ``backend``.

    Example:
        >>> DistributedContext(0, 1, 0, torch.device("cpu"), None).is_main
        True
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that prints and saves)."""
        return self.rank == 0


def init_distributed(
    backend: str | None = None,
    device: str | torch.device | None = None,
    timeout_s: float = 300.0,
) -> DistributedContext:
    """Join the process group described by the environment (as ``torchrun`` sets it up).

    Without ``WORLD_SIZE`` in the environment (a plain ``python`` run) nothing is initialized
    and a single-process context is returned.

    Args:
        backend: ``"gloo"`` or ``"nccl"`` (default: NCCL for CUDA devices, else gloo).
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA if available); with CUDA each process
            uses ``cuda:LOCAL_RANK``.
        timeout_s: timeout of collective operations.

    Example:
        >>> ctx = init_distributed(device="cpu") if "WORLD_SIZE" not in os.environ else None
        >>> ctx is None or (ctx.rank, ctx.world_size)
        (0, 1)
    """
    try:
        dev = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but CUDA is not available")
    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", 0)
        return DistributedContext(0, 1, 0, dev, None)
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend: expected 'gloo' or 'nccl', got {backend!r}")
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def shutdown() -> None:
    """Leave the process group (a no-op when none is initialized).

    Example:
        >>> shutdown()
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


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
    progress: bool = True,
    desc: str = "vae-ddp",
    callback: Callable[[int, History], bool | None] | None = None,
) -> History:
    r"""Train ``vae`` data-parallel over the initialized process group (see the module docstring).

    Call it on every rank with the same arguments and the *whole* training data (each rank
    indexes its own shard of every batch). ``batch_size`` is the global batch size. ``vae`` must
    already sit on this rank's device (``ctx.device`` of :func:`init_distributed`). Without an
    initialized process group this is a single-process run, identical to
    :func:`pyro_nf.vae.fit_vae` with ``seeded_noise=True``. The arguments are those of
    :func:`~pyro_nf.vae.fit_vae`.

    Returns:
        The :class:`~pyro_nf.History` (the same on every rank: losses are all-reduced).

    Example:
        >>> from pyro_nf.vae import flow_vae
        >>> x = (torch.rand(64, 8) < 0.5).float()
        >>> vae = flow_vae(8, flow="planar", depth=2, z_dim=2, hidden=(16,))
        >>> fit_vae_distributed(vae, x, epochs=1, batch_size=32, progress=False).num_steps
        2
    """
    world_size, rank, module, reduce = 1, 0, vae, None
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    if world_size > 1:
        dev = next(vae.parameters()).device
        module = DistributedDataParallel(
            vae, device_ids=[dev.index] if dev.type == "cuda" else None
        )
        reduce = _all_reduce_sum
        if checkpoint is not None:
            checkpoint = f"{os.fspath(checkpoint)}.rank{rank}"
    extra = {"reduce": reduce} if reduce is not None else {}
    return _fit(
        vae,
        train_data,
        valid_data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        num_particles=num_particles,
        kl_warmup=kl_warmup,
        seed=seed,
        patience=patience,
        lr_decays=lr_decays,
        validate_every=validate_every,
        valid_batch_size=valid_batch_size,
        seeded_noise=seeded_noise,
        drop_last=drop_last,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        clip_norm=clip_norm,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        nan_policy=nan_policy,
        progress=progress,
        desc=desc,
        callback=callback,
        module=module,
        rank=rank,
        world_size=world_size,
        **extra,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a loopback process group).

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_entry(
    rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    try:
        fn(rank, world_size, *args)
    finally:
        shutdown()


def launch_local(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: Sequence[Any] = (),
    timeout_s: float = 120.0,
) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes on this machine.

    The processes get the environment ``torchrun`` would set (loopback ``MASTER_ADDR``, a free
    ``MASTER_PORT``, ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), so ``fn`` calls
    :func:`init_distributed` as usual. ``fn`` must be importable (a module-level function).
    Raises ``RuntimeError`` if a process fails, ``TimeoutError`` (after killing them) if they do
    not finish within ``timeout_s``.

    Example:
        >>> def work(rank, world_size):  # in a module, so that the processes can import it
        ...     ctx = init_distributed(backend="gloo", device="cpu")
        ...     ...  # build the same VAE on every rank, then fit_vae_distributed(vae, data)
        >>> launch_local(work, world_size=2)  # doctest: +SKIP
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size: expected an integer >= 1, got {world_size!r}")
    ctx = mp.spawn(
        _local_entry, args=(fn, world_size, free_port(), tuple(args)), nprocs=world_size, join=False
    )
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            for p in ctx.processes:
                p.join(5)
            raise TimeoutError(
                f"launch_local: the {world_size} processes did not finish within {timeout_s} s"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """``torchrun ... -m pyro_nf.vae.distributed`` entry point: train a VAE, rank 0 evaluates it."""
    from . import DATASETS, FLOWS, evaluate_vae, flow_vae, load_vae_data

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
    args = parser.parse_args(argv)

    ctx = init_distributed(device=args.device)
    torch.set_num_threads(1) if ctx.device.type == "cpu" else None
    try:
        data = load_vae_data(args.dataset)
        small = args.dataset == "digits"
        torch.manual_seed(args.seed)
        vae = flow_vae(
            data.data_dim,
            flow=args.flow,
            depth=args.depth,
            z_dim=args.z_dim or (8 if small else 40),
            hidden=tuple(args.hidden or ((128,) if small else (300, 300))),
            likelihood=data.likelihood,
        ).to(ctx.device)
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
        seconds = time.perf_counter() - t0
        if ctx.is_main:
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
    finally:
        shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
