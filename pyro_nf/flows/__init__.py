"""Flows: layers that own or receive parameters, :class:`Flow`, the builders, and the one
family registry.

The data path is ``context -> parameters -> transform -> (sample, log_prob)``:
a :class:`~pyro_nf.flows.layers.FlowLayer` turns a context (or nothing, for a directly
parameterized flow) into a :class:`~pyro_nf.transforms.FlowTransform`; a :class:`Flow` chains its
layers over a base distribution; ``flow(context)`` is a :class:`FlowDistribution`.
"""

from .builders import (
    diagonal,
    gaussian,
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
from .distribution import FlowDistribution, FlowLike
from .flow import Flow
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
    SplineAutoregressiveLayer,
    SplineCouplingLayer,
)
from .pyro_modules import (
    ConditionalFlowTransformModule,
    ConditionedFlowTransform,
    FlowTransformModule,
)
from .registry import (
    FlowFamily,
    build_flow,
    family_names,
    flow_spec,
    get_family,
    register_builder,
    register_family,
    unregister_family,
)

__all__ = [
    "AutoregressiveLayer",
    "ConditionalFlowTransformModule",
    "ConditionedFlowTransform",
    "CouplingLayer",
    "DiagonalAffineLayer",
    "FixedAffineLayer",
    "Flow",
    "FlowDistribution",
    "FlowFamily",
    "FlowLayer",
    "FlowLike",
    "FlowTransformModule",
    "LowerTriangularAffineLayer",
    "PermuteLayer",
    "PlanarLayer",
    "RadialLayer",
    "SplineAutoregressiveLayer",
    "SplineCouplingLayer",
    "build_flow",
    "diagonal",
    "family_names",
    "flow_spec",
    "gaussian",
    "get_family",
    "iaf",
    "maf",
    "nice",
    "planar",
    "radial",
    "realnvp",
    "register_builder",
    "register_family",
    "spline_autoregressive",
    "spline_coupling",
    "stack",
    "unregister_family",
]
