"""The math of every family × {direct, amortized} × batch shapes, in float64.

log|det J| against autograd Jacobians, inverse round trips, log_prob consistency, densities that
integrate to 1, gradients to every parameter, state_dict round trips.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import FAMILIES, make_context, make_flow

from pyro_nf.flows.registry import build_flow, family_names, get_family
from pyro_nf.transforms import ChainTransform

BATCH_SHAPES = [(), (3,), (2, 3)]
DIM = 3


def _chain(flow, context):
    return ChainTransform(flow.build_transforms(context))


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_log_det_matches_autograd_jacobian(family, amortized, batch_shape):
    flow = make_flow(family, DIM, amortized)
    context = make_context(batch_shape, amortized)
    chain = _chain(flow, context)
    x = torch.randn(
        *batch_shape, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    y, ladj = chain.forward_and_log_det(x)
    assert y.shape == x.shape and ladj.shape == batch_shape

    n = max(1, math.prod(batch_shape))
    jac = torch.autograd.functional.jacobian(
        lambda v: chain.forward_and_log_det(v.reshape(x.shape))[0].reshape(n, DIM),
        x.reshape(n, DIM),
    )  # (n, D, n, D)
    for i in range(n):
        block = jac[i, :, i, :]
        expected = torch.linalg.slogdet(block).logabsdet
        assert abs(float(ladj.detach().reshape(n)[i]) - float(expected)) <= 1e-8
        # each datum's output depends only on its own input (amortized: its own parameters)
        others = torch.cat([jac[i, :, :i, :].reshape(-1), jac[i, :, i + 1 :, :].reshape(-1)])
        assert bool((others == 0).all())

    # the inverse's log-det is the log-det of the inverse's Jacobian
    jac_inv = torch.autograd.functional.jacobian(
        lambda v: chain.inverse_and_log_det(v.reshape(x.shape))[0].reshape(n, DIM),
        y.reshape(n, DIM),
    )
    _, inv_ladj = chain.inverse_and_log_det(y)
    for i in range(n):
        expected = torch.linalg.slogdet(jac_inv[i, :, i, :]).logabsdet
        assert abs(float(inv_ladj.detach().reshape(n)[i]) - float(expected)) <= 1e-8


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_inverse_round_trip(family, amortized, batch_shape):
    flow = make_flow(family, DIM, amortized)
    context = make_context(batch_shape, amortized)
    chain = _chain(flow, context)
    x = 2.0 * torch.randn(*batch_shape, DIM, dtype=torch.float64)
    y, ladj = chain.forward_and_log_det(x)
    x_back, inv_ladj = chain.inverse_and_log_det(y)
    assert torch.allclose(x_back, x, rtol=0, atol=1e-6)
    assert torch.allclose(inv_ladj, -ladj, rtol=0, atol=1e-6)
    # and the other way around, from arbitrary points in sample space
    y2 = 2.0 * torch.randn(*batch_shape, DIM, dtype=torch.float64)
    x2, _ = chain.inverse_and_log_det(y2)
    assert torch.allclose(chain.forward_and_log_det(x2)[0], y2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_log_prob_of_sample_is_base_minus_log_dets(family, amortized, batch_shape):
    flow = make_flow(family, DIM, amortized)
    context = make_context(batch_shape, amortized)
    q = flow(context) if amortized else flow().expand(batch_shape)  # expand: what pyro.plate does
    z, log_q = q.rsample_and_log_prob((5,))
    assert z.shape == (5, *batch_shape, DIM) and log_q.shape == (5, *batch_shape)
    assert q.batch_shape == batch_shape and q.event_shape == (DIM,)
    # recover the noise and recompute by hand
    chain = _chain(flow, context)
    eps, _ = chain.inverse_and_log_det(z)
    _, ladj = chain.forward_and_log_det(eps)
    base = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum(-1)
    assert torch.allclose(log_q, base - ladj, atol=1e-8)
    # the inverse path of log_prob agrees with the cached value
    assert torch.allclose(q.log_prob(z.detach().clone()), log_q, atol=1e-8)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_2d_density_integrates_to_one(name):
    flow = make_flow(name, 2, amortized=False, scale=0.2)
    q = flow()
    lim, n = 9.0, 500
    grid = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx, yy], dim=-1).reshape(-1, 2)
    with torch.no_grad():
        dens = q.log_prob(pts).exp()
        # the mass must sit well inside the box for the check to mean anything
        far = q.sample((20000,)).abs().amax(-1) > lim - 1
    assert float(far.double().mean()) < 1e-3
    area = (grid[1] - grid[0]) ** 2
    # and the flow must actually differ from its Gaussian base
    near = pts.norm(dim=-1) < 3
    base = torch.distributions.Normal(0.0, 1.0).log_prob(pts[near]).sum(-1)
    assert float((dens[near].log() - base).abs().max()) > 0.1
    assert abs(float(dens.sum() * area) - 1.0) < 1e-3


def test_gradients_reach_every_parameter(family, amortized):
    flow = make_flow(family, DIM, amortized)
    context = make_context((4,), amortized)
    q = flow(context)
    z, log_q = q.rsample_and_log_prob((3,))
    external = torch.randn(3, 4, DIM, dtype=torch.float64)
    loss = (z**2).sum() + log_q.sum() + q.log_prob(external).sum()
    loss.backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert bool(torch.isfinite(p.grad).all()), f"{name} has a non-finite gradient"
        assert bool((p.grad != 0).any()), f"{name} has an all-zero gradient"


def test_state_dict_round_trip(family, amortized):
    flow = make_flow(family, DIM, amortized, seed=0)
    other = make_flow(family, DIM, amortized, seed=123)
    context = make_context((4,), amortized)
    x = torch.randn(4, DIM, dtype=torch.float64)
    assert not torch.allclose(flow(context).log_prob(x), other(context).log_prob(x))
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))
    assert torch.equal(flow(context).log_prob(x), other(context).log_prob(x))
    torch.manual_seed(7)
    a = flow(context).sample((2,))
    torch.manual_seed(7)
    b = other(context).sample((2,))
    assert torch.equal(a, b)


def test_flows_start_at_their_base(family, amortized):
    """Freshly built layers are the identity: only the (diagonal) base acts."""
    torch.manual_seed(0)
    flow = FAMILIES[family](DIM, 4 if amortized else None).double()
    context = make_context((5,), amortized)
    x = torch.randn(5, DIM, dtype=torch.float64)
    log_q = flow(context).log_prob(x)
    base = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    assert torch.allclose(log_q, base, atol=1e-12)


def test_reset_parameters_gives_a_fresh_start(family, amortized):
    """After training-like perturbations, ``reset_parameters`` puts every layer back to its
    constructor's start (identity layers on the base) with the random parts drawn anew."""
    flow = make_flow(family, DIM, amortized, seed=0)  # randomized: far from the identity
    context = make_context((5,), amortized)
    x = torch.randn(5, DIM, dtype=torch.float64)
    base = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    assert not torch.allclose(flow(context).log_prob(x), base, atol=1e-6)
    torch.manual_seed(1)
    flow.reset_parameters()
    first = [p.detach().clone() for p in flow.parameters()]
    assert torch.allclose(flow(context).log_prob(x), base, atol=1e-12)
    assert all(p.dtype == torch.float64 for p in flow.parameters())
    torch.manual_seed(2)
    flow.reset_parameters()
    random_parts = [not torch.equal(a, b) for a, b in zip(first, flow.parameters(), strict=True)]
    assert any(random_parts), "a fresh start should redraw the random initial values"
    assert torch.allclose(flow(context).log_prob(x), base, atol=1e-12)


@pytest.mark.parametrize("name", family_names())
def test_repr_names_family_dim_depth_and_context(name):
    import inspect

    builder = get_family(name).builder
    if "dim" not in inspect.signature(builder).parameters:  # "stack": a composition of specs
        parts = [("iaf", {"dim": 3, "depth": 2}), ("radial", {"dim": 3, "base": "standard"})]
        flow, expected = build_flow(name, parts=parts), "Flow(family='iaf+radial', dim=3, depth=6"
        assert repr(flow) == expected + ", context_dim=None)"
        return
    takes_depth = "depth" in inspect.signature(builder).parameters
    flow = builder(3, context_dim=2, **({"depth": 5} if takes_depth else {}))
    depth = 5 if takes_depth else 0  # the Gaussians are affine layers only: no maps
    assert repr(flow) == f"Flow(family={name!r}, dim=3, depth={depth}, context_dim=2)"
    assert "Parameter" not in repr(flow) and "\n" not in repr(flow)
