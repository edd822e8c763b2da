"""FlowDistribution inside Pyro: sample sites, plates, traces, SVI steps, caching semantics."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import make_context, make_flow
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

import pyro_nf


def test_cached_log_prob_is_reused_only_for_the_sample_just_drawn():
    flow = make_flow("planar", 2, amortized=False)
    q = flow()
    z, log_q = q.rsample_and_log_prob((4,))
    assert q.log_prob(z) is log_q
    other = z.detach().clone()
    assert q.log_prob(other) is not log_q
    assert torch.allclose(q.log_prob(other), log_q)


def test_nothing_goes_stale_after_an_optimizer_step():
    flow = make_flow("planar", 2, amortized=False)
    opt = torch.optim.SGD(flow.parameters(), lr=0.5)
    q = flow()
    z, log_q = q.rsample_and_log_prob((8,))
    (-log_q.mean()).backward()
    opt.step()
    # same distribution object, same tensor: must reflect the *new* parameters
    fresh = flow().log_prob(z.detach())
    again = q.log_prob(z)
    assert again is not log_q
    assert torch.allclose(again, fresh)
    assert not torch.allclose(again.detach(), log_q.detach())
    # and points never sampled are fine too (no KeyError)
    assert q.log_prob(torch.zeros(3, 2, dtype=torch.float64)).shape == (3,)


def test_sample_under_no_grad_is_rescored_with_a_graph():
    flow = make_flow("radial", 2, amortized=False)
    q = flow()
    z = q.sample((3,))
    lp = q.log_prob(z)
    assert lp.requires_grad


@pytest.mark.parametrize("family", ["planar", "radial", "iaf", "maf"])
def test_pyro_sample_under_plate_and_trace(family, amortized):
    flow = make_flow(family, 3, amortized)
    context = make_context((5,), amortized)

    def guide():
        with pyro.plate("data", 5):
            return pyro.sample("z", flow(context) if amortized else flow())

    tr = poutine.trace(guide).get_trace()
    site = tr.nodes["z"]
    assert site["value"].shape == (5, 3)
    tr.compute_log_prob()
    assert site["log_prob"].shape == (5,)
    expected = (
        flow(context).log_prob(site["value"].detach().clone())
        if amortized
        else flow().log_prob(site["value"].detach().clone())
    )
    assert torch.allclose(site["log_prob"], expected.expand(5), atol=1e-8)

    # vectorized particles: an outer plate on the left
    def guide_particles():
        with pyro.plate("particles", 2, dim=-2), pyro.plate("data", 5, dim=-1):
            return pyro.sample("z", flow(context) if amortized else flow())

    tr = poutine.trace(guide_particles).get_trace()
    tr.compute_log_prob()
    assert tr.nodes["z"]["value"].shape == (2, 5, 3)
    assert tr.nodes["z"]["log_prob"].shape == (2, 5)


def test_svi_with_a_flow_guide_learns_a_gaussian_posterior():
    """Trace_ELBO through pyro.sample(flow()) fits a conjugate posterior N(2, 0.5²)."""
    pyro.set_rng_seed(0)
    flow = pyro_nf.planar(1, depth=2)

    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0 / 3**0.5).to_event(1), obs=torch.tensor([8.0 / 3.0]))

    def guide():
        pyro.module("flow", flow)
        pyro.sample("z", flow())

    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.998})
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=32, vectorize_particles=True))
    for _ in range(1500):
        svi.step()
    with torch.no_grad():
        s = flow().sample((20000,))
    # posterior: precision 1 + 3 = 4 -> sd 0.5, mean 3·(8/3)/4 = 2
    assert abs(float(s.mean()) - 2.0) < 0.05
    assert abs(float(s.std()) - 0.5) < 0.05


def test_expand_checks_shapes():
    flow = make_flow("planar", 2, amortized=True)
    q = flow(make_context((3,), True))
    assert q.expand((4, 3)).batch_shape == (4, 3)
    with pytest.raises(ValueError, match="batch_shape"):
        q.expand((2,))


def test_to_device_and_dtypes():
    flow = pyro_nf.iaf(2, depth=2, hidden=(8,)).to(torch.float64)
    z = flow().sample((3,))
    assert z.dtype == torch.float64
    flow32 = pyro_nf.planar(2, depth=2)
    z32, lp32 = flow32().rsample_and_log_prob((3,))
    assert z32.dtype == torch.float32 and lp32.dtype == torch.float32
