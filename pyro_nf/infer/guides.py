r"""Flow guides for any Pyro model.

:class:`FlowGuide` is an autoguide over all continuous latent sites of a model. Like Pyro's
:class:`~pyro.infer.autoguide.AutoContinuous` guides it packs the sites into one unconstrained
vector :math:`u \in \mathbb R^D` (constrained supports go through ``biject_to``, whose
log-Jacobians enter the guide's density), and it models :math:`u` with a normalizing flow

.. math::

    u = \mu_0 + L_0\bigl(a + L\, f(\varepsilon)\bigr),\qquad \varepsilon \sim \mathcal N(0, I_D).

:math:`(\mu_0, L_0)` is a *fixed* preconditioner found before training (``init="laplace"``, the
default: the posterior mode of :math:`u` by L-BFGS and Newton steps, and the Cholesky factor of
the inverse Hessian there); :math:`(a, L)` is a learnable affine map (lower triangular, or
diagonal for large :math:`D`) that starts at the identity; the flow layers :math:`f` start at
the identity too. So at step 0 the guide *is* the Laplace approximation, and every learnable
parameter lives in whitened, unit-scale coordinates: Adam's step size means the same thing for a
coefficient whose posterior sd is 1e-3 as for one whose sd is 1e3, and the nonlinearities of
planar/radial/IAF layers act at the scale they were designed for.

It works with ``SVI`` + ``Trace_ELBO`` (also with vectorized particles), ``RenyiELBO``,
``Predictive``, ``poutine``, and :class:`~pyro.infer.reparam.NeuTraReparam` (flow-preconditioned
HMC/NUTS). ``median`` and ``quantiles`` are Monte Carlo estimates from a seeded stream of
samples (flows have no closed-form marginals).

:class:`AmortizedFlowGuide` gives local latents a per-datum flow posterior computed by an
encoder (the building block of flow VAEs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..diagnostics.report import TrustReport, diagnose
from ..flows.flow import Flow
from ..flows.layers import DiagonalAffineLayer, FixedAffineLayer, LowerTriangularAffineLayer
from ..flows.registry import family_names, get_family
from ..transforms import ChainTransform
from ..utils.validation import check_positive_int
from .laplace import LaplaceFallbackWarning, find_mode, gaussian_elbo, laplace_approximation

__all__ = ["FlowGuide", "AmortizedFlowGuide"]

#: Up to this many latent dimensions, ``affine="auto"`` uses a full lower-triangular affine map.
#: Above it the D(D+1)/2 entries, each moved ~lr per Adam step, add more noise than they help
#: (centered 50-group model, D = 105, no Laplace preconditioner: max |mean error| 1.6 sd with a
#: full map, 0.39 sd diagonal; ``benchmarks/hard_posteriors.py``); with a Laplace preconditioner
#: the correlations are already in the fixed affine map.
MAX_FULL_AFFINE_DIM = 50


def _build_inner_flow(
    spec: str | Flow | Callable[[int], Flow], dim: int, depth: int | None, **kwargs: Any
) -> Flow:
    """The flow layers of a guide (acting in whitened coordinates), from a name, Flow or factory."""
    if isinstance(spec, str):
        family = get_family(spec, use="guide")
        family.check_dim(dim)
        kwargs = {**family.guide_kwargs(dim), **kwargs}
        depth = family.guide_depth if depth is None else depth
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


class FlowGuide(AutoContinuous):
    r"""An autoguide whose posterior over all continuous latents is a normalizing flow.

    Args:
        model: a Pyro model.
        flow: ``"iaf"`` (default; affine update, see :func:`~pyro_nf.iaf`), ``"planar"``, ``"radial"``, ``"maf"``, ``"realnvp"``,
            ``"nice"``; or a directly parameterized :class:`~pyro_nf.Flow` of the latent
            dimension; or a callable ``dim -> Flow``.
        depth: number of flow layers (family default if ``None``: IAF 1, planar/radial 8, ...).
        init_loc_fn: per-site initialisation, as for Pyro's autoguides (default
            ``init_to_median``).
        init: how the Gaussian the flow starts from is found (see the module docstring):
            ``"laplace"`` (default): the posterior mode in unconstrained space (L-BFGS from
            ``init_loc_fn``, Newton-polished) and the Laplace covariance there (inverse Hessian,
            with a diagonal fallback and a warning when it is not positive definite);
            ``"map"``: the mode with ``init_scale``; ``"loc"``: ``init_loc_fn`` with
            ``init_scale``, as Pyro's autoguides do.
        init_scale: initial standard deviation where no curvature is used (> 0; default 1, the
            scale of a standardized latent: on a funnel, 1 beats 0.1 by 1.4 nats of ELBO).
        affine: the final affine map: ``"full"`` (lower-triangular, i.e. a full-covariance
            Gaussian base, like ``AutoMultivariateNormal``), ``"diagonal"``, or ``"auto"``
            (default: full up to ``MAX_FULL_AFFINE_DIM`` latent dimensions, else diagonal).
        **flow_kwargs: passed to the family builder (for ``"iaf"`` the defaults are
            ``update="affine"`` and ``hidden=(3 * D + 1,)``, one MADE hidden layer).

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

    def __init__(
        self,
        model: Callable,
        flow: str | Flow | Callable[[int], Flow] = "iaf",
        depth: int | None = None,
        *,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 1.0,
        affine: str = "auto",
        init: str = "laplace",
        **flow_kwargs: Any,
    ) -> None:
        if init not in ("laplace", "map", "loc"):
            raise ValueError(f"init: expected 'laplace', 'map' or 'loc', got {init!r}")
        self._init = init
        if affine not in ("auto", "full", "diagonal"):
            raise ValueError(f"affine: expected 'auto', 'full' or 'diagonal', got {affine!r}")
        self._affine = affine
        if not callable(init_loc_fn):
            raise ValueError(
                f"init_loc_fn: expected a callable site -> value (e.g. init_to_median), got {init_loc_fn!r}"
            )
        if not (
            isinstance(init_scale, int | float) and init_scale > 0 and init_scale < float("inf")
        ):
            raise ValueError(f"init_scale: expected a positive finite number, got {init_scale!r}")
        if isinstance(flow, str) and flow not in family_names("guide"):
            raise ValueError(
                f"flow: expected one of {family_names('guide')}, a Flow, or a callable dim -> Flow; got {flow!r}"
            )
        if depth is not None:
            check_positive_int("depth", depth)
        self._flow_spec, self._depth, self._flow_kwargs = flow, depth, flow_kwargs
        self._init_scale = float(init_scale)
        super().__init__(model, init_loc_fn=_checked_init(init_loc_fn))

    # -- construction --------------------------------------------------------------------------
    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        trace = pyro.poutine.block(pyro.poutine.trace(self.model).get_trace)(*args, **kwargs)
        latent = [s for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
        latent = [
            s
            for s in latent
            if not site_is_subsample(s)
            and not s["infer"].get("is_auxiliary")
            and not s["infer"].get("enumerate")
        ]
        if not latent:
            raise ValueError(
                "model: FlowGuide found no latent sample sites (every site is observed); nothing to infer"
            )
        for site in latent:
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"model: site {site['name']!r} is discrete ({type(site['fn']).__name__}); FlowGuide "
                    "handles continuous latents only. Enumerate it (infer={'enumerate': 'parallel'} "
                    "with TraceEnum_ELBO) and hide it from the guide, or marginalize it out"
                )
            for frame in site["cond_indep_stack"]:
                if (
                    frame.vectorized
                    and frame.full_size is not None
                    and frame.full_size != frame.size
                ):
                    raise ValueError(
                        f"model: site {site['name']!r} is a local latent in the subsampled plate "
                        f"{frame.name!r} ({frame.size} of {frame.full_size}); a global FlowGuide cannot "
                        "follow changing subsamples. Use AmortizedFlowGuide for local latents (and "
                        "FlowGuide on the global ones, e.g. with AutoGuideList)"
                    )
        super()._setup_prototype(*args, **kwargs)
        loc = self._init_loc()
        if not bool(torch.isfinite(loc).all()):
            raise ValueError(
                "init_loc_fn: produced non-finite initial values in unconstrained space "
                f"({int((~torch.isfinite(loc)).sum())} of {loc.numel()} entries)"
            )
        self._init_info = self._initial_affine(loc, args, kwargs)
        loc0, tril0 = self._init_info.pop("loc"), self._init_info.pop("scale_tril")
        scale0 = self._init_info.pop("learnable_scale")
        inner = _build_inner_flow(
            self._flow_spec, self.latent_dim, self._depth, **self._flow_kwargs
        )
        dim = self.latent_dim
        if self._affine == "full" or (self._affine == "auto" and dim <= MAX_FULL_AFFINE_DIM):
            # identity in whitened coordinates; multiplicative scale updates, so that a
            # preconditioner that is off by orders of magnitude is corrected in few steps
            learnable = LowerTriangularAffineLayer(dim, init_scale_tril=scale0, positive="exp")
        else:
            learnable = DiagonalAffineLayer(dim, init_scale=scale0, positive="exp")
        fixed = FixedAffineLayer(loc0.detach().cpu(), tril0.detach().cpu())
        flow = Flow(dim, [*inner.layers, learnable, fixed])
        self.flow = flow.to(dtype=loc.dtype, device=loc.device)

    def _initial_affine(self, loc: torch.Tensor, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The fixed preconditioner ``(loc, scale_tril)`` and the learnable affine's initial scale.

        Only *informative* curvature goes into the preconditioner: the Laplace factor when it is
        used; otherwise the preconditioner is the identity and ``init_scale`` starts the
        learnable affine map (so that its off-diagonal entries are learned at the data's scale).
        """
        dim = self.latent_dim
        eye = torch.eye(dim, dtype=loc.dtype, device=loc.device)
        plain = {"scale_tril": eye, "learnable_scale": self._init_scale}
        if self._init == "loc":
            return {"loc": loc, "init": "loc", **plain}

        def log_density(u: torch.Tensor) -> torch.Tensor:
            try:
                return self._unconstrained_log_density(u, args, kwargs)
            except (ValueError, RuntimeError):  # e.g. a scale that underflowed to 0 in the model
                return (u * 0).sum() - math.inf

        try:
            with pyro.poutine.block(), warnings.catch_warnings():
                # trial points of the mode search may underflow a scale; they are rejected, and
                # Pyro's "Encountered NaN" warnings about them would only confuse
                warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
                if self._init == "map":
                    mode = find_mode(log_density, loc)
                    return {"loc": mode.mode, "init": "map", "mode": mode, **plain}
                mode, tril, kind = laplace_approximation(
                    log_density, loc, fallback_scale=self._init_scale
                )
                # A mode need not be representative (a funnel's density peaks in its neck): keep
                # the Laplace start only if its ELBO beats the init_loc_fn start's.
                elbo_laplace = gaussian_elbo(log_density, mode.mode, tril)
                elbo_loc = gaussian_elbo(log_density, loc, self._init_scale * eye)
        except (ValueError, RuntimeError) as err:  # no usable mode (e.g. an unbounded density)
            warnings.warn(
                f"FlowGuide: the {self._init} initialisation failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); starting from init_loc_fn and init_scale",
                LaplaceFallbackWarning,
                stacklevel=4,
            )
            return {"loc": loc, "init": f"loc ({self._init} failed)", **plain}
        if not math.isfinite(elbo_laplace) or not bool(torch.isfinite(mode.mode).all()):
            elbo_laplace = -math.inf
        info = {"mode": mode, "elbo_laplace": elbo_laplace, "elbo_init_loc": elbo_loc}
        if elbo_laplace >= elbo_loc:
            return {
                "loc": mode.mode,
                "scale_tril": tril,
                "learnable_scale": 1.0,
                "init": f"laplace ({kind})",
                **info,
            }
        return {"loc": loc, "init": "loc (Laplace rejected: lower ELBO)", **info, **plain}

    def _unconstrained_log_density(
        self, u: torch.Tensor, args: tuple, kwargs: dict
    ) -> torch.Tensor:
        r""":math:`\log p(x, T(u)) + \log\lvert\det J_T(u)\rvert` for the packed vector ``u``."""
        values, log_jac = {}, u.new_zeros(())
        for site, unconstrained in self._unpack_latent(u):
            transform = biject_to(site["fn"].support)
            value = transform(unconstrained)
            values[site["name"]] = value
            log_jac = log_jac + transform.log_abs_det_jacobian(unconstrained, value).sum()
        conditioned = pyro.poutine.condition(self.model, data=values)
        trace = pyro.poutine.trace(conditioned).get_trace(*args, **kwargs)
        return trace.log_prob_sum() + log_jac

    # -- the AutoContinuous interface ----------------------------------------------------------
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
        return out

    def report(self, *args: Any, num_samples: int = 2000, **kwargs: Any) -> TrustReport:
        """The trust report of this guide for ``model(*args, **kwargs)``: ELBO, convergence (from
        the last :func:`pyro_nf.fit`), PSIS k̂ and its verdict, ESS, log evidence, and the least
        reliable sites. See :func:`pyro_nf.diagnose`."""
        return diagnose(self.model, self, *args, num_samples=num_samples, model_kwargs=kwargs)

    @torch.no_grad()
    def quantiles(
        self,
        quantiles: Sequence[float] | torch.Tensor,
        *args: Any,
        num_samples: int = 10000,
        seed: int = 0,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Marginal posterior quantiles of every latent site, estimated from ``num_samples``
        seeded samples (so repeated calls agree). Returns ``{site: (len(quantiles), *shape)}``."""
        q = torch.as_tensor(quantiles, dtype=torch.float64).reshape(-1)
        if bool(((q < 0) | (q > 1)).any()):
            raise ValueError(f"quantiles: expected values in [0, 1], got {q.tolist()}")
        samples = self.sample_posterior(num_samples, seed=seed)
        return {
            name: torch.quantile(s.double(), q, dim=0).to(s.dtype) for name, s in samples.items()
        }

    @torch.no_grad()
    def median(
        self, *args: Any, num_samples: int = 10000, seed: int = 0, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Marginal posterior medians of every latent site (Monte Carlo, seeded)."""
        return {
            k: v[0] for k, v in self.quantiles([0.5], num_samples=num_samples, seed=seed).items()
        }


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
    ) -> None:
        super().__init__()
        if not isinstance(flow, Flow) or flow.context_dim is None:
            raise ValueError(f"flow: expected an amortized Flow (context_dim set), got {flow!r}")
        if not callable(encoder):
            raise ValueError(
                f"encoder: expected a module mapping the guide's arguments to a context, got {encoder!r}"
            )
        self.site, self.flow, self.encoder, self.plate = site, flow, encoder, plate
        self.support = support if support is not None else dist.constraints.real_vector

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        pyro.module("amortized_flow_guide", self)
        context = self.encoder(*args, **kwargs)
        plate = (
            self.plate(*args, **kwargs)
            if callable(self.plate)
            else pyro.plate(self.plate, context.shape[0], dim=-1)
        )
        transform = biject_to(self.support)
        with ExitStack() as stack:
            stack.enter_context(plate)
            q = self.flow(context)
            if _is_real_vector(self.support):
                return pyro.sample(self.site, q)
            u = pyro.sample(f"_{self.site}_unconstrained", q, infer={"is_auxiliary": True})
            value = transform(u)
            log_det = transform.inv.log_abs_det_jacobian(value, u)
            if log_det.dim() > value.dim() - 1:
                log_det = log_det.sum(-1)
            return pyro.sample(self.site, dist.Delta(value, log_density=log_det, event_dim=1))
