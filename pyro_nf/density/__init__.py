"""Fitting flows directly: maximum likelihood on data (:class:`DensityEstimator`,
:func:`fit_density`), reverse KL to an unnormalized log-density (:func:`fit_reverse_kl`), with
populations of starts, and the 2D targets they are measured on.
"""

from . import reverse_kl, targets
from .estimator import (
    DensityEstimator,
    build_flow,
    density_grid_2d,
    fit_density,
    flow_spec,
    register_builder,
    train_val_split,
)
from .reverse_kl import fit_reverse_kl, kl_estimate

__all__ = [
    "DensityEstimator",
    "build_flow",
    "density_grid_2d",
    "fit_density",
    "fit_reverse_kl",
    "flow_spec",
    "kl_estimate",
    "register_builder",
    "reverse_kl",
    "targets",
    "train_val_split",
]
