r"""Data-parallel training with ``torch.distributed``: the process group, sharding and the engine.

Launch one process per device with ``torchrun`` (gloo on CPU, NCCL on GPU), or on one machine
with :func:`launch_local` (``torch.multiprocessing`` on a free loopback port). Each process calls
:func:`init_distributed` and then runs the *same* fit on the *whole* data; the one training loop
(:func:`pyro_nf.training.train`) does the rest once a process group with more than one rank is
initialized:

* the loss closure takes this rank's part of each batch with :func:`shard`
  (``batch[rank::world_size]``), so the union of the ranks' shards is the single-process batch;
* the trained parameters are wrapped in torch's ``DistributedDataParallel`` (:class:`DataParallel`),
  which broadcasts rank 0's initial values and averages the gradients during ``backward``; a loss
  that is the mean over the shard scaled so that the ranks' losses average to the full batch's
  gives exactly the full batch's gradient, every rank takes the same step and the parameters stay
  identical;
* the reported losses and validation values are averaged over the ranks, so NaN handling, early
  stopping and best-state restore decide identically everywhere; only rank 0 shows progress, and
  with ``checkpoint=path`` rank ``r`` writes and resumes ``path.rank{r}``.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DataParallel",
    "DistributedContext",
    "free_port",
    "init_distributed",
    "launch_local",
    "rank_and_world_size",
    "shard",
    "shutdown",
    "use_data_parallel",
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


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialized process group, ``(0, 1)`` without one.

    Example:
        >>> rank_and_world_size() if not torch.distributed.is_initialized() else (0, 1)
        (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """This rank's part ``batch[rank::world_size]`` (along ``dim``) in a data-parallel run.

    Unchanged ``batch`` unless a process group with ``world_size > 1`` is initialized.

    Example:
        >>> shard(torch.arange(6)).tolist()  # a single process keeps the whole batch
        [0, 1, 2, 3, 4, 5]
    """
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return batch
    index = (slice(None),) * (dim % batch.dim()) + (slice(rank, None, world_size),)
    return batch[index]


def use_data_parallel(distributed: bool | None) -> bool:
    """Whether ``train(distributed=...)`` runs data-parallel (``None``: iff ``world_size > 1``).

    Example:
        >>> use_data_parallel(False), use_data_parallel(None) == (rank_and_world_size()[1] > 1)
        (False, True)
    """
    if distributed is None:
        return rank_and_world_size()[1] > 1
    if not isinstance(distributed, bool):
        raise ValueError(f"distributed: expected None, True or False, got {distributed!r}")
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "distributed: expected an initialized torch.distributed process group "
            "(see pyro_nf.training.distributed.init_distributed), got none"
        )
    return distributed


class _LossModule(nn.Module):
    """The trained tensors as the parameters of a module whose forward is the loss closure."""

    def __init__(self, tensors: list[torch.Tensor], loss_fn: Callable[[int], torch.Tensor]):
        super().__init__()
        for i, t in enumerate(tensors):  # the tensors themselves (no copies), Parameter or not
            self._parameters[f"p{i}"] = t
        self.loss_fn = loss_fn

    def forward(self, step: int) -> torch.Tensor:
        """The loss of step ``step``."""
        return self.loss_fn(step)


class DataParallel:
    """The data-parallel engine of :func:`~pyro_nf.training.train` over the initialized group.

    :meth:`wrap` puts the trained tensors into torch's ``DistributedDataParallel`` (which
    broadcasts rank 0's values); calling the engine then evaluates the loss through it, so that
    ``backward`` averages the gradients over the ranks. :meth:`mean` averages a reported value.
    """

    def __init__(self) -> None:
        self.rank, self.world_size = rank_and_world_size()
        self.module: DistributedDataParallel | None = None

    def wrap(self, loss_fn: Callable[[int], torch.Tensor], tensors: list[torch.Tensor]) -> None:
        """Wrap ``tensors`` and ``loss_fn`` in DDP (a collective: every rank calls it)."""
        device = tensors[0].device
        self.module = DistributedDataParallel(
            _LossModule(tensors, loss_fn),
            device_ids=[device.index] if device.type == "cuda" else None,
        )

    def __call__(self, step: int) -> torch.Tensor:
        """The loss of step ``step`` (through DDP: its ``backward`` averages the gradients)."""
        assert self.module is not None, "DataParallel.wrap must be called first"
        return self.module(step)

    def mean(self, value: torch.Tensor | float) -> float:
        """The mean of a scalar over the ranks (the same float on every rank)."""
        if isinstance(value, torch.Tensor):
            total = value.detach().reshape(1).clone()
        else:
            total = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total[0] / self.world_size)

    def rank_path(self, path: str | None) -> str | None:
        """This rank's checkpoint file: ``path.rank{r}`` when there are several ranks."""
        if path is None or self.world_size == 1:
            return path
        return f"{path}.rank{self.rank}"


def _device(device: str | torch.device | None) -> torch.device:
    """The checked ``init_distributed(device=...)`` (default: CUDA if available)."""
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
    return dev


def _join_group(dev: torch.device, backend: str | None, timeout_s: float) -> DistributedContext:
    """Initialize the process group from the environment (once) on ``cuda:LOCAL_RANK`` or CPU."""
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
    dev = _device(device)
    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", 0)
        return DistributedContext(0, 1, 0, dev, None)
    return _join_group(dev, backend, timeout_s)


def shutdown() -> None:
    """Leave the process group (a no-op when none is initialized).

    Example:
        >>> shutdown()
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
    """One process of :func:`launch_local`: the ``torchrun`` environment, ``fn``, shutdown."""
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


def _join_or_kill(ctx: Any, world_size: int, timeout_s: float) -> None:
    """Wait for the spawned processes; kill them and raise ``TimeoutError`` after ``timeout_s``."""
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
        ...     ...  # build the same model on every rank, then fit it on the whole data
        >>> launch_local(work, world_size=2)  # doctest: +SKIP
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size: expected an integer >= 1, got {world_size!r}")
    ctx = mp.spawn(
        _local_entry, args=(fn, world_size, free_port(), tuple(args)), nprocs=world_size, join=False
    )
    _join_or_kill(ctx, world_size, timeout_s)
