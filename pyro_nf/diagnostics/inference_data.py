r"""Posterior draws of a Pyro model as an ArviZ ``InferenceData``.

:func:`inference_data_from_samples` takes draws of every latent site of a model, shaped
``(chains, draws, *site_shape)`` in the model's constrained space (from NUTS, from a guide, from
importance resampling), and returns the groups ArviZ's model checks need:

* ``posterior``: the draws (and the model's ``pyro.deterministic`` sites), with the dimensions
  named after the Pyro plates a site lives in (a site in ``pyro.plate("school", 8)`` gets the
  dimension ``school``); other dimensions are ``<site>_dim_<i>`` as ArviZ names them;
* ``log_likelihood``: for every observed site the pointwise :math:`\log p(y_i \mid z_s)` of
  every draw :math:`s`, for ``az.loo`` and ``az.waic``. The model is run **once**, conditioned
  on all draws at a time inside an extra plate left of the model's own plates (in chunks of
  bounded memory); a model that does not vectorize (its vectorized run raises or gives a wrong
  shape) is run once per draw instead, with the same numbers;
* ``observed_data``, ``sample_stats`` (as given) and ``attrs`` (as given, plus the versions).

:func:`flat_draws` and :func:`flat_convergence` turn such an ``InferenceData`` back into flat
``(chains, draws, P)`` tensors and per-coordinate :math:`\hat R` / ESS, for code that compares
moments coordinate by coordinate.

Works with ArviZ 0.x (``InferenceData``) and 1.x (``DataTree``, ``arviz_base`` API).
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .draws import (
    CHUNK_BYTES,
    check_callable,
    check_model_kwargs,
    check_num_samples,
    latent_sites,
    max_plate_nesting_of,
)

__all__ = [
    "add_groups",
    "arviz_major_version",
    "flat_convergence",
    "flat_draws",
    "inference_data_from_samples",
    "predictive_samples",
    "prior_samples",
]

_PLATE = "_pyro_nf_draws"
_VECTORIZE_ERRORS = (RuntimeError, ValueError, NotImplementedError, IndexError, TypeError)


def arviz_major_version() -> int:
    """The major version of the installed ArviZ (0: ``InferenceData``; 1: ``DataTree``).

    Example:
        >>> arviz_major_version() in (0, 1)
        True
    """
    import arviz as az

    return int(az.__version__.split(".")[0])


@dataclass(frozen=True)
class _Site:
    """What one traced run tells about a sample site: its per-draw shape, its event dims, its
    dimension names and whether it is observed data or a ``pyro.deterministic`` value."""

    shape: tuple[int, ...]
    event_dim: int
    dims: list[str]
    kind: str  # "latent", "observed", "deterministic" or "missing"
    log_prob_shape: tuple[int, ...]
    observed: torch.Tensor | None


def _plate_dims(name: str, site: dict[str, Any], shape: tuple[int, ...], event_dim: int) -> list:
    """Names of the dimensions of a value of ``shape``: the plate at that position if its size
    matches, else ``<name>_dim_<i>``."""
    plates = {f.dim: f for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}
    batch = len(shape) - event_dim
    dims = []
    for i, size in enumerate(shape):
        frame = plates.get(i - batch) if i < batch else None
        dims.append(frame.name if frame is not None and frame.size == size else f"{name}_dim_{i}")
    return dims


def _site_info(name: str, site: dict[str, Any], latent: set[str]) -> _Site:
    """The :class:`_Site` of a sample site of a one-draw trace."""
    value, fn = site["value"], site["fn"]
    # a deterministic site's Delta has every dimension as event dimension: name them by plates
    event_dim = 0 if site["infer"].get("_deterministic") else len(getattr(fn, "event_shape", ()))
    shape = tuple(torch.as_tensor(value).shape)
    if site["infer"].get("_deterministic"):
        kind = "deterministic"
    elif name in latent:
        kind = "latent"
    else:
        kind = "observed" if site["is_observed"] else "missing"
    lp_shape = tuple(fn.log_prob(value).shape) if kind == "observed" else ()
    dims = _plate_dims(name, site, shape, event_dim)
    return _Site(shape, event_dim, dims, kind, lp_shape, value if kind == "observed" else None)


def _check_samples(samples: Any) -> tuple[int, int]:
    """``(chains, draws)`` of ``samples`` if it is a non-empty dict of tensors that all start
    with the same two dimensions; else raise naming the offending entry."""
    if not isinstance(samples, Mapping) or not samples:
        raise ValueError(
            "samples: expected a non-empty dict {site: tensor (chains, draws, *site_shape)}, "
            f"got {type(samples).__name__ if not isinstance(samples, Mapping) else 'an empty dict'}"
        )
    lead = None
    for name, value in samples.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value)
            raise ValueError(
                f"samples[{name!r}]: expected a tensor of shape (chains, draws, *site_shape), "
                f"got {got}"
            )
        lead = tuple(value.shape[:2]) if lead is None else lead
        if tuple(value.shape[:2]) != lead or 0 in lead:
            raise ValueError(
                f"samples[{name!r}]: expected (chains, draws) = {lead} like the other sites "
                f"(both > 0), got {tuple(value.shape[:2])}"
            )
    return lead


def _first_draw_trace(
    model: Callable, samples: dict[str, torch.Tensor], args: tuple, kwargs: dict
) -> tuple[dict[str, _Site], int]:
    """Trace ``model`` conditioned on the first draw: the :class:`_Site` of every sample site
    and the batch dimensions the vectorization plate must sit left of. Raise if a latent site
    of the model has no draws in ``samples``."""
    first = {k: v[0, 0] for k, v in samples.items()}
    trace = poutine.trace(poutine.condition(model, data=first)).get_trace(*args, **kwargs)
    sites = {
        name: _site_info(name, site, set(samples))
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    }
    batch_dims = [len(s.shape) - s.event_dim for s in sites.values()]
    nesting = max([max_plate_nesting_of(trace), *batch_dims])
    missing = sorted(n for n, s in sites.items() if s.kind == "missing")
    if missing:
        raise ValueError(
            f"samples: expected draws of every latent site of the model, missing {missing}"
        )
    return sites, nesting


def _padded(value: torch.Tensor, n: int, site: _Site, nesting: int) -> torch.Tensor:
    """``value`` of shape ``(n, *site.shape)`` with ones inserted after the first dimension so
    that the draws sit at batch dimension ``-(nesting + 1)``."""
    batch = len(site.shape) - site.event_dim
    return value.reshape(n, *([1] * (nesting - batch)), *site.shape)


def _site_output(node: dict[str, Any], site: _Site, predictive: bool) -> tuple[Any, tuple]:
    """What a run yields for one site and the per-draw shape it must have: the pointwise log
    density of an observed site (its drawn value if ``predictive``), a deterministic value."""
    if site.kind == "observed" and not predictive:
        value = node["fn"].log_prob(node["value"])
        if node.get("mask") is not None:
            value = torch.where(node["mask"], value, value.new_zeros(()))
        return value, site.log_prob_shape
    return node["value"], site.shape


def _outputs(
    trace: Any, sites: dict[str, _Site], n: int | None, predictive: bool
) -> dict[str, torch.Tensor] | None:
    """``{site: (n, *shape)}``: the pointwise log-likelihood (or, if ``predictive``, the drawn
    values) of the observed sites and the values of the deterministic ones of a run over ``n``
    draws; ``None`` if a shape is wrong (the model does not vectorize). ``n=None``: a run of
    one draw, shapes ``(*shape)``."""
    out = {}
    for name, site in sites.items():
        if site.kind not in ("observed", "deterministic") or name not in trace.nodes:
            continue
        value, want = _site_output(trace.nodes[name], site, predictive)
        value = torch.as_tensor(value)
        if n is None:
            out[name] = value.expand(want)
            continue
        if value.dim() < len(want) + 1 or value.shape[0] != n:
            return None
        extra = value.shape[1 : value.dim() - len(want)]
        if any(d != 1 for d in extra) or tuple(value.shape[value.dim() - len(want) :]) != want:
            return None
        out[name] = value.reshape(n, *want)
    return out


def _vectorized_run(
    model: Callable, data: dict[str, torch.Tensor], args: tuple, kwargs: dict,
    sites: dict[str, _Site], n: int, nesting: int, predictive: bool,
) -> dict[str, torch.Tensor] | None:  # fmt: skip
    """:func:`_outputs` of one run of ``model`` conditioned on ``n`` draws at once, or ``None``
    if the model does not vectorize."""
    padded = {k: _padded(v, n, sites[k], nesting) for k, v in data.items()}
    try:
        with pyro.plate(_PLATE, n, dim=-(nesting + 1)):
            trace = poutine.trace(poutine.condition(model, data=padded)).get_trace(*args, **kwargs)
        return _outputs(trace, sites, n, predictive)
    except _VECTORIZE_ERRORS:
        return None


def _sequential_run(
    model: Callable, data: dict[str, torch.Tensor], args: tuple, kwargs: dict,
    sites: dict[str, _Site], n: int, predictive: bool,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """:func:`_outputs` of the ``n`` draws ``data`` (each ``(n, *shape)``), one run per draw."""
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(n):
        one = {k: v[i] for k, v in data.items()}
        trace = poutine.trace(poutine.condition(model, data=one)).get_trace(*args, **kwargs)
        for k, v in _outputs(trace, sites, None, predictive).items():
            parts.setdefault(k, []).append(v)
    return {k: torch.stack(v) for k, v in parts.items()}


def _chunk(sites: dict[str, _Site], samples: dict[str, torch.Tensor]) -> int:
    """Draws per vectorized run: the values and log densities of a chunk stay under
    :data:`~pyro_nf.diagnostics.draws.CHUNK_BYTES` (with a safety factor 4)."""
    item = max(v.element_size() for v in samples.values())
    per_draw = sum(
        int(np.prod(s.shape, dtype=np.int64)) + int(np.prod(s.log_prob_shape, dtype=np.int64))
        for s in sites.values()
    )
    return max(1, CHUNK_BYTES // max(1, 4 * per_draw * item))


def _replayed_outputs(
    model: Callable, samples: dict[str, torch.Tensor], args: tuple, kwargs: dict,
    sites: dict[str, _Site], nesting: int, predictive: bool = False,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Log-likelihood (or predictive draws) and deterministic values of all ``chains * draws``
    draws, shaped ``(chains, draws, ...)``: vectorized in chunks, else one draw at a time."""
    chains, draws = next(iter(samples.values())).shape[:2]
    total = chains * draws
    flat = {
        k: v.reshape(total, *v.shape[2:])
        for k, v in samples.items()
        if k in sites and sites[k].kind == "latent"
    }
    size = min(total, _chunk(sites, samples))
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, total, size):
        data = {k: v[start : start + size] for k, v in flat.items()}
        n = min(size, total - start)
        job = (model, data, args, kwargs, sites)
        out = _vectorized_run(*job, n, nesting, predictive) if n > 1 else None
        out = out if out is not None else _sequential_run(*job, n, predictive)
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v).reshape(chains, draws, *v[0].shape[1:]) for k, v in parts.items()}


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    """A NumPy copy of a tensor (detached, on the CPU) or array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _check_sample_stats(value: Any, lead: tuple[int, int]) -> dict[str, np.ndarray]:
    """``sample_stats`` as NumPy arrays of leading shape ``lead``; else raise naming the entry."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"sample_stats: expected None or a dict of arrays, got {type(value)}")
    out = {}
    for name, v in value.items():
        arr = _numpy(v) if isinstance(v, torch.Tensor | np.ndarray) else None
        if arr is None or tuple(arr.shape[:2]) != lead:
            got = tuple(arr.shape) if arr is not None else type(v).__name__
            raise ValueError(
                f"sample_stats[{name!r}]: expected an array of shape {lead} + (...), got {got}"
            )
        out[name] = arr
    return out


