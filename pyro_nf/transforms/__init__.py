"""Bijections with both directions and both log-determinants (see :mod:`.base`)."""

from .affine import DiagonalAffineTransform, LowerTriangularAffineTransform, inverse_softplus
from .autoregressive import AutoregressiveTransform
from .base import ChainTransform, FlowTransform, InverseFlowTransform
from .coupling import CouplingTransform
from .permute import Permute, Reverse
from .planar import PlanarInverseError, PlanarTransform, planar_constraint
from .radial import RadialTransform

__all__ = [
    "AutoregressiveTransform",
    "ChainTransform",
    "CouplingTransform",
    "DiagonalAffineTransform",
    "FlowTransform",
    "InverseFlowTransform",
    "LowerTriangularAffineTransform",
    "Permute",
    "PlanarInverseError",
    "PlanarTransform",
    "RadialTransform",
    "Reverse",
    "inverse_softplus",
    "planar_constraint",
]
