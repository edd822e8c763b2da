"""The file format of :meth:`DensityEstimator.save <pyro_nf.density.DensityEstimator.save>` and
the checks of :meth:`~pyro_nf.density.DensityEstimator.load`.

A file is a ``torch.save``'d dict (loadable with ``weights_only=True``) with the keys
``format`` (:data:`FORMAT`), ``spec`` (the flow's builder spec, see
:func:`~pyro_nf.flows.registry.flow_spec`, or ``None`` for a hand-built flow), ``dim``,
``context_dim``, ``dtype`` (a name in :data:`DTYPES`), ``standardize``, ``state_dict`` and
``history`` (the last fit's :class:`~pyro_nf.History` as a dict, or ``None``).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from ..flows.flow import Flow
from ..flows.registry import build_flow, flow_spec
from ..training.loop import History, atomic_save

__all__ = [
    "DTYPES",
    "FORMAT",
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
    return {
        "format": FORMAT,
        "spec": flow_spec(est.flow),
        "dim": est.dim,
        "context_dim": est.context_dim,
        "dtype": str(est.loc.dtype).removeprefix("torch."),
        "standardize": est.standardize,
        "state_dict": {k: v.detach() for k, v in est.state_dict().items()},
        "history": asdict(history) if history is not None else None,
    }


def write_estimator_file(est: nn.Module, path: str | os.PathLike) -> None:
    """Write :func:`estimator_payload` to ``path`` atomically (temporary file, ``os.replace``)."""
    atomic_save(estimator_payload(est), os.fspath(path))


def read_estimator_file(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read an estimator file, raising ``ValueError`` (naming ``path``) if it is not one."""
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
    return blob


def resolve_flow(blob: dict[str, Any], flow: Flow | None) -> Flow:
    """The flow to load into: ``flow`` if given (checked against the file), else the file's
    spec rebuilt by :func:`~pyro_nf.flows.registry.build_flow`."""
    if flow is None:
        if blob["spec"] is None:
            raise ValueError(
                "flow: this file holds no flow spec (the flow was built by hand, not by "
                "build_flow or a builder name); expected a freshly built Flow of the saved "
                f"architecture (dim={blob['dim']}, context_dim={blob['context_dim']}), got None"
            )
        flow = build_flow(blob["spec"])
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
        est.history = History(**blob["history"])