def _versions(attrs: Any) -> dict[str, Any]:
    """``attrs`` (a dict or ``None``) plus the versions of pyro-nf and Pyro."""
    if attrs is not None and not isinstance(attrs, Mapping):
        raise ValueError(f"attrs: expected None or a dict, got {type(attrs).__name__}")
    try:
        mine = importlib.metadata.version("pyro-nf")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        mine = str(getattr(sys.modules.get("pyro_nf"), "__version__", "unknown"))
    return {
        **dict(attrs or {}),
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "pyro_nf_version": mine,
    }


def _build(groups: dict[str, dict[str, np.ndarray]], coords: Any, dims: Any, attrs: dict) -> Any:
    """An ArviZ ``InferenceData`` (0.x) or ``DataTree`` (1.x) of the non-empty ``groups``."""
    import arviz as az

    groups = {k: v for k, v in groups.items() if v}
    if arviz_major_version() >= 1:  # pragma: no cover - arviz 1.x on Python >= 3.12
        return az.from_dict(groups, coords=coords, dims=dims, attrs=attrs)
    return az.from_dict(**groups, coords=coords, dims=dims, attrs=attrs, posterior_attrs=attrs)


def _check_labels(coords: Any, dims: Any) -> None:
    """Refuse ``coords``/``dims`` that are not dicts (or ``None``)."""
    for name, value in (("coords", coords), ("dims", dims)):
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"{name}: expected None or a dict, got {type(value).__name__}")


