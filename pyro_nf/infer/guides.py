r"""Flow guides for any Pyro model.

:class:`FlowGuide` is an autoguide over all continuous latent sites of a model. Like Pyro's
:class:`~pyro.infer.autoguide.AutoContinuous` guides it packs the sites into one unconstrained
vector :math:`u \in \mathbb R^D` (constrained supports go through ``biject_to``, whose
log-Jacobians enter the guide's density), and it models :math:`u` with a normalizing flow

.. math::

    u = \mu_0 + L_0\bigl(a + L\, f(\varepsilon)\bigr),\qquad \varepsilon \sim \mathcal N(0, I_D).

:math:`(\mu_0, L_0)` is a *fixed* preconditioner found before training (``init="laplace"``, the
default unless sites are decentered: the posterior mode of :math:`u` by L-BFGS and Newton
steps, and the Cholesky factor of the inverse Hessian there); :math:`(a, L)` is a learnable affine map (lower triangular, or
diagonal for large :math:`D`) that starts at the identity; the flow layers :math:`f` start at
the identity too. So at step 0 the guide *is* the Laplace approximation, and every learnable
parameter lives in whitened, unit-scale coordinates: Adam's step size means the same thing for a
coefficient whose posterior sd is 1e-3 as for one whose sd is 1e3, and the nonlinearities of
planar/radial/IAF layers act at the scale they were designed for.

By default the guide first *decenters* the model's location–scale sites whose location or scale
is another latent (:mod:`pyro_nf.infer.reparam`): :math:`u` then packs the decentered sites,
and every draw is mapped back to the user's sites with the exact log-Jacobian, so the ELBO,
traces, ``Predictive`` and summaries all see the model as written.

It works with ``SVI`` + ``Trace_ELBO`` (also with vectorized particles), ``RenyiELBO``,
``Predictive``, ``poutine``, and :class:`~pyro.infer.reparam.NeuTraReparam` (flow-preconditioned
HMC/NUTS). ``median`` and ``quantiles`` are Monte Carlo estimates from a seeded stream of
samples (flows have no closed-form marginals).

:class:`AmortizedFlowGuide` gives local latents a per-datum flow posterior computed by an
encoder (the building block of flow VAEs).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial
from typing import Any, get_args

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..diagnostics.draws import check_callable, check_keywords, check_model_kwargs
from ..diagnostics.report import TrustReport, diagnose
from ..flows.flow import Flow
from ..flows.layers import MapInit
from ..flows.registry import family_names, get_family
from ..transforms import ChainTransform
from ..utils.validation import check_float, check_positive_int, check_seed
from .prototype import (
    assemble_flow,
    check_latent_sites,
    initial_affine,
    minus_inf_on_error,
    model_label,
    pushed_start,
)
from .refine import refine
from .reparam import LearnableCentering, auto_reparam, decentered_name

__all__ = [
    "AmortizedFlowGuide",
    "FlowGuide",
    "GUIDE_INITS",
]

#: Up to this many latent dimensions, ``affine="auto"`` uses a full lower-triangular affine map.
#: Above it the D(D+1)/2 entries, each moved ~lr per Adam step, add more noise than they help;
#: with a Laplace preconditioner the correlations are already in the fixed affine map.
MAX_FULL_AFFINE_DIM = 50


def _build_inner_flow(
    spec: str | Flow | Callable[[int], Flow], dim: int, depth: int | None, **kwargs: Any
) -> Flow:
    """The flow layers of a guide (acting in whitened coordinates), from a name, Flow or factory."""
    if isinstance(spec, str):
        family = get_family(spec, use="guide")
        family.check_dim(dim)
        kwargs = {**family.guide_kwargs(dim), **kwargs}
        depth = family.guide_depth_for(dim) if depth is None else depth
        return family.builder(dim, depth=depth, base="standard", **kwargs)
    flow = spec(dim) if not isinstance(spec, Flow) and callable(spec) else spec
    if not isinstance(flow, Flow):
        raise ValueError(
            f"flow: expected a family name, a Flow, or a callable dim -> Flow; got {type(spec).__name__}"
        )
    if flow.dim != dim or flow.context_dim is not None:
        raise ValueError(
            f"flow: expected a directly parameterized Flow of dim {dim} (the model's latent dimension), "
            f"got dim={flow.dim}, context_dim={flow.context_dim}"
        )
    return flow


def _checked_init(init_loc_fn: Callable) -> Callable:
    """Wrap ``init_loc_fn`` so that a bad value is reported as such, naming the site."""

    def init(site: dict) -> torch.Tensor:
        value = init_loc_fn(site)
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"init_loc_fn: expected a tensor for site {site['name']!r}, got {type(value).__name__}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"init_loc_fn: produced non-finite initial values for site {site['name']!r}: "
                f"{int((~torch.isfinite(value)).sum())} of {value.numel()} entries"
            )
        return value

    return init


#: Builder keywords that :class:`FlowGuide` sets itself (not part of ``**flow_kwargs``).
_GUIDE_SET = ("dim", "depth", "context_dim", "base", "context_hidden")
#: :class:`FlowGuide`'s own keywords (a builder keyword of the same name is shadowed by them).
_OWN_KEYWORDS = ("flow", "depth", "init_loc_fn", "init_scale", "affine", "init", "create_plates")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise unless ``value`` is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


#: How a FlowGuide finds the Gaussian its flow starts from (its ``init`` argument).
GUIDE_INITS = ("auto", "laplace", "map", "loc")


def _check_guide_init(init: Any, flow: Any, depth: Any = None) -> None:
    """Raise unless ``init`` is one of the guide's starts; a planar/radial map start (the
    builders' own ``init``) gets a hint saying how to pass it."""
    try:
        _check_choice("init", init, GUIDE_INITS)
    except ValueError as err:
        if isinstance(init, str) and init in get_args(MapInit):
            family = flow if flow in ("planar", "radial") else "planar"
            depth = depth if isinstance(depth, int) and depth > 0 else 8
            raise ValueError(
                f"{err}; {init!r} starts the maps of a planar or radial flow, not the guide: "
                f"pass it to the builder, e.g. FlowGuide(model, flow=lambda dim: "
                f"pyro_nf.{family}(dim, depth={depth}, init={init!r}))"
            ) from None
        raise


