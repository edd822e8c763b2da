r"""Automatic (partial) non-centering of a model's location–scale sites.

A hierarchical model written the natural, *centered* way,
:math:`\theta \sim \mathcal N(\mu, \tau^2)` with :math:`\mu, \tau` latent, has a funnel-shaped
posterior when the data say little about :math:`\theta`; the *non-centered* form
:math:`\theta = \mu + \tau\tilde\theta`, :math:`\tilde\theta \sim \mathcal N(0, 1)` has a nearly
Gaussian one; with informative data it is the other way round. Gorinova, Moore & Hoffman (2020)
interpolate with a centeredness :math:`c \in [0, 1]` per coordinate,

.. math::

    \tilde\theta \sim \mathcal F(c\,\mu,\ \tau^{c}),\qquad
    \theta = \mu + \tau^{1-c}\,(\tilde\theta - c\,\mu),

(:math:`c = 1`: the user's model; :math:`c = 0`: fully non-centered) and learn :math:`c` jointly
with the variational posterior ("VIP"). For any location–scale family :math:`\mathcal F`
(Normal, StudentT, Cauchy, Laplace) the map is a bijection with
:math:`\partial\theta/\partial\tilde\theta = \tau^{1-c}`, so

.. math::

    \log q(\theta) = \log q(\tilde\theta) - (1 - c)\log\tau

and the ELBO of the user's model is unchanged by where the guide works.

:func:`loc_scale_sites` finds the sites to treat (latent, a location–scale family, with a
location or scale depending on another latent site, by :func:`pyro.infer.inspect.get_dependencies`);
:class:`LearnableCentering` holds the centeredness parameters and gives the reparameterized model
(:meth:`~LearnableCentering.model`, where site ``theta`` becomes ``theta_decentered``) and the way
back to the user's sites (:meth:`~LearnableCentering.to_original`, with the log-Jacobians above;
:meth:`~LearnableCentering.to_original_batched` for draws). :func:`auto_reparam` does both steps.

References:
    Gorinova, Moore & Hoffman, *Automatic Reparameterisation of Probabilistic Programs*,
    ICML 2020.
    Papaspiliopoulos, Roberts & Sköld, *A General Framework for the Parametrization of
    Hierarchical Models*, Statistical Science 22(1), 2007.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.inspect import get_dependencies
from pyro.infer.reparam.reparam import Reparam
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..diagnostics.draws import check_callable, check_model_kwargs

__all__ = [
    "INIT_CENTEREDNESS",
    "LOC_SCALE_FAMILIES",
    "LearnableCentering",
    "auto_reparam",
    "decentered_name",
    "loc_scale_sites",
]

#: Location–scale families that are decentered, with their shape parameters (copied unchanged).
LOC_SCALE_FAMILIES: dict[type, tuple[str, ...]] = {
    dist.Normal: (),
    dist.StudentT: ("df",),
    dist.Cauchy: (),
    dist.Laplace: (),
}


def decentered_name(name: str) -> str:
    """The name of the site that replaces ``name`` in the reparameterized model.

    Example:
        >>> decentered_name("theta")
        'theta_decentered'
    """
    return f"{name}_decentered"


def _unwrap(fn: Any) -> Any:
    """The base distribution under ``Independent`` wrappers."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def _latent_sites(trace: poutine.Trace) -> list[str]:
    """Names of the latent (unobserved, non-auxiliary) sample sites of ``trace``, in order."""
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site["infer"].get("is_auxiliary")
        and not site_is_subsample(site)
    ]


