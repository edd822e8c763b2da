"""Pyro's generic transform checks, run over every registered flow family.

Learned from Pyro's ``tests/distributions/test_transforms.py`` (``TransformTests._test_*``,
``test_inverse_conditional_transform_module``, ``test_conditional_compose_transform_module``):
log|det J| against the Jacobian, inverse round trips, shapes and batch shapes, ``with_cache``,
``sign``, domain/codomain event dims, ``inv``, pickling, maximum-likelihood autodiff and
conditional transforms' ``.condition(context)``. Each check runs for every family in
``family_names()`` (read when the tests are collected, so newly registered families are picked
up), directly parameterized and amortized, both through :meth:`Flow.as_pyro_transform` (``via =
"pyro"``) and on the raw pyro-nf transforms (``via = "raw"``: each layer's transform and their
chain). Then the Pyro front ends: ``AutoNormalizingFlow`` (training to a known posterior),
``NeuTraReparam``, ``Predictive``, ``ComposeTransform(cache_size=1)`` and ``UnitJacobianReparam``.
"""

from __future__ import annotations

import inspect
import io
import math
import pickle
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from conftest import exact_gaussian_posterior, gaussian_model, randomize
from pyro.infer.autoguide import AutoNormalizingFlow
from torch.distributions.transforms import ComposeTransform

import pyro_nf
from pyro_nf.flows import gaussian
from pyro_nf.flows.pyro_modules import (
    ConditionalFlowTransformModule,
    ConditionedFlowTransform,
    FlowTransformModule,
)
from pyro_nf.flows.registry import build_flow, family_names, get_family
from pyro_nf.transforms import ChainTransform, FlowTransform, Reverse

DIM, CONTEXT_DIM, N = 3, 2, 4
F64 = torch.float64


# -- building every family the same way ------------------------------------------------------------


def _small_kwargs(name: str, context_dim: int | None) -> dict[str, Any]:
    """Small-model keywords the family's builder takes (read from its signature)."""
    params = inspect.signature(get_family(name).builder).parameters
    wanted = {"depth": 2, "hidden": (8,), "context_dim": context_dim}
    return {k: v for k, v in wanted.items() if k in params and v is not None}


def amortized_support(name: str) -> str | None:
    """``None`` if the family can be amortized, else why not (the skip reason)."""
    if name == "stack":
        return None
    params = inspect.signature(get_family(name).builder).parameters
    if "context_dim" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return f"family {name!r}: its builder takes no context_dim (no amortized form)"
    return None


def build(name: str, amortized: bool, seed: int = 0, dim: int = DIM) -> pyro_nf.Flow:
    """The family's flow at ``dim`` (or its min_dim), float64, parameters off the identity."""
    context_dim = CONTEXT_DIM if amortized else None
    dim = max(dim, get_family(name).min_dim)
    torch.manual_seed(seed)
    if name == "stack":  # a composition of two families (its builder takes specs, not a dim)
        extra = {"context_dim": context_dim} if amortized else {}
        parts = [
            {"name": "iaf", "kwargs": {"dim": dim, "depth": 1, "hidden": [8], **extra}},
            {"name": "radial", "kwargs": {"dim": dim, "depth": 2, "base": "standard", **extra}},
        ]
        flow = build_flow("stack", parts=parts)
    else:
        flow = get_family(name).builder(dim, **_small_kwargs(name, context_dim))
    return randomize(flow.to(F64), scale=0.3, seed=seed)


def _context(flow: pyro_nf.Flow, batch: tuple[int, ...] = (N,)) -> torch.Tensor | None:
    if flow.context_dim is None:
        return None
    gen = torch.Generator().manual_seed(5)
    return torch.randn(*batch, flow.context_dim, generator=gen, dtype=F64)


def _points(flow: pyro_nf.Flow, shape: tuple[int, ...] = (N,), seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, flow.dim, generator=gen, dtype=F64)


