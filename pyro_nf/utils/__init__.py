"""The bottom layer: argument checks (:mod:`.validation`), the networks flows use (:mod:`.nn`),
hashes (:mod:`.hashing`) and warnings attributed to the user's line (:mod:`.warn`).

Nothing here imports any other part of pyro-nf.
"""

from .hashing import data_sha256, tensor_sha256, tensors_sha256
from .nn import MADE, MLP, MaskedLinear, default_hidden
from .validation import check_context, check_event, check_finite, check_positive_int

__all__ = [
    "MADE",
    "MLP",
    "MaskedLinear",
    "check_context",
    "check_event",
    "check_finite",
    "check_positive_int",
    "data_sha256",
    "default_hidden",
    "tensor_sha256",
    "tensors_sha256",
]