def _builder_keywords(builder: Callable) -> tuple[list[str], bool]:
    """The keywords a family builder takes beyond those the guide sets (and its own), and
    whether it also takes ``**kwargs``."""
    params = inspect.signature(builder).parameters.values()
    named = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in _GUIDE_SET
        and p.name not in _OWN_KEYWORDS
    ]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _check_flow_arguments(flow: Any, depth: Any, flow_kwargs: dict[str, Any]) -> None:
    """Check ``flow``, ``depth`` and the builder keywords at construction (before any trace)."""
    names = family_names("guide")
    if isinstance(flow, str):
        if flow not in names:
            raise ValueError(
                f"flow: expected one of {names}, a Flow, or a callable dim -> Flow; got {flow!r}"
            )
    elif isinstance(flow, Flow):
        if flow.context_dim is not None:
            raise ValueError(
                "flow: expected a directly parameterized Flow (context_dim=None), got an "
                f"amortized one (context_dim={flow.context_dim}); use AmortizedFlowGuide for that"
            )
    elif not callable(flow):
        raise ValueError(
            f"flow: expected one of {names}, a Flow, or a callable dim -> Flow; "
            f"got {type(flow).__name__}"
        )
    if depth is not None:
        check_positive_int("depth", depth)
    if not isinstance(flow, str):
        known = sorted({k for n in names for k in _builder_keywords(get_family(n).builder)[0]})
        owner = f"FlowGuide(flow={type(flow).__name__})"
        check_keywords(owner, [k for k in flow_kwargs if k not in known], _OWN_KEYWORDS, False)
        given = ["depth"] * (depth is not None) + sorted(flow_kwargs)
        if given:
            raise ValueError(
                f"{given[0]}: only a flow family name takes depth and builder keywords; "
                f"got flow={type(flow).__name__}, whose layers are already chosen"
            )
        return
    _check_builder_keywords(flow, depth, flow_kwargs)


def _check_builder_keywords(flow: str, depth: int | None, flow_kwargs: dict[str, Any]) -> None:
    """Refuse keywords that neither the guide nor the family's builder takes (naming them, with
    the closest accepted one), and let the builder check the values on a throwaway flow (on a
    forked random stream)."""
    family = get_family(flow, use="guide")
    accepted, any_keyword = _builder_keywords(family.builder)
    if not any_keyword:
        check_keywords(
            f"FlowGuide(flow={flow!r})", flow_kwargs, _OWN_KEYWORDS + tuple(accepted), False
        )
    if flow_kwargs:
        dim = max(family.min_dim, 2)
        with torch.random.fork_rng(devices=[]):
            family.builder(
                dim,
                depth=family.guide_depth_for(dim) if depth is None else depth,
                base="standard",
                **{**family.guide_kwargs(dim), **flow_kwargs},
            )


def _as_plates(made: Any) -> list[Any]:
    """What ``create_plates`` returned, as a list of ``pyro.plate`` (else ``TypeError``)."""
    plates = [made] if isinstance(made, pyro.plate) else made
    try:
        plates = list(plates)
    except TypeError:
        plates = [plates]
    for p in plates:
        if not isinstance(p, pyro.plate):
            raise TypeError(
                "create_plates: expected a callable returning a pyro.plate or an iterable of "
                f"them, got {type(p).__name__} among its results"
            )
    return plates


