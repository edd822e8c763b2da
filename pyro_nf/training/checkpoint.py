"""Checkpoints of :func:`~pyro_nf.training.train`: the run state, its (de)serialization in the
``"pyro_nf.train/1"`` format, atomic writes and the global random-generator states."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import random
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .history import History
from .integrity import (
    INTEGRITY_KEY,
    check_finite_tensors,
    check_integrity,
    describe_difference,
    first_difference,
    integrity_record,
    read_payload,
)
from .stopping import Plateau

__all__ = [
    "FORMAT",
    "CheckpointWriteError",
    "RunState",
    "atomic_save",
    "check_fingerprint",
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


class CheckpointWriteError(OSError):
    """A file could not be written (disk full, no permission ...); the previous file is intact.

    The message names the argument and the path; ``errno`` is the underlying error's.

    Example:
        >>> issubclass(CheckpointWriteError, OSError)
        True
    """


def _remove_stale_tmp(directory: str, base: str) -> None:
    """Remove ``<base>.<pid>.*.tmp`` files left by killed writers (whose process is gone)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(base + ".") and name.endswith(".tmp")):
            continue
        pid = name[len(base) + 1 :].split(".", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or _alive(int(pid))):
            continue
        with contextlib.suppress(OSError):
            os.remove(os.path.join(directory, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _write_bytes(data: memoryview, path: str, directory: str) -> None:
    """Write ``data`` to a temporary file in ``directory``, fsync it, ``os.replace`` it to
    ``path`` (and fsync the directory); the temporary file is removed on any failure."""
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{base}.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_save(obj: Any, path: str | os.PathLike, argname: str = "checkpoint") -> None:
    """``torch.save`` ``obj`` to ``path`` atomically: serialize, write a temporary file next to
    ``path``, fsync, then ``os.replace``.

    A reader never sees a half-written file: it finds the old one or the new one. A failed
    write (disk full, read-only directory) raises :class:`CheckpointWriteError` naming
    ``argname`` and ``path`` and leaves the previous file intact; temporary files of writers
    that were killed are removed by the next save.

    Example:
        >>> import tempfile, os.path
        >>> path = os.path.join(tempfile.mkdtemp(), "state.pt")
        >>> atomic_save({"a": 1}, path); torch.load(path)
        {'a': 1}
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    previous = os.path.exists(path)
    try:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        os.makedirs(directory, exist_ok=True)
        _remove_stale_tmp(directory, os.path.basename(path))
        _write_bytes(buffer.getbuffer(), path, directory)
    except OSError as e:
        kept = "the previous file is intact" if previous else "no file was written"
        reason = e.strerror or str(e) or type(e).__name__
        raise CheckpointWriteError(
            e.errno, f"{argname}: could not write {path}: {reason}; {kept}"
        ) from e


def load_checkpoint(path: str, pairs: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
    """Read the checkpoint at ``path``; ``ValueError`` unless it is an intact checkpoint of a run
    over ``pairs`` with finite parameters."""
    ckpt = read_payload(path, "checkpoint", "a pyro-nf training checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint: expected a pyro-nf training checkpoint ({FORMAT}) at "
            f"{path!r}, got {type(ckpt).__name__} without that format tag"
        )
    check_integrity(ckpt, path, "checkpoint")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing or not isinstance(ckpt["params"], dict):
        raise ValueError(
            f"checkpoint: {path} is not a complete training checkpoint: missing or bad fields "
            f"{missing or ['params']}"
        )
    check_finite_tensors(ckpt["params"], path, "checkpoint")
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


_REQUIRED = ("step", "failures", "best_val", "params", "optimizer", "scheduler", "history",
             "tracker", "val_tracker", "best_params", "rng")  # fmt: skip


def check_fingerprint(
    ckpt: dict[str, Any], path: str, fingerprint: dict[str, Any], resume: bool | str
) -> bool:
    """Compare the run's ``fingerprint`` with the checkpoint's: ``ValueError`` if they differ
    (unless ``resume == "force"``: warn); return whether they agree. A checkpoint without a
    fingerprint (written before fingerprints existed) agrees with every run."""
    saved = ckpt.get("fingerprint")
    diff = None if saved is None else first_difference(saved, fingerprint)
    if diff is None:
        return True
    text = f"checkpoint: {path} belongs to another run: {describe_difference(diff)}"
    if resume != "force":
        raise ValueError(
            f"{text}; pass resume='force' to continue it anyway, or resume=False to start over"
        )
    warnings.warn(f"{text}; continuing it anyway (resume='force')", UserWarning, stacklevel=5)
    return False


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
        buffers: dict[str, torch.Tensor] | None = None,
        fingerprint: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The checkpoint of the run about to take step ``next_step`` (for :func:`atomic_save`),
        with the module's ``buffers``, the run's ``fingerprint`` and an integrity record."""
        ckpt = {
            "format": FORMAT,
            "step": next_step,
            "failures": self.failures,
            "good_streak": self.good_streak,
            "best_val": self.best_val,
            "params": {n: p.detach() for n, p in pairs},
            "buffers": {n: b.detach() for n, b in (buffers or {}).items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "history": asdict(self.history),
            "tracker": asdict(self.tracker),
            "val_tracker": asdict(self.val_tracker),
            "best_params": self.best_params,
            "rng": rng_state(),
            "fingerprint": fingerprint,
        }
        ckpt[INTEGRITY_KEY] = integrity_record(ckpt)
        return ckpt

    def resume(
        self,
        path: str,
        pairs: list[tuple[str, torch.Tensor]],
        opt: torch.optim.Optimizer,
        sched: Any,
        buffers: dict[str, torch.Tensor] | None = None,
        fingerprint: dict[str, Any] | None = None,
        mode: bool | str = True,
    ) -> None:
        """Load the checkpoint at ``path`` into this state, the parameters, buffers, optimizer,
        schedule and the global random generators (``mode``: ``train``'s ``resume``)."""
        ckpt = load_checkpoint(path, pairs)
        same_run = check_fingerprint(ckpt, path, fingerprint or {}, mode)
        with torch.no_grad():
            for name, p in pairs:
                p.copy_(ckpt["params"][name])
            _load_buffers(ckpt.get("buffers") or {}, buffers or {}, path)
        _load_optimizer(ckpt, opt, sched, path, strict=same_run)
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


def _load_buffers(saved: dict[str, Any], buffers: dict[str, torch.Tensor], path: str) -> None:
    """Copy the saved buffers into the module's (same names and shapes), else ``ValueError``."""
    for name, buf in buffers.items():
        if name not in saved:
            continue  # a checkpoint written before buffers were saved
        if tuple(saved[name].shape) != tuple(buf.shape):
            raise ValueError(
                f"checkpoint: expected buffer {name!r} of shape {tuple(buf.shape)} in {path}, "
                f"got shape {tuple(saved[name].shape)}"
            )
        buf.copy_(saved[name])


def _load_optimizer(
    ckpt: dict[str, Any], opt: torch.optim.Optimizer, sched: Any, path: str, strict: bool
) -> None:
    """Load the optimizer and schedule state; with ``strict=False`` (a forced resume of another
    run) a state that does not fit starts fresh, with a warning."""
    try:
        saved_keys = [sorted(g) for g in ckpt["optimizer"]["param_groups"]]
        if saved_keys != [sorted(g) for g in opt.param_groups]:
            raise KeyError(
                f"its settings {saved_keys[0] if saved_keys else []} are not this optimizer's "
                f"({type(opt).__name__})"
            )
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None and ckpt["scheduler"] is not None:
            sched.load_state_dict(ckpt["scheduler"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        if strict:
            raise ValueError(
                f"checkpoint: the optimizer state in {path} does not fit this run's optimizer "
                f"({type(e).__name__}: {e}); pass resume=False to start over"
            ) from e
        warnings.warn(
            f"checkpoint: the optimizer state in {path} does not fit this run's optimizer "
            f"({type(e).__name__}: {e}); the optimizer starts fresh",
            UserWarning,
            stacklevel=5,
        )