def transforms_under_test(flow: pyro_nf.Flow, via: str) -> list[tuple[str, Any]]:
    """``(label, transform)`` pairs: the Pyro module (conditioned for an amortized flow), or each
    raw layer transform and their chain."""
    context = _context(flow)
    if via == "pyro":
        module = flow.as_pyro_transform()
        return [("module", module if context is None else module.condition(context))]
    parts = flow.build_transforms(context)
    return [(f"part{i}:{type(t).__name__}", t) for i, t in enumerate(parts)] + [
        ("chain", ChainTransform(parts))
    ]


CASES = [
    pytest.param(name, amortized, id=f"{name}-{'amortized' if amortized else 'direct'}")
    for name in family_names()
    for amortized in (False, True)
]
VIAS = pytest.mark.parametrize("via", ["pyro", "raw"])


def _flow_or_skip(name: str, amortized: bool) -> pyro_nf.Flow:
    reason = amortized_support(name) if amortized else None
    if reason is not None:
        pytest.skip(reason)
    return build(name, amortized)


def _blocks(fn, x: torch.Tensor) -> torch.Tensor:
    """The per-point Jacobians ``∂fn(x)_i/∂x_i`` (shape ``(N, D, D)``); asserts that a point's
    output depends on no other point."""
    jac = torch.autograd.functional.jacobian(fn, x)  # (N, D, N, D)
    n = x.shape[0]
    blocks = torch.stack([jac[i, :, i, :] for i in range(n)])
    off = jac.clone()
    for i in range(n):
        off[i, :, i, :] = 0
    assert bool((off == 0).all()), "outputs depend on other points' inputs"
    return blocks


# -- Pyro's TransformTests, for every family ------------------------------------------------------


@VIAS
@pytest.mark.parametrize("name, amortized", CASES)
def test_log_abs_det_jacobian_and_sign_match_the_jacobian(name, amortized, via):
    flow = _flow_or_skip(name, amortized)
    x = _points(flow)
    for label, t in transforms_under_test(flow, via):
        y = t(x)
        ladj = t.log_abs_det_jacobian(x, y)
        assert ladj.shape == (N,), label
        blocks = _blocks(lambda v, t=t: t._call(v), x)
        sign, logabsdet = torch.linalg.slogdet(blocks)
        torch.testing.assert_close(ladj.detach(), logabsdet, rtol=0, atol=1e-8, msg=label)
        assert t.sign in (-1, 1), label
        assert bool((sign == t.sign).all()), f"{label}: sign {t.sign}, det signs {sign.tolist()}"


@VIAS
@pytest.mark.parametrize("name, amortized", CASES)
def test_inverse_round_trip_and_inv(name, amortized, via):
    flow = _flow_or_skip(name, amortized)
    x = _points(flow)
    for label, t in transforms_under_test(flow, via):
        y = t._call(x)  # _call/_inverse bypass any cache, as Pyro's _test_inverse does
        x_back = t._inverse(y)
        torch.testing.assert_close(x_back, x, rtol=0, atol=1e-8, msg=label)
        ladj = t.log_abs_det_jacobian(x, y)
        torch.testing.assert_close(t.log_abs_det_jacobian(x_back, y), ladj, msg=label)
        inv = t.inv
        torch.testing.assert_close(inv(y), x, rtol=0, atol=1e-8, msg=label)
        torch.testing.assert_close(inv.log_abs_det_jacobian(y, x), -ladj, msg=label)
        torch.testing.assert_close(inv.inv(x), y, msg=label)
        assert inv.sign == t.sign, label


@VIAS
@pytest.mark.parametrize("name, amortized", CASES)
def test_shapes_domain_and_codomain(name, amortized, via):
    flow = _flow_or_skip(name, amortized)
    for label, t in transforms_under_test(flow, via):
        assert t.domain.event_dim == 1 and t.codomain.event_dim == 1, label
        assert t.event_dim == 1 and t.bijective, label
        event = (flow.dim,)
        assert t.forward_shape(event) == event and t.inverse_shape(event) == event, label
        # sample shapes in front of the (context's) batch shape, as Pyro's _test_shape
        for sample_shape in [(), (3,), (2, 3)]:
            shape = (*sample_shape, N, flow.dim)
            base = dist.Normal(torch.zeros(shape, dtype=F64), 1.0).to_event(1)
            q = dist.TransformedDistribution(base, [t])
            z = q.rsample()
            assert z.shape == shape, label
            assert q.log_prob(z).shape == shape[:-1], label
            assert t.forward_shape(shape) == shape and t.inverse_shape(shape) == shape, label


