r"""Guide draws with their log importance weights, in bounded memory.

:func:`weighted_draws` returns :math:`\log w_s = \log p(x, z_s) - \log q(z_s)` for
:math:`z_s \sim q`, :math:`s = 1..S`, and the draws of every latent site. It evaluates the draws
in *chunks*: a probe run of :data:`PROBE_DRAWS` draws (on a forked random stream, so that it
leaves the caller's stream as it was) measures the size of one draw's trace, and the draws are
then evaluated vectorized, :math:`c` at a time, with :math:`c \cdot (\text{trace size}) \cdot 4`
below :data:`CHUNK_BYTES`. Memory then grows with the chunk, not with :math:`S`.

A model that is not vectorization-safe (one whose vectorized trace raises, or whose per-draw
log density or site values come out with the wrong batch shape, e.g. a Python loop whose
``torch.stack(..., -1)`` broadcasts the draws against a plate into an :math:`S \times S`
tensor) is detected by the probe and evaluated one draw at a time: the guide still vectorized
in chunks when it allows it, the model conditioned on each draw. The numbers are the same as
those of a fully sequential evaluation (one ``trace``/``replay`` per draw), up to rounding.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.importance import vectorized_importance_weights
from pyro.infer.util import plate_log_prob_sum
from pyro.poutine.util import site_is_subsample

__all__ = [
    "CHUNK_BYTES",
    "PROBE_DRAWS",
    "check_callable",
    "check_keywords",
    "check_model_kwargs",
    "check_num_samples",
    "check_weight_arguments",
    "latent_sites",
    "max_plate_nesting_of",
    "trace_pair",
    "weighted_draws",
]

#: The memory budget of one vectorized chunk of draws (bytes of its traces, times a safety 4).
CHUNK_BYTES = 256 * 2**20
#: Draws of the probe run that checks vectorization and measures the size of a trace.
PROBE_DRAWS = 3
_PLATE = "num_particles_vectorized"
_VECTORIZE_ERRORS = (RuntimeError, ValueError, NotImplementedError, IndexError, TypeError)
Draws = tuple[torch.Tensor, dict[str, torch.Tensor]]


def trace_pair(
    model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> tuple[poutine.Trace, poutine.Trace]:
    """One draw of ``guide`` and ``model`` replayed on it: ``(model_trace, guide_trace)``."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def latent_sites(trace: poutine.Trace) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``(name, site)`` pairs of the latent sample sites of ``trace`` (no subsample sites)."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            yield name, site


def max_plate_nesting_of(*traces: poutine.Trace) -> int:
    """The deepest vectorized plate nesting of the sample sites of ``traces`` (0 if none)."""
    depth = 0
    for tr in traces:
        for site in tr.nodes.values():
            if site["type"] == "sample":
                depth = max(depth, *[-f.dim for f in site["cond_indep_stack"] if f.vectorized], 0)
    return depth


def _trace_bytes(*traces: poutine.Trace) -> int:
    """Bytes of the values and log densities held by ``traces``."""
    total = 0
    for tr in traces:
        for site in tr.nodes.values():
            for key in ("value", "log_prob"):
                t = site.get(key)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    return total