def loc_scale_sites(
    model: Callable,
    *args: Any,
    model_kwargs: dict[str, Any] | None = None,
    init_loc_fn: Callable | None = None,
) -> tuple[str, ...]:
    """The latent sites of ``model(*args, **model_kwargs)`` worth decentering: their distribution
    is one of :data:`LOC_SCALE_FAMILIES` (possibly ``to_event``) and its parameters depend on
    another latent site. ``()`` if there are none, or if the dependencies cannot be traced.
    ``init_loc_fn`` (e.g. Pyro's ``init_to_median``) gives the latent values of the traces, as
    in an autoguide (needed where a site cannot be sampled, e.g. ``ImproperUniform``).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        ...     tau = pyro.sample("tau", dist.HalfNormal(1.0))
        ...     with pyro.plate("groups", 3):
        ...         pyro.sample("theta", dist.Normal(mu, tau))
        >>> loc_scale_sites(model)
        ('theta',)
    """
    check_callable("model", model, "a callable Pyro model")
    kwargs = check_model_kwargs(model_kwargs)
    traced = model if init_loc_fn is None else InitMessenger(init_loc_fn)(model)
    with poutine.block():
        trace = poutine.trace(traced).get_trace(*args, **kwargs)
        try:
            deps = get_dependencies(traced, args, kwargs)["prior_dependencies"]
        except Exception:  # noqa: BLE001 - untraceable models are simply left centered
            return ()
    latent = _latent_sites(trace)
    found = []
    for name in latent:
        if type(_unwrap(trace.nodes[name]["fn"])) not in LOC_SCALE_FAMILIES:
            continue
        upstream = set(deps.get(name, {})) - {name}
        if upstream & set(latent):
            found.append(name)
    return tuple(found)