@torch.no_grad()
def inference_data_from_samples(
    model: Callable,
    samples: dict[str, torch.Tensor],
    *args: Any,
    model_kwargs: dict | None = None,
    sample_stats: dict[str, np.ndarray | torch.Tensor] | None = None,
    coords: dict | None = None,
    dims: dict | None = None,
    attrs: dict | None = None,
    log_likelihood: bool = True,
) -> Any:
    r"""The ArviZ ``InferenceData`` of draws ``samples`` of ``model(*args, **model_kwargs)``.

    Args:
        model: a Pyro model.
        samples: ``{site: (chains, draws, *site_shape)}`` for every latent site, in the model's
            constrained space. Extra entries (derived quantities) go into the posterior as they
            are.
        args, model_kwargs: the model's positional and keyword arguments.
        sample_stats: per-draw statistics, each ``(chains, draws, ...)``.
        coords, dims: ArviZ labels; they override the plate names (see the module docstring).
        attrs: extra attributes (the library versions are added).
        log_likelihood: compute the ``log_likelihood`` group (one vectorized model run).

    Returns:
        ``InferenceData`` with ``posterior``, ``log_likelihood`` and ``observed_data`` (if the
        model has observed sites), ``sample_stats`` (if given); ArviZ 1.x: a ``DataTree``.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("school", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([0.5, 1.5, 1.0])
        >>> idata = inference_data_from_samples(model, {"mu": torch.zeros(2, 50)}, y)
        >>> idata.log_likelihood["y"].dims, idata.log_likelihood["y"].shape
        (('chain', 'draw', 'school'), (2, 50, 3))
        >>> float(idata.log_likelihood["y"][0, 0, 0])  # log N(0.5; 0, 1)
        -1.0439...
    """
    check_callable("model", model, "a callable Pyro model")
    kwargs = check_model_kwargs(model_kwargs)
    lead = _check_samples(samples)
    stats = _check_sample_stats(sample_stats, lead)
    _check_labels(coords, dims)
    full_attrs = _versions(attrs)
    sites, nesting = _first_draw_trace(model, samples, args, kwargs)
    observed = [k for k, s in sites.items() if s.kind == "observed"]
    wanted = {k: s for k, s in sites.items() if log_likelihood or s.kind != "observed"}
    outputs = _replayed_outputs(model, samples, args, kwargs, wanted, nesting)
    posterior = {k: _numpy(v) for k, v in samples.items()}
    for k, v in outputs.items():
        if sites[k].kind == "deterministic" and k not in posterior:
            posterior[k] = _numpy(v)
    groups = {
        "posterior": posterior,
        "log_likelihood": {k: _numpy(outputs[k]) for k in observed if k in outputs},
        "observed_data": {k: _numpy(sites[k].observed) for k in observed},
        "sample_stats": stats,
    }
    auto = {k: s.dims for k, s in sites.items() if s.kind != "missing" and _named(k, s)}
    return _build(groups, coords, {**auto, **dict(dims or {})}, full_attrs)


