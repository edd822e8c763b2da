r"""The one registry of flow families, with per-use defaults, and flow *specs*.

Every front end that takes a family by name reads this registry: :class:`~pyro_nf.FlowGuide`
(``flow="iaf"``), the VAE encoders (:func:`pyro_nf.vae.make_posterior`), density fits
(:class:`~pyro_nf.DensityEstimator`, :func:`build_flow`) and the ``pyro-nf`` command. Adding a
family is one :func:`register_family` call::

    register_family("my_flow", my_builder, guide_depth=4, vae_depth=4)

where ``my_builder(dim, depth=..., context_dim=None, base=..., **kwargs) -> Flow``. A family
with ``guide_depth=None`` (or ``vae_depth=None``) is not offered to guides (or VAE encoders).

A *spec* is the plain-data recipe of a flow, ``{"name": ..., "kwargs": {...}}``: :func:`build_flow`
builds a flow from one and remembers it, :func:`flow_spec` reads it back, and saved estimators
store it so that they can be rebuilt on load.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..utils.validation import check_positive_int
from . import builders
from .flow import Flow

__all__ = [
    "FlowFamily",
    "IAF_TWO_LAYER_MAX_DIM",
    "build_flow",
    "family_names",
    "flow_spec",
    "get_family",
    "register_builder",
    "register_family",
    "unregister_family",
]

SPEC_ATTR = "_pyro_nf_spec"


@dataclass(frozen=True)
class FlowFamily:
    """A named flow family and its defaults for each use.

    Attributes:
        name: the registry key (``"planar"``, ``"iaf"``, ...).
        builder: ``builder(dim, ...) -> Flow``.
        guide_depth: default depth in :class:`~pyro_nf.FlowGuide`: a number, or ``dim -> depth``
            (read through :meth:`guide_depth_for`; ``None``: not a guide family).
        vae_depth: default depth of a VAE encoder (``None``: not a VAE family).
        min_dim: the smallest event dimension the family supports (coupling flows need 2).
        guide_kwargs: ``dim -> dict`` of builder defaults for guides (e.g. IAF's hidden width).
        vae_kwargs: ``dim -> dict`` of builder defaults for VAE encoders (e.g. the orientation of
            an autoregressive spline flow).

    Example:
        >>> get_family("planar").guide_depth, get_family("realnvp").min_dim
        (8, 2)
    """

    name: str
    builder: Callable[..., Flow]
    guide_depth: int | Callable[[int], int] | None = None
    vae_depth: int | None = None
    min_dim: int = 1
    guide_kwargs: Callable[[int], dict[str, Any]] = field(default=lambda dim: {})
    vae_kwargs: Callable[[int], dict[str, Any]] = field(default=lambda dim: {})

    def guide_depth_for(self, dim: int) -> int:
        """The default guide depth for a ``dim``-dimensional latent space.

        Example:
            >>> get_family("iaf").guide_depth_for(10), get_family("iaf").guide_depth_for(105)
            (2, 1)
        """
        if self.guide_depth is None:
            raise ValueError(f"flow: {self.name!r} is not a guide family")
        depth = self.guide_depth(dim) if callable(self.guide_depth) else self.guide_depth
        return check_positive_int(f"{self.name} guide_depth({dim})", depth)

    def check_dim(self, dim: int, argname: str = "flow") -> None:
        """Refuse a latent dimension the family cannot handle, naming ``argname``."""
        if dim < self.min_dim:
            raise ValueError(
                f"{argname}: {self.name!r} needs a latent dimension >= {self.min_dim}, got {dim}"
            )


_FAMILIES: dict[str, FlowFamily] = {}


def register_family(
    name: str,
    builder: Callable[..., Flow],
    *,
    guide_depth: int | Callable[[int], int] | None = None,
    vae_depth: int | None = None,
    min_dim: int = 1,
    guide_kwargs: Callable[[int], dict[str, Any]] | None = None,
    overwrite: bool = False,
    vae_kwargs: Callable[[int], dict[str, Any]] | None = None,
) -> FlowFamily:
    """Register ``builder`` under ``name`` for every front end (guides, VAEs, density, CLI).

    Example:
        >>> import pyro_nf
        >>> fam = register_family("tiny_iaf", lambda dim, depth=1, **kw: pyro_nf.iaf(dim, depth, **kw),
        ...                       guide_depth=1)
        >>> "tiny_iaf" in family_names("guide")
        True
        >>> unregister_family("tiny_iaf")
        >>> register_family("planar", pyro_nf.planar)
        Traceback (most recent call last):
        ...
        ValueError: name: expected a new family name (or overwrite=True), got 'planar' which is already registered
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if not callable(builder):
        raise ValueError(f"builder: expected a callable returning a Flow, got {builder!r}")
    if name in _FAMILIES and not overwrite:
        raise ValueError(
            f"name: expected a new family name (or overwrite=True), got {name!r} which is "
            "already registered"
        )
    for argname, depth in (("guide_depth", guide_depth), ("vae_depth", vae_depth)):
        if argname == "guide_depth" and callable(depth):
            continue  # dim -> depth, checked where it is read (FlowFamily.guide_depth_for)
        if depth is not None and (
            isinstance(depth, bool) or not isinstance(depth, int) or depth < 1
        ):
            raise ValueError(f"{argname}: expected None or an integer >= 1, got {depth!r}")
    family = FlowFamily(
        name,
        builder,
        guide_depth,
        vae_depth,
        min_dim,
        guide_kwargs or (lambda dim: {}),
        vae_kwargs or (lambda dim: {}),
    )
    _FAMILIES[name] = family
    return family


def register_builder(name: str, builder: Callable[..., Flow], overwrite: bool = False) -> None:
    """Register ``builder(**kwargs) -> Flow`` under ``name`` for :func:`build_flow` and loading.

    The same registry as :func:`register_family`, for a family used only by density fits.
    Built-in names: ``planar``, ``radial``, ``iaf``, ``maf``, ``nice``, ``realnvp``,
    ``spline_autoregressive``, ``spline_coupling``, ``gaussian`` (full covariance), ``diagonal`` and ``stack`` (``parts=[spec, ...]``). A saved
    estimator can only be loaded where its builder is registered.

    Example:
        >>> import pyro_nf
        >>> register_builder("tiny_maf", lambda dim: pyro_nf.maf(dim, depth=1, hidden=(8,)))
        >>> build_flow("tiny_maf", dim=2).dim
        2
        >>> unregister_family("tiny_maf")
        >>> register_builder("maf", lambda dim: None)
        Traceback (most recent call last):
        ...
        ValueError: name: expected a new family name (or overwrite=True), got 'maf' which is already registered
    """
    register_family(name, builder, overwrite=overwrite)


def unregister_family(name: str) -> None:
    """Remove a family registered by the user; the built-in families stay.

    Example:
        >>> unregister_family("planar")
        Traceback (most recent call last):
        ...
        ValueError: name: 'planar' is built in and cannot be removed
    """
    if name in BUILT_IN:
        raise ValueError(f"name: {name!r} is built in and cannot be removed")
    if name not in _FAMILIES:
        raise ValueError(f"name: expected a registered family, got {name!r}")
    del _FAMILIES[name]


def family_names(use: str | None = None) -> list[str]:
    """The registered names, sorted; ``use="guide"`` or ``"vae"`` keeps those offered there.

    Example:
        >>> family_names("vae")
        ['iaf', 'nice', 'planar', 'radial', 'realnvp', 'spline_autoregressive', 'spline_coupling']
    """
    if use not in (None, "guide", "vae"):
        raise ValueError(f"use: expected None, 'guide' or 'vae', got {use!r}")
    attr = {"guide": "guide_depth", "vae": "vae_depth"}.get(use or "")
    return sorted(n for n, f in _FAMILIES.items() if attr is None or getattr(f, attr) is not None)


def get_family(name: Any, use: str | None = None, argname: str = "flow") -> FlowFamily:
    """The family registered as ``name`` (for ``use``); the error names ``argname``.

    Example:
        >>> get_family("radial").vae_depth
        10
        >>> get_family("gaussian", use="guide")
        Traceback (most recent call last):
        ...
        ValueError: flow: expected one of ['iaf', 'maf', 'nice', 'planar', 'radial', 'realnvp', 'spline_autoregressive', 'spline_coupling'], got 'gaussian'
    """
    names = family_names(use)
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"{argname}: expected one of {names}, got {name!r}")
    return _FAMILIES[name]


