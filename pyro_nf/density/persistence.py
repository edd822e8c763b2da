"""The file format of :meth:`DensityEstimator.save <pyro_nf.density.DensityEstimator.save>` and
the checks of :meth:`~pyro_nf.density.DensityEstimator.load`.

A file is a ``torch.save``'d dict (loadable with ``weights_only=True``) with the keys
``format`` (:data:`FORMAT`), ``spec`` (the flow's builder spec, see
:func:`~pyro_nf.flows.registry.flow_spec`, or ``None`` for a hand-built flow), ``dim``,
``context_dim``, ``dtype`` (a name in :data:`DTYPES`), ``standardize``, ``state_dict`` and
``history`` (the last fit's :class:`~pyro_nf.History` as a dict, or ``None``) and
``integrity`` (the SHA-256 of every tensor and of the rest, see
:mod:`pyro_nf.training.integrity`).

Loading refuses, with a ``ValueError`` naming the file: a file that cannot be read, a damaged or
edited one (its integrity record does not match), missing or ill-typed fields, non-finite
parameters, and a spec whose sizes the saved parameters cannot back (so a hand-edited file
cannot make the loader allocate a huge flow). Files written before integrity records existed
load unchecked (legacy).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from ..flows.flow import Flow
from ..flows.registry import build_flow, flow_spec
from ..training.integrity import (
    INTEGRITY_KEY,
    check_finite_tensors,
    check_integrity,
    integrity_record,
)
from ..training.loop import History, atomic_save

__all__ = [
    "DTYPES",
    "FORMAT",
    "check_spec_sizes",
    "estimator_payload",
    "load_payload_into",
    "read_estimator_file",
    "resolve_flow",
    "write_estimator_file",
]

#: The format tag of an estimator file.
FORMAT = "pyro_nf.density/1"
#: The dtypes a file may name.
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def estimator_payload(est: nn.Module) -> dict[str, Any]:
    """The dict :meth:`DensityEstimator.save` writes for the estimator ``est``."""
    history = getattr(est, "history", None)
    payload = {
        "format": FORMAT,
        "spec": flow_spec(est.flow),
        "dim": est.dim,
        "context_dim": est.context_dim,
        "dtype": str(est.loc.dtype).removeprefix("torch."),
        "standardize": est.standardize,
        "feature_names": getattr(est, "feature_names", None),
        "state_dict": {k: v.detach() for k, v in est.state_dict().items()},
        "history": asdict(history) if history is not None else None,
    }
    payload[INTEGRITY_KEY] = integrity_record(payload)
    return payload


def write_estimator_file(est: nn.Module, path: str | os.PathLike) -> None:
    """Write :func:`estimator_payload` to ``path`` atomically (temporary file, ``os.replace``);
    ``ValueError`` if a parameter is NaN/inf (such a file could never be loaded)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path (str or os.PathLike), got {path!r}")
    for name, t in est.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"path: refusing to save to {os.fspath(path)}: the estimator's tensor {name!r} "
                "has NaN/inf values (the fit diverged; refit it)"
            )
    atomic_save(estimator_payload(est), os.fspath(path), argname="path")


