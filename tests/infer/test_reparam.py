"""Automatic partial non-centering (pyro_nf.infer.reparam): which sites, the exact way back to
the user's sites, the Jacobian, and a conjugate model whose posterior is known."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nf.infer.reparam import (
    INIT_CENTEREDNESS,
    LearnableCentering,
    auto_reparam,
    decentered_name,
    loc_scale_sites,
)

TAU = 0.5  # prior sd of theta around mu (fixed: the model stays conjugate)
Y = torch.tensor([1.2, -0.4, 0.8], dtype=torch.float64)


def conjugate_model(y=Y):
    """mu ~ N(0, 1), theta_j ~ N(mu, TAU^2), y_j ~ N(theta_j, 1): a Gaussian posterior."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 1.0))
    with pyro.plate("groups", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(mu, TAU))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def exact_posterior(y=Y):
    """Mean and covariance of (mu, theta_1..J) under :func:`conjugate_model`."""
    j = y.shape[-1]
    # prior covariance of (mu, theta): mu ~ N(0,1), theta = mu + TAU e
    a = torch.cat([torch.ones(j, 1, dtype=y.dtype), TAU * torch.eye(j, dtype=y.dtype)], dim=1)
    prior_cov = torch.zeros(j + 1, j + 1, dtype=y.dtype)
    prior_cov[0, 0] = 1.0
    prior_cov[0, 1:] = prior_cov[1:, 0] = 1.0
    prior_cov[1:, 1:] = a @ a.T
    obs = torch.cat([torch.zeros(j, 1, dtype=y.dtype), torch.eye(j, dtype=y.dtype)], dim=1)
    precision = torch.linalg.inv(prior_cov) + obs.T @ obs
    cov = torch.linalg.inv(precision)
    return cov @ obs.T @ y, cov