# -- specs ---------------------------------------------------------------------------------------


def plain_data(value: Any, where: str) -> Any:
    """Check that a spec value is plain data (saved and loaded with ``weights_only=True``).

    Example:
        >>> plain_data({"hidden": (8, 8)}, "kwargs")
        {'hidden': [8, 8]}
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where}: expected string keys, got {list(value)!r}")
        return {k: plain_data(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise ValueError(
        f"{where}: expected plain data (None, bool, int, float, str, lists and dicts of them) so "
        f"that the spec can be saved, got {type(value).__name__}"
    )


def _split_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        if "kwargs" in spec:
            return spec["name"], dict(spec["kwargs"])
        return spec["name"], {k: v for k, v in spec.items() if k != "name"}
    if (
        isinstance(spec, (list, tuple))
        and len(spec) == 2
        and isinstance(spec[0], str)
        and isinstance(spec[1], Mapping)
    ):
        return spec[0], dict(spec[1])
    raise ValueError(
        "spec: expected a builder name, a mapping {'name': ..., 'kwargs': {...}} or a pair "
        f"(name, kwargs), got {spec!r}"
    )


def normalize_spec(spec: Any, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A spec in its canonical form ``{"name": ..., "kwargs": {...}}`` (plain data).

    Example:
        >>> normalize_spec(("maf", {"dim": 2}), {"depth": 1})
        {'name': 'maf', 'kwargs': {'dim': 2, 'depth': 1}}
    """
    name, given = _split_spec(spec)
    if name not in _FAMILIES:
        raise ValueError(f"name: expected one of {sorted(_FAMILIES)}, got {name!r}")
    given.update(kwargs or {})
    if name == "stack" and isinstance(given.get("parts"), (list, tuple)):
        given["parts"] = [normalize_spec(p) for p in given["parts"]]
    return {"name": name, "kwargs": plain_data(given, "kwargs")}


