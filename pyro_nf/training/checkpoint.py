"""Checkpoints of :func:`~pyro_nf.training.train`: the run state, its (de)serialization in the
``"pyro_nf.train/1"`` format, atomic writes and the global random-generator states."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .history import History
from .stopping import Plateau

__all__ = [
    "FORMAT",
    "RunState",
    "atomic_save",
    "clone_into",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
]

#: The format tag of training checkpoints.
FORMAT = "pyro_nf.train/1"


def clone_into(dst: Any, src: Any) -> Any:
    """Deep copy of nested containers of tensors, reusing ``dst``'s tensors where they fit.

    Example:
        >>> old = [torch.zeros(2)]
        >>> new = clone_into(old, [torch.ones(2)])
        >>> new[0] is old[0], new[0].tolist()
        (True, [1.0, 1.0])
    """
    if isinstance(src, torch.Tensor):
        if isinstance(dst, torch.Tensor) and (dst.shape, dst.dtype, dst.device) == (
            src.shape,
            src.dtype,
            src.device,
        ):
            return dst.copy_(src)
        return src.detach().clone()
    if isinstance(src, dict):
        old = dst if isinstance(dst, dict) else {}
        return {k: clone_into(old.get(k), v) for k, v in src.items()}
    if isinstance(src, (list, tuple)):
        old = dst if isinstance(dst, (list, tuple)) and len(dst) == len(src) else [None] * len(src)
        return type(src)(clone_into(a, b) for a, b in zip(old, src, strict=True))
    return copy.deepcopy(src)


def rng_state() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), Python's and NumPy's global generators."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back the generator states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace`` it.

    A reader never sees a half-written file: it finds the old one or the new one.

    Example:
        >>> import tempfile, os.path
        >>> path = os.path.join(tempfile.mkdtemp(), "state.pt")
        >>> atomic_save({"a": 1}, path); torch.load(path)
        {'a': 1}
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def load_checkpoint(path: str, pairs: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
    """Read the checkpoint at ``path``; ``ValueError`` unless it is one of a run over ``pairs``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"checkpoint: expected a pyro-nf training checkpoint at {path!r}, "
            f"got a file that cannot be read as one ({e})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint: expected a pyro-nf training checkpoint ({FORMAT}) at "
            f"{path!r}, got {type(ckpt).__name__} without that format tag"
        )
    given = [(n, tuple(p.shape)) for n, p in pairs]
    saved = [(n, tuple(t.shape)) for n, t in ckpt["params"].items()]
    if given != saved:
        diff = [f"{n}: {s}" for n, s in given if (n, s) not in saved]
        extra = [f"{n}: {s}" for n, s in saved if (n, s) not in given]
        raise ValueError(
            f"checkpoint: expected parameters matching `params` (name: shape) in "
            f"{path!r}, got a mismatch: given but not saved {diff}, saved but not "
            f"given {extra}"
        )
    return ckpt


@dataclass
class RunState:
    """What a run carries from step to step besides parameters and optimizer (checkpointed).

    ``step`` is the step the run (re)starts at, ``failures`` / ``good_streak`` the NaN guard's
    counts, ``best_val`` / ``best_params`` the lowest validation loss and its parameters.

    Example:
        >>> RunState(History(), Plateau(0.05), Plateau(1.0)).best_val
        inf
    """

    history: History
    tracker: Plateau
    val_tracker: Plateau
    step: int = 0
    failures: int = 0
    good_streak: int = 0
    best_val: float = math.inf
    best_params: list[torch.Tensor] | None = field(default=None, repr=False)

    def to_checkpoint(
        self,
        next_step: int,
        pairs: list[tuple[str, torch.Tensor]],
        opt: torch.optim.Optimizer,
        sched: Any,
    ) -> dict[str, Any]:
        """The checkpoint of the run about to take step ``next_step`` (for :func:`atomic_save`)."""
        return {
            "format": FORMAT,
            "step": next_step,
            "failures": self.failures,
            "good_streak": self.good_streak,
            "best_val": self.best_val,
            "params": {n: p.detach() for n, p in pairs},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "history": asdict(self.history),
            "tracker": asdict(self.tracker),
            "val_tracker": asdict(self.val_tracker),
            "best_params": self.best_params,
            "rng": rng_state(),
        }

    def resume(
        self,
        path: str,
        pairs: list[tuple[str, torch.Tensor]],
        opt: torch.optim.Optimizer,
        sched: Any,
    ) -> None:
        """Load the checkpoint at ``path`` into this state, the parameters, optimizer, schedule
        and the global random generators."""
        ckpt = load_checkpoint(path, pairs)
        with torch.no_grad():
            for name, p in pairs:
                p.copy_(ckpt["params"][name])
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None and ckpt["scheduler"] is not None:
            sched.load_state_dict(ckpt["scheduler"])
        self.tracker.load(ckpt["tracker"])
        self.val_tracker.load(ckpt["val_tracker"])
        self.history, self.step, self.failures = (
            History(**ckpt["history"]),
            ckpt["step"],
            ckpt["failures"],
        )
        self.good_streak = ckpt.get("good_streak", 0)
        self.best_val, self.best_params = ckpt["best_val"], ckpt["best_params"]
        if self.best_params is not None:
            self.best_params = [
                b.to(p.device, p.dtype) for b, (_, p) in zip(self.best_params, pairs, strict=True)
            ]
        set_rng_state(ckpt["rng"])