def _named(name: str, site: _Site) -> bool:
    """Whether any dimension of ``site`` is named after a plate."""
    return any(not d.startswith(f"{name}_dim_") for d in site.dims)


@torch.no_grad()
def predictive_samples(
    model: Callable,
    samples: dict[str, torch.Tensor],
    *args: Any,
    model_kwargs: dict | None = None,
) -> dict[str, torch.Tensor]:
    r"""Draws :math:`\tilde y_s \sim p(y \mid z_s)` of every observed site of ``model`` given
    latent draws ``samples`` (``{site: (chains, draws, *site_shape)}``): the posterior
    predictive for posterior draws, the prior predictive for prior draws. One vectorized run
    (in chunks), or one run per draw if the model does not vectorize.

    Returns:
        ``{observed site: (chains, draws, *value_shape)}``.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1e-3), obs=y)
        >>> out = predictive_samples(model, {"mu": torch.full((2, 4), 5.0)}, torch.zeros(3))
        >>> out["y"].shape, bool((out["y"] - 5.0).abs().max() < 0.01)
        (torch.Size([2, 4, 3]), True)
    """
    check_callable("model", model, "a callable Pyro model")
    kwargs = check_model_kwargs(model_kwargs)
    _check_samples(samples)
    sites, nesting = _first_draw_trace(model, samples, args, kwargs)
    wanted = {k: s for k, s in sites.items() if s.kind in ("latent", "observed")}
    if not any(s.kind == "observed" for s in wanted.values()):
        return {}
    unconditioned = poutine.uncondition(model)
    out = _replayed_outputs(unconditioned, samples, args, kwargs, wanted, nesting, True)
    return {k: v for k, v in out.items() if sites[k].kind == "observed"}


