r"""How a :class:`~pyro_nf.FlowGuide` sets itself up on its first call.

* :func:`check_latent_sites`: the model's latent sites must be continuous and outside subsampled
  plates (a global guide cannot follow changing subsamples);
* :func:`initial_affine`: the Gaussian the flow starts from, :math:`u = \mu_0 + L_0 v`, found by
  ``init="laplace"`` (mode and inverse-Hessian factor, kept only if its ELBO beats the
  ``init_loc_fn`` start), ``"map"`` (the mode) or ``"loc"`` (``init_loc_fn`` as it is);
* :func:`pushed_start`: such a start carried through a smooth bijection (the linearized
  pushforward), e.g. from the non-centered coordinates where a mode was found to the guide's;
* :func:`assemble_flow`: the guide's flow, the inner layers followed by the learnable affine map
  (the identity at the start) and the fixed preconditioner :math:`(\mu_0, L_0)`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyro
import torch
from pyro.poutine.util import site_is_subsample

from ..flows.flow import Flow
from ..flows.layers import DiagonalAffineLayer, FixedAffineLayer, LowerTriangularAffineLayer
from .laplace import (
    LaplaceFallbackWarning,
    ModeResult,
    find_mode,
    gaussian_elbo,
    laplace_approximation,
)

__all__ = [
    "assemble_flow",
    "check_latent_sites",
    "initial_affine",
    "minus_inf_on_error",
    "model_label",
    "pushed_start",
]

LogDensity = Callable[[torch.Tensor], torch.Tensor]


# -- the latent sites ----------------------------------------------------------------------------
def check_latent_sites(trace: pyro.poutine.Trace, label: str = "the model") -> None:
    """Raise unless ``trace`` has latent sites, all continuous and outside subsampled plates.

    A model without latent sites is a ``RuntimeError`` (as for Pyro's autoguides) naming the
    model (``label``, see :func:`model_label`); a discrete or subsampled local latent is a
    ``ValueError`` naming the site.
    """
    latent = [s for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
    latent = [s for s in latent if not site_is_subsample(s) and not s["infer"].get("is_auxiliary")]
    if not latent:
        raise RuntimeError(
            f"model: FlowGuide found no latent sample sites in {label} (every "
            "sample site is observed, or there are none); nothing to infer, use an empty guide"
        )
    for site in latent:
        _check_continuous(site)
        _check_not_subsampled(site)


def model_label(model: Any) -> str:
    """``model`` named for messages, by its qualified name (or its type's).

    Example:
        >>> def my_model():
        ...     pass
        >>> model_label(my_model)
        "model 'my_model'"
    """
    name = getattr(model, "__qualname__", None) or getattr(model, "__name__", None)
    if not isinstance(name, str):
        name = type(model).__name__
    return f"model {name!r}"


def _check_continuous(site: dict[str, Any]) -> None:
    """Raise if ``site`` is discrete (a global flow guide handles continuous latents only)."""
    if site["fn"].support.is_discrete:
        raise ValueError(
            f"model: site {site['name']!r} is discrete ({type(site['fn']).__name__}); FlowGuide "
            "handles continuous latents only. Enumerate it (infer={'enumerate': 'parallel'}, "
            f"TraceEnum_ELBO) and hide it from the guide (FlowGuide(poutine.block(model, "
            f"hide=[{site['name']!r}])), with AutoDiscreteParallel in an AutoGuideList if it "
            "needs a guide), or marginalize it out; see "
            "https://pyro.ai/examples/enumeration.html"
        )


def _check_not_subsampled(site: dict[str, Any]) -> None:
    """Raise if ``site`` is a local latent of a subsampled plate."""
    for frame in site["cond_indep_stack"]:
        if frame.vectorized and frame.full_size is not None and frame.full_size != frame.size:
            raise ValueError(
                f"model: site {site['name']!r} is a local latent in the subsampled plate "
                f"{frame.name!r} ({frame.size} of {frame.full_size}); a global FlowGuide cannot "
                "follow changing subsamples. Use AmortizedFlowGuide for local latents (and "
                "FlowGuide on the global ones, e.g. with AutoGuideList)"
            )


# -- the Gaussian start --------------------------------------------------------------------------
def minus_inf_on_error(log_density: LogDensity) -> LogDensity:
    """``log_density``, returning ``-inf`` where the model raises (e.g. a scale that underflowed
    to 0 in the model), so that the mode search rejects such trial points."""

    def guarded(u: torch.Tensor) -> torch.Tensor:
        try:
            return log_density(u)
        except (ValueError, RuntimeError):
            return (u * 0).sum() - math.inf

    return guarded


def initial_affine(
    log_density: LogDensity, loc: torch.Tensor, init: str, init_scale: float
) -> dict[str, Any]:
    """The fixed preconditioner ``(loc, scale_tril)`` and the learnable affine's initial scale.

    Only *informative* curvature goes into the preconditioner: the Laplace factor when it is
    used; otherwise the preconditioner is the identity and ``init_scale`` starts the
    learnable affine map (so that its off-diagonal entries are learned at the data's scale).
    The result also says which start was taken (``"init"``) and, for the Laplace start, its
    ``"mode"`` and the ELBOs it was chosen by.
    """
    eye = torch.eye(loc.numel(), dtype=loc.dtype, device=loc.device)
    plain = {"scale_tril": eye, "learnable_scale": init_scale}
    if init == "loc":
        return {"loc": loc, "init": "loc", **plain}
    try:
        with _quiet_mode_search():
            if init == "map":
                mode = find_mode(log_density, loc)
                return {"loc": mode.mode, "init": "map", "mode": mode, **plain}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LaplaceFallbackWarning)
                mode, tril, kind = laplace_approximation(
                    log_density, loc, fallback_scale=init_scale
                )
            # A mode need not be representative (a funnel's density peaks in its neck): keep
            # the Laplace start only if its ELBO beats the init_loc_fn start's.
            elbo_laplace = gaussian_elbo(log_density, mode.mode, tril)
            elbo_loc = gaussian_elbo(log_density, loc, init_scale * eye)
    except (ValueError, RuntimeError) as err:  # no usable mode (e.g. an unbounded density)
        warnings.warn(
            f"FlowGuide: the {init} initialisation failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); starting from init_loc_fn and init_scale",
            LaplaceFallbackWarning,
            stacklevel=4,
        )
        return {"loc": loc, "init": f"loc ({init} failed)", **plain}
    start = _laplace_or_loc(mode, tril, kind, elbo_laplace, elbo_loc, loc, plain)
    for record in caught:  # a fallback inside a Laplace start that is not taken is no news
        if start["init"].startswith("laplace") or record.category is not LaplaceFallbackWarning:
            warnings.warn(record.message, record.category, stacklevel=4)
    return start


def pushed_start(
    start: dict[str, Any], transform: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, Any]:
    r"""A start of :func:`initial_affine` moved through the smooth bijection ``transform``
    (packed vector to packed vector): the location is mapped, and a Laplace factor :math:`L`
    becomes the Cholesky factor of :math:`J L L^\top J^\top` (:math:`J` the Jacobian of
    ``transform`` at the mode: the linearized pushforward of the Gaussian). A start without
    informative curvature keeps its identity preconditioner; so does one whose pushed
    covariance is not numerically positive definite.

    Example:
        >>> start = {"loc": torch.zeros(2), "scale_tril": torch.eye(2), "init": "laplace"}
        >>> moved = pushed_start(start, lambda u: 2.0 * u + 1.0)
        >>> moved["loc"].tolist(), moved["scale_tril"].diag().tolist()
        ([1.0, 1.0], [2.0, 2.0])
    """
    moved = dict(start)
    loc = start["loc"].detach()
    with torch.no_grad():
        moved["loc"] = transform(loc).detach()
    if not start["init"].startswith("laplace"):
        return moved
    jac = torch.autograd.functional.jacobian(transform, loc)
    tril = jac @ start["scale_tril"]
    cov = tril @ tril.T
    factor, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.T))
    if int(info) == 0 and bool(torch.isfinite(factor).all()):
        moved["scale_tril"] = factor
    else:  # degenerate Jacobian: the mode is kept, the curvature is not
        moved["scale_tril"] = torch.eye(loc.numel(), dtype=loc.dtype, device=loc.device)
        moved["init"] = start["init"] + ", curvature dropped"
    return moved


@contextmanager
def _quiet_mode_search() -> Iterator[None]:
    """Hide the mode search from Pyro's handlers and silence its "Encountered NaN" warnings."""
    with pyro.poutine.block(), warnings.catch_warnings():
        # trial points of the mode search may underflow a scale; they are rejected, and
        # Pyro's "Encountered NaN" warnings about them would only confuse
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        yield


def _laplace_or_loc(
    mode: ModeResult,
    tril: torch.Tensor,
    kind: str,
    elbo_laplace: float,
    elbo_loc: float,
    loc: torch.Tensor,
    plain: dict[str, Any],
) -> dict[str, Any]:
    """The Laplace start if its ELBO is finite and at least the ``init_loc_fn`` start's, else
    the ``init_loc_fn`` start (``plain``: its identity preconditioner and scale)."""
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


# -- the flow ------------------------------------------------------------------------------------
def assemble_flow(
    inner: Flow,
    dim: int,
    loc: torch.Tensor,
    scale_tril: torch.Tensor,
    learnable_scale: Any,
    full: bool,
) -> Flow:
    """``inner``'s layers, then the learnable affine map (full lower-triangular if ``full``,
    else diagonal) and the fixed preconditioner ``u = loc + scale_tril v``."""
    if full:
        # identity in whitened coordinates; multiplicative scale updates, so that a
        # preconditioner that is off by orders of magnitude is corrected in few steps
        learnable = LowerTriangularAffineLayer(dim, init_scale_tril=learnable_scale, positive="exp")
    else:
        learnable = DiagonalAffineLayer(dim, init_scale=learnable_scale, positive="exp")
    fixed = FixedAffineLayer(loc.detach().cpu(), scale_tril.detach().cpu())
    return Flow(dim, [*inner.layers, learnable, fixed])
