r"""The builders: the usual stacks of each family, and :func:`stack` to compose them.

:func:`planar`, :func:`radial` (Rezende & Mohamed 2015), :func:`iaf` (Kingma et al. 2016),
:func:`maf` (Papamakarios et al. 2017), :func:`nice`, :func:`realnvp` (Dinh et al. 2015, 2017),
the rational-quadratic neural spline flows :func:`spline_autoregressive` and
:func:`spline_coupling` (Durkan et al. 2019; their layers live here too), and the Gaussians :func:`gaussian` (full covariance) and :func:`diagonal`. Each returns a
:class:`~pyro_nf.Flow`, directly parameterized or, with ``context_dim=H``, amortized. The registry
(:mod:`pyro_nf.flows.registry`) names them for guides, VAE encoders, density fits and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch  # noqa: F401 (the doctests use it)

from ..transforms.spline import DEFAULT_BINS, DEFAULT_BOUND
from ..utils.nn import default_hidden, made_parameter_count
from ..utils.validation import (
    MAX_PARAMETERS,
    check_choice,
    check_parameter_count,
    check_positive_int,
    check_widths,
    mlp_parameter_count,
)
from .flow import Flow
from .layers import (
    AutoregressiveLayer,
    CouplingLayer,
    DiagonalAffineLayer,
    FlowLayer,
    LowerTriangularAffineLayer,
    MapInit,
    PermuteLayer,
    PlanarLayer,
    RadialLayer,
    SplineAutoregressiveLayer,
    SplineCouplingLayer,
    check_init,
    check_spline_grid,
)

__all__ = [
    "BaseKind",
    "diagonal",
    "gaussian",
    "iaf",
    "maf",
    "nice",
    "planar",
    "radial",
    "realnvp",
    "spline_autoregressive",
    "spline_coupling",
    "stack",
]

BaseKind = Literal["diagonal", "standard"]


BASES = ("diagonal", "standard")
PERMUTES = ("reverse", "random", None)
UPDATES = ("sigmoid", "affine")

# -- argument checks, all before anything is allocated ----------------------------------------


def _check_common(
    dim: Any, depth: Any, context_dim: Any, base: Any, context_hidden: Any
) -> tuple[int, ...]:
    """Check the arguments every builder shares; the context widths as a tuple."""
    check_positive_int("dim", dim)
    if depth is not None:
        check_positive_int("depth", depth)
    if context_dim is not None:
        check_positive_int("context_dim", context_dim)
    check_choice("base", base, BASES)
    return check_widths("context_hidden", context_hidden)


def _check_hidden(hidden: Any, allow_empty: bool) -> tuple[int, ...] | None:
    return None if hidden is None else check_widths("hidden", hidden, allow_empty=allow_empty)


def _count(layers: Callable[..., tuple[int, int]], sizes: dict[str, Any]) -> int:
    """Parameters of a flow: ``layers(**sizes)`` gives (direct, amortized) parameter counts;
    the amortized ones are the outputs of the context network."""
    direct, amortized = layers(**sizes)
    if amortized and sizes["context_dim"] is not None:
        net = [sizes["context_dim"], *sizes["context_hidden"], amortized]
        direct += mlp_parameter_count(net)
    return direct + amortized * (sizes["context_dim"] is None)


#: small sizes each argument is set to in turn to find the one that makes a flow too large
_SMALL = {"dim": 2, "depth": 1, "context_dim": 1}


def _check_size(layers: Callable[..., tuple[int, int]], **sizes: Any) -> None:
    """Refuse a flow of more than ``MAX_PARAMETERS`` parameters before building it, naming the
    argument whose reduction shrinks it most."""
    count = _count(layers, sizes)
    if count <= MAX_PARAMETERS:
        return
    shrunk = {}
    for name, value in sizes.items():
        if value is None or name not in _SMALL and not isinstance(value, tuple):
            continue
        small = _SMALL.get(name, (1,) * len(value) if isinstance(value, tuple) else value)
        shrunk[name] = _count(layers, {**sizes, name: small})
    check_parameter_count(min(shrunk, key=shrunk.get), count)


def _base_count(dim: int, base: str | None) -> int:
    return 2 * dim if base == "diagonal" else 0


def _map_counts(per_map: Callable[[int], int]) -> Callable[..., tuple[int, int]]:
    """(direct, amortized) counts of a base and ``depth`` planar or radial maps."""

    def counts(dim: int, depth: int, context_dim: int | None, base: str, **_: Any) -> tuple:
        n = _base_count(dim, base) + depth * per_map(dim)
        return (0, n) if context_dim is not None else (n, 0)

    return counts


def _autoregressive_counts(
    dim: int, depth: int, context_dim: int | None, hidden: Any, base: str, **_: Any
) -> tuple[int, int]:
    width = hidden if hidden is not None else default_hidden(dim, context_dim)
    made = depth * made_parameter_count(dim, width, 2, context_dim)
    base_n = _base_count(dim, base)
    return (made, base_n) if context_dim is not None else (made + base_n, 0)


def _coupling_counts(
    dim: int, depth: int, context_dim: int | None, hidden: Any, base: str, **_: Any
) -> tuple[int, int]:
    width = hidden if hidden is not None else default_hidden(dim, context_dim)
    nets = depth * mlp_parameter_count([dim + (context_dim or 0), *width, 2 * dim])
    base_n = _base_count(dim, base)
    return (nets, base_n) if context_dim is not None else (nets + base_n, 0)


def _gaussian_counts(dim: int, context_dim: int | None, full: bool, **_: Any) -> tuple[int, int]:
    n = 2 * dim + (dim * (dim - 1) // 2 if full else 0)
    return (0, n) if context_dim is not None else (n, 0)


# -- the builders -------------------------------------------------------------------------------


def _base_layers(dim: int, base: BaseKind, amortized: bool) -> list[FlowLayer]:
    if base == "diagonal":
        return [DiagonalAffineLayer(dim, amortized=amortized)]
    if base == "standard":
        return []
    raise ValueError(f"base: expected 'diagonal' or 'standard', got {base!r}")


def planar(
    dim: int,
    depth: int = 4,
    context_dim: int | None = None,
    base: BaseKind = "diagonal",
    context_hidden: Sequence[int] = (),
    init: MapInit = "identity",
) -> Flow:
    r"""A planar flow: ``depth`` planar maps after a diagonal Gaussian (or standard) base.

    ``init="random"`` starts the maps at random contractions instead of the identity (see
    :class:`~pyro_nf.flows.layers.PlanarLayer`); ``init="pyro"`` is Pyro's ``Planar`` exactly
    (its start and its parameter coordinates, so a fit takes Pyro's steps). Which start fits
    which target better is measured in the density tutorial (``docs/tutorials/density.md``).

    Example:
        >>> flow = planar(2, depth=8)
        >>> z, log_q = flow().rsample_and_log_prob((100,))
        >>> z.shape, log_q.shape
        (torch.Size([100, 2]), torch.Size([100]))
    """
    context_hidden = _check_common(dim, depth, context_dim, base, context_hidden)
    check_init(init)
    _check_size(
        _map_counts(lambda d: 2 * d + 1), dim=dim, depth=depth, context_dim=context_dim,
        context_hidden=context_hidden, base=base,
    )  # fmt: skip
    amortized = context_dim is not None
    layers = _base_layers(dim, base, amortized) + [
        PlanarLayer(dim, depth, amortized=amortized, init=init)
    ]
    return Flow(dim, layers, context_dim, context_hidden)


def radial(
    dim: int,
    depth: int = 4,
    context_dim: int | None = None,
    base: BaseKind = "diagonal",
    context_hidden: Sequence[int] = (),
    init: MapInit = "identity",
) -> Flow:
    r"""A radial flow: ``depth`` radial maps after a diagonal Gaussian (or standard) base.

    ``init="random"`` (or ``"pyro"``, the same start) starts the maps at Pyro's random draw
    instead of the identity (see :class:`~pyro_nf.flows.layers.RadialLayer`); the density tutorial
    (``docs/tutorials/density.md``) compares the starts on the 2D energies.

    Example:
        >>> q = radial(3, depth=4, context_dim=5)(torch.randn(10, 5))
        >>> q.sample().shape
        torch.Size([10, 3])
    """
    context_hidden = _check_common(dim, depth, context_dim, base, context_hidden)
    check_init(init)
    _check_size(
        _map_counts(lambda d: d + 2), dim=dim, depth=depth, context_dim=context_dim,
        context_hidden=context_hidden, base=base,
    )  # fmt: skip
    amortized = context_dim is not None
    layers = _base_layers(dim, base, amortized) + [
        RadialLayer(dim, depth, amortized=amortized, init=init)
    ]
    return Flow(dim, layers, context_dim, context_hidden)


def _autoregressive(
    dim: int,
    depth: int,
    context_dim: int | None,
    hidden: Sequence[int] | None,
    update: Literal["sigmoid", "affine"],
    invert: bool,
    permute: Literal["reverse", "random"] | None,
    base: BaseKind,
    context_hidden: Sequence[int],
) -> Flow:
    context_hidden = _check_common(dim, depth, context_dim, base, context_hidden)
    hidden = _check_hidden(hidden, allow_empty=False)
    check_choice("update", update, UPDATES)
    check_choice("permute", permute, PERMUTES)
    _check_size(
        _autoregressive_counts, dim=dim, depth=depth, context_dim=context_dim, hidden=hidden,
        context_hidden=context_hidden, base=base,
    )  # fmt: skip
    layers = _base_layers(dim, base, context_dim is not None)
    for k in range(depth):
        if k > 0 and permute is not None and dim > 1:
            layers.append(PermuteLayer(dim, permute, seed=k))
        layers.append(AutoregressiveLayer(dim, hidden, context_dim, update=update, invert=invert))
    return Flow(dim, layers, context_dim, context_hidden)


def iaf(
    dim: int,
    depth: int = 2,
    context_dim: int | None = None,
    hidden: Sequence[int] | None = None,
    update: Literal["sigmoid", "affine"] = "sigmoid",
    permute: Literal["reverse", "random"] | None = "reverse",
    base: BaseKind = "diagonal",
    context_hidden: Sequence[int] = (),
) -> Flow:
    r"""An inverse autoregressive flow (Kingma et al. 2016): one-pass sampling, ``D``-pass scoring
    of external points. The right choice for variational posteriors.

    Layers use Kingma et al.'s stable sigmoid update by default; the coordinate order is reversed
    between layers. With ``context_dim``, the MADEs read the context and the base is amortized.

    Example:
        >>> q = iaf(4, depth=2, context_dim=8)(torch.randn(3, 8))
        >>> z, log_q = q.rsample_and_log_prob()
        >>> z.shape, log_q.shape
        (torch.Size([3, 4]), torch.Size([3]))
    """
    return _autoregressive(
        dim, depth, context_dim, hidden, update, False, permute, base, context_hidden
    )


def maf(
    dim: int,
    depth: int = 5,
    context_dim: int | None = None,
    hidden: Sequence[int] | None = None,
    update: Literal["sigmoid", "affine"] = "affine",
    permute: Literal["reverse", "random"] | None = "reverse",
    base: BaseKind = "diagonal",
    context_hidden: Sequence[int] = (),
) -> Flow:
    r"""A masked autoregressive flow (Papamakarios et al. 2017): one-pass density evaluation,
    ``D``-pass sampling. The right choice for maximum-likelihood density estimation.

    Example:
        >>> flow = maf(2, depth=3)
        >>> flow().log_prob(torch.randn(10, 2)).shape
        torch.Size([10])
    """
    return _autoregressive(
        dim, depth, context_dim, hidden, update, True, permute, base, context_hidden
    )


def _coupling(
    dim: int,
    depth: int,
    context_dim: int | None,
    hidden: Sequence[int] | None,
    kind: Literal["affine", "additive"],
    base: BaseKind,
    context_hidden: Sequence[int],
) -> Flow:
    context_hidden = _check_common(dim, depth, context_dim, base, context_hidden)
    hidden = _check_hidden(hidden, allow_empty=True)
    if dim < 2:
        raise ValueError(f"dim: coupling flows need at least 2 coordinates, got {dim}")
    _check_size(
        _coupling_counts, dim=dim, depth=depth, context_dim=context_dim, hidden=hidden,
        context_hidden=context_hidden, base=base,
    )  # fmt: skip
    layers = _base_layers(dim, base, context_dim is not None)
    layers += [CouplingLayer(dim, k % 2, hidden, context_dim, kind=kind) for k in range(depth)]
    return Flow(dim, layers, context_dim, context_hidden)


def nice(
    dim: int,
    depth: int = 4,
    context_dim: int | None = None,
    hidden: Sequence[int] | None = None,
    base: BaseKind = "diagonal",
    context_hidden: Sequence[int] = (),
) -> Flow:
    r"""NICE (Dinh et al. 2015): additive coupling layers with alternating masks; volume
    preserving, so all scaling comes from the diagonal base.

    Example:
        >>> flow = nice(4, depth=4)
        >>> x = torch.randn(6, 4)
        >>> flow().log_prob(x).shape
        torch.Size([6])
    """
    return _coupling(dim, depth, context_dim, hidden, "additive", base, context_hidden)


def realnvp(
    dim: int,
    depth: int = 4,
    context_dim: int | None = None,
    hidden: Sequence[int] | None = None,
    base: BaseKind = "diagonal",
    context_hidden: Sequence[int] = (),
) -> Flow:
    r"""RealNVP (Dinh et al. 2017): affine coupling layers with alternating binary masks and a
    tanh-bounded log-scale; one pass in both directions.

    Example:
        >>> q = realnvp(2, depth=4, context_dim=3)(torch.randn(5, 3))
        >>> z, log_q = q.rsample_and_log_prob()
        >>> torch.allclose(q.log_prob(z.detach()), log_q, atol=1e-5)
        True
    """
    return _coupling(dim, depth, context_dim, hidden, "affine", base, context_hidden)


# -- neural spline flows (Durkan et al. 2019) ----------------------------------------------------


def _spline_autoregressive_counts(
    dim: int, depth: int, context_dim: int | None, hidden: Any, base: str, bins: int, **_: Any
) -> tuple[int, int]:
    width = hidden if hidden is not None else default_hidden(dim, context_dim)
    made = depth * made_parameter_count(dim, width, 3 * bins - 1, context_dim)
    base_n = _base_count(dim, base)
    return (made, base_n) if context_dim is not None else (made + base_n, 0)


def _spline_coupling_counts(
    dim: int, depth: int, context_dim: int | None, hidden: Any, base: str, bins: int, **_: Any
) -> tuple[int, int]:
    width = hidden if hidden is not None else default_hidden(dim, context_dim)
    nets = 0
    for k in range(depth):
        n_cond = (dim + 1 - k % 2) // 2
        sizes = [n_cond + (context_dim or 0), *width, (dim - n_cond) * (3 * bins - 1)]
        nets += mlp_parameter_count(sizes)
    base_n = _base_count(dim, base)
    return (nets, base_n) if context_dim is not None else (nets + base_n, 0)


def spline_autoregressive(
    dim: int,
    depth: int = 3,
    context_dim: int | None = None,
    bins: int = DEFAULT_BINS,
    bound: float = DEFAULT_BOUND,
    hidden: Sequence[int] | None = None,
    invert: bool = True,
    permute: Literal["reverse", "random"] | None = "reverse",
    base: BaseKind = "diagonal",
    context_hidden: Sequence[int] = (),
) -> Flow:
    r"""An autoregressive rational-quadratic neural spline flow (Durkan et al. 2019).

    ``depth`` layers of elementwise monotone splines of ``bins`` bins on ``[-bound, bound]``
    (identity tails), each coordinate's spline given by a MADE reading the coordinates before it
    (and the context); the coordinate order is reversed (``permute``) between layers.
    ``invert=True`` (default) is the MAF orientation: one-pass density evaluation, ``D``-pass
    sampling (density estimation); ``invert=False`` the IAF orientation: one-pass sampling and
    scoring of the flow's own samples (variational posteriors; :class:`~pyro_nf.FlowGuide`'s
    default for this family). Both inverses are exact.

    Example:
        >>> flow = spline_autoregressive(2, depth=2, bins=8)
        >>> flow().log_prob(torch.randn(10, 2)).shape
        torch.Size([10])
        >>> q = spline_autoregressive(3, context_dim=4, invert=False)(torch.randn(5, 4))
        >>> z, log_q = q.rsample_and_log_prob()
        >>> torch.allclose(q.log_prob(z.detach()), log_q, atol=1e-4)
        True
    """
    context_hidden = _check_common(dim, depth, context_dim, base, context_hidden)
    hidden = _check_hidden(hidden, allow_empty=False)
    bins, bound = check_spline_grid(bins, bound)
    check_choice("invert", invert, (True, False))
    check_choice("permute", permute, PERMUTES)
    _check_size(
        _spline_autoregressive_counts, dim=dim, depth=depth, context_dim=context_dim,
        hidden=hidden, context_hidden=context_hidden, base=base, bins=bins,
    )  # fmt: skip
    layers = _base_layers(dim, base, context_dim is not None)
    for k in range(depth):
        if k > 0 and permute is not None and dim > 1:
            layers.append(PermuteLayer(dim, permute, seed=k))
        layers.append(SplineAutoregressiveLayer(dim, hidden, context_dim, bins, bound, invert))
    return Flow(dim, layers, context_dim, context_hidden)


def spline_coupling(
    dim: int,
    depth: int = 4,
    context_dim: int | None = None,
    bins: int = DEFAULT_BINS,
    bound: float = DEFAULT_BOUND,
    hidden: Sequence[int] | None = None,
    base: BaseKind = "diagonal",
    context_hidden: Sequence[int] = (),
) -> Flow:
    r"""A rational-quadratic neural spline coupling flow (Durkan et al. 2019).

    ``depth`` coupling layers with alternating masks (even, then odd coordinates condition);
    each transforms the other half by monotone splines of ``bins`` bins on ``[-bound, bound]``
    (identity tails). One pass in both directions, so sampling and density are equally cheap.

    Example:
        >>> q = spline_coupling(2, depth=4, context_dim=3)(torch.randn(5, 3))
        >>> z, log_q = q.rsample_and_log_prob()
        >>> torch.allclose(q.log_prob(z.detach()), log_q, atol=1e-4)
        True
    """
    context_hidden = _check_common(dim, depth, context_dim, base, context_hidden)
    hidden = _check_hidden(hidden, allow_empty=True)
    bins, bound = check_spline_grid(bins, bound)
    if dim < 2:
        raise ValueError(f"dim: coupling flows need at least 2 coordinates, got {dim}")
    _check_size(
        _spline_coupling_counts, dim=dim, depth=depth, context_dim=context_dim, hidden=hidden,
        context_hidden=context_hidden, base=base, bins=bins,
    )  # fmt: skip
    layers = _base_layers(dim, base, context_dim is not None)
    layers += [
        SplineCouplingLayer(dim, k % 2, hidden, context_dim, bins, bound) for k in range(depth)
    ]
    return Flow(dim, layers, context_dim, context_hidden)


def stack(*parts: Flow | FlowLayer, context_hidden: Sequence[int] = ()) -> Flow:
    r"""Compose flows and layers into one flow; ``parts`` run in order (noise → sample).

    The layers of every part are reused as they are (direct parameters keep their values); if
    any part is amortized, the new flow gets one fresh context network for all amortized layers.

    Example:
        >>> mixed = stack(iaf(2, depth=2), planar(2, depth=4, base="standard"))
        >>> [type(layer).__name__ for layer in mixed.layers]
        ['DiagonalAffineLayer', 'AutoregressiveLayer', 'PermuteLayer', 'AutoregressiveLayer', 'PlanarLayer']
    """
    if not parts:
        raise ValueError("parts: expected at least one Flow or FlowLayer, got none")
    layers: list[FlowLayer] = []
    context_dims = set()
    for i, part in enumerate(parts):
        if isinstance(part, Flow):
            layers.extend(part.layers)
            context_dims.add(part.context_dim)
        elif isinstance(part, FlowLayer):
            layers.append(part)
            if part.context_dim is not None or part.amortized:
                context_dims.add(part.context_dim)
        else:
            raise ValueError(f"parts[{i}]: expected a Flow or FlowLayer, got {type(part).__name__}")
    dims = {layer.dim for layer in layers}
    if len(dims) != 1:
        raise ValueError(f"parts: expected all parts to have the same dim, got dims {sorted(dims)}")
    context_dims.discard(None)
    if len(context_dims) > 1:
        raise ValueError(
            f"parts: expected one context_dim for all amortized parts, got {sorted(context_dims)}"
        )
    context_dim = context_dims.pop() if context_dims else None
    return Flow(dims.pop(), layers, context_dim, context_hidden)


def gaussian(dim: int, context_dim: int | None = None, context_hidden: Sequence[int] = ()) -> Flow:
    r"""A full-covariance Gaussian :math:`\mathcal N(\mu, L L^\top)` as a one-layer flow.

    Amortized in the context when ``context_dim`` is given.

    Example:
        >>> gaussian(3)().sample((4,)).shape
        torch.Size([4, 3])
    """
    context_hidden = _check_common(dim, None, context_dim, "standard", context_hidden)
    _check_size(
        _gaussian_counts, dim=dim, context_dim=context_dim, context_hidden=context_hidden, full=True
    )
    layer = LowerTriangularAffineLayer(dim, amortized=context_dim is not None)
    return Flow(dim, [layer], context_dim, context_hidden)


def diagonal(dim: int, context_dim: int | None = None, context_hidden: Sequence[int] = ()) -> Flow:
    r"""A diagonal Gaussian :math:`\mathcal N(\mu, \operatorname{diag}\sigma^2)` as a one-layer flow.

    Example:
        >>> q = diagonal(2, context_dim=3)(torch.zeros(5, 3))
        >>> q.batch_shape, q.event_shape
        (torch.Size([5]), torch.Size([2]))
    """
    context_hidden = _check_common(dim, None, context_dim, "standard", context_hidden)
    _check_size(
        _gaussian_counts,
        dim=dim,
        context_dim=context_dim,
        context_hidden=context_hidden,
        full=False,
    )
    layer = DiagonalAffineLayer(dim, amortized=context_dim is not None)
    return Flow(dim, [layer], context_dim, context_hidden)