def eight_schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("schools", y.shape[-1]):
        theta = pyro.sample("theta", dist.StudentT(4.0, mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


ES = (torch.tensor([28.0, 8.0, -3.0, 7.0]), torch.tensor([15.0, 10.0, 16.0, 11.0]))


def test_finds_the_location_scale_sites_with_latent_parameters():
    assert loc_scale_sites(conjugate_model) == ("theta",)
    assert loc_scale_sites(eight_schools, *ES) == ("theta",)

    def no_hierarchy():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def not_loc_scale():
        s = pyro.sample("s", dist.HalfNormal(1.0))
        pyro.sample("g", dist.Gamma(2.0, s))

    def event_site():
        m = pyro.sample("m", dist.Normal(0.0, 1.0))
        pyro.sample("v", dist.Normal(m, 1.0).expand([3]).to_event(1))

    assert loc_scale_sites(no_hierarchy) == ()
    assert loc_scale_sites(not_loc_scale) == ()
    assert loc_scale_sites(event_site) == ("v",)
    assert auto_reparam(no_hierarchy) is None


@pytest.mark.parametrize("c", [0.0, 0.3, 1.0])
def test_round_trip_and_log_det_against_autograd(c):
    """decentered -> original -> decentered is the identity; the recorded log-Jacobian is the
    log |det| of the autograd Jacobian of the map (float64)."""
    rep = auto_reparam(eight_schools, *ES, init_centered=c, learnable=False)
    assert rep is not None and rep.sites == ("theta",)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn((), generator=g, dtype=torch.float64)
    tau = torch.rand((), generator=g, dtype=torch.float64) + 0.5
    dec = torch.randn(4, generator=g, dtype=torch.float64)
    args = tuple(a.double() for a in ES)

    def forward(d):
        values = {"mu": mu, "tau": tau, decentered_name("theta"): d}
        return rep.to_original(values, *args)[0]["theta"]

    originals, log_dets = rep.to_original(
        {"mu": mu, "tau": tau, decentered_name("theta"): dec}, *args
    )
    theta = originals["theta"]
    assert torch.allclose(theta, mu + tau ** (1 - c) * (dec - c * mu))
    jac = torch.autograd.functional.jacobian(forward, dec)
    assert torch.allclose(log_dets["theta"].sum(), torch.linalg.slogdet(jac).logabsdet)
    back = rep.to_decentered({"mu": mu, "tau": tau, "theta": theta}, *args)
    assert torch.allclose(back[decentered_name("theta")], dec, atol=1e-12)
    assert back["mu"] is not None and torch.equal(back["tau"], tau)


def test_densities_differ_by_exactly_the_log_jacobian():
    """log p_reparam(mu, dec) = log p(mu, theta) + log|d theta / d dec| at any point."""
    rep = auto_reparam(conjugate_model, init_centered=0.3)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        mu = torch.randn((), generator=g, dtype=torch.float64)
        dec = torch.randn(3, generator=g, dtype=torch.float64)
        values = {"mu": mu, decentered_name("theta"): dec}
        originals, log_dets = rep.to_original(values)
        rep_lp = pyro.poutine.trace(pyro.poutine.condition(rep.model, values)).get_trace()
        user_lp = pyro.poutine.trace(pyro.poutine.condition(conjugate_model, originals)).get_trace()
        assert torch.allclose(
            rep_lp.log_prob_sum(), user_lp.log_prob_sum() + log_dets["theta"].sum(), atol=1e-10
        )


def test_exact_posterior_draws_come_back_exactly_and_keep_their_moments():
    """Exact posterior draws of the conjugate model, taken to the decentered coordinates and
    back in one vectorized call: the same draws (so the same known mean and covariance)."""
    mean, cov = exact_posterior()
    g = torch.Generator().manual_seed(2)
    n = 20000
    draws = (
        mean + torch.randn(n, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    )
    rep = auto_reparam(conjugate_model, init_centered=0.3)
    mu, theta = draws[:, 0], draws[:, 1:]
    with pyro.plate("draws", n, dim=-2):
        dec = rep.to_decentered({"mu": mu.unsqueeze(-1), "theta": theta})
    dec = {"mu": dec["mu"].reshape(n), decentered_name("theta"): dec[decentered_name("theta")]}
    back = rep.to_original_batched(dec)
    assert back["mu"].shape == (n,) and back["theta"].shape == (n, 3)
    assert torch.allclose(back["mu"], mu) and torch.allclose(back["theta"], theta, atol=1e-12)
    recovered = torch.cat([back["mu"].unsqueeze(-1), back["theta"]], -1)
    se = (cov.diagonal() / n).sqrt()
    assert bool(((recovered.mean(0) - mean).abs() < 5 * se).all())
    # and the decentered draws are not the originals (c = 0.3 moved them)
    assert not torch.allclose(dec[decentered_name("theta")], theta)


def test_reparameterized_prior_has_the_user_prior():
    """Forward sampling the reparameterized model gives theta | mu ~ N(mu, TAU^2)."""
    rep = auto_reparam(conjugate_model, init_centered=0.3)
    pyro.set_rng_seed(0)
    n = 20000
    with pyro.plate("draws", n, dim=-2):
        trace = pyro.poutine.trace(rep.model).get_trace()
    resid = (trace.nodes["theta"]["value"] - trace.nodes["mu"]["value"]).detach().reshape(-1)
    assert abs(float(resid.mean())) < 5 * TAU / math.sqrt(resid.numel())
    assert abs(float(resid.std()) / TAU - 1) < 0.02


def test_centeredness_is_learnable_and_receives_gradients():
    rep = auto_reparam(conjugate_model)
    assert isinstance(rep, LearnableCentering) and rep.learnable
    (logits,) = list(rep.parameters())
    assert logits.shape == (3,) and logits.dtype == torch.float64
    start = torch.full((3,), INIT_CENTEREDNESS, dtype=torch.float64)
    assert torch.allclose(rep.centered("theta"), start)
    values = {"mu": torch.tensor(0.7, dtype=torch.float64), decentered_name("theta"): Y}
    originals, log_dets = rep.to_original(values)
    (originals["theta"].sum() + log_dets["theta"].sum()).backward()
    assert logits.grad is not None and bool((logits.grad != 0).all())


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(ValueError, match="init_centered"):
        auto_reparam(conjugate_model, init_centered=1.0)  # learnable: must be inside (0, 1)
    with pytest.raises(ValueError, match="init_centered"):
        auto_reparam(conjugate_model, init_centered=-0.1, learnable=False)
    with pytest.raises((TypeError, ValueError), match="model"):
        loc_scale_sites("not a model")
    with pytest.raises((TypeError, ValueError), match="model_kwargs"):
        loc_scale_sites(conjugate_model, model_kwargs=[1])
