"""Content hashes of tensors and plain data: integrity records and run fingerprints.

A hash covers a tensor's dtype, shape and bytes (on the CPU, contiguous), so two tensors hash
alike iff they are equal element for element, bit for bit, in the same dtype and shape. Plain
data (``None``, bools, numbers, strings, lists and dicts of them) hashes through its canonical
JSON form, with sorted keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["data_sha256", "tensor_sha256", "tensors_sha256"]


def _update_with_tensor(digest: Any, tensor: torch.Tensor) -> None:
    flat = tensor.detach().to("cpu").contiguous()
    digest.update(f"{flat.dtype}|{tuple(flat.shape)}|".encode())
    if flat.numel():
        digest.update(flat.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_sha256(tensor: torch.Tensor) -> str:
    """The SHA-256 (hex) of ``tensor``'s dtype, shape and bytes.

    Example:
        >>> a = torch.arange(3.0)
        >>> tensor_sha256(a) == tensor_sha256(a.clone()), tensor_sha256(a) == tensor_sha256(a.double())
        (True, False)
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor: expected a torch.Tensor, got {type(tensor).__name__}")
    digest = hashlib.sha256()
    _update_with_tensor(digest, tensor)
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{name: tensor_sha256(tensor)}`` for every tensor of a ``state_dict``-like mapping.

    Example:
        >>> sorted(tensors_sha256(torch.nn.Linear(2, 1).state_dict()))
        ['bias', 'weight']
    """
    return {name: tensor_sha256(t) for name, t in tensors.items() if isinstance(t, torch.Tensor)}


def data_sha256(value: Any) -> str:
    """The SHA-256 (hex) of plain data or of a tensor (see the module docstring).

    Example:
        >>> data_sha256({"b": 1, "a": [1, 2]}) == data_sha256({"a": [1, 2], "b": 1})
        True
        >>> len(data_sha256(torch.zeros(2, 2)))
        64
    """
    if isinstance(value, torch.Tensor):
        return tensor_sha256(value)
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=True, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"value: expected plain data (None, bool, int, float, str, lists and dicts of them) "
            f"or a tensor, got {type(value).__name__} ({err})"
        ) from None
    return hashlib.sha256(text.encode()).hexdigest()