def build_flow(
    spec: str | Mapping[str, Any] | tuple[str, Mapping[str, Any]], **kwargs: Any
) -> Flow:
    """Build a :class:`~pyro_nf.Flow` from a registered builder and remember how (its *spec*).

    ``spec`` is a builder name (then ``kwargs`` are its arguments), a mapping
    ``{"name": ..., "kwargs": {...}}`` or a pair ``(name, kwargs)``. The keyword arguments must
    be plain data (numbers, strings, lists, dicts) so that the spec can be saved; the spec is
    attached to the flow and read back by :func:`flow_spec` and
    :meth:`~pyro_nf.DensityEstimator.save`.

    Example:
        >>> flow = build_flow("maf", dim=2, depth=3, hidden=[32, 32])
        >>> flow_spec(flow)
        {'name': 'maf', 'kwargs': {'dim': 2, 'depth': 3, 'hidden': [32, 32]}}
        >>> mixed = build_flow("stack", parts=[("maf", {"dim": 2, "depth": 1}),
        ...                                    ("planar", {"dim": 2, "depth": 4, "base": "standard"})])
        >>> [type(layer).__name__ for layer in mixed.layers]
        ['DiagonalAffineLayer', 'AutoregressiveLayer', 'PlanarLayer']
    """
    norm = normalize_spec(spec, kwargs)
    builder = _FAMILIES[norm["name"]].builder
    _check_arguments(norm["name"], builder, norm["kwargs"])
    flow = builder(**norm["kwargs"])
    if not isinstance(flow, Flow):
        raise ValueError(
            f"spec: expected builder {norm['name']!r} to return a Flow, got {type(flow).__name__}"
        )
    setattr(flow, SPEC_ATTR, norm)
    return flow