@pytest.mark.parametrize("name, amortized", CASES)
def test_pyro_transform_is_the_flow(name, amortized):
    """as_pyro_transform maps base draws to flow outputs exactly as flow(context) does, and a
    TransformedDistribution scores points exactly as the flow's distribution."""
    flow = _flow_or_skip(name, amortized)
    context = _context(flow, batch=(N,))
    module = flow.as_pyro_transform()
    t = module if context is None else module.condition(context)
    torch.manual_seed(11)
    z, log_q = flow(context).rsample_and_log_prob((2, N) if context is None else (2,))
    torch.manual_seed(11)
    eps = torch.randn(2, N, flow.dim, dtype=F64)
    torch.testing.assert_close(t(eps), z, rtol=0, atol=1e-12)
    base = dist.Normal(torch.zeros(N, flow.dim, dtype=F64), 1.0).to_event(1)
    q = dist.TransformedDistribution(base, [t])
    other = _points(flow, (2, N), seed=9)
    torch.testing.assert_close(q.log_prob(other), flow(context).log_prob(other))
    fresh = dist.TransformedDistribution(base, [t.with_cache(0)])
    torch.testing.assert_close(fresh.log_prob(z.detach()), log_q.detach())


@VIAS
@pytest.mark.parametrize("name, amortized", CASES)
def test_with_cache_shares_parameters(name, amortized, via):
    flow = _flow_or_skip(name, amortized)
    x = _points(flow)
    for label, t in transforms_under_test(flow, via):
        cached = t.with_cache(1)
        assert cached._cache_size == 1 and cached.with_cache(1) is cached, label
        plain = cached.with_cache(0)
        assert plain._cache_size == 0 and plain.with_cache(0) is plain, label
        y = cached(x)
        assert cached(x) is y and cached.inv(y) is x, label  # torch's one-entry cache
        torch.testing.assert_close(plain(x), t._call(x), msg=label)
        torch.testing.assert_close(plain.inv(y), x, rtol=0, atol=1e-8, msg=label)
        # the same leaves: the gradient through the copy is the original's
        if not t._call(x).requires_grad:  # a permutation: no parameters
            continue
        grads = []
        for candidate in (t, cached.with_cache(0)):
            flow.zero_grad()
            (candidate._call(x) ** 2).sum().backward(retain_graph=True)  # raw: shared graph
            grads.append([p.grad.clone() for p in flow.parameters() if p.grad is not None])
        assert grads[0] and len(grads[0]) == len(grads[1]), label
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, msg=label)
        with pytest.raises(ValueError, match="cache_size"):
            t.with_cache(2)


@VIAS
@pytest.mark.parametrize("name, amortized", CASES)
def test_pickle_round_trip(name, amortized, via):
    flow = _flow_or_skip(name, amortized)
    x = _points(flow)
    context = _context(flow)
    if via == "pyro":
        module = flow.as_pyro_transform()
        conditioned = (lambda m: m) if context is None else (lambda m: m.condition(context))
        expected = conditioned(module)(x)  # leaves a graph-carrying memo and cache behind
        for restored in (
            pickle.loads(pickle.dumps(module)),
            _torch_round_trip(module),
        ):
            assert type(restored) is type(module)
            torch.testing.assert_close(conditioned(restored)(x), expected)
        return
    with torch.no_grad():  # raw transforms hold tensors computed from the parameters
        parts = flow.build_transforms(context)
    for label, t in [*((type(p).__name__, p) for p in parts), ("chain", ChainTransform(parts))]:
        restored = pickle.loads(pickle.dumps(t))
        torch.testing.assert_close(restored(x), t(x), msg=label)
        torch.testing.assert_close(restored.inv(t(x)), x, rtol=0, atol=1e-8, msg=label)