def read_estimator_file(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read an estimator file, raising ``ValueError`` (naming ``path``) if it is not an intact
    one with finite parameters and a plausible spec."""
    try:
        blob = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(
            f"path: expected a file written by DensityEstimator.save, got "
            f"{os.fspath(path)!r} which cannot be read as one ({e})"
        ) from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(
            f"path: expected a DensityEstimator file ({FORMAT}), got "
            f"{os.fspath(path)!r} without that format tag"
        )
    where = os.fspath(path)
    check_integrity(blob, where, "path", strip="state_dict.")
    _check_fields(blob, where)
    check_finite_tensors(blob["state_dict"], where, "path")
    check_spec_sizes(blob, where)
    return blob


def _bad_field(path: str, field: str, expected: str, got: Any) -> ValueError:
    return ValueError(
        f"path: {path} has a bad field {field!r}: expected {expected}, got {got!r} (the file is "
        "damaged or was edited)"
    )


def _check_fields(blob: dict[str, Any], path: str) -> None:
    """``ValueError`` naming the file and the field unless every field has its type."""
    for field in ("spec", "dim", "context_dim", "dtype", "standardize", "state_dict"):
        if field not in blob:
            raise _bad_field(path, field, "a value", "<missing>")
    dim, h = blob["dim"], blob["context_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise _bad_field(path, "dim", "a positive int", dim)
    if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
        raise _bad_field(path, "context_dim", "None or a positive int", h)
    if blob["dtype"] not in DTYPES:
        raise _bad_field(path, "dtype", f"one of {sorted(DTYPES)}", blob["dtype"])
    if not isinstance(blob["standardize"], bool):
        raise _bad_field(path, "standardize", "a bool", blob["standardize"])
    sd = blob["state_dict"]
    if (
        not isinstance(sd, dict)
        or not sd
        or not all(isinstance(t, torch.Tensor) for t in sd.values())
    ):
        raise _bad_field(path, "state_dict", "a non-empty dict of tensors", type(sd).__name__)
    spec = blob["spec"]
    if spec is not None and not (
        isinstance(spec, dict) and isinstance(spec.get("name"), str)
        and isinstance(spec.get("kwargs"), dict)
    ):  # fmt: skip
        raise _bad_field(path, "spec", "None or {'name': str, 'kwargs': dict}", spec)
    names = blob.get("feature_names")
    if names is not None and not (
        isinstance(names, (list, tuple)) and len(names) == dim
        and all(isinstance(n, str) for n in names)
    ):  # fmt: skip
        raise _bad_field(path, "feature_names", f"None or {dim} column names", names)
    if blob.get("history") is not None and not isinstance(blob["history"], dict):
        raise _bad_field(path, "history", "None or a dict", type(blob["history"]).__name__)


def _spec_ints(value: Any, where: str) -> list[tuple[str, int]]:
    """Every int of a spec's kwargs, with its dotted field name."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [(where, value)]
    items = (
        value.items() if isinstance(value, dict)
        else enumerate(value) if isinstance(value, (list, tuple)) else ()
    )  # fmt: skip
    return [pair for k, v in items for pair in _spec_ints(v, f"{where}.{k}")]


def _layer_sizes(kwargs: dict[str, Any]) -> int:
    """A lower bound on the parameters one layer of a flow with these kwargs holds: half the
    dimension, or the largest product of neighbouring sizes of its networks."""
    dim = kwargs.get("dim") if isinstance(kwargs.get("dim"), int) else 1
    size = max(1, dim // 2)
    for key, first in (("hidden", max(1, dim // 2)), ("context_hidden", kwargs.get("context_dim"))):
        sizes = kwargs.get(key)
        if isinstance(sizes, list) and all(isinstance(v, int) for v in sizes):
            chain = ([first] if isinstance(first, int) else []) + sizes
            size = max([size] + [a * b for a, b in zip(chain, chain[1:], strict=False)])
    return size


def _kwargs_of(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The kwargs of a spec and of the parts of a stack, with their field names."""
    kwargs = spec.get("kwargs") if isinstance(spec, dict) else None
    if not isinstance(kwargs, dict):
        return []
    out = [("spec.kwargs", kwargs)]
    for i, part in enumerate(kwargs.get("parts") or [] if spec.get("name") == "stack" else []):
        out += [(f"spec.kwargs.parts.{i}{f[4:]}", k) for f, k in _kwargs_of(part)]
    return out


def check_spec_sizes(blob: dict[str, Any], path: str) -> None:
    """Refuse a spec whose sizes the saved parameters cannot back, before anything is built.

    Every int of the spec (``dim``, ``depth``, ``hidden`` ...) is at most the number of saved
    numbers ``n``; ``dim``/``context_dim`` agree with the file's; and ``depth`` times a lower
    bound of one layer's size (:func:`_layer_sizes`) is at most ``n``.

    Example:
        >>> sd = {"w": torch.zeros(10)}
        >>> blob = {"spec": {"name": "maf", "kwargs": {"dim": 2, "hidden": [2000000000]}},
        ...         "dim": 2, "context_dim": None, "state_dict": sd}
        >>> check_spec_sizes(blob, "f.pt")
        Traceback (most recent call last):
        ...
        ValueError: path: f.pt has an implausible spec: spec.kwargs.hidden.0 = 2000000000 is more than the 10 numbers the file holds (the file is damaged or was edited)
    """
    spec = blob["spec"]
    if spec is None:
        return
    n = sum(t.numel() for t in blob["state_dict"].values())

    def refuse(what: str) -> ValueError:
        return ValueError(
            f"path: {path} has an implausible spec: {what} (the file is damaged or was edited)"
        )

    for field, value in _spec_ints(spec.get("kwargs"), "spec.kwargs"):
        if not 0 <= value <= n:
            raise refuse(f"{field} = {value} is more than the {n} numbers the file holds"
                         if value > n else f"{field} = {value} is negative")  # fmt: skip
    for field, kwargs in _kwargs_of(spec):
        for key in ("dim", "context_dim"):
            if key in kwargs and kwargs[key] != blob[key]:
                raise refuse(f"{field}.{key} = {kwargs[key]!r} but the file's {key} is "
                             f"{blob[key]!r}")  # fmt: skip
        depth = kwargs.get("depth", 1)
        if isinstance(depth, int) and depth * _layer_sizes(kwargs) > n:
            raise refuse(
                f"{field}.depth = {depth} layers of at least {_layer_sizes(kwargs)} numbers each "
                f"are more than the {n} numbers the file holds"
            )


def resolve_flow(blob: dict[str, Any], flow: Flow | None, path: str = "the file") -> Flow:
    """The flow to load into: ``flow`` if given (checked against the file), else the file's
    spec rebuilt by :func:`~pyro_nf.flows.registry.build_flow` (a spec it refuses gives a
    ``ValueError`` naming ``path``)."""
    if flow is None:
        if blob["spec"] is None:
            raise ValueError(
                "flow: this file holds no flow spec (the flow was built by hand, not by "
                "build_flow or a builder name); expected a freshly built Flow of the saved "
                f"architecture (dim={blob['dim']}, context_dim={blob['context_dim']}), got None"
            )
        try:
            flow = build_flow(blob["spec"])
        except (TypeError, KeyError, ValueError, IndexError, StopIteration, RuntimeError) as e:
            raise ValueError(
                f"path: {path} has a spec that cannot be built: {blob['spec']!r} "
                f"({type(e).__name__}: {e}); the file is damaged or was edited"
            ) from e
    elif not isinstance(flow, Flow):
        raise ValueError(f"flow: expected a Flow or None, got {type(flow).__name__}")
    if (flow.dim, flow.context_dim) != (blob["dim"], blob["context_dim"]):
        raise ValueError(
            f"flow: expected dim={blob['dim']}, context_dim={blob['context_dim']} as saved, "
            f"got dim={flow.dim}, context_dim={flow.context_dim}"
        )
    return flow


def load_payload_into(est: nn.Module, blob: dict[str, Any]) -> None:
    """Move ``est`` to the saved dtype and device, load its parameters and its history."""
    dtype = DTYPES[blob["dtype"]]
    ref = next(iter(blob["state_dict"].values()))
    est.to(device=ref.device, dtype=dtype)
    try:
        est.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise ValueError(
            f"flow: expected a flow whose parameters match the saved ones, got a mismatch ({e})"
        ) from e
    if blob.get("history") is not None:
        try:
            est.history = History(**blob["history"])
        except TypeError as e:
            raise ValueError(f"path: the file's field 'history' is not a History ({e})") from e