def _check_arguments(name: str, builder: Callable[..., Flow], kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments that ``builder`` does not take, or a missing required one,
    naming the spec field (instead of the builder call's bare ``TypeError``).

    Example:
        >>> build_flow("maf", dim=2, hiden=[8])
        Traceback (most recent call last):
        ...
        ValueError: hiden: not an argument of flow 'maf'; expected some of ['dim', 'depth', 'context_dim', 'hidden', 'update', 'permute', 'base', 'context_hidden']
    """
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return
    keywords = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in kwargs:
            if key not in keywords:
                raise ValueError(
                    f"{key}: not an argument of flow {name!r}; expected some of {keywords}"
                )
    for key in keywords:
        if params[key].default is inspect.Parameter.empty and key not in kwargs:
            raise ValueError(f"{key}: missing; flow {name!r} needs it (got {sorted(kwargs)})")


def flow_spec(flow: Flow) -> dict[str, Any] | None:
    """The spec a flow was built from by :func:`build_flow`, or ``None`` (built by hand).

    Example:
        >>> flow_spec(build_flow("planar", dim=2, depth=2))
        {'name': 'planar', 'kwargs': {'dim': 2, 'depth': 2}}
        >>> import pyro_nf
        >>> flow_spec(pyro_nf.maf(2)) is None
        True
    """
    spec = getattr(flow, SPEC_ATTR, None)
    return None if spec is None else normalize_spec(spec)


def _stack_spec(parts: Sequence[Any], context_hidden: Sequence[int] = ()) -> Flow:
    """:func:`~pyro_nf.stack` of the flows built from ``parts`` (each a spec)."""
    if isinstance(parts, (str, Mapping)) or not isinstance(parts, Sequence) or not parts:
        raise ValueError(f"parts: expected a non-empty list of flow specs, got {parts!r}")
    return builders.stack(*(build_flow(p) for p in parts), context_hidden=context_hidden)


def _iaf_guide_kwargs(dim: int) -> dict[str, Any]:
    # guides need a wide range of scales (a funnel's width varies by orders of magnitude): the
    # affine update reaches e^{±3} per layer, Kingma's gated update ~[0.16, 1.4]; one hidden
    # layer of 3D + 1 (Pyro's AutoIAFNormal size) is as good as (64, 64) and cheaper
    return {"update": "affine", "hidden": (3 * dim + 1,)}


#: Latent dimensions up to which a guide's IAF has two layers (one above): on centered eight
#: schools (D = 10) one layer left one seed of three 0.2 log-sd off in tau's tail, two left
#: none; on the 105-D hierarchical model two layers did not converge in the 5000-step budget
#: (``benchmarks/hard_posteriors.py``).
IAF_TWO_LAYER_MAX_DIM = 64


def _iaf_guide_depth(dim: int) -> int:
    return 2 if dim <= IAF_TWO_LAYER_MAX_DIM else 1


def _iaf_orientation(dim: int) -> dict[str, Any]:
    return {"invert": False}


register_family("planar", builders.planar, guide_depth=8, vae_depth=10)
register_family("radial", builders.radial, guide_depth=8, vae_depth=10)
register_family(
    "iaf", builders.iaf, guide_depth=_iaf_guide_depth, vae_depth=2, guide_kwargs=_iaf_guide_kwargs
)
# MAF samples in D sequential passes: a guide family, not a VAE encoder (IAF is its dual there)
register_family("maf", builders.maf, guide_depth=2)
register_family("nice", builders.nice, guide_depth=4, vae_depth=4, min_dim=2)
register_family("realnvp", builders.realnvp, guide_depth=4, vae_depth=4, min_dim=2)
# Neural spline flows: IAF orientation (one-pass sampling and scoring of own samples) for guides
# and VAE encoders; the builder's default is the MAF orientation, for density estimation.
register_family(
    "spline_autoregressive",
    builders.spline_autoregressive,
    guide_depth=2,
    vae_depth=2,
    guide_kwargs=_iaf_orientation,
    vae_kwargs=_iaf_orientation,
)
register_family("spline_coupling", builders.spline_coupling, guide_depth=4, vae_depth=4, min_dim=2)
register_family("gaussian", builders.gaussian)
register_family("diagonal", builders.diagonal)
register_family("stack", _stack_spec)

#: The families pyro-nf ships (they cannot be unregistered).
BUILT_IN = frozenset(_FAMILIES)