def _torch_round_trip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name, amortized", CASES)
def test_maximum_likelihood_steps(name, amortized):
    """Pyro's _test_autodiff: a few Adam steps on -log q(x) through TransformedDistribution,
    with the one module object used across steps (it must see the updated parameters)."""
    flow = _flow_or_skip(name, amortized)
    context = _context(flow)
    module = flow.as_pyro_transform()
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    base = dist.Normal(torch.zeros(N, flow.dim, dtype=F64), 1.0).to_event(1)
    x = 2.0 + _points(flow)
    losses = []
    for _ in range(4):
        t = module if context is None else module.condition(context)
        optimizer.zero_grad()
        loss = -dist.TransformedDistribution(base, [t]).log_prob(x).mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        # after the step the module computes with the new parameters
        torch.testing.assert_close(
            -dist.TransformedDistribution(base, [t]).log_prob(x).mean(),
            -flow(context).log_prob(x).mean(),
        )
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


# -- conditional transforms -------------------------------------------------------------------------


AMORTIZED = [p for p in CASES if p.values[1]]


@pytest.mark.parametrize("name, amortized", AMORTIZED)
@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 5)], ids=str)
def test_inverse_conditional_transform_module(name, amortized, batch_shape):
    flow = _flow_or_skip(name, amortized)
    cond = flow.as_pyro_transform()
    assert isinstance(cond, ConditionalFlowTransformModule)
    noise = _points(flow, (*batch_shape,), seed=4)
    context = _context(flow, batch=batch_shape)
    conditioned = cond.condition(context)
    assert isinstance(conditioned, ConditionedFlowTransform)
    torch.testing.assert_close(cond.inv.condition(context)(noise), conditioned.inv(noise))
    assert cond.inv.inv is cond
    torch.testing.assert_close(cond.inv.condition(context).inv(noise), conditioned(noise))
    # each context row gets its own map: row i equals the map conditioned on row i alone
    if batch_shape:
        flat_ctx, flat_noise = context.reshape(-1, CONTEXT_DIM), noise.reshape(-1, flow.dim)
        row = cond.condition(flat_ctx[1])(flat_noise[1])
        torch.testing.assert_close(conditioned(noise).reshape(-1, flow.dim)[1], row)


@pytest.mark.parametrize("name, amortized", AMORTIZED)
@pytest.mark.parametrize("cache_size", [0, 1])
def test_conditional_compose_transform_module(name, amortized, cache_size):
    flow = _flow_or_skip(name, amortized)
    other = build(name, amortized=True, seed=1)
    parts = [
        T.AffineTransform(1.0, 2.0),
        flow.as_pyro_transform(),
        Reverse(flow.dim),  # a raw pyro-nf transform: composed through its with_cache
        other.as_pyro_transform(),
    ]
    cond = dist.conditional.ConditionalComposeTransformModule(parts, cache_size=cache_size)
    base = dist.Normal(torch.zeros(N, flow.dim, dtype=F64), 1.0).to_event(1)
    context = _context(flow)
    q = dist.ConditionalTransformedDistribution(base, [cond]).condition(context)
    assert isinstance(q.transforms[0], T.ComposeTransformModule)
    z = q.rsample()
    assert z.shape == (N, flow.dim) and q.log_prob(z).shape == (N,)
    expected_params = set(flow.parameters()) | set(other.parameters())
    assert set(cond.parameters()) == expected_params != set()
    noise = base.sample()
    expected = noise
    for part in parts:
        expected = (part.condition(context) if hasattr(part, "condition") else part)(expected)
    actual = q.transforms[0](noise)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(cond.inv.condition(context)(actual), noise)
    torch.testing.assert_close(cond.condition(context).inv(expected), noise)


# -- the module's contract ----------------------------------------------------------------------------


