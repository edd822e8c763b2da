r"""Flow layers: modules that turn parameters (and a context) into a transform.

A layer is the ``nn.Module`` face of a transform family. It either *owns* its parameters
(``amortized=False``: one ``nn.Parameter`` vector of length ``num_params``, a *direct*
parameterization) or *receives* them (``amortized=True``: the :class:`~pyro_nf.Flow`'s context
network computes a ``(..., num_params)`` tensor per context). Either way the same
:meth:`FlowLayer.build` turns the vector into a transform, so direct and amortized flows share
one code path; batch dimensions of the parameters simply broadcast.

Autoregressive layers are the exception that proves the rule: their MADE network reads the
context itself as an extra input (Kingma et al. 2016), so they take no parameter vector.

Every layer is initialised to the identity map by default; planar and radial layers can instead
start at a random draw (``init="random"``, Pyro's start), for multi-start reverse-KL fits, or
(``init="pyro"``) exactly as Pyro's ``Planar``/``Radial`` do, in their parameter coordinates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..transforms import (
    AutoregressiveTransform,
    CouplingTransform,
    DiagonalAffineTransform,
    FlowTransform,
    LowerTriangularAffineTransform,
    Permute,
    PlanarTransform,
    RadialTransform,
    Reverse,
    SplineAutoregressiveTransform,
    SplineCouplingTransform,
)
from ..transforms.affine import raw_from_scale
from ..transforms.autoregressive import DEFAULT_GATE_BIAS, DEFAULT_SCALE_BOUND
from ..transforms.planar import PLANAR_SHIFT
from ..transforms.spline import DEFAULT_BINS, DEFAULT_BOUND
from ..utils.nn import MADE, MLP, default_hidden
from ..utils.validation import (
    check_choice,
    check_float,
    check_parameter_count,
    check_positive_int,
    check_widths,
)

__all__ = [
    "FlowLayer",
    "PlanarLayer",
    "RadialLayer",
    "DiagonalAffineLayer",
    "LowerTriangularAffineLayer",
    "FixedAffineLayer",
    "AutoregressiveLayer",
    "PermuteLayer",
    "CouplingLayer",
    "SplineAutoregressiveLayer",
    "SplineCouplingLayer",
    "check_spline_grid",
    "coupling_widths",
]


class FlowLayer(nn.Module):
    """Base class of flow layers.

    Attributes:
        dim: the event dimension ``D``.
        num_params: length of the parameter vector the layer reads (0 if none).
        amortized: whether the parameters come from a context network (else ``self.params``).
        context_dim: context size the layer reads *itself* (autoregressive layers), else None.
    """

    num_params: int = 0
    context_dim: int | None = None
    #: the flow family this layer's maps belong to (for ``Flow``'s repr); ``None``: named after
    #: the class (``SplineCouplingLayer`` -> ``"spline_coupling"``)
    family: str | None = None
    #: ``False`` for affine bases, permutations and preconditioners, which a family's stack wraps
    #: around its maps (they count towards no family and no depth)
    is_map: bool = True

    def family_name(self) -> str | None:
        """The family of the layer's maps, or ``None`` for a base, permutation or preconditioner.

        Example:
            >>> PlanarLayer(2).family_name(), PermuteLayer(2).family_name()
            ('planar', None)
        """
        if not self.is_map:
            return None
        if self.family is not None:
            return self.family
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__.removesuffix("Layer")).lower()

    def family_depth(self) -> int:
        """How many of its family's maps the layer holds (planar/radial: ``depth``; else 1).

        Example:
            >>> PlanarLayer(2, depth=5).family_depth(), PermuteLayer(2).family_depth()
            (5, 0)
        """
        if not self.is_map:
            return 0
        return int(getattr(self, "depth", 1))

    def __init__(self, dim: int, amortized: bool = False) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.amortized = amortized

    def _own_params(self, init: torch.Tensor) -> None:
        """Register ``init`` as the direct parameters unless amortized."""
        self.num_params = init.numel()
        # what reset_parameters() restores for layers whose start is not random
        self.register_buffer("_init_params", init.detach().clone(), persistent=False)
        if self.amortized:
            self.register_buffer("initial_params", init)
            self.params = None
        else:
            self.params = nn.Parameter(init)

    def _draw_params(self) -> torch.Tensor | None:
        """A fresh initial parameter vector (layers with a random start override this)."""
        return None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Put the layer back to a fresh start: the constructor's initial parameters, with the
        random parts (planar normals, radial centres, network weights) drawn anew from the
        global torch RNG. Used by ``fit_reverse_kl(restarts=...)``.

        Example:
            >>> layer = PlanarLayer(2, depth=1)
            >>> with torch.no_grad():
            ...     _ = layer.params.add_(1.0)
            >>> layer.reset_parameters()
            >>> torch.equal(layer.transform()(torch.ones(2)), torch.ones(2))  # identity again
            True
        """
        if self.num_params:
            fresh = self._draw_params()
            target = self.initial_params if self.amortized else self.params
            src = self._init_params if fresh is None else fresh
            target.copy_(src.to(target))
        for module in self.children():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()

    def initial_value(self) -> torch.Tensor:
        """The parameter vector that makes this layer the identity (shape ``(num_params,)``)."""
        return self.initial_params if self.amortized else self.params.detach().clone()

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        """Return the transform for parameters ``params`` (``(..., num_params)``) and context."""
        raise NotImplementedError

    def transform(
        self, params: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> FlowTransform:
        """The transform at the layer's own parameters (direct) or the given ones (amortized)."""
        if not self.amortized and self.num_params:
            params = self.params
        return self.build(params, context)


MapInit = Literal["identity", "random", "pyro"]
"""The start of a planar or radial layer: the identity, a random map, or Pyro's own start and
parameter coordinates (``"pyro"``)."""

MAP_INITS = ("identity", "random", "pyro")

#: suffix of a planar layer's parameters in a state_dict when they are in Pyro's coordinates
PYRO_COORDINATES_SUFFIX = "_in_pyro_coordinates"


def check_init(init: str) -> str:
    if not isinstance(init, str) or init not in MAP_INITS:
        raise ValueError(f"init: expected 'identity', 'random' or 'pyro', got {init!r}")
    return init


class PlanarLayer(FlowLayer):
    r"""``depth`` planar maps (see :mod:`pyro_nf.transforms.planar`); ``K(2D + 1)`` parameters.

    Args:
        dim, depth, amortized: as for every layer.
        init: ``"identity"`` (default): :math:`u = 0` (exactly the identity),
            :math:`w \sim \mathcal N(0, 1/D)`, :math:`b = 0`. ``"random"``: raw
            :math:`u, w, b \sim \mathcal U(-1/\sqrt D, 1/\sqrt D)` read through Rezende &
            Mohamed's constraint :math:`m(a) = \operatorname{softplus}(a) - 1`, the start of
            Pyro's ``Planar`` for :math:`u, w` (Pyro sets :math:`b = 0`; here the offsets are
            drawn too). pyro-nf's constraint is shifted by :math:`\log(e - 1)` so that
            :math:`u = 0` is the identity; the same map is stored as the raw
            :math:`u - \log(e - 1)\, w / \lVert w\rVert^2`. Most maps then start as a
            contraction across their hyperplane (:math:`w^\top\hat u \approx -0.3`), far from
            the identity and different from draw to draw, which a multi-start fit
            (``fit_reverse_kl(population=...)``) can choose among. ``"pyro"``: Pyro's
            ``Planar`` exactly, in its start *and* its coordinates: per map, raw
            :math:`w` then :math:`u` drawn from :math:`\mathcal U(-1/\sqrt D, 1/\sqrt D)`
            (Pyro's order, so a seeded layer equals a seeded stack of Pyro ``Planar`` maps),
            :math:`b = 0`, and the free parameter is Pyro's raw :math:`u` (the map reads
            :math:`u - \log(e - 1)\, w / \lVert w\rVert^2` through pyro-nf's constraint).
            An optimizer then takes Pyro's steps (up to rounding) through pyro-nf's
            faster fused chain.

    Example:
        >>> layer = PlanarLayer(3, depth=2)
        >>> layer.num_params
        14
        >>> x = torch.randn(4, 3)
        >>> torch.equal(layer.transform()(x), x)   # identity at initialisation
        True
        >>> from pyro_nf.transforms import planar_constraint
        >>> params = PlanarLayer(2, depth=1000, init="random").params.detach()
        >>> u, w, _ = params.reshape(1000, 5).split([2, 2, 1], dim=-1)
        >>> m = planar_constraint(u, w)[1]    # w . u_hat = softplus(a) - 1 for the drawn a = w . u
        >>> bool((m > -0.69).all() and (m < 0.32).all()), round(float(m.mean()), 1)
        (True, -0.3)
        >>> import pyro.distributions.transforms as T
        >>> _ = torch.manual_seed(0); pyros = [T.Planar(2) for _ in range(2)]
        >>> _ = torch.manual_seed(0); layer = PlanarLayer(2, depth=2, init="pyro")
        >>> x = torch.randn(3, 2)
        >>> torch.allclose(layer.transform()(x), pyros[1](pyros[0](x)))   # Pyro's maps
        True
    """

    family = "planar"

    def __init__(
        self, dim: int, depth: int = 1, amortized: bool = False, init: MapInit = "identity"
    ) -> None:
        super().__init__(dim, amortized)
        self.depth = check_positive_int("depth", depth)
        check_parameter_count("depth", self.depth * (2 * self.dim + 1), "the planar layer")
        self.init = check_init(init)
        self._own_params(self._draw_params())

    def _draw_params(self) -> torch.Tensor:
        bound = self.dim**-0.5
        if self.init == "random":
            raw = torch.empty(self.depth, 2 * self.dim + 1).uniform_(-bound, bound)
            u, w, b = raw.split([self.dim, self.dim, 1], dim=-1)
            u = _from_pyro_coordinates(u, w)  # the unshifted constraint's map, stored shifted
            return torch.cat([u, w, b], dim=-1).reshape(-1)
        if self.init == "pyro":  # Pyro's Planar.reset_parameters, map by map; stored unshifted
            wu = [torch.empty(self.dim).uniform_(-bound, bound) for _ in range(2 * self.depth)]
            w, u = torch.stack(wu).reshape(self.depth, 2, self.dim).unbind(1)
            return torch.cat([u, w, torch.zeros(self.depth, 1)], dim=-1).reshape(-1)
        u = torch.zeros(self.depth, self.dim)
        w = torch.randn(self.depth, self.dim) / self.dim**0.5
        b = torch.zeros(self.depth, 1)
        return torch.cat([u, w, b], dim=-1).reshape(-1)

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        p = params.unflatten(-1, (self.depth, 2 * self.dim + 1))
        u, w, b = p.split([self.dim, self.dim, 1], dim=-1)
        if self.init == "pyro":
            u = _from_pyro_coordinates(u, w)
        return PlanarTransform(u, w, b.squeeze(-1))

    # With init="pyro" the same numbers mean other maps, so the state_dict names the coordinates:
    # such a state loads only into a layer built with init="pyro", and vice versa.
    def _params_key(self, prefix: str) -> tuple[str, str]:
        name = prefix + ("initial_params" if self.amortized else "params")
        return name, name + PYRO_COORDINATES_SUFFIX

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # noqa: ANN001
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key, pyro_key = self._params_key(prefix)
        if self.init == "pyro" and key in destination:
            destination[pyro_key] = destination.pop(key)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:  # noqa: ANN001
        key, pyro_key = self._params_key(prefix)
        error_msgs = args[-1]
        if self.init == "pyro" and pyro_key in state_dict:
            state_dict[key] = state_dict.pop(pyro_key)
        elif self.init == "pyro" and key in state_dict:
            error_msgs.append(
                f"{key}: saved by a planar layer in pyro-nf's coordinates (init='identity' or "
                "'random') but loaded into one built with init='pyro' (Pyro's coordinates); "
                "build the flow with the init it was saved with"
            )
        elif self.init != "pyro" and pyro_key in state_dict:
            error_msgs.append(
                f"{key}: saved by a planar layer built with init='pyro' (Pyro's coordinates) "
                f"but loaded into one built with init={self.init!r}; build the flow with "
                "init='pyro'"
            )
        super()._load_from_state_dict(state_dict, prefix, *args)


def _from_pyro_coordinates(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    r"""pyro-nf's raw :math:`u` of the planar map that Pyro's raw :math:`u` gives with ``w``:
    :math:`u - \log(e - 1)\, w / \lVert w\rVert^2` (shapes ``(..., D)``), so that both
    constraints yield the same :math:`\hat u`."""
    w_sq = (w * w).sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return u - PLANAR_SHIFT * w / w_sq


class RadialLayer(FlowLayer):
    r"""``depth`` radial maps (see :mod:`pyro_nf.transforms.radial`); ``K(D + 2)`` parameters.

    Args:
        dim, depth, amortized: as for every layer.
        init: ``"identity"`` (default): :math:`\alpha' = \beta' = 0`, so :math:`\beta = 0`
            (exactly the identity), and centres :math:`z_0 \sim \mathcal N(0, I)`.
            ``"random"``: :math:`z_0, \alpha', \beta' \sim \mathcal U(-1/\sqrt D, 1/\sqrt D)`,
            the start of Pyro's ``Radial`` (whose :math:`\alpha = \operatorname{softplus}(\alpha')`
            and :math:`\beta = -\alpha + \operatorname{softplus}(\beta')` are pyro-nf's too). Each
            map then starts as a mild contraction or expansion about a centre near the origin,
            different from draw to draw. ``"pyro"`` is the same start (Pyro's coordinates are
            pyro-nf's for radial maps).

    Example:
        >>> layer = RadialLayer(2, depth=3)
        >>> layer.num_params
        12
        >>> x = torch.randn(4, 2)
        >>> torch.equal(layer.transform()(x), x)   # identity at initialisation
        True
        >>> params = RadialLayer(2, depth=1000, init="random").params.detach()
        >>> bool(params.abs().max() <= 2**-0.5)
        True
    """

    family = "radial"

    def __init__(
        self, dim: int, depth: int = 1, amortized: bool = False, init: MapInit = "identity"
    ) -> None:
        super().__init__(dim, amortized)
        self.depth = check_positive_int("depth", depth)
        check_parameter_count("depth", self.depth * (self.dim + 2), "the radial layer")
        self.init = check_init(init)
        self._own_params(self._draw_params())

    def _draw_params(self) -> torch.Tensor:
        if self.init in ("random", "pyro"):
            bound = self.dim**-0.5
            return torch.empty(self.depth * (self.dim + 2)).uniform_(-bound, bound)
        z0 = torch.randn(self.depth, self.dim)
        ab = torch.zeros(self.depth, 2)
        return torch.cat([z0, ab], dim=-1).reshape(-1)

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        p = params.unflatten(-1, (self.depth, self.dim + 2))
        z0, alpha_raw, beta_raw = p.split([self.dim, 1, 1], dim=-1)
        return RadialTransform(z0, alpha_raw.squeeze(-1), beta_raw.squeeze(-1))


class DiagonalAffineLayer(FlowLayer):
    r"""``y = loc + softplus(ρ) ⊙ x``; ``2D`` parameters. On standard normal noise this is the
    learnable diagonal Gaussian base :math:`\mathcal N(\text{loc}, \operatorname{diag}\sigma^2)`.

    Args:
        dim: ``D``.
        init_loc: initial ``loc`` (scalar or ``(D,)``).
        init_scale: initial ``σ`` (positive scalar or ``(D,)``).
        amortized: take ``loc`` and ``ρ`` from the context network.
        positive: ``"softplus"`` (default) or ``"exp"``: how ``σ`` is made positive (see
            :data:`pyro_nf.transforms.affine.POSITIVE_MAPS`).

    Example:
        >>> layer = DiagonalAffineLayer(2, init_loc=1.0, init_scale=0.5)
        >>> layer.transform()(torch.zeros(2))
        tensor([1., 1.], grad_fn=<...>)
    """

    is_map = False

    def __init__(
        self,
        dim: int,
        init_loc: float | torch.Tensor = 0.0,
        init_scale: float | torch.Tensor = 1.0,
        amortized: bool = False,
        positive: str = "softplus",
    ) -> None:
        super().__init__(dim, amortized)
        check_parameter_count("dim", 2 * self.dim, "the affine layer")
        loc = torch.as_tensor(init_loc, dtype=torch.get_default_dtype()).expand(dim).clone()
        scale = torch.as_tensor(init_scale, dtype=torch.get_default_dtype()).expand(dim).clone()
        if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
            raise ValueError(f"init_scale: expected positive finite values, got {scale.tolist()}")
        self.positive = positive
        self._own_params(torch.cat([loc, raw_from_scale(scale, positive)]))

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        loc, raw = params.split([self.dim, self.dim], dim=-1)
        return DiagonalAffineTransform(loc, raw, self.positive)


class LowerTriangularAffineLayer(FlowLayer):
    r"""``y = loc + L x`` with a lower-triangular ``L`` (positive diagonal); ``2D + D(D-1)/2``
    parameters. On standard normal noise: the full-covariance Gaussian
    :math:`\mathcal N(\text{loc}, LL^\top)`.

    Args:
        dim: ``D``.
        init_loc: initial ``loc`` (scalar or ``(D,)``).
        init_scale_tril: initial ``L`` (a positive scalar for ``s·I``, or a ``(D, D)`` lower
            triangular matrix with a positive diagonal, e.g. a Cholesky factor).
        amortized: take the parameters from the context network.
        positive: ``"softplus"`` (default) or ``"exp"``: how the diagonal is made positive.

    Example:
        >>> layer = LowerTriangularAffineLayer(2, init_scale_tril=torch.tensor([[2.0, 0.0], [1.0, 0.5]]))
        >>> layer.transform().scale_tril
        tensor([[2.0000, 0.0000],
                [1.0000, 0.5000]], grad_fn=<AddBackward0>)
    """

    is_map = False

    def __init__(
        self,
        dim: int,
        init_loc: float | torch.Tensor = 0.0,
        init_scale_tril: float | torch.Tensor = 1.0,
        amortized: bool = False,
        positive: str = "softplus",
    ) -> None:
        super().__init__(dim, amortized)
        check_parameter_count("dim", 2 * self.dim + self.dim * (self.dim - 1) // 2, "the layer")
        dtype = torch.get_default_dtype()
        loc = torch.as_tensor(init_loc, dtype=dtype).expand(dim).clone()
        tril = torch.as_tensor(init_scale_tril, dtype=dtype)
        tril = tril * torch.eye(dim, dtype=dtype) if tril.dim() == 0 else tril.clone()
        if tril.shape != (dim, dim) or not bool(torch.isfinite(tril).all()):
            raise ValueError(
                f"init_scale_tril: expected a positive scalar or a finite ({dim}, {dim}) matrix, got shape {tuple(tril.shape)}"
            )
        diag = tril.diagonal()
        if not bool((diag > 0).all()):
            raise ValueError(f"init_scale_tril: expected a positive diagonal, got {diag.tolist()}")
        rows, cols = torch.tril_indices(dim, dim, -1)
        self.positive = positive
        self._own_params(torch.cat([loc, raw_from_scale(diag, positive), tril[rows, cols]]))

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        loc, raw, off = params.split([self.dim, self.dim, self.num_params - 2 * self.dim], dim=-1)
        return LowerTriangularAffineTransform(loc, raw, off, self.positive)


class FixedAffineLayer(FlowLayer):
    r"""A *fixed* affine map ``y = loc + L x`` (buffers, no parameters): a preconditioner.

    :class:`~pyro_nf.FlowGuide` puts its Laplace (or initial) location and scale here, so that
    every learnable parameter before it lives in whitened, unit-scale coordinates.

    Args:
        loc: shape ``(D,)``.
        scale_tril: a lower-triangular ``(D, D)`` matrix with a positive diagonal.

    Example:
        >>> layer = FixedAffineLayer(torch.tensor([1.0, 2.0]), torch.diag(torch.tensor([3.0, 4.0])))
        >>> layer.transform()(torch.ones(2)), list(layer.parameters())
        (tensor([4., 6.]), [])
    """

    is_map = False

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> None:
        loc = torch.as_tensor(loc)
        dim = loc.numel()
        super().__init__(dim)
        scale_tril = torch.as_tensor(scale_tril, dtype=loc.dtype)
        if scale_tril.shape != (dim, dim) or not bool(torch.isfinite(scale_tril).all()):
            raise ValueError(
                f"scale_tril: expected a finite ({dim}, {dim}) matrix, got shape {tuple(scale_tril.shape)}"
            )
        if not bool((scale_tril.diagonal() > 0).all()):
            raise ValueError(
                f"scale_tril: expected a positive diagonal, got {scale_tril.diagonal().tolist()}"
            )
        self.register_buffer("loc", loc.reshape(dim).clone())
        self.register_buffer("scale_tril", scale_tril.tril().clone())

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        return LowerTriangularAffineTransform.from_scale_tril(self.loc, self.scale_tril)


class AutoregressiveLayer(FlowLayer):
    r"""An IAF (``invert=False``) or MAF (``invert=True``) layer around a MADE network.

    The MADE takes the context (if ``context_dim`` is set) as an extra input. See
    :mod:`pyro_nf.transforms.autoregressive` for the math and the two ``update`` rules.

    Example:
        >>> layer = AutoregressiveLayer(3, hidden=(16,))
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(layer.transform()(x), x)   # identity at initialisation
        True
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] | None = None,
        context_dim: int | None = None,
        update: Literal["sigmoid", "affine"] = "sigmoid",
        invert: bool = False,
        gate_bias: float = DEFAULT_GATE_BIAS,
        scale_bound: float = DEFAULT_SCALE_BOUND,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(dim)
        check_choice("update", update, ("sigmoid", "affine"))
        if context_dim is not None:
            check_positive_int("context_dim", context_dim)
        if hidden is not None:
            hidden = check_widths("hidden", hidden, allow_empty=False)
        hidden = hidden if hidden is not None else default_hidden(dim, context_dim)
        self.context_dim = context_dim
        self.made = MADE(dim, hidden, num_params=2, context_dim=context_dim, activation=activation)
        self.update, self.invert = update, invert
        self.family = "maf" if invert else "iaf"
        self.gate_bias, self.scale_bound = gate_bias, scale_bound

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        return AutoregressiveTransform(
            self.made,
            context if self.context_dim is not None else None,
            update=self.update,
            invert=self.invert,
            gate_bias=self.gate_bias,
            scale_bound=self.scale_bound,
        )


class PermuteLayer(FlowLayer):
    """A fixed permutation of the coordinates (``"reverse"``, ``"random"`` with a seed, or given).

    Example:
        >>> PermuteLayer(3).transform()(torch.tensor([1.0, 2.0, 3.0]))
        tensor([3., 2., 1.])
    """

    is_map = False

    def __init__(self, dim: int, perm: str | torch.Tensor = "reverse", seed: int = 0) -> None:
        super().__init__(dim)
        if isinstance(perm, str) or not isinstance(perm, (torch.Tensor, list, tuple)):
            if perm == "reverse":
                perm_t = torch.arange(dim - 1, -1, -1)
            elif perm == "random":
                perm_t = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
            else:
                raise ValueError(
                    f"perm: expected 'reverse', 'random' or a permutation tensor, got {perm!r}"
                )
        else:
            perm_t = torch.as_tensor(perm).long() if _is_integer_sequence(perm) else None
            if perm_t is None or not torch.equal(perm_t.sort().values, torch.arange(dim)):
                raise ValueError(
                    f"perm: expected 'reverse', 'random' or a permutation of 0..{dim - 1}, "
                    f"got {perm!r}"
                )
        self.register_buffer("perm", perm_t)
        self._reverse = bool(torch.equal(perm_t, torch.arange(dim - 1, -1, -1)))

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        return Reverse(self.dim) if self._reverse else Permute(self.perm)


def _is_integer_sequence(perm: torch.Tensor | Sequence[int]) -> bool:
    """Whether ``perm`` is an integer tensor or a list/tuple of integers (1-D)."""
    if isinstance(perm, torch.Tensor):
        return perm.dim() == 1 and not perm.is_floating_point() and perm.dtype != torch.bool
    return all(isinstance(i, int) and not isinstance(i, bool) for i in perm)


def coupling_widths(
    dim: int, context_dim: int | None, hidden: Sequence[int] | None
) -> tuple[int, ...]:
    """The checks every coupling layer makes (``dim >= 2``, ``context_dim``, ``hidden``) and its
    conditioner's hidden widths (``hidden``, else :func:`~pyro_nf.utils.nn.default_hidden`).

    Example:
        >>> coupling_widths(4, None, [8])
        (8,)
    """
    if dim < 2:
        raise ValueError(f"dim: coupling layers need at least 2 coordinates, got {dim}")
    if context_dim is not None:
        check_positive_int("context_dim", context_dim)
    widths = check_widths("hidden", hidden) if hidden is not None else None
    return widths if widths is not None else default_hidden(dim, context_dim)


class CouplingLayer(FlowLayer):
    r"""A NICE (``kind="additive"``) or RealNVP (``kind="affine"``) coupling layer.

    Coordinates with ``i % 2 == parity`` condition the others; alternate ``parity`` between
    layers. The network is an MLP ``cat([context, b ⊙ x]) -> (s, t)`` whose last layer starts
    at zero (identity at initialisation). See :mod:`pyro_nf.transforms.coupling`.

    Example:
        >>> layer = CouplingLayer(4, parity=0, hidden=(16,))
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(layer.transform()(x), x)
        True
    """

    def __init__(
        self,
        dim: int,
        parity: int = 0,
        hidden: Sequence[int] | None = None,
        context_dim: int | None = None,
        kind: Literal["affine", "additive"] = "affine",
        scale_bound: float = DEFAULT_SCALE_BOUND,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(dim)
        check_choice("kind", kind, ("affine", "additive"))
        hidden = coupling_widths(dim, context_dim, hidden)
        self.context_dim, self.kind, self.scale_bound = context_dim, kind, scale_bound
        self.family = "nice" if kind == "additive" else "realnvp"
        self.register_buffer(
            "mask", (torch.arange(dim) % 2 == parity % 2).to(torch.get_default_dtype())
        )
        self.net = MLP(
            dim + (context_dim or 0), 2 * dim, hidden, activation=activation, zero_last=True
        )

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        return CouplingTransform(
            self.net,
            self.mask,
            context if self.context_dim is not None else None,
            kind=self.kind,
            scale_bound=self.scale_bound,
        )


# -- neural spline flows (Durkan et al. 2019) ----------------------------------------------------


def _widths(hidden: object, allow_empty: bool) -> tuple[int, ...] | None:
    """``hidden`` checked as layer widths, or ``None`` (the default widths)."""
    return None if hidden is None else check_widths("hidden", hidden, allow_empty=allow_empty)


def check_spline_grid(bins: Any, bound: Any) -> tuple[int, float]:
    """``(bins, bound)`` checked: ``bins`` a positive integer, ``bound`` a positive finite number.

    Example:
        >>> check_spline_grid(8, 3)
        (8, 3.0)
    """
    bins = check_positive_int("bins", bins)
    check_float("bound", bound, "a positive finite float", lambda v: v > 0)
    return bins, float(bound)


class SplineAutoregressiveLayer(FlowLayer):
    r"""An autoregressive rational-quadratic spline layer: a MADE with ``3K - 1`` outputs per
    coordinate (``K = bins``) and identity tails outside ``[-bound, bound]``. See
    :mod:`pyro_nf.transforms.spline`. ``invert=False``: IAF orientation (one-pass sampling);
    ``invert=True``: MAF orientation (one-pass density). The identity at initialisation.

    Example:
        >>> layer = SplineAutoregressiveLayer(3, hidden=(16,), bins=4)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(layer.transform()(x), x)
        True
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] | None = None,
        context_dim: int | None = None,
        bins: int = DEFAULT_BINS,
        bound: float = DEFAULT_BOUND,
        invert: bool = False,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(dim)
        self.bins, self.bound = check_spline_grid(bins, bound)
        if context_dim is not None:
            check_positive_int("context_dim", context_dim)
        hidden = _widths(hidden, allow_empty=False) or default_hidden(dim, context_dim)
        self.context_dim, self.invert = context_dim, bool(invert)
        self.made = MADE(dim, hidden, 3 * self.bins - 1, context_dim, activation=activation)

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        ctx = context if self.context_dim is not None else None
        return SplineAutoregressiveTransform(self.made, ctx, self.bound, self.invert)


class SplineCouplingLayer(FlowLayer):
    r"""A rational-quadratic spline coupling layer: the coordinates with ``i % 2 == parity``
    (and the context) condition splines of ``K = bins`` bins on the others, through an MLP whose
    last layer starts at zero (the identity). One pass in both directions; identity tails
    outside ``[-bound, bound]``. See :mod:`pyro_nf.transforms.spline`.

    Example:
        >>> layer = SplineCouplingLayer(4, parity=1, hidden=(16,))
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(layer.transform()(x), x)
        True
    """

    def __init__(
        self,
        dim: int,
        parity: int = 0,
        hidden: Sequence[int] | None = None,
        context_dim: int | None = None,
        bins: int = DEFAULT_BINS,
        bound: float = DEFAULT_BOUND,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(dim)
        hidden = coupling_widths(dim, context_dim, hidden)
        self.bins, self.bound = check_spline_grid(bins, bound)
        self.context_dim = context_dim
        coords = torch.arange(dim)
        on = coords % 2 == parity % 2
        self.register_buffer("cond", coords[on], persistent=False)
        self.register_buffer("free", coords[~on], persistent=False)
        self.register_buffer("unsort", torch.cat([coords[on], coords[~on]]).argsort(), False)
        n_in, n_out = int(on.sum()) + (context_dim or 0), int((~on).sum()) * (3 * self.bins - 1)
        self.net = MLP(n_in, n_out, hidden, activation=activation, zero_last=True)

    def build(self, params: torch.Tensor | None, context: torch.Tensor | None) -> FlowTransform:
        ctx = context if self.context_dim is not None else None
        return SplineCouplingTransform(
            self.net, self.cond, self.free, ctx, self.bound, unsort=self.unsort
        )