class FlowGuide(AutoContinuous):
    r"""An autoguide whose posterior over all continuous latents is a normalizing flow.

    Args:
        model: a Pyro model.
        flow: ``"iaf"`` (default; affine update, see :func:`~pyro_nf.iaf`), ``"planar"``, ``"radial"``, ``"maf"``, ``"realnvp"``,
            ``"nice"``; or a directly parameterized :class:`~pyro_nf.Flow` of the latent
            dimension; or a callable ``dim -> Flow``.
        depth: number of flow layers (family default if ``None``: IAF 2 up to
            ``IAF_TWO_LAYER_MAX_DIM`` latent dimensions and 1 above, planar/radial 8, ...).
        init_loc_fn: per-site initialisation, as for Pyro's autoguides (default
            ``init_to_median``).
        init: how the Gaussian the flow starts from is found (see the module docstring):
            ``"laplace"``: the posterior mode in unconstrained space (L-BFGS from
            ``init_loc_fn``, Newton-polished) and the Laplace covariance there (inverse Hessian,
            with a diagonal fallback and a warning when it is not positive definite);
            ``"map"``: the mode with ``init_scale``; ``"loc"``: ``init_loc_fn`` with
            ``init_scale``, as Pyro's autoguides do; ``"auto"`` (default): ``"laplace"``,
            except on a model with decentered sites (``reparam``), where ``"loc"`` (the joint
            mode of a hierarchy sits at collapsed group scales, not where the posterior is).
            On decentered sites the mode is searched fully non-centered and carried over.
        init_scale: initial standard deviation where no curvature is used (> 0; default 1, the
            scale of a standardized latent).
        affine: the final affine map: ``"full"`` (lower-triangular, i.e. a full-covariance
            Gaussian base, like ``AutoMultivariateNormal``), ``"diagonal"``, or ``"auto"``
            (default: full up to ``MAX_FULL_AFFINE_DIM`` latent dimensions, else diagonal).
        create_plates: as for Pyro's autoguides, an optional callable taking the model's
            ``(*args, **kwargs)`` and returning a ``pyro.plate`` or an iterable of plates, made
            in the guide on every call; plates not returned are made as in the model. Its use
            is subsampling: the guide draws the subsample (e.g. ``pyro.plate("data", N,
            subsample=idx)``) and the model, replayed on the guide, uses the same one. The
            latent sites themselves must stay outside subsampled plates (a global guide cannot
            follow a changing subsample); local latents need :class:`AmortizedFlowGuide`.
        reparam: decenter the model's location–scale sites (a Normal, StudentT, Cauchy or
            Laplace site whose location or scale is another latent, as in a centered
            hierarchical model) with a learnable centeredness per coordinate (starting
            mostly non-centered, at :data:`~pyro_nf.infer.reparam.INIT_CENTEREDNESS`), and fit
            the flow there (:mod:`pyro_nf.infer.reparam`; Gorinova et al. 2020). The guide
            still draws and reports the model's own sites, with their exact density;
            ``guide.centering`` holds the centeredness and the decentered model
            (``guide.centering.model``, what the flow is fitted on). Not applied in a
            subsampled model. ``False``: work on the sites as written.
        **flow_kwargs: passed to the family builder (for ``"iaf"`` the defaults are
            ``update="affine"`` and ``hidden=(3 * D + 1,)``, one MADE hidden layer). Any other
            keyword is refused here with a ``TypeError`` naming it, before any trace.

    Model arguments (the convention of all of pyro-nf): the guide is called like the model,
    ``guide(*args, **kwargs)`` (that is how Pyro's ``SVI``, ``Predictive`` and ``poutine`` call
    it). Every *pyro-nf* function that runs the model for you (:meth:`report`,
    :func:`pyro_nf.fit`, :func:`pyro_nf.diagnose`, ...) takes the model's positional arguments
    as ``*args`` and its keyword arguments as one dict ``model_kwargs={...}``; any other
    keyword is refused at once with a ``TypeError`` naming it. :meth:`median` and
    :meth:`quantiles` take ``*args`` and ``model_kwargs`` too (as Pyro's autoguides take the
    model's arguments there) and do not need them: the flow does not depend on them.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("scale", dist.HalfNormal(1.0))
        ...     pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> guide = FlowGuide(model, flow="planar", depth=4)   # Laplace init on first call
        >>> sorted(guide().keys())
        ['scale', 'z']
        >>> guide.latent_dim
        3
        >>> guide.quantiles([0.5])["scale"].shape
        torch.Size([1])
    """

    #: ELBO particles per step that :func:`pyro_nf.fit` draws for this guide unless told
    #: otherwise (:func:`~pyro_nf.infer.svi.default_num_particles`)
    default_num_particles: int = 4

    def __init__(
        self,
        model: Callable,
        flow: str | Flow | Callable[[int], Flow] = "iaf",
        depth: int | None = None,
        *,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 1.0,
        affine: str = "auto",
        init: str = "auto",
        create_plates: Callable[..., Any] | None = None,
        reparam: bool = True,
        **flow_kwargs: Any,
    ) -> None:
        check_callable("model", model, "a callable Pyro model")
        _check_flow_arguments(flow, depth, flow_kwargs)
        _check_guide_init(init, flow, depth)
        _check_choice("affine", affine, ("auto", "full", "diagonal"))
        check_callable("init_loc_fn", init_loc_fn, "a callable site -> value (e.g. init_to_median)")
        check_float("init_scale", init_scale, "a positive finite number", lambda v: v > 0)
        if create_plates is not None:
            check_callable("create_plates", create_plates, "None or a callable returning plates")
        if not isinstance(reparam, bool):
            raise ValueError(f"reparam: expected True or False, got {reparam!r}")
        self._init_loc_fn = _checked_init(init_loc_fn)
        super().__init__(model, init_loc_fn=self._init_loc_fn)
        self._user_model = (model,)  # Pyro keeps the model wrapped in its InitMessenger
        self.create_plates = create_plates  # Pyro's AutoContinuous does not pass it on
        self._model_label = model_label(model)
        self._init, self._affine, self._init_scale = init, affine, float(init_scale)
        # a tuple, so that a Flow given as ``flow`` is not registered as a second submodule
        self._flow_spec: tuple[Any, ...] = (flow,)
        self._depth, self._flow_kwargs = depth, flow_kwargs
        self._reparam = reparam
        self.centering: LearnableCentering | None = None

    def describe(self) -> dict[str, Any]:
        """Plain data naming this guide's configuration (flow family or type, depth, builder
        keywords, init, affine): what :func:`pyro_nf.fit` puts in a run's fingerprint.

        Example:
            >>> FlowGuide(lambda: None, "planar", 3).describe()["flow"]
            'planar'
        """
        flow = self._flow_spec[0]
        return {
            "flow": flow if isinstance(flow, str) else type(flow).__name__,
            "depth": self._depth,
            "flow_kwargs": {k: repr(v) for k, v in sorted(self._flow_kwargs.items())},
            "init": self._init,
            "affine": self._affine,
            "reparam": self._reparam,
        }

    # -- the model, and pickling ---------------------------------------------------------------
    @property
    def model(self) -> Callable:
        """The model (as Pyro's autoguides, a pickled guide does not keep it: set it again with
        ``guide.model = model`` to fit or report on an unpickled guide)."""
        if self._model is None or self._model[0] is None:
            raise RuntimeError(
                "FlowGuide: this guide was unpickled, and a pickled guide does not keep its "
                "model (as Pyro's autoguides); sampling and summaries work, and "
                "guide.model = model sets the model again for fitting and report()"
            )
        return self._model[0]

    @model.setter
    def model(self, model: Callable) -> None:
        check_callable("model", model, "a callable Pyro model")
        self._model = self._user_model = (model,)
        if self.centering is not None:
            self.centering.user_model = model

    def __getstate__(self) -> dict[str, Any]:
        """The state to pickle: Pyro's (without the model), leaving *this* guide intact (Pyro's
        ``AutoGuide.__getstate__`` drops the model of the guide being saved)."""
        model, master = self._model, self.master
        try:
            state = dict(super().__getstate__())
        finally:
            self._model, self.master = model, master
        # the model and the init function are only needed to build the guide (done by now)
        state["_user_model"], state["_init_loc_fn"] = (None,), None
        return state

    # -- construction --------------------------------------------------------------------------
    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        """Check the latent sites, find the Gaussian start and build the flow (first call)."""
        trace = pyro.poutine.block(pyro.poutine.trace(self.model).get_trace)(*args, **kwargs)
        check_latent_sites(trace, self._model_label)
        self._prototype_args = (args, kwargs)
        if self._reparam and not _is_subsampled(trace):
            # the structure search runs the model: the user's random stream is left as it was
            with torch.random.fork_rng(devices=[]):
                self.centering = auto_reparam(
                    self._user_model[0], *args, model_kwargs=kwargs, init_loc_fn=self._init_loc_fn
                )
        with self._on_decentered_model():
            self._setup_decentered(trace, *args, **kwargs)

    @contextmanager
    def _on_decentered_model(self) -> Iterator[None]:
        """While the guide's latent space is built and its start found: ``self.model`` is the
        model with its location–scale sites decentered (:mod:`pyro_nf.infer.reparam`)."""
        if self.centering is None:
            yield
            return
        # the decentered sites start from init_loc_fn too
        decentered = InitMessenger(self._init_loc_fn)(self.centering.model)
        saved, self._model = self._model, (decentered,)
        try:
            yield
        finally:
            self._model = saved

    def _setup_decentered(self, trace: pyro.poutine.Trace, *args: Any, **kwargs: Any) -> None:
        """Pyro's prototype, the Gaussian start and the flow (on the decentered model)."""
        super()._setup_prototype(*args, **kwargs)
        if isinstance(self._flow_spec[0], str):  # before the (costly) mode search
            get_family(self._flow_spec[0], use="guide").check_dim(self.latent_dim)
        subsample = _subsample_sites(trace)  # the mode search sees this trace's subsample
        loc = self._init_loc()
        if not bool(torch.isfinite(loc).all()):
            raise ValueError(
                "init_loc_fn: produced non-finite initial values in unconstrained space "
                f"({int((~torch.isfinite(loc)).sum())} of {loc.numel()} entries)"
            )
        self._init_info = self._gaussian_start(loc, args, kwargs, subsample)
        loc0, tril0 = self._init_info.pop("loc"), self._init_info.pop("scale_tril")
        scale0 = self._init_info.pop("learnable_scale")
        dim = self.latent_dim
        inner = _build_inner_flow(self._flow_spec[0], dim, self._depth, **self._flow_kwargs)
        full = self._affine == "full" or (self._affine == "auto" and dim <= MAX_FULL_AFFINE_DIM)
        flow = assemble_flow(inner, dim, loc0, tril0, scale0, full)
        self.flow = flow.to(dtype=loc.dtype, device=loc.device)

    def _gaussian_start(
        self, loc: torch.Tensor, args: tuple, kwargs: dict, subsample: pyro.poutine.Trace
    ) -> dict[str, Any]:
        """:func:`~pyro_nf.infer.prototype.initial_affine` on the (decentered) model.
        ``init="auto"`` is the Laplace start, except on a model with decentered sites, which
        starts from ``init_loc_fn`` (the joint mode of a hierarchy sits at collapsed group
        scales and is not representative of the posterior; measured in
        ``benchmarks/hard_posteriors.py``). A Laplace or MAP start asked for on decentered
        sites is found fully non-centered (``c = 0``, where a hierarchy has no funnel neck for
        the mode search to fall into) and pushed to the starting centeredness."""
        density = minus_inf_on_error(
            lambda u: self._unconstrained_log_density(u, args, kwargs, subsample)
        )
        init = self._init
        if init == "auto":
            init = "laplace" if self.centering is None else "loc"
        if self.centering is None or init == "loc":
            start = initial_affine(density, loc, init, self._init_scale)
            if self._init == "auto" and self.centering is not None:
                start["init"] = "loc (auto: decentered sites)"
            return start
        start_c = {s: self.centering.centered(s).detach() for s in self.centering.sites}
        with torch.no_grad():
            loc0 = self._recentered(loc, start_c, 0.0, args, kwargs)
        with self.centering.fixed(0.0):
            start = initial_affine(density, loc0, init, self._init_scale)
        moved = pushed_start(start, lambda u: self._recentered(u, 0.0, start_c, args, kwargs))
        moved["init"] += " (found non-centered)"
        return moved

    def _recentered(
        self, u: torch.Tensor, c_from: Any, c_to: Any, args: tuple, kwargs: dict
    ) -> torch.Tensor:
        """The packed unconstrained ``u`` at centeredness ``c_from``, expressed at ``c_to``."""
        values = {}
        for site, unconstrained in self._unpack_latent(u):
            values[site["name"]] = biject_to(site["fn"].support)(unconstrained)
        moved = self.centering.recenter(values, c_from, c_to, *args, **kwargs)
        parts = [
            biject_to(site["fn"].support).inv(moved[site["name"]]).reshape(-1)
            for site, _ in self._unpack_latent(u)
        ]
        return torch.cat(parts)

    def _unconstrained_log_density(
        self, u: torch.Tensor, args: tuple, kwargs: dict, subsample: pyro.poutine.Trace
    ) -> torch.Tensor:
        r""":math:`\log p(x, T(u)) + \log\lvert\det J_T(u)\rvert` for the packed vector ``u``,
        with the subsample sites of the model replayed from ``subsample``."""
        values, log_jac = {}, u.new_zeros(())
        for site, unconstrained in self._unpack_latent(u):
            transform = biject_to(site["fn"].support)
            value = transform(unconstrained)
            values[site["name"]] = value
            log_jac = log_jac + transform.log_abs_det_jacobian(unconstrained, value).sum()
        conditioned = pyro.poutine.condition(self.model, data=values)
        conditioned = pyro.poutine.replay(conditioned, trace=subsample)
        trace = pyro.poutine.trace(conditioned).get_trace(*args, **kwargs)
        return trace.log_prob_sum() + log_jac

    def _create_plates(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The plates of this call (Pyro's rule), with ``create_plates``'s result checked: plates
        only, and a plate of a latent site must keep the size it had on the first call."""
        if self.create_plates is None or self.master is not None:
            return super()._create_plates(*args, **kwargs)
        self.plates = {p.name: p for p in _as_plates(self.create_plates(*args, **kwargs))}
        for name, frame in sorted(self._prototype_frames.items()):
            plate = self.plates.get(name)
            if plate is None:
                full = frame.full_size or frame.size
                self.plates[name] = pyro.plate(name, full, dim=frame.dim, subsample_size=frame.size)
            elif plate.subsample_size != frame.size:
                raise ValueError(
                    f"create_plates: plate {name!r} holds latent sites of size {frame.size} (as "
                    f"traced on the first call), got a plate of size {plate.subsample_size}; "
                    "a global FlowGuide cannot follow a changing subsample (AmortizedFlowGuide "
                    "handles local latents)"
                )
        return self.plates

    # -- the AutoContinuous interface ----------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Draw every latent site of the model (the user's sites, also where the guide works
        on decentered ones: they are mapped back, with the log-Jacobian in their density)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if self.centering is None:
            return super().forward(*args, **kwargs)
        values, log_dens = self._decentered_values(self.sample_latent(*args, **kwargs))
        originals, log_jac = self.centering.to_original(values, *args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name in self.centering.latent_names:
            site = self.centering.prototype.nodes[name]
            if name in self.centering.sites:
                log_density = log_dens[decentered_name(name)] - log_jac[name]
            else:
                log_density = log_dens[name]
            if pyro.poutine.get_mask() is False:
                log_density = 0.0
            delta = dist.Delta(
                originals[name], log_density=log_density, event_dim=site["fn"].event_dim
            )
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                result[name] = pyro.sample(name, delta)
        return result

    def _decentered_values(
        self, latent: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The guide's sites (constrained) from the packed ``latent``, and the log-Jacobians of
        ``biject_to`` (summed over each site's event dimensions)."""
        values, log_dens = {}, {}
        for site, unconstrained in self._unpack_latent(latent):
            transform = biject_to(site["fn"].support)
            value = transform(unconstrained)
            log_det = transform.inv.log_abs_det_jacobian(value, unconstrained)
            log_det = sum_rightmost(log_det, log_det.dim() - value.dim() + site["fn"].event_dim)
            values[site["name"]], log_dens[site["name"]] = value, log_det
        return values, log_dens

    def get_base_dist(self) -> dist.Distribution:
        ref = self.flow.layers[-1].loc  # the fixed preconditioner's buffer: dtype and device
        zeros = torch.zeros(self.latent_dim, dtype=ref.dtype, device=ref.device)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> ChainTransform:
        """The flow as one transform from the standard normal base to the unconstrained latent."""
        return ChainTransform(self.flow.build_transforms())

    def get_posterior(self, *args: Any, **kwargs: Any):
        """The :class:`~pyro_nf.FlowDistribution` of the packed unconstrained latent."""
        return self.flow()

    # -- summaries -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_posterior(
        self, num_samples: int = 1000, seed: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Draw ``num_samples`` joint posterior samples of every latent site (constrained space).

        Returns a dict mapping site names to tensors of shape ``(num_samples, *site_shape)``.
        """
        check_positive_int("num_samples", num_samples)
        check_seed(seed, allow_none=True)
        if self.prototype_trace is None:
            raise RuntimeError(
                "FlowGuide: call the guide once (e.g. one SVI step) before asking for posterior summaries"
            )
        ctx = torch.random.fork_rng(devices=[]) if seed is not None else nullcontext()
        with ctx:
            if seed is not None:
                torch.manual_seed(seed)
            latent = self.flow().sample((num_samples,))
        out, pos = {}, 0
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            shape = self._unconstrained_shapes[name]
            size = math.prod(shape)
            u = latent[:, pos : pos + size].reshape(num_samples, *shape)  # sites in plates too
            out[name] = biject_to(site["fn"].support)(u)
            pos += size
        if self.centering is not None:  # back to the user's sites
            args, kwargs = self._prototype_args
            out = self.centering.to_original_batched(out, *args, **kwargs)
        return out

    def report(
        self,
        *args: Any,
        num_samples: int = 2000,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TrustReport:
        """The trust report of this guide for ``model(*args, **model_kwargs)``: ELBO,
        convergence (from the last :func:`pyro_nf.fit`), PSIS k̂ and its verdict, ESS, log
        evidence, and the least reliable sites. See :func:`pyro_nf.diagnose`. Any keyword but
        ``num_samples`` and ``model_kwargs`` is refused (``TypeError`` naming it).

        ``report.next_step`` says what to do when the guide is not to be trusted as it is, and
        ``report.refine(**options)`` runs :func:`pyro_nf.refine` on this guide and model (same
        ``*args`` and ``model_kwargs``)."""
        check_keywords("FlowGuide.report", kwargs, ("num_samples", "model_kwargs"))
        model_kwargs = check_model_kwargs(model_kwargs)
        report = diagnose(
            self.model, self, *args, num_samples=num_samples, model_kwargs=model_kwargs
        )
        # the user's own model: refine decenters it (the model Pyro's autoguides keep is wrapped
        # in an InitMessenger, which would set the decentered sites' values itself)
        model = self._user_model[0] if self._user_model[0] is not None else self.model
        return report.with_refiner(partial(refine, model, self, *args, model_kwargs=model_kwargs))

    @torch.no_grad()
    def quantiles(
        self,
        quantiles: Sequence[float] | torch.Tensor,
        *args: Any,
        num_samples: int = 10000,
        seed: int = 0,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Marginal posterior quantiles of every latent site, estimated from ``num_samples``
        seeded samples (so repeated calls agree). Returns ``{site: (len(quantiles), *shape)}``.

        ``*args`` and ``model_kwargs`` (the model's arguments, which Pyro's autoguides take
        here) are accepted and not needed; any other keyword is refused (``TypeError``)."""
        check_keywords("FlowGuide.quantiles", kwargs, ("num_samples", "seed", "model_kwargs"))
        check_model_kwargs(model_kwargs)
        q = _checked_quantiles(quantiles)
        check_positive_int("num_samples", num_samples)
        check_seed(seed)
        samples = self.sample_posterior(num_samples, seed=seed)
        return {
            name: torch.quantile(s.double(), q, dim=0).to(s.dtype) for name, s in samples.items()
        }

    @torch.no_grad()
    def median(
        self,
        *args: Any,
        num_samples: int = 10000,
        seed: int = 0,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Marginal posterior medians of every latent site (Monte Carlo, seeded); arguments as
        for :meth:`quantiles`."""
        check_keywords("FlowGuide.median", kwargs, ("num_samples", "seed", "model_kwargs"))
        check_model_kwargs(model_kwargs)
        check_positive_int("num_samples", num_samples)
        check_seed(seed)
        return {
            k: v[0] for k, v in self.quantiles([0.5], num_samples=num_samples, seed=seed).items()
        }


def _subsample_sites(trace: pyro.poutine.Trace) -> pyro.poutine.Trace:
    """The subsample sites of ``trace`` (the indices its subsampled plates drew), to replay:
    the Laplace search then sees one fixed subsample, a deterministic density."""
    out = pyro.poutine.Trace()
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site_is_subsample(site):
            out.add_node(name, **site)
    return out


def _is_subsampled(trace: pyro.poutine.Trace) -> bool:
    """Whether a plate of ``trace`` draws a subsample (then the model is not rerun inside the
    guide, so no automatic reparameterization)."""
    return any(
        site["fn"].subsample_size not in (None, site["fn"].size)
        for site in _subsample_sites(trace).nodes.values()
    )


def _checked_quantiles(quantiles: Any) -> torch.Tensor:
    """``quantiles`` as a float64 vector of at least one value in [0, 1], else raise."""
    try:
        if isinstance(quantiles, str | bytes | bool):
            raise TypeError
        q = torch.as_tensor(quantiles, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"quantiles: expected a sequence of numbers in [0, 1], got {type(quantiles).__name__}"
        ) from None
    if q.numel() == 0 or not bool(((q >= 0) & (q <= 1)).all()):
        raise ValueError(f"quantiles: expected one or more values in [0, 1], got {q.tolist()}")
    return q


def _is_real_vector(support: Any) -> bool:
    constraints = dist.constraints
    return support is constraints.real_vector or (
        isinstance(support, constraints.independent)
        and support.base_constraint is constraints.real
        and support.reinterpreted_batch_ndims == 1
    )


class AmortizedFlowGuide(nn.Module):
    r"""A guide giving each data point's local latent its own flow posterior
    :math:`q(z_i \mid x_i)`, with parameters computed from an encoder context :math:`h(x_i)`.

    Args:
        site: the model's local latent site name (a vector site, ``event_dim = 1``).
        flow: an amortized :class:`~pyro_nf.Flow` (``context_dim = H``).
        encoder: a module called with the guide's ``(*args, **kwargs)``, returning the
            context of shape ``(N, H)`` for the ``N`` data points of this call.
        plate: the name of the model's data plate, or a callable ``(*args, **kwargs) ->``
            ``pyro.plate`` for subsampled plates (it must match the model's plate).
        support: the site's support (default real vectors); other supports are reached through
            ``biject_to`` with the Jacobian included.
        create_plates: as for Pyro's autoguides, a callable ``(*args, **kwargs) ->`` a
            ``pyro.plate`` or an iterable of plates, made in the guide on every call (so that
            the model, replayed on the guide, uses their subsamples); the one named ``plate``
            holds the site. The encoder may return contexts for the subsample or for all
            ``plate.size`` data points (then the subsample's rows are taken).

    Any other keyword is refused with a ``TypeError`` naming it. The guide is called like the
    model, ``guide(*args, **kwargs)``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> import pyro_nf
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        ...         pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)
        >>> guide = AmortizedFlowGuide("z", pyro_nf.planar(2, depth=4, context_dim=8),
        ...                            encoder=torch.nn.Linear(1, 8))
        >>> elbo = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, torch.randn(5, 1))
        >>> elbo.shape
        torch.Size([])
    """

    def __init__(
        self,
        site: str,
        flow: Flow,
        encoder: nn.Module,
        plate: str | Callable[..., Any] = "data",
        support: Any = None,
        *,
        create_plates: Callable[..., Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_keywords(
            "AmortizedFlowGuide",
            kwargs,
            ("site", "flow", "encoder", "plate", "support", "create_plates"),
            model_keywords=False,
        )
        if not isinstance(site, str) or not site:
            raise ValueError(
                f"site: expected the name of the model's local latent site, got {site!r}"
            )
        if not callable(plate) and not (isinstance(plate, str) and plate):
            raise ValueError(
                f"plate: expected the model's plate name or a callable returning a pyro.plate, got {plate!r}"
            )
        if create_plates is not None:
            check_callable("create_plates", create_plates, "None or a callable returning plates")
            if not isinstance(plate, str):
                raise ValueError(
                    "plate: expected the name of the plate (among those create_plates returns) "
                    f"when create_plates is given, got {type(plate).__name__}"
                )
        if support is not None and not isinstance(support, dist.constraints.Constraint):
            raise ValueError(
                f"support: expected None or a torch.distributions constraint, got {type(support).__name__}"
            )
        if not isinstance(flow, Flow) or flow.context_dim is None:
            raise ValueError(f"flow: expected an amortized Flow (context_dim set), got {flow!r}")
        if not callable(encoder):
            raise ValueError(
                f"encoder: expected a module mapping the guide's arguments to a context, got {encoder!r}"
            )
        self.site, self.flow, self.encoder, self.plate = site, flow, encoder, plate
        self.create_plates = create_plates
        self.support = support if support is not None else dist.constraints.real_vector

    def _make_plate(self, size: int, args: tuple, kwargs: dict) -> Any:
        """The plate of the site for this call (from ``create_plates``, ``plate`` or its name)."""
        if self.create_plates is not None:
            plates = {p.name: p for p in _as_plates(self.create_plates(*args, **kwargs))}
            if self.plate not in plates:
                raise ValueError(
                    f"create_plates: expected a plate named {self.plate!r} (the plate argument) "
                    f"among those it returns, got {sorted(plates)}"
                )
            return plates[self.plate]
        if callable(self.plate):
            return self.plate(*args, **kwargs)
        return pyro.plate(self.plate, size, dim=-1)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        pyro.module("amortized_flow_guide", self)
        context = self.encoder(*args, **kwargs)
        plate = self._make_plate(context.shape[0], args, kwargs)
        transform = biject_to(self.support)
        with ExitStack() as stack:
            indices = stack.enter_context(plate)
            q = self.flow(_subsample_context(context, plate, indices))
            if _is_real_vector(self.support):
                return pyro.sample(self.site, q)
            u = pyro.sample(f"_{self.site}_unconstrained", q, infer={"is_auxiliary": True})
            value = transform(u)
            log_det = transform.inv.log_abs_det_jacobian(value, u)
            if log_det.dim() > value.dim() - 1:
                log_det = log_det.sum(-1)
            return pyro.sample(self.site, dist.Delta(value, log_density=log_det, event_dim=1))


def _subsample_context(context: torch.Tensor, plate: Any, indices: Any) -> torch.Tensor:
    """The encoder's context rows of the plate's subsample: all of them if there is one per
    subsampled data point, the subsample's rows if there is one per data point of the full plate."""
    size = getattr(plate, "subsample_size", None)
    if size is None or context.shape[0] == size:
        return context
    if context.shape[0] == plate.size and isinstance(indices, torch.Tensor):
        return context.index_select(0, indices.to(context.device))
    raise ValueError(
        f"encoder: expected contexts for the {size} subsampled data points of plate "
        f"{plate.name!r} (or for all {plate.size}), got {context.shape[0]} rows"
    )
