"""Fitting flows directly: maximum likelihood on data (:class:`DensityEstimator`,
:func:`fit_density`), reverse KL to an unnormalized log-density (:func:`fit_reverse_kl`), with
populations of starts, and the 2D targets they are measured on.

Modules: :mod:`~pyro_nf.density.estimator` (the estimator), :mod:`~pyro_nf.density.data` (data
checks, the split, the shuffler), :mod:`~pyro_nf.density.persistence` (the file format),
:mod:`~pyro_nf.density.grid` (2-D density grids), :mod:`~pyro_nf.density.reverse_kl`,
:mod:`~pyro_nf.density.population`, :mod:`~pyro_nf.density.targets`.
"""

from . import data, grid, persistence, reverse_kl, targets
from .estimator import (
    DensityEstimator,
    build_flow,
    density_grid_2d,
    fit_density,
    flow_spec,
    register_builder,
    train_val_split,
)
from .grid import plot_limits
from .reverse_kl import fit_reverse_kl, kl_estimate

__all__ = [
    "DensityEstimator",
    "build_flow",
    "data",
    "density_grid_2d",
    "fit_density",
    "fit_reverse_kl",
    "flow_spec",
    "grid",
    "kl_estimate",
    "persistence",
    "plot_limits",
    "register_builder",
    "reverse_kl",
    "targets",
    "train_val_split",
]
