"""Pyro integration: flow guides (:class:`FlowGuide`, :class:`AmortizedFlowGuide`), their
Laplace start, and :func:`fit` (SVI through the one training loop).
"""

from .guides import AmortizedFlowGuide, FlowGuide
from .laplace import LaplaceFallbackWarning, laplace_approximation
from .svi import ConvergenceWarning, RenyiBound, fit, make_elbo

__all__ = [
    "AmortizedFlowGuide",
    "ConvergenceWarning",
    "FlowGuide",
    "LaplaceFallbackWarning",
    "RenyiBound",
    "fit",
    "laplace_approximation",
    "make_elbo",
]