def test_module_owns_the_flow_parameters():
    flow = pyro_nf.planar(3, depth=4)
    module = flow.as_pyro_transform()
    assert isinstance(module, FlowTransformModule) and module.flow is flow
    assert set(module.parameters()) == set(flow.parameters()) != set()
    pyro.module("t", module)
    names = set(pyro.get_param_store().keys())
    assert {f"t$$$flow.{n}" for n, _ in flow.named_parameters()} == names
    amortized = pyro_nf.iaf(3, depth=1, context_dim=2)
    cond = amortized.as_pyro_transform(cache_size=0)
    assert set(cond.parameters()) == set(amortized.parameters())
    assert cond.condition(torch.randn(2))._cache_size == 0


def test_bad_arguments_are_refused_at_once():
    flow = pyro_nf.planar(3, depth=2)
    with pytest.raises(TypeError, match="cache"):
        flow.as_pyro_transform(cache=1)
    with pytest.raises(ValueError, match="cache_size: expected 0 or 1, got 2"):
        flow.as_pyro_transform(cache_size=2)
    with pytest.raises(ValueError, match="flow: expected an amortized flow"):
        ConditionalFlowTransformModule(flow)
    with pytest.raises(ValueError, match="flow: expected a directly parameterized flow"):
        FlowTransformModule(pyro_nf.planar(3, 2, context_dim=2))
    with pytest.raises(TypeError, match="flow: expected a pyro_nf.Flow, got str"):
        FlowTransformModule("planar")
    module = flow.as_pyro_transform()
    with pytest.raises(ValueError, match=r"x: expected a tensor of shape \(\.\.\., 3\)"):
        module(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="y: expected dtype float32"):
        module.inv(torch.zeros(4, 3, dtype=F64))
    cond = pyro_nf.iaf(3, 1, context_dim=2).as_pyro_transform()
    with pytest.raises(ValueError, match="context"):
        cond.condition(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="cache_size"):
        Reverse(3).with_cache(-1)


def test_log_det_of_the_pair_just_computed_is_reused_only_for_that_pair():
    flow = randomize(pyro_nf.planar(3, depth=3).to(F64))
    module = flow.as_pyro_transform()
    x = _points(flow)
    y = module(x)
    expected = ChainTransform(flow.build_transforms()).forward_and_log_det(x)[1]
    torch.testing.assert_close(module.log_abs_det_jacobian(x, y), expected)
    with torch.no_grad():
        next(iter(flow.parameters())).add_(0.1)  # parameters changed: recomputed, not reused
    fresh = ChainTransform(flow.build_transforms()).forward_and_log_det(x)[1]
    torch.testing.assert_close(module.log_abs_det_jacobian(x, y), fresh)
    assert not torch.allclose(fresh, expected)


# -- with_cache in Pyro's and torch's compositions ----------------------------------------------------


def test_compose_transform_with_cache_size_one():
    flow = randomize(pyro_nf.realnvp(4, depth=2).to(F64))
    parts: list[FlowTransform] = [*flow.build_transforms(), Reverse(4)]
    compose = ComposeTransform(parts, cache_size=1)
    x = torch.randn(5, 4, dtype=F64)
    y = compose(x)
    assert compose.inv(y) is x
    torch.testing.assert_close(y, ChainTransform(parts).forward_and_log_det(x)[0])
    torch.testing.assert_close(
        compose.log_abs_det_jacobian(x, y), ChainTransform(parts).forward_and_log_det(x)[1]
    )


def test_unit_jacobian_reparam_with_a_pyro_nf_transform():
    from pyro.infer.reparam import UnitJacobianReparam

    def model():
        return pyro.sample("x", dist.Normal(torch.tensor([0.0, 1.0, 2.0]), 1.0).to_event(1))

    reparam = pyro.poutine.reparam(model, {"x": UnitJacobianReparam(Reverse(3))})
    trace = pyro.poutine.trace(reparam).get_trace()
    x, x_t = trace.nodes["x"]["value"], trace.nodes["x_transformed"]["value"]
    torch.testing.assert_close(x_t, x.flip(-1))
    # the model's density is unchanged (unit Jacobian): log p(x) under the original model
    expected = dist.Normal(torch.tensor([0.0, 1.0, 2.0]), 1.0).to_event(1).log_prob(x)
    torch.testing.assert_close(trace.nodes["x_transformed"]["fn"].log_prob(x_t), expected)


