"""Integrity records and run fingerprints of saved files (checkpoints and estimator files).

An **integrity record** is the SHA-256 (:mod:`pyro_nf.utils.hashing`) of every tensor of a saved
payload, by its dotted path (``params.w``, ``optimizer.state.0.exp_avg``), and one SHA-256 of
everything else (settings, spec, history), with each tensor replaced by a placeholder. Loading
recomputes both and refuses a file whose bytes changed (:func:`check_integrity`); a file without
a record (written before records existed) is *legacy* and loads unchecked.

A **fingerprint** is plain data describing a run (its data hash, spec, optimizer ...);
:func:`first_difference` names the first field in which two fingerprints differ.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import torch

from ..utils.hashing import data_sha256, tensor_sha256

__all__ = [
    "INTEGRITY_KEY",
    "check_finite_tensors",
    "check_integrity",
    "describe_difference",
    "first_difference",
    "integrity_record",
    "read_payload",
    "split_tensors",
]

#: The key under which a payload keeps its integrity record.
INTEGRITY_KEY = "integrity"


def split_tensors(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """The tensors of nested dicts/lists/tuples by dotted path, and the rest with each tensor
    replaced by the string ``"<tensor>"``.

    Example:
        >>> tensors, rest = split_tensors({"a": torch.zeros(1), "b": [1, torch.ones(2)]})
        >>> sorted(tensors), rest
        (['a', 'b.1'], {'a': '<tensor>', 'b': [1, '<tensor>']})
    """
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}, "<tensor>"
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(obj, Mapping):
        rest: dict[str, Any] = {}
        for key, value in obj.items():
            sub, rest[str(key)] = split_tensors(value, f"{prefix}.{key}" if prefix else str(key))
            tensors.update(sub)
        return tensors, rest
    if isinstance(obj, (list, tuple)):
        items = []
        for i, value in enumerate(obj):
            sub, item = split_tensors(value, f"{prefix}.{i}" if prefix else str(i))
            tensors.update(sub)
            items.append(item)
        return tensors, items
    return tensors, obj


def _rest_sha256(rest: Any) -> str:
    """The hash of the non-tensor part (plain data; anything else by its ``repr``)."""
    try:
        return data_sha256(rest)
    except TypeError:
        return hashlib.sha256(repr(rest).encode()).hexdigest()


def integrity_record(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The integrity record of ``payload`` (its own ``integrity`` entry left out).

    Example:
        >>> record = integrity_record({"w": torch.zeros(2), "step": 3})
        >>> sorted(record), sorted(record["tensors"])
        (['data', 'tensors'], ['w'])
    """
    body = {k: v for k, v in payload.items() if k != INTEGRITY_KEY}
    tensors, rest = split_tensors(body)
    return {
        "tensors": {name: tensor_sha256(t) for name, t in tensors.items()},
        "data": _rest_sha256(rest),
    }


def read_payload(path: str, argname: str, what: str) -> Any:
    """``torch.load(path)`` with ``weights_only=True`` on the CPU; a file that cannot be read
    raises ``ValueError("<argname>: expected <what> at <path>, got a file that cannot be read as
    one (<reason>)")``.

    Example:
        >>> read_payload("/nonexistent.pt", "checkpoint", "a checkpoint")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: checkpoint: expected a checkpoint at '/nonexistent.pt', got a file that cannot be read as one (...)
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{argname}: expected {what} at {path!r}, got a file that cannot be read as one ({e})"
        ) from e


def _damaged(argname: str, path: str, what: str) -> ValueError:
    return ValueError(
        f"{argname}: {path} failed its integrity check: {what} (the file is damaged or was edited)"
    )


def check_integrity(payload: Mapping[str, Any], path: str, argname: str, strip: str = "") -> bool:
    """Refuse (``ValueError`` naming ``argname`` and ``path``) a payload whose tensors or data
    differ from its integrity record; return ``False`` for a legacy payload without one.

    Tensor names in messages drop the prefix ``strip`` (e.g. ``"state_dict."``).

    Example:
        >>> payload = {"w": torch.zeros(2)}
        >>> payload["integrity"] = integrity_record(payload)
        >>> check_integrity(payload, "f.pt", "path")
        True
        >>> payload["w"][0] = 1.0
        >>> check_integrity(payload, "f.pt", "path")
        Traceback (most recent call last):
        ...
        ValueError: path: f.pt failed its integrity check: tensor 'w' does not match its recorded hash (the file is damaged or was edited)
    """
    record = payload.get(INTEGRITY_KEY)
    if record is None:
        return False
    if not isinstance(record, Mapping) or not isinstance(record.get("tensors"), Mapping):
        raise _damaged(argname, path, "its integrity record is not readable")
    now = integrity_record(payload)
    for name in sorted(set(now["tensors"]) | set(record["tensors"])):
        if now["tensors"].get(name) != record["tensors"].get(name):
            shown = name.removeprefix(strip)
            what = (
                f"tensor {shown!r} does not match its recorded hash"
                if name in now["tensors"] and name in record["tensors"]
                else f"tensor {shown!r} is missing or was added"
            )
            raise _damaged(argname, path, what)
    if now["data"] != record.get("data"):
        raise _damaged(argname, path, "its settings (spec, shapes, history) do not match their "
                       "recorded hash")  # fmt: skip
    return True


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], path: str, argname: str) -> None:
    """``ValueError`` (naming ``argname``, ``path`` and the tensor) if a floating tensor holds
    NaN or inf.

    Example:
        >>> check_finite_tensors({"w": torch.tensor([1.0, float("nan")])}, "f.pt", "path")
        Traceback (most recent call last):
        ...
        ValueError: path: f.pt holds non-finite parameters: tensor 'w' has 1 NaN/inf value(s) of 2; refusing to use it (refit, or load an earlier file)
    """
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ValueError(
                    f"{argname}: {path} holds non-finite parameters: tensor {name!r} has {bad} "
                    f"NaN/inf value(s) of {t.numel()}; refusing to use it (refit, or load an "
                    "earlier file)"
                )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def first_difference(saved: Any, now: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first field (dotted path) in which two fingerprints differ, with both values, or
    ``None`` when they agree.

    Example:
        >>> first_difference({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 3]}})
        ('b.c', [1, 2], [1, 3])
        >>> first_difference({"a": 1}, {"a": 1}) is None
        True
    """
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        for key in sorted(set(saved) | set(now), key=str):
            field = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in now:
                return field, saved.get(key, "<absent>"), now.get(key, "<absent>")
            diff = first_difference(saved[key], now[key], field)
            if diff is not None:
                return diff
        return None
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)):
        if len(saved) == len(now) and all(_same(a, b) for a, b in zip(saved, now, strict=True)):
            return None
        if len(saved) == len(now) and all(isinstance(a, Mapping) for a in saved):
            for i, (a, b) in enumerate(zip(saved, now, strict=True)):
                diff = first_difference(a, b, f"{prefix}.{i}" if prefix else str(i))
                if diff is not None:
                    return diff
        return prefix or "<root>", saved, now
    return None if _same(saved, now) else (prefix or "<root>", saved, now)


def describe_difference(diff: tuple[str, Any, Any]) -> str:
    """``"<field> differs (saved ..., now ...)"`` for :func:`first_difference`'s result."""
    field, saved, now = diff
    return f"{field} differs (saved {_short(saved)}, now {_short(now)})"