@torch.no_grad()
def prior_samples(
    model: Callable, num_samples: int, *args: Any, model_kwargs: dict | None = None
) -> dict[str, torch.Tensor]:
    """``num_samples`` draws of every latent site of ``model`` from its prior, as one chain:
    ``{site: (1, num_samples, *site_shape)}`` (by ``pyro.infer.Predictive``, vectorized when
    the model allows it).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("g", 3):
        ...         pyro.sample("a", dist.Normal(0.0, 1.0))
        >>> prior_samples(model, 10)["a"].shape
        torch.Size([1, 10, 3])
    """
    from pyro.infer import Predictive

    check_callable("model", model, "a callable Pyro model")
    kwargs = check_model_kwargs(model_kwargs)
    num_samples = check_num_samples(num_samples)
    trace = poutine.trace(model).get_trace(*args, **kwargs)
    shapes = {n: site["value"].shape for n, site in latent_sites(trace)}
    if not shapes:
        return {}
    for parallel in (True, False):
        try:
            draws = Predictive(
                model, num_samples=num_samples, return_sites=list(shapes), parallel=parallel
            )(*args, **kwargs)
            return {k: v.reshape(1, num_samples, *shapes[k]) for k, v in draws.items()}
        except _VECTORIZE_ERRORS:
            if not parallel:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def add_groups(
    idata: Any,
    groups: dict[str, dict[str, np.ndarray | torch.Tensor]],
    coords: dict | None = None,
    dims: dict | None = None,
) -> Any:
    """Add ``groups`` (``{group: {var: (chains, draws, ...)}}``, e.g. ``posterior_predictive``,
    ``prior``, ``prior_predictive``) to ``idata`` in place and return it. A variable's dims
    default to those of the variable of the same name in ``posterior`` or ``observed_data``;
    ``dims`` overrides them.

    Example:
        >>> import arviz as az
        >>> idata = az.from_dict(posterior={"a": np.zeros((1, 5, 3))}, dims={"a": ["g"]})
        >>> idata = add_groups(idata, {"prior": {"a": torch.zeros(1, 7, 3)}})
        >>> idata.prior["a"].dims
        ('chain', 'draw', 'g')
    """
    import arviz as az

    _check_labels(coords, dims)
    inferred = _existing_dims(idata)
    data = {g: {k: _numpy(v) for k, v in vs.items()} for g, vs in groups.items() if vs}
    wanted = {k: inferred[k] for vs in data.values() for k in vs if k in inferred}
    all_dims = {**wanted, **dict(dims or {})}
    if arviz_major_version() >= 1:  # pragma: no cover - arviz 1.x on Python >= 3.12
        new = az.from_dict(data, coords=coords, dims=all_dims)
        for name in data:
            idata[name] = new[name]
        return idata
    idata.extend(az.from_dict(**data, coords=coords, dims=all_dims))
    return idata


