"""pyro-nf: normalizing flows as first-class variational posteriors for Pyro.

The core objects:

* :class:`Flow` — a stack of layers; ``flow(context)`` is a :class:`FlowDistribution`.
* builders :func:`planar`, :func:`radial`, :func:`iaf`, :func:`maf` and :func:`stack`.
* :mod:`pyro_nf.transforms` — the bijections, each with both directions and log-determinants.
"""

from . import transforms
from .distribution import FlowDistribution
from .flow import Flow, iaf, maf, nice, planar, radial, realnvp, stack
from .layers import (
    AutoregressiveLayer,
    CouplingLayer,
    DiagonalAffineLayer,
    FlowLayer,
    PermuteLayer,
    PlanarLayer,
    RadialLayer,
)

__version__ = "0.1.0"

__all__ = [
    "AutoregressiveLayer",
    "CouplingLayer",
    "DiagonalAffineLayer",
    "Flow",
    "FlowDistribution",
    "FlowLayer",
    "PermuteLayer",
    "PlanarLayer",
    "RadialLayer",
    "iaf",
    "maf",
    "nice",
    "planar",
    "radial",
    "realnvp",
    "stack",
    "transforms",
]