def _chunk_size(trace_bytes: int, probe: int, num_samples: int) -> int:
    """Draws per vectorized chunk for traces of ``trace_bytes`` over ``probe`` draws."""
    per_draw = max(1, 4 * trace_bytes // probe)
    return max(1, min(num_samples, CHUNK_BYTES // per_draw))


@contextmanager
def _forked_rng() -> Iterator[None]:
    """Run a block on a copy of torch's global random stream (restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        yield


def _vectorized_chunk(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, size: int, nesting: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int] | None:
    """``(log_w (size,), {site: (size, ...)}, trace bytes)`` of one vectorized run of ``size``
    draws, or ``None`` if it raises or gives a wrong batch shape (not vectorization-safe)."""
    try:
        lw, model_trace, guide_trace = vectorized_importance_weights(
            model, guide, *args, num_samples=size, max_plate_nesting=nesting, **kwargs
        )
    except _VECTORIZE_ERRORS:
        return None
    lw = lw.reshape(1) if size == 1 else lw
    values = {name: site["value"] for name, site in latent_sites(model_trace)}
    if lw.shape != (size,) or any(v.shape[:1] != (size,) for v in values.values()):
        return None
    return lw, values, _trace_bytes(model_trace, guide_trace)


def _vectorized_draws(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_samples: int, nesting: int
) -> Draws | None:
    """All draws, vectorized in chunks of bounded memory; ``None`` if the probe shows that the
    model is not vectorization-safe (then nothing of the caller's random stream is used)."""
    probe = min(PROBE_DRAWS, num_samples) if num_samples > 1 else 1
    with _forked_rng():
        checked = _vectorized_chunk(model, guide, args, kwargs, max(probe, 2), nesting)
    if checked is None:
        return None
    chunk = _chunk_size(checked[2], max(probe, 2), num_samples)
    log_w, values = [], {}
    for start in range(0, num_samples, chunk):
        part = _vectorized_chunk(
            model, guide, args, kwargs, min(chunk, num_samples - start), nesting
        )
        if part is None:  # pragma: no cover - the probe passed but a chunk did not
            return None
        log_w.append(part[0])
        for name, v in part[1].items():
            values.setdefault(name, []).append(v)
    return torch.cat(log_w), {k: torch.cat(v) for k, v in values.items()}


def _vectorized_guide(
    guide: Callable, args: tuple, kwargs: dict, size: int, nesting: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int] | None:
    """``(log q (size,), {site: (size, ...)}, trace bytes)`` of one vectorized guide run, or
    ``None`` if the guide does not vectorize."""
    try:
        with pyro.plate(_PLATE, size, dim=-(nesting + 1)):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        guide_trace.compute_log_prob()
        guide_trace.pack_tensors()
        log_q = plate_log_prob_sum(guide_trace, guide_trace.plate_to_symbol[_PLATE])
    except _VECTORIZE_ERRORS:
        return None
    values = {
        name: site["value"]
        for name, site in latent_sites(guide_trace)
        if not site["infer"].get("is_auxiliary")
    }
    log_q = log_q.reshape(1) if size == 1 else log_q
    if log_q.shape != (size,) or any(v.shape[:1] != (size,) for v in values.values()):
        return None
    return log_q, values, _trace_bytes(guide_trace)


def _model_log_density(
    model: Callable, args: tuple, kwargs: dict, values: dict[str, torch.Tensor], latent: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``log p(x, z)`` of the model conditioned on one draw ``values``, and the draw of every
    site in ``latent`` (model-only latents sampled from the model, as ``replay`` does)."""
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    draw = {n: values[n] if n in values else trace.nodes[n]["value"] for n in latent}
    return trace.log_prob_sum(), draw


def _stack(log_w: list[torch.Tensor], draws: dict[str, list[torch.Tensor]]) -> Draws:
    return torch.stack(log_w), {k: torch.stack(v) for k, v in draws.items()}


def _replayed_draws(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_samples: int
) -> Draws:
    """All draws one ``trace``/``replay`` pair at a time (any model and guide)."""
    log_w, draws = [], {}
    for _ in range(num_samples):
        model_trace, guide_trace = trace_pair(model, guide, args, kwargs)
        log_w.append(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
        for name, site in latent_sites(model_trace):
            draws.setdefault(name, []).append(site["value"])
    return _stack(log_w, draws)


def _sequential_draws(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    nesting: int,
    reference: poutine.Trace,
) -> Draws:
    """All draws with the model evaluated one draw at a time, conditioned on guide draws that
    are taken vectorized in bounded chunks (all one at a time if the guide does not vectorize).
    ``reference``: a model trace of one draw, for the latent sites and their shapes."""
    shapes = {name: site["value"].shape for name, site in latent_sites(reference)}
    with _forked_rng():
        probe = _vectorized_guide(guide, args, kwargs, 2, nesting)
    if probe is None or any(
        v[0].numel() != shapes[n].numel() for n, v in probe[1].items() if n in shapes
    ):
        return _replayed_draws(model, guide, args, kwargs, num_samples)
    chunk = _chunk_size(probe[2], 2, num_samples)
    log_w, draws = [], {name: [] for name in shapes}
    for start in range(0, num_samples, chunk):
        part = _vectorized_guide(guide, args, kwargs, min(chunk, num_samples - start), nesting)
        if part is None:  # pragma: no cover - the probe passed but a chunk did not
            return _replayed_draws(model, guide, args, kwargs, num_samples)
        for i in range(part[0].shape[0]):
            values = {n: v[i].reshape(shapes[n]) for n, v in part[1].items() if n in shapes}
            log_p, draw = _model_log_density(model, args, kwargs, values, list(shapes))
            log_w.append(log_p - part[0][i])
            for name, value in draw.items():
                draws[name].append(value)
    return _stack(log_w, draws)


@torch.no_grad()
def weighted_draws(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    *,
    max_plate_nesting: int | None = None,
    vectorize: bool = True,
) -> Draws:
    r"""``(log_w, draws)``: the ``(S,)`` log importance weights of ``num_samples`` guide draws
    and ``{site: (S, ...)}`` the draws of every latent site of the model, in bounded memory
    (see the module docstring). With ``vectorize=False`` every draw is traced on its own.
    Arguments are not checked here (the public callers do that).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     pyro.sample("z", dist.Normal(0.0, 2.0))
        >>> log_w, draws = weighted_draws(model, guide, (), {}, 50)
        >>> log_w.shape, draws["z"].shape
        (torch.Size([50]), torch.Size([50]))
    """
    reference = None
    if max_plate_nesting is None:
        reference = trace_pair(model, guide, args, kwargs)
        max_plate_nesting = max_plate_nesting_of(*reference)
    if vectorize:
        out = _vectorized_draws(model, guide, args, kwargs, num_samples, max_plate_nesting)
        if out is not None:
            if reference is not None:  # the per-draw shapes of the sites
                shapes = {n: s["value"].shape for n, s in latent_sites(reference[0])}
                out = (
                    out[0],
                    {
                        k: v.reshape(num_samples, *shapes[k])
                        if k in shapes and v[0].numel() == shapes[k].numel()
                        else v
                        for k, v in out[1].items()
                    },
                )
            return out
        if reference is None:
            reference = trace_pair(model, guide, args, kwargs)
        return _sequential_draws(
            model, guide, args, kwargs, num_samples, max_plate_nesting, reference[0]
        )
    return _replayed_draws(model, guide, args, kwargs, num_samples)


def check_callable(name: str, value: Any, what: str) -> Callable:
    """Return ``value`` if it is callable, else raise ``"<name>: expected <what>, got ..."``.

    Example:
        >>> check_callable("model", None, "a callable Pyro model")
        Traceback (most recent call last):
        ...
        ValueError: model: expected a callable Pyro model, got None
    """
    if not callable(value):
        got = "None" if value is None else f"{type(value).__name__} {value!r}"[:120]
        raise ValueError(f"{name}: expected {what}, got {got}")
    return value


def check_model_kwargs(value: Any) -> dict[str, Any]:
    """``model_kwargs`` as a dict (``None`` is ``{}``); anything but a mapping with string keys
    is refused.

    Example:
        >>> check_model_kwargs(None)
        {}
        >>> check_model_kwargs([1])
        Traceback (most recent call last):
        ...
        ValueError: model_kwargs: expected None or a dict of the model's keyword arguments, got list
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(
            "model_kwargs: expected None or a dict of the model's keyword arguments, "
            f"got {type(value).__name__}"
        )
    return dict(value)


def check_keywords(
    owner: str, given: Iterable[str], accepted: Iterable[str], model_keywords: bool = True
) -> None:
    """Refuse the first keyword of ``given`` that is not in ``accepted``: a ``TypeError`` that
    names it, suggests the closest accepted keyword (``difflib``) and lists the accepted ones;
    with ``model_keywords`` it adds where the model's own keywords go (``model_kwargs``, the
    project-wide convention). ``owner`` names the function or class (may be empty).

    Example:
        >>> check_keywords("report", ["num_sample"], ["num_samples", "model_kwargs"])
        Traceback (most recent call last):
        ...
        TypeError: num_sample: unexpected keyword argument of report; did you mean 'num_samples'? Expected num_samples or model_kwargs (the model's own keyword arguments go in model_kwargs={...})
    """
    accepted = list(accepted)
    unknown = [k for k in given if k not in accepted]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(str(name), accepted, n=1)
    where = f" of {owner}" if owner else ""
    hint = f"; did you mean {close[0]!r}? Expected" if close else "; expected"
    if not accepted:
        hint, listed = "; it takes", "no keyword arguments"
    else:
        listed = ", ".join(accepted[:-1]) + f" or {accepted[-1]}" if accepted[1:] else accepted[0]
    if model_keywords:
        listed += " (the model's own keyword arguments go in model_kwargs={...})"
    raise TypeError(f"{name}: unexpected keyword argument{where}{hint} {listed}")


def check_num_samples(value: Any, minimum: int = 1, why: str = "") -> int:
    """``num_samples`` as an ``int`` if it is an integer ``>= minimum`` (``why``: the reason
    for the minimum, quoted in the message), else raise.

    Example:
        >>> check_num_samples(1, 21, "PSIS needs at least 21 draws")
        Traceback (most recent call last):
        ...
        ValueError: num_samples: expected an integer >= 21 (PSIS needs at least 21 draws), got 1
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        reason = f" ({why})" if why else ""
        raise ValueError(f"num_samples: expected an integer >= {minimum}{reason}, got {value!r}")
    return int(value)


def check_weight_arguments(
    model: Any, guide: Any, num_samples: Any, minimum: int = 1, why: str = "", **options: Any
) -> None:
    """Check the arguments shared by the importance-weight diagnostics, before any draw:
    ``model``, ``guide``, ``num_samples`` and the options ``max_plate_nesting``,
    ``model_kwargs`` and ``vectorize`` (any other keyword is refused, naming it)."""
    check_callable("model", model, "a callable Pyro model")
    check_callable("guide", guide, "a callable Pyro guide")
    check_num_samples(num_samples, minimum, why)
    check_keywords("", options, ("max_plate_nesting", "model_kwargs", "vectorize"))
    nesting = options.get("max_plate_nesting")
    if nesting is not None and (
        isinstance(nesting, bool) or not isinstance(nesting, int) or nesting < 0
    ):
        raise ValueError(f"max_plate_nesting: expected None or an integer >= 0, got {nesting!r}")
    check_model_kwargs(options.get("model_kwargs"))
    if not isinstance(options.get("vectorize", True), bool):
        raise ValueError(f"vectorize: expected True or False, got {options['vectorize']!r}")