def _existing_dims(idata: Any) -> dict[str, list[str]]:
    """``{var: dims}`` of the variables of ``posterior`` (without chain/draw) and
    ``observed_data``."""
    out: dict[str, list[str]] = {}
    for group, skip in (("observed_data", 0), ("posterior", 2)):
        try:
            data = _group(idata, group)
        except ValueError:
            continue
        out.update({k: list(data[k].dims[skip:]) for k in data.data_vars})
    return out


def flat_draws(
    idata: Any, var_names: Sequence[str] | None = None, group: str = "posterior"
) -> tuple[torch.Tensor, list[str]]:
    r"""The variables ``var_names`` (default: all) of an ``InferenceData`` group as one float64
    tensor of shape ``(chains, draws, P)`` and the ``P`` coordinate names (``"theta[3]"``),
    every variable flattened in C order, in the order of ``var_names``.

    Example:
        >>> import arviz as az
        >>> idata = az.from_dict(posterior={"a": np.zeros((2, 5)), "b": np.ones((2, 5, 3))})
        >>> x, names = flat_draws(idata, ["b", "a"])
        >>> tuple(x.shape), names
        ((2, 5, 4), ['b[0]', 'b[1]', 'b[2]', 'a'])
    """
    data = _group(idata, group)
    names = list(data.data_vars) if var_names is None else list(var_names)
    parts, labels = [], []
    for name in names:
        if name not in data.data_vars:
            raise ValueError(f"var_names: {name!r} is not a variable of {group} {list(data)}")
        arr = np.asarray(data[name].transpose("chain", "draw", ...).values, dtype=np.float64)
        parts.append(arr.reshape(*arr.shape[:2], -1))
        labels += _labels(name, arr.shape[2:])
    return torch.from_numpy(np.concatenate(parts, axis=-1)), labels


def _labels(name: str, shape: tuple[int, ...]) -> list[str]:
    """``name`` for a scalar, else ``name[i,j]`` for every index in C order."""
    if not shape:
        return [name]
    return [f"{name}[{','.join(map(str, i))}]" for i in np.ndindex(*shape)]


def _group(idata: Any, group: str) -> Any:
    """The ``xarray.Dataset`` of ``group`` (ArviZ 0.x ``InferenceData`` or 1.x ``DataTree``)."""
    try:
        data = idata[group]
    except (KeyError, TypeError, AttributeError):
        data = None
    if data is None:
        raise ValueError(f"idata: expected an InferenceData with a {group!r} group")
    return data.to_dataset() if hasattr(data, "to_dataset") else data


def flat_convergence(idata: Any, var_names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    r"""Rank-normalized split :math:`\hat R` and bulk/tail ESS (Vehtari et al. 2021, by
    ``az.rhat`` and ``az.ess``) of every coordinate of :func:`flat_draws` (same order), each a
    float64 tensor of shape ``(P,)``: keys ``rhat``, ``ess_bulk``, ``ess_tail``.

    Example:
        >>> import arviz as az
        >>> rng = np.random.default_rng(0)
        >>> idata = az.from_dict(posterior={"a": rng.normal(size=(4, 500))})
        >>> d = flat_convergence(idata)
        >>> float(d["rhat"][0]) < 1.01, float(d["ess_bulk"][0]) > 1000
        (True, True)
    """
    import arviz as az

    data = _group(idata, "posterior")
    names = list(data.data_vars) if var_names is None else list(var_names)
    out = {}
    for key, fn in (
        ("rhat", lambda d: az.rhat(d, var_names=names)),
        ("ess_bulk", lambda d: az.ess(d, var_names=names, method="bulk")),
        ("ess_tail", lambda d: az.ess(d, var_names=names, method="tail")),
    ):
        res = fn(data)
        res = res.to_dataset() if hasattr(res, "to_dataset") else res
        out[key] = torch.cat(
            [
                torch.from_numpy(np.asarray(res[n].values, dtype=np.float64)).reshape(-1)
                for n in names
            ]
        )
    return out