def floored_log_scale(scale: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\max(\sigma, \sigma_{\min})` with :math:`\sigma_{\min}` the dtype's smallest
    normal number to the power 1/4 (about 1e-9.5 in float32, 1e-77 in float64).

    Below :math:`\sigma_{\min}` the gradient of a location–scale log-density, which divides by
    :math:`\sigma^4`, is not representable in the dtype (it is ``inf``, then ``NaN``) even in the
    user's own centered model; the decentered model therefore treats such a scale as
    :math:`\sigma_{\min}` (no gradient flows below it) instead of producing ``NaN``.

    Example:
        >>> floored_log_scale(torch.tensor([1.0, 0.0])).tolist()   # float32: log(1.17e-38) / 4
        [0.0, -21.834...]
    """
    floor = torch.finfo(scale.dtype).tiny ** 0.25
    return scale.clamp_min(floor).log()


class _Decenter(Reparam):
    """Pyro reparameterizer for one site, with the centeredness of its owner (see the module
    docstring); records :math:`\\log|\\partial\\theta/\\partial\\tilde\\theta|` summed over the
    event dimensions in ``owner.log_dets``."""

    def __init__(self, owner: LearnableCentering, name: str) -> None:
        self.owner, self.name = owner, name

    def apply(self, msg: dict[str, Any]) -> dict[str, Any]:
        fn, event_dim = self._unwrap(msg["fn"])
        c = self.owner.centered(self.name).to(dtype=fn.loc.dtype, device=fn.loc.device)
        params = {key: getattr(fn, key) for key in LOC_SCALE_FAMILIES[type(fn)]}
        log_scale = floored_log_scale(fn.scale)
        decentered_fn = type(fn)(loc=fn.loc * c, scale=torch.exp(c * log_scale), **params)
        value = msg["value"]
        obs = None
        if value is not None:  # conditioned on the user's site: invert the map
            obs = (value - fn.loc) * torch.exp((c - 1) * log_scale) + c * fn.loc
        decentered = pyro.sample(
            decentered_name(self.name),
            self._wrap(decentered_fn, event_dim),
            obs=obs,
            infer={"is_observed": msg["is_observed"]},
        )
        if value is None:
            value = fn.loc + torch.exp((1 - c) * log_scale) * (decentered - c * fn.loc)
        log_det = torch.broadcast_to((1 - c) * log_scale, value.shape)
        self.owner.log_dets[self.name] = sum_rightmost(log_det, event_dim)
        new_fn = dist.Delta(value, event_dim=event_dim).mask(False)
        return {"fn": new_fn, "value": value, "is_observed": True}


#: The centeredness :func:`auto_reparam` (and so :class:`~pyro_nf.FlowGuide`) starts from:
#: mostly non-centered. Measured on centered eight schools and the 50-group hierarchical model
#: (``benchmarks/hard_posteriors.py``): the learned values end near 0.1–0.2 from any start,
#: and a start at 0.5 left the flow a long way to travel through the funnel.
INIT_CENTEREDNESS = 0.2


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class LearnableCentering(nn.Module):
    r"""Partial non-centering of ``sites`` of ``model`` with a centeredness per coordinate.

    Args:
        model: the user's Pyro model.
        sites: names of its location–scale latent sites (e.g. from :func:`loc_scale_sites`).
        shapes: each site's shape (batch and event dimensions) in one model run.
        prototype: a trace of ``model`` (the user's latent sites, their order and plates).
        init_centered: the starting centeredness :math:`c \in (0, 1)` (``0.5``: halfway).
        learnable: learn :math:`c = \mathrm{sigmoid}(\ell)` (the parameters ``logits``) or keep
            it fixed at ``init_centered`` (which may then be 0 or 1).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     tau = pyro.sample("tau", dist.HalfNormal(1.0))
        ...     pyro.sample("theta", dist.Normal(1.0, tau))
        >>> rep = auto_reparam(model, init_centered=0.5)
        >>> sorted(pyro.poutine.trace(rep.model).get_trace().stochastic_nodes)
        ['tau', 'theta_decentered']
        >>> values = {"tau": torch.tensor(4.0), "theta_decentered": torch.tensor(3.0)}
        >>> out, log_dets = rep.to_original(values)    # c = 0.5: 1 + 2 * (3 - 0.5)
        >>> out["theta"].detach().item(), round(log_dets["theta"].detach().item(), 4)  # 0.5 log 4
        (6.0, 0.6931)
    """

    def __init__(
        self,
        model: Callable,
        sites: Sequence[str],
        shapes: dict[str, torch.Size],
        prototype: poutine.Trace,
        init_centered: float = 0.5,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        check_callable("model", model, "a callable Pyro model")
        lo, hi = (0.0, 1.0) if not learnable else (1e-6, 1 - 1e-6)
        if not (isinstance(init_centered, int | float) and lo <= init_centered <= hi):
            raise ValueError(
                f"init_centered: expected a number in [{lo:g}, {hi:g}] "
                f"(learnable={learnable}), got {init_centered!r}"
            )
        missing = [s for s in sites if s not in shapes]
        if missing:
            raise ValueError(f"shapes: expected a shape for every site, missing {missing}")
        self.user_model = model
        self.sites, self.learnable = tuple(sites), bool(learnable)
        self.prototype = prototype
        self.latent_names = tuple(_latent_sites(prototype))
        self.log_dets: dict[str, torch.Tensor] = {}
        self._override: float | dict[str, torch.Tensor] | None = None
        start = _logit(init_centered) if learnable else init_centered
        tensors = [_full_like_site(prototype, s, shapes[s], start) for s in self.sites]
        if learnable:
            self.logits = nn.ParameterList([nn.Parameter(t) for t in tensors])
        else:
            for i, t in enumerate(tensors):
                self.register_buffer(f"_fixed_{i}", t)

    @property
    def user_model(self) -> Callable:
        """The user's model (mapping draws back runs it). A pickled copy keeps it only if the
        model itself pickles (a module-level function does, a closure or lambda does not); else
        set it again (``guide.model = model`` on a :class:`~pyro_nf.FlowGuide`)."""
        model = self._user_model[0]
        if model is None:
            raise RuntimeError(
                "LearnableCentering: this copy was unpickled without its model (it did not "
                "pickle); mapping draws back to the model's sites runs the model: set "
                "guide.model = model (or .user_model = model) first"
            )
        return model

    @user_model.setter
    def user_model(self, model: Callable) -> None:
        check_callable("model", model, "a callable Pyro model")
        self._user_model = (model,)  # a tuple: not registered as a submodule

    def __getstate__(self) -> dict[str, Any]:
        """The state to pickle, with the user's model only where it pickles."""
        state = dict(super().__getstate__())
        try:
            pickle.dumps(self._user_model[0])
        except Exception:  # noqa: BLE001 - closures, lambdas, local functions: any pickling error
            state["_user_model"] = (None,)
        return state

    def centered(self, name: str) -> torch.Tensor:
        """The centeredness :math:`c` of site ``name`` (its shape, values in ``[0, 1]``)."""
        i = self.sites.index(name)
        own = torch.sigmoid(self.logits[i]) if self.learnable else getattr(self, f"_fixed_{i}")
        if self._override is None:
            return own
        if isinstance(self._override, dict):
            return self._override[name]
        return torch.full_like(own, float(self._override)).detach()

    @torch.no_grad()
    def set_centered(self, values: dict[str, torch.Tensor]) -> None:
        """Set the centeredness of the sites in ``values`` (``{site: tensor of its shape}``,
        entries in ``(0, 1)``; for fixed centering in ``[0, 1]``)."""
        for name, c in values.items():
            i = self.sites.index(name)
            if self.learnable:
                self.logits[i].copy_(torch.logit(c.to(self.logits[i])))
            else:
                getattr(self, f"_fixed_{i}").copy_(c)

    @contextmanager
    def fixed(self, centered: float | dict[str, torch.Tensor]) -> Iterator[None]:
        """While active, :meth:`centered` is ``centered`` (one number for every coordinate, or
        ``{site: tensor}``) instead of the learned centeredness.

        Example:
            >>> import pyro.distributions as dist
            >>> def model():
            ...     tau = pyro.sample("tau", dist.HalfNormal(1.0))
            ...     pyro.sample("theta", dist.Normal(0.0, tau))
            >>> rep = auto_reparam(model)
            >>> with rep.fixed(0.0):
            ...     rep.centered("theta").item()
            0.0
        """
        saved, self._override = self._override, centered
        try:
            yield
        finally:
            self._override = saved

    def frozen(self) -> LearnableCentering:
        """A copy at the current centeredness, fixed (no parameters, no gradient): what a
        sampler or a traced potential needs. It shares the model and the prototype trace.

        Example:
            >>> import pyro.distributions as dist
            >>> def model():
            ...     tau = pyro.sample("tau", dist.HalfNormal(1.0))
            ...     pyro.sample("theta", dist.Normal(0.0, tau))
            >>> rep = auto_reparam(model, init_centered=0.3)
            >>> still = rep.frozen()
            >>> still.learnable, list(still.parameters()), round(still.centered("theta").item(), 3)
            (False, [], 0.3)
        """
        current = {s: self.centered(s).detach().clone() for s in self.sites}
        shapes = {s: c.shape for s, c in current.items()}
        copy = LearnableCentering(
            self.user_model, self.sites, shapes, self.prototype, 0.0, learnable=False
        )
        copy.set_centered(current)
        return copy

    def recenter(
        self,
        values: dict[str, torch.Tensor],
        centered_from: float | dict[str, torch.Tensor],
        centered_to: float | dict[str, torch.Tensor],
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """The reparameterized model's latent ``values`` at centeredness ``centered_from``,
        expressed at ``centered_to`` (the same point of the user's model; differentiable)."""
        with self.fixed(centered_from):
            originals, _ = self.to_original(values, *args, **kwargs)
        with self.fixed(centered_to):
            return self.to_decentered(originals, *args, **kwargs)

    def _config(self, msg: dict[str, Any]) -> Reparam | None:
        return _Decenter(self, msg["name"]) if msg["name"] in self.sites else None

    def reparameterized(self, model: Callable) -> Callable:
        """``model`` with this object's sites decentered (a model with the same sites as the
        user's, e.g. the user's model itself)."""
        return poutine.reparam(model, config=self._config)

    def model(self, *args: Any, **kwargs: Any) -> Any:
        """The reparameterized model: ``theta`` is drawn as ``theta_decentered`` and computed."""
        return self.reparameterized(self.user_model)(*args, **kwargs)

    def to_original(
        self, values: dict[str, torch.Tensor], *args: Any, **kwargs: Any
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        r"""The user's latent sites from the reparameterized model's latent ``values``.

        Runs :meth:`model` conditioned on ``values`` (hidden from other handlers; inside any
        plates already active, e.g. vectorized particles) and returns ``(originals,
        log_dets)``: every latent site of the user's model, and for each decentered site
        :math:`\log|\partial\theta/\partial\tilde\theta|` summed over its event dimensions.
        """
        self.log_dets = {}
        with poutine.block():
            trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(
                *args, **kwargs
            )
        originals = {name: trace.nodes[name]["value"] for name in self.latent_names}
        return originals, dict(self.log_dets)

    def to_decentered(
        self, values: dict[str, torch.Tensor], *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """The inverse of :meth:`to_original`: the reparameterized model's latent values from
        the user's latent ``values``."""
        # conditioned inside the reparameterizer, so that it sees the values and inverts them
        conditioned = poutine.condition(self.user_model, data=values)
        with poutine.block():
            trace = poutine.trace(poutine.reparam(conditioned, config=self._config)).get_trace(
                *args, **kwargs
            )
        names = [decentered_name(n) if n in self.sites else n for n in self.latent_names]
        return {name: trace.nodes[name]["value"] for name in names}

    @torch.no_grad()
    def to_original_batched(
        self, samples: dict[str, torch.Tensor], *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """:meth:`to_original` for ``n`` draws at once, ``{site: (n, *shape)}`` in and out
        (a vectorizing plate left of the model's plates; the model must broadcast over it)."""
        first = next(iter(samples.values()))
        n = first.shape[0]
        nesting = _max_plate_nesting(self.prototype)
        shaped = {k: _left_pad(v, nesting, self._batch_dims(k)) for k, v in samples.items()}
        with pyro.plate("_centering_draws", n, dim=-nesting - 1):
            originals, _ = self.to_original(shaped, *args, **kwargs)
        out = {}
        for name in self.latent_names:
            node = self.prototype.nodes[name]
            shape = node["value"].shape
            pad = max(0, nesting - len(node["fn"].batch_shape))
            target = torch.broadcast_shapes(originals[name].shape, (n,) + (1,) * pad + shape)
            out[name] = torch.broadcast_to(originals[name], target).reshape(n, *shape)
        return out

    def _batch_dims(self, name: str) -> int:
        """Batch dimensions of the reparameterized model's site ``name`` (prototype)."""
        base = name[: -len("_decentered")] if name.endswith("_decentered") else name
        return len(self.prototype.nodes[base]["fn"].batch_shape)


def _full_like_site(
    trace: poutine.Trace, name: str, shape: torch.Size, value: float
) -> torch.Tensor:
    """A tensor of ``shape`` filled with ``value``, with the dtype and device of site ``name``."""
    ref = trace.nodes[name]["value"]
    return torch.full(tuple(shape), float(value), dtype=ref.dtype, device=ref.device)


def _max_plate_nesting(trace: poutine.Trace) -> int:
    """The deepest vectorized plate of ``trace`` (0 if none)."""
    dims = [
        -frame.dim
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims, default=0)


def _left_pad(value: torch.Tensor, nesting: int, batch_dims: int) -> torch.Tensor:
    """``(n, *shape)`` as ``(n, 1, ..., *shape)`` so that ``n`` sits left of ``nesting`` plates."""
    pad = max(0, nesting - batch_dims)
    return value.reshape(value.shape[:1] + (1,) * pad + value.shape[1:])


def auto_reparam(
    model: Callable,
    *args: Any,
    model_kwargs: dict[str, Any] | None = None,
    init_centered: float = INIT_CENTEREDNESS,
    learnable: bool = True,
    init_loc_fn: Callable | None = None,
) -> LearnableCentering | None:
    """A :class:`LearnableCentering` of ``model``'s location–scale sites
    (:func:`loc_scale_sites`; ``init_loc_fn`` as there), or ``None`` if it has none; the
    centeredness starts at ``init_centered`` (:data:`INIT_CENTEREDNESS`).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> auto_reparam(model) is None
        True
    """
    kwargs = check_model_kwargs(model_kwargs)
    sites = loc_scale_sites(model, *args, model_kwargs=kwargs, init_loc_fn=init_loc_fn)
    if not sites:
        return None
    traced = model if init_loc_fn is None else InitMessenger(init_loc_fn)(model)
    with poutine.block():
        trace = poutine.trace(traced).get_trace(*args, **kwargs)
    shapes = {name: trace.nodes[name]["value"].shape for name in sites}
    return LearnableCentering(model, sites, shapes, trace, init_centered, learnable)
