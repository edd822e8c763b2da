"""Bijections with both directions and both log-determinants (see :mod:`.base`)."""

from .affine import DiagonalAffineTransform, LowerTriangularAffineTransform, inverse_softplus
from .autoregressive import AutoregressiveTransform
from .base import FLOAT32_SAFE_MAGNITUDE, ChainTransform, FlowTransform, InverseFlowTransform
from .coupling import CouplingTransform
from .permute import Permute, Reverse
from .planar import PlanarInverseError, PlanarTransform, planar_constraint
from .radial import RadialTransform
from .spline import (
    SplineAutoregressiveTransform,
    SplineCouplingTransform,
    rational_quadratic_spline,
    spline_parameters,
)

__all__ = [
    "FLOAT32_SAFE_MAGNITUDE",
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
    "SplineAutoregressiveTransform",
    "SplineCouplingTransform",
    "inverse_softplus",
    "planar_constraint",
    "rational_quadratic_spline",
    "spline_parameters",
]
