"""Pyro integration: flow guides (:class:`FlowGuide`, :class:`AmortizedFlowGuide`), their
Laplace start, :func:`fit` (SVI through the one training loop) and :func:`refine` (NUTS in the
fitted flow's base space, NeuTra, for draws that no longer depend on the guide being right).
"""

from .guides import AmortizedFlowGuide, FlowGuide
from .laplace import LaplaceFallbackWarning, laplace_approximation
from .refine import RefinementWarning, refine
from .reparam import LearnableCentering, auto_reparam
from .svi import ConvergenceWarning, RenyiBound, fit, make_elbo

__all__ = [
    "AmortizedFlowGuide",
    "ConvergenceWarning",
    "FlowGuide",
    "LaplaceFallbackWarning",
    "LearnableCentering",
    "RefinementWarning",
    "RenyiBound",
    "auto_reparam",
    "fit",
    "laplace_approximation",
    "make_elbo",
    "refine",
]