# -- Pyro's autoguides and inference utilities ----------------------------------------------------


def _train_auto_normalizing_flow(init_transform_fn, steps: int, lr: float):
    pyro.set_rng_seed(0)
    guide = AutoNormalizingFlow(gaussian_model, init_transform_fn)
    elbo = pyro.infer.Trace_ELBO(num_particles=16, vectorize_particles=True)
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / steps)})  # lr falls 10x
    svi = pyro.infer.SVI(gaussian_model, guide, optim, elbo)
    losses = [svi.step() for _ in range(steps)]
    return guide, losses


def _posterior_moments(guide) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        z = guide.get_posterior().sample((20000,))
    return z.mean(0), torch.cov(z.T)


def test_auto_normalizing_flow_trains_planar():
    """Pyro's AutoNormalizingFlow with ``planar(dim, 4).as_pyro_transform()``: the parameters are
    registered, the loss falls, the conjugate Gaussian posterior is approached."""
    guide, losses = _train_auto_normalizing_flow(
        lambda dim: pyro_nf.planar(dim, 4).as_pyro_transform(), steps=300, lr=0.05
    )
    store = pyro.get_param_store()
    flow_params = [k for k in store.keys() if "transform$$$flow." in k]
    assert len(flow_params) == 2  # the diagonal base and the planar maps
    assert set(guide.transform.parameters()) == {store[k].unconstrained() for k in flow_params}
    assert sum(losses[-30:]) / 30 < sum(losses[:30]) / 30 - 1.0
    mean, cov = _posterior_moments(guide)
    exact_mean, exact_cov = exact_gaussian_posterior()
    torch.testing.assert_close(mean, exact_mean, rtol=0, atol=0.15)
    torch.testing.assert_close(cov.diagonal(), exact_cov.diagonal(), rtol=0.2, atol=0)


def test_auto_normalizing_flow_recovers_the_gaussian_posterior():
    """With the Gaussian family (a flow that can represent the posterior exactly) the recovery
    is tight: mean and covariance."""
    guide, _ = _train_auto_normalizing_flow(
        lambda dim: gaussian(dim).as_pyro_transform(), steps=400, lr=0.05
    )
    mean, cov = _posterior_moments(guide)
    exact_mean, exact_cov = exact_gaussian_posterior()
    torch.testing.assert_close(mean, exact_mean, rtol=0, atol=0.04)
    torch.testing.assert_close(cov, exact_cov, rtol=0, atol=0.04)


@pytest.mark.slow
def test_neutra_reparam_and_predictive():
    guide, _ = _train_auto_normalizing_flow(
        lambda dim: gaussian(dim).as_pyro_transform(), steps=300, lr=0.05
    )
    exact_mean, _ = exact_gaussian_posterior()
    predictive = pyro.infer.Predictive(gaussian_model, guide=guide, num_samples=4000)
    samples = predictive()
    assert samples["z"].shape == (4000, 3)
    torch.testing.assert_close(samples["z"].mean(0), exact_mean, rtol=0, atol=0.1)

    from pyro.infer.reparam import NeuTraReparam

    neutra = NeuTraReparam(guide.requires_grad_(False))
    model = neutra.reparam(gaussian_model)
    kernel = pyro.infer.NUTS(model, max_tree_depth=3)
    mcmc = pyro.infer.MCMC(kernel, num_samples=150, warmup_steps=50, disable_progbar=True)
    mcmc.run()
    latent = mcmc.get_samples()["z_shared_latent"]
    z = neutra.transform_sample(latent)["z"]
    assert z.shape == (150, 3) and bool(torch.isfinite(z).all())
    torch.testing.assert_close(z.mean(0), exact_mean, rtol=0, atol=0.25)
