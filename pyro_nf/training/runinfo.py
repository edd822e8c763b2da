"""What :func:`~pyro_nf.training.train` knows about its run: the checks of its checkpoint
arguments, the run's fingerprint (recorded in checkpoints and compared on resume) and the
deferral of Ctrl-C to the end of a step."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from ..utils.hashing import data_sha256

__all__ = ["SigintFlag", "check_checkpoint_args", "defer_sigint", "run_fingerprint"]


def check_checkpoint_args(checkpoint: Any, resume: Any, fingerprint: Any) -> str | None:
    """Check ``train``'s ``checkpoint``, ``resume`` and ``fingerprint``; return the path.

    Example:
        >>> check_checkpoint_args(123, True, None)
        Traceback (most recent call last):
        ...
        TypeError: checkpoint: expected None or a file path (str or os.PathLike), got int 123
    """
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(
            "checkpoint: expected None or a file path (str or os.PathLike), got "
            f"{type(checkpoint).__name__} {checkpoint!r}"
        )
    path = None if checkpoint is None else os.fspath(checkpoint)
    if path is not None and (path == "" or os.path.isdir(path)):
        raise ValueError(f"checkpoint: expected a file path, got {path!r} (a directory or empty)")
    if not (resume is True or resume is False or resume == "force"):
        raise ValueError(f"resume: expected True, False or 'force', got {resume!r}")
    if fingerprint is not None:
        if not isinstance(fingerprint, Mapping):
            raise TypeError(
                f"fingerprint: expected None or a mapping of plain data, got "
                f"{type(fingerprint).__name__}"
            )
        if "train" in fingerprint:
            raise ValueError("fingerprint: expected keys other than 'train' (the loop's own)")
        try:
            data_sha256(dict(fingerprint))
        except TypeError as e:
            raise TypeError(f"fingerprint: {str(e).removeprefix('value: ')}") from None
    return path


def _plain(value: Any) -> Any:
    """``value`` as plain data (tuples as lists, tensors as lists, anything else by name)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return getattr(value, "__qualname__", type(value).__name__)


def _tensor_table(named: list[tuple[str, torch.Tensor]]) -> list[list[Any]]:
    return [[n, list(t.shape), str(t.dtype).removeprefix("torch.")] for n, t in named]


def run_fingerprint(
    fingerprint: Mapping[str, Any] | None,
    pairs: list[tuple[str, torch.Tensor]],
    buffers: Mapping[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The caller's ``fingerprint`` plus, under ``"train"``, what the loop knows: names, shapes
    and dtypes of the trained tensors and buffers, the optimizer's name and hyperparameters
    (its first parameter group, without the current ``lr``), and ``settings`` (lr, schedule,
    clipping).

    Example:
        >>> w = torch.zeros(2, requires_grad=True)
        >>> fp = run_fingerprint({"data": "abc"}, [("w", w)], {}, torch.optim.SGD([w], lr=0.1),
        ...                      {"lr": 0.1})
        >>> fp["data"], fp["train"]["params"], fp["train"]["optimizer"]["name"]
        ('abc', [['w', [2], 'float32']], 'SGD')
    """
    group = {
        k: v for k, v in opt.param_groups[0].items() if k not in ("params", "lr", "initial_lr")
    }
    return {
        **dict(fingerprint or {}),
        "train": {
            "params": _tensor_table(pairs),
            "buffers": _tensor_table(list(buffers.items())),
            "optimizer": {"name": type(opt).__name__, "settings": _plain(group)},
            "settings": _plain(dict(settings)),
        },
    }


class SigintFlag:
    """Set when Ctrl-C (SIGINT) arrived during :func:`defer_sigint`."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def defer_sigint(enabled: bool = True, announce: bool = True) -> Iterator[SigintFlag]:
    """Within the block, the first Ctrl-C only sets ``flag.requested`` (the loop then stops at
    the end of the step, consistently); a second one raises ``KeyboardInterrupt`` at once.

    Only in the main thread and when SIGINT has Python's default handler; otherwise the flag
    is never set and Ctrl-C raises as usual.

    Example:
        >>> with defer_sigint() as flag:
        ...     flag.requested
        False
    """
    flag = SigintFlag()
    if (
        not enabled
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        if announce:
            print(
                "train: interrupt requested; stopping after this step (Ctrl-C again to stop now)",
                file=sys.stderr,
            )

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
