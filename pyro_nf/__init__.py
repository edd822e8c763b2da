"""pyro-nf: normalizing flows as first-class variational posteriors for Pyro.

The core objects:

* :class:`Flow` — a stack of layers; ``flow(context)`` is a :class:`FlowDistribution`.
* builders :func:`planar`, :func:`radial`, :func:`iaf`, :func:`maf` and :func:`stack`.
* :mod:`pyro_nf.transforms` — the bijections, each with both directions and log-determinants.
"""

from . import datasets, density, plotting, psis, targets, transforms, vae
from .density import DensityEstimator, build_flow, fit_density
from .diagnostics import (
    diagnose_importance,
    log_evidence,
    log_importance_weights,
    psis_khat,
    to_inference_data,
)
from .distribution import FlowDistribution
from .flow import Flow, iaf, maf, nice, planar, radial, realnvp, stack
from .guides import AmortizedFlowGuide, FlowGuide
from .layers import (
    AutoregressiveLayer,
    CouplingLayer,
    DiagonalAffineLayer,
    FixedAffineLayer,
    FlowLayer,
    LowerTriangularAffineLayer,
    PermuteLayer,
    PlanarLayer,
    RadialLayer,
)
from .report import TrustReport, diagnose, reweighted_summary
from .svi import ConvergenceWarning, RenyiBound, fit, make_elbo
from .train import EarlyStopping, History, train

__version__ = "0.1.0"

__all__ = [
    "AmortizedFlowGuide",
    "DensityEstimator",
    "build_flow",
    "density",
    "fit_density",
    "plotting",
    "vae",
    "ConvergenceWarning",
    "RenyiBound",
    "TrustReport",
    "diagnose",
    "reweighted_summary",
    "EarlyStopping",
    "FlowGuide",
    "History",
    "datasets",
    "diagnose_importance",
    "fit",
    "log_evidence",
    "log_importance_weights",
    "make_elbo",
    "psis",
    "psis_khat",
    "targets",
    "to_inference_data",
    "train",
    "AutoregressiveLayer",
    "CouplingLayer",
    "DiagonalAffineLayer",
    "Flow",
    "FlowDistribution",
    "FixedAffineLayer",
    "FlowLayer",
    "LowerTriangularAffineLayer",
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
