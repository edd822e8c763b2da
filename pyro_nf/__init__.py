"""pyro-nf: normalizing flows as first-class variational posteriors for Pyro.

The package reads bottom-up; each folder is one layer and imports only from the layers below it
(see ``docs/architecture.md``):

* :mod:`pyro_nf.utils` — argument checks and the networks (MLP, MADE);
* :mod:`pyro_nf.transforms` — the bijections, each with both directions and log-determinants;
* :mod:`pyro_nf.flows` — layers, :class:`Flow` (``flow(context)`` is a :class:`FlowDistribution`),
  the builders :func:`planar`, :func:`radial`, :func:`iaf`, :func:`maf`, :func:`nice`,
  :func:`realnvp`, :func:`spline_autoregressive`, :func:`spline_coupling`, :func:`stack`, and
  the one family registry;
* :mod:`pyro_nf.training` — the one loop, :func:`train`;
* :mod:`pyro_nf.diagnostics` — PSIS, importance weights, the trust report, NUTS references;
* :mod:`pyro_nf.infer` — :class:`FlowGuide` and :func:`fit` for any Pyro model, and
  :func:`refine` (NUTS in the flow's base space) for exact draws;
* :mod:`pyro_nf.density` — maximum likelihood and reverse-KL fits, 2D targets;
* :mod:`pyro_nf.vae` — VAEs with flow encoders;
* :mod:`pyro_nf.datasets`, :mod:`pyro_nf.plotting`, :mod:`pyro_nf.cli` — the edge.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

from . import (
    datasets,
    density,
    diagnostics,
    flows,
    infer,
    plotting,
    training,
    transforms,
    utils,
    vae,
)
from .density import DensityEstimator, build_flow, fit_density, fit_reverse_kl, reverse_kl, targets
from .diagnostics import (
    TrustReport,
    diagnose,
    diagnose_importance,
    log_evidence,
    log_importance_weights,
    psis,
    psis_khat,
    reweighted_summary,
    run_nuts,
    to_inference_data,
)
from .flows import (
    AutoregressiveLayer,
    CouplingLayer,
    DiagonalAffineLayer,
    FixedAffineLayer,
    Flow,
    FlowDistribution,
    FlowLayer,
    LowerTriangularAffineLayer,
    PermuteLayer,
    PlanarLayer,
    RadialLayer,
    SplineAutoregressiveLayer,
    SplineCouplingLayer,
    iaf,
    maf,
    nice,
    planar,
    radial,
    realnvp,
    spline_autoregressive,
    spline_coupling,
    stack,
)
from .infer import (
    AmortizedFlowGuide,
    ConvergenceWarning,
    FlowGuide,
    RefinementWarning,
    RenyiBound,
    fit,
    make_elbo,
    refine,
)
from .training import EarlyStopping, History, train

__version__ = "0.1.0"

#: Module paths of the flat layout before 0.2, and where each module lives now. ``import
#: pyro_nf.psis`` and ``from pyro_nf.guides import FlowGuide`` keep working through these
#: aliases. ``pyro_nf.train`` is the function :func:`train`; its module is :mod:`pyro_nf.training`.
MOVED_MODULES: dict[str, str] = {
    "pyro_nf._validation": "pyro_nf.utils.validation",
    "pyro_nf.distributed": "pyro_nf.vae.distributed",
    "pyro_nf.distribution": "pyro_nf.flows.distribution",
    "pyro_nf.flow": "pyro_nf.flows",
    "pyro_nf.guides": "pyro_nf.infer.guides",
    "pyro_nf.laplace": "pyro_nf.infer.laplace",
    "pyro_nf.layers": "pyro_nf.flows.layers",
    "pyro_nf.nn": "pyro_nf.utils.nn",
    "pyro_nf.population": "pyro_nf.density.population",
    "pyro_nf.psis": "pyro_nf.diagnostics.psis",
    "pyro_nf.reference": "pyro_nf.diagnostics.reference",
    "pyro_nf.report": "pyro_nf.diagnostics.report",
    "pyro_nf.reverse_kl": "pyro_nf.density.reverse_kl",
    "pyro_nf.svi": "pyro_nf.infer.svi",
    "pyro_nf.targets": "pyro_nf.density.targets",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path (``MOVED_MODULES``) as the module that now lives elsewhere.

    Lazy: nothing is imported until the old path is, so ``python -m pyro_nf.vae.distributed``
    and the import time of ``pyro_nf`` are unaffected.
    """

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec):
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module: object) -> None:
        pass


sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str):
    """``pyro_nf.guides`` and the other old module names, as attributes (see ``MOVED_MODULES``)."""
    moved = MOVED_MODULES.get(f"pyro_nf.{name}")
    if moved is None:
        raise AttributeError(f"module 'pyro_nf' has no attribute {name!r}")
    return importlib.import_module(moved)


__all__ = [
    "AmortizedFlowGuide",
    "AutoregressiveLayer",
    "ConvergenceWarning",
    "CouplingLayer",
    "DensityEstimator",
    "DiagonalAffineLayer",
    "EarlyStopping",
    "FixedAffineLayer",
    "Flow",
    "FlowDistribution",
    "FlowGuide",
    "FlowLayer",
    "History",
    "LowerTriangularAffineLayer",
    "PermuteLayer",
    "PlanarLayer",
    "RadialLayer",
    "RefinementWarning",
    "RenyiBound",
    "SplineAutoregressiveLayer",
    "SplineCouplingLayer",
    "TrustReport",
    "build_flow",
    "datasets",
    "density",
    "diagnose",
    "diagnose_importance",
    "diagnostics",
    "fit",
    "fit_density",
    "fit_reverse_kl",
    "flows",
    "iaf",
    "infer",
    "log_evidence",
    "log_importance_weights",
    "maf",
    "make_elbo",
    "nice",
    "planar",
    "plotting",
    "psis",
    "psis_khat",
    "radial",
    "realnvp",
    "refine",
    "reverse_kl",
    "reweighted_summary",
    "run_nuts",
    "spline_autoregressive",
    "spline_coupling",
    "stack",
    "targets",
    "to_inference_data",
    "train",
    "training",
    "transforms",
    "utils",
    "vae",
]
