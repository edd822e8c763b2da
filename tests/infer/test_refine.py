"""pyro_nf.refine: NUTS in a flow guide's base space (NeuTra), to certified posterior draws."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import exact_gaussian_posterior, gaussian_model
from pyro.infer.mcmc.util import initialize_model
from pyro.infer.reparam import NeuTraReparam

import pyro_nf
from pyro_nf.infer.nuts import ChainSettings, DensityTarget, run_chain
from pyro_nf.infer.refine import (
    ESCALATED_ACCEPT_PROB,
    BaseSpaceTarget,
    RefinementWarning,
    refine,
    sample_chains,
    warn_if_unconverged,
)

Y = torch.tensor([0.5, -1.0, 2.0])


def scale_model(y):
    """A HalfNormal scale and a plate of three group means: constrained site + plate."""
    s = pyro.sample("s", dist.HalfNormal(y.new_tensor(2.0)))
    with pyro.plate("group", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(y.new_zeros(()), s))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def _perturbed_guide(model, *args, dtype=torch.float32):
    """A FlowGuide whose flow is moved off its start (so that every layer matters)."""
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(model, "iaf", init="loc")
    guide(*args)
    guide.to(dtype)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return guide


def _quiet_refine(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RefinementWarning)
        return refine(*args, **kwargs)


def test_potential_is_neutra_reparams():
    """U(eps) = -[log p(x, T(F(eps))) + log|J_T| + log|J_F|] is what Pyro's NeuTraReparam
    builds, on a model with a constrained site and a plate (float64), value and gradient."""
    y = Y.double()
    guide = _perturbed_guide(scale_model, y, dtype=torch.float64)
    target = BaseSpaceTarget(scale_model, guide, (y,), {})
    assert guide.centering is not None  # theta ~ N(0, s): decentered, NUTS runs on that model
    neutra = NeuTraReparam(guide)
    reparam = pyro.poutine.reparam(guide.centering.model, config=lambda site: neutra)
    _, potential_fn, _, _ = initialize_model(reparam, (y,))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        eps = torch.randn(4, generator=gen, dtype=torch.float64)
        value, grad = target.potential_and_grad(eps)
        e = eps.clone().requires_grad_(True)
        theirs = potential_fn({"s_shared_latent": e})
        (their_grad,) = torch.autograd.grad(theirs, e)
        assert value == pytest.approx(float(theirs.detach()), rel=1e-12, abs=1e-10)
        torch.testing.assert_close(grad, their_grad, rtol=1e-10, atol=1e-10)


def test_constrain_maps_all_draws_at_once_like_one_at_a_time():
    guide = _perturbed_guide(scale_model, Y)
    target = BaseSpaceTarget(scale_model, guide, (Y,), {})
    eps = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(0))
    batch = target.constrain(eps)
    assert batch["s"].shape == (2, 7) and batch["theta"].shape == (2, 7, 3)
    assert bool((batch["s"] > 0).all())
    for i, j in [(0, 0), (1, 6)]:
        one = target.constrain(eps[i, j])
        torch.testing.assert_close(batch["s"][i, j], one["s"])
        torch.testing.assert_close(batch["theta"][i, j], one["theta"])


def test_inference_data_groups_dims_stats_and_attrs():
    guide = _perturbed_guide(scale_model, Y)
    idata = _quiet_refine(
        scale_model, guide, Y, num_chains=2, num_warmup=20, num_samples=25, parallel=False
    )
    post = idata.posterior
    assert post["s"].dims == ("chain", "draw") and post["s"].shape == (2, 25)
    assert post["theta"].dims == ("chain", "draw", "group") and post["theta"].shape == (2, 25, 3)
    assert bool((post["s"] > 0).all())
    stats = idata.sample_stats
    for name in ("diverging", "step_size", "tree_depth", "energy", "n_steps", "lp"):
        assert stats[name].shape == (2, 25), name
    assert stats["diverging"].dtype == bool and int(stats["tree_depth"].min()) >= 0
    # the step size is fixed after warm-up, one per chain
    assert np.ptp(stats["step_size"].values, axis=1).max() == 0.0
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "group")
    np.testing.assert_allclose(idata.observed_data["y"].values, Y.numpy())
    attrs = post.attrs
    assert attrs["num_chains"] == 2 and attrs["num_warmup"] == 20 and attrs["seed"] == 0
    assert attrs["processes"] == 1 and attrs["gradient_evaluations"] > 0
    assert {"max_rhat", "min_ess_bulk", "min_ess_tail", "divergences"} <= set(attrs)
    # the log likelihood is that of the posterior draws
    th = post["theta"].values[0, 3]
    expected = dist.Normal(torch.from_numpy(th), 1.0).log_prob(Y).numpy()
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0, 3], expected, rtol=1e-5)


def test_a_traced_potential_is_the_models_value_and_gradient():
    y = Y.double()
    guide = _perturbed_guide(scale_model, y, dtype=torch.float64)
    target = BaseSpaceTarget(scale_model, guide, (y,), {})
    assert target.compile() is None and target.compiled
    eager = BaseSpaceTarget(scale_model, guide, (y,), {})
    gen = torch.Generator().manual_seed(5)
    for scale in (0.5, 1.0, 3.0):  # away from the test points the trace was checked at
        eps = scale * torch.randn(4, generator=gen, dtype=torch.float64)
        (u0, g0), (u1, g1) = eager.potential_and_grad(eps), target.potential_and_grad(eps)
        assert u1 == pytest.approx(u0, rel=1e-12, abs=1e-10)
        torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-10)
    # the guide's own parameters are untouched, and still learn
    assert all(p.requires_grad for p in guide.parameters())


def test_refine_with_jit_compile_matches_the_exact_posterior():
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(gaussian_model, "iaf")
    pyro_nf.fit(gaussian_model, guide, steps=300, progress=False, early_stopping=None)
    idata = _quiet_refine(
        gaussian_model, guide, num_chains=2, num_warmup=200, num_samples=400, seed=1,
        parallel=False, jit_compile=True,
    )  # fmt: skip
    assert idata.posterior.attrs["jit_compile"] == 1
    z = torch.from_numpy(idata.posterior["z"].values.reshape(-1, 3)).double()
    mean, cov = exact_gaussian_posterior()
    sd = cov.diagonal().sqrt().double()
    ess = float(idata.posterior.attrs["min_ess_bulk"])
    assert float(((z.mean(0) - mean.double()) / sd).abs().max()) < 4 / math.sqrt(ess)
    assert float((z.std(0) / sd).log().abs().max()) < 4 / math.sqrt(2 * ess)


def test_jit_compile_falls_back_where_the_model_branches_on_its_values():
    def branchy():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        scale = 1.0 if z > 0 else 3.0  # traced along one branch only
        pyro.sample("x", dist.Normal(z, scale), obs=torch.tensor(0.5))

    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(branchy, "iaf", init="loc")
    guide()
    short = {"num_chains": 1, "num_warmup": 20, "num_samples": 20, "parallel": False}
    with pytest.warns(RefinementWarning, match="jit_compile: the traced potential disagrees"):
        idata = refine(branchy, guide, jit_compile=True, **short)
    assert idata.posterior.attrs["jit_compile"] == 0
    with pytest.raises(ValueError, match="^jit_compile: expected True or False, got 'yes'"):
        refine(branchy, guide, jit_compile="yes", **short)


def test_too_short_a_run_warns_naming_the_numbers():
    guide = _perturbed_guide(scale_model, Y)
    with pytest.warns(RefinementWarning, match=r"bulk ESS \d+ < 200 \(100 per chain\) at ") as rec:
        refine(scale_model, guide, Y, num_chains=2, num_warmup=10, num_samples=20, parallel=False)
    assert "refine: the draws failed a convergence check" in str(rec[0].message)


def test_the_warning_points_at_the_users_line_by_either_path():
    guide = _perturbed_guide(scale_model, Y)
    short = {"num_chains": 2, "num_warmup": 10, "num_samples": 20, "parallel": False}
    with pytest.warns(RefinementWarning) as direct:
        refine(scale_model, guide, Y, **short)
    report = guide.report(Y, num_samples=100)
    with pytest.warns(RefinementWarning) as via_report:
        report.refine(**short)
    for rec in (direct, via_report):
        assert [w.filename for w in rec if w.category is RefinementWarning] == [__file__]


def test_warning_names_rhat_and_divergences():
    summary = {
        "max_rhat": 1.07, "max_rhat_at": "theta[2]", "min_ess_bulk": 900.0,
        "min_ess_bulk_at": "s", "min_ess_tail": 800.0, "min_ess_tail_at": "s", "divergences": 3,
    }  # fmt: skip
    with pytest.warns(RefinementWarning) as rec:
        problems = warn_if_unconverged(summary, num_chains=4, num_samples=500)
    text = str(rec[0].message)
    assert "R-hat 1.070 > 1.01 at theta[2]" in text and "3 divergent transitions of 2000" in text
    assert len(problems) == 2
    good = {**summary, "max_rhat": 1.002, "divergences": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_unconverged(good, num_chains=4, num_samples=500) == []


def test_sequential_and_parallel_chains_give_the_same_draws():
    guide = _perturbed_guide(scale_model, Y)
    kw = {"num_chains": 2, "num_warmup": 15, "num_samples": 15, "seed": 3}
    seq = _quiet_refine(scale_model, guide, Y, parallel=False, **kw)
    par = _quiet_refine(scale_model, guide, Y, parallel=True, **kw)
    assert par.posterior.attrs["processes"] == 2
    for name in ("s", "theta"):
        np.testing.assert_array_equal(seq.posterior[name].values, par.posterior[name].values)
    np.testing.assert_array_equal(
        seq.sample_stats["energy"].values, par.sample_stats["energy"].values
    )
    # another seed gives other draws; the chains differ from each other; global RNG untouched
    state = torch.get_rng_state()
    other = _quiet_refine(scale_model, guide, Y, parallel=False, **{**kw, "seed": 4})
    assert torch.equal(state, torch.get_rng_state())
    assert not np.array_equal(other.posterior["s"].values, seq.posterior["s"].values)
    assert not np.array_equal(seq.posterior["s"].values[0], seq.posterior["s"].values[1])


def test_bad_arguments_are_refused_naming_them():
    guide = _perturbed_guide(scale_model, Y)
    with pytest.raises(
        TypeError,
        match="num_chain: unexpected keyword argument of refine; did you mean 'num_chains'",
    ):
        refine(scale_model, guide, Y, num_chain=2)
    cases = [
        ({"num_chains": 0}, "num_chains"),
        ({"num_samples": 2}, "num_samples"),
        ({"num_warmup": -1}, "num_warmup"),
        ({"seed": 1.5}, "seed"),
        ({"target_accept_prob": 1.0}, r"target_accept_prob: expected a number in \(0, 1\)"),
        ({"max_tree_depth": 0}, "max_tree_depth"),
        ({"parallel": "yes"}, "parallel: expected None, True or False"),
        ({"model_kwargs": [1]}, "model_kwargs: expected None or a dict"),
        ({"log_likelihood": "no"}, "log_likelihood: expected True or False"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            refine(scale_model, guide, Y, **kwargs)
    with pytest.raises(
        ValueError, match="guide: expected a fitted FlowGuide, got one that has never run"
    ):
        refine(scale_model, pyro_nf.FlowGuide(scale_model), Y)
    with pytest.raises(ValueError, match="guide: expected a fitted pyro_nf.FlowGuide"):
        refine(scale_model, lambda y: None, Y)
    with pytest.raises(ValueError, match="model: expected a callable"):
        refine(None, guide, Y)

    def bigger(y):
        scale_model(y)
        pyro.sample("extra", dist.Normal(0.0, 1.0))

    with pytest.raises(
        ValueError, match=r"guide: the model has latent sites the guide does not cover: \['extra'\]"
    ):
        refine(bigger, guide, Y)


def test_a_model_with_no_finite_density_is_refused_in_model_terms():
    """The sampler's InitializationError comes back as refine's ValueError naming the model."""

    def impossible():
        pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("never", torch.tensor(-math.inf))

    guide = pyro_nf.FlowGuide(impossible, "planar", 1)
    guide()
    message = "model: the log density is not finite at any of 100 draws of the guide"
    for parallel in (False, True):  # in this process, and from forked workers
        with pytest.raises(ValueError, match=message):
            refine(impossible, guide, num_chains=2, num_warmup=5, num_samples=5, parallel=parallel)


@pytest.mark.slow
def test_refined_draws_match_the_exact_gaussian_posterior():
    """A poor guide (no fit, wrong scale) refined: the draws match the known posterior of the
    conjugate model within Monte Carlo error (4 standard errors, from the bulk ESS)."""
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(gaussian_model, "planar", 2, init="loc", init_scale=0.5)
    guide()
    idata = refine(gaussian_model, guide, num_chains=2, num_warmup=150, num_samples=500)
    z = torch.from_numpy(idata.posterior["z"].values).reshape(-1, 3).double()
    mean, cov = exact_gaussian_posterior()
    sd = cov.diag().sqrt().double()
    ess = float(idata.posterior.attrs["min_ess_bulk"])
    assert ess > 200 and idata.posterior.attrs["max_rhat"] < 1.01
    assert int(idata.sample_stats["diverging"].sum()) == 0
    se = sd / math.sqrt(ess)
    assert bool(((z.mean(0) - mean.double()).abs() < 4 * se).all()), (z.mean(0), mean)
    # sd: relative standard error about 1/sqrt(2 ESS)
    assert float((z.std(0) / sd).log().abs().max()) < 4 / math.sqrt(2 * ess)
    corr = torch.corrcoef(z.T)
    exact_corr = cov / torch.outer(cov.diag().sqrt(), cov.diag().sqrt())
    assert float((corr - exact_corr.double()).abs().max()) < 0.1


def test_guide_report_refine_runs_refine_on_the_same_model_and_arguments():
    """FlowGuide.report() attaches the refiner (pyro_nf.refine with the same model, guide and
    model arguments); report.refine(**options) runs it."""
    guide = _perturbed_guide(scale_model, Y)
    report = guide.report(Y, num_samples=100)
    assert report.refiner is not None
    idata = _quiet_refine_report(report)
    direct = _quiet_refine(
        scale_model, guide, Y, num_chains=2, num_warmup=10, num_samples=10, parallel=False
    )
    np.testing.assert_array_equal(idata.posterior["s"].values, direct.posterior["s"].values)


def _quiet_refine_report(report):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RefinementWarning)
        return report.refine(num_chains=2, num_warmup=10, num_samples=10, parallel=False)


def _funnel_log_density(z):
    """Neal's funnel, v ~ N(0, 3^2), x | v ~ N(0, e^v I): NUTS diverges in its neck."""
    v, x = z[0], z[1:]
    return -(v**2) / 18.0 - 0.5 * x.numel() * v - 0.5 * (x**2).sum() * torch.exp(-v)


def test_diverging_chains_are_run_once_more_at_a_higher_target():
    funnel = DensityTarget(_funnel_log_density, dim=4, dtype=torch.float64)
    settings = ChainSettings(40, 40, seed=0, target_accept_prob=0.9, max_tree_depth=6)
    chains, used, first = sample_chains(funnel, settings, 2, escalate=True)
    first_run = [run_chain(funnel, c, settings) for c in (0, 1)]
    diverged = int(sum(c["diverging"].sum() for c in first_run))
    assert diverged > 0 and first["first_run_divergences"] == diverged
    assert first["first_run_target_accept_prob"] == 0.9
    assert used.target_accept_prob == ESCALATED_ACCEPT_PROB
    # the second run is fresh chains (their own streams: chains 2 and 3), whatever they show
    for got, c in zip(chains, (2, 3), strict=True):
        np.testing.assert_array_equal(got["draws"], run_chain(funnel, c, used)["draws"])
    # without escalation, with no divergence, or at a target already as high: the first run
    plain, same, none = sample_chains(funnel, settings, 2, escalate=False)
    np.testing.assert_array_equal(plain[1]["draws"], first_run[1]["draws"])
    assert (same, none) == (settings, {})
    normal = DensityTarget(lambda z: -0.5 * (z * z).sum(), dim=4, dtype=torch.float64)
    assert sample_chains(normal, settings, 2, escalate=True)[1:] == (settings, {})
    high = replace(settings, target_accept_prob=ESCALATED_ACCEPT_PROB)
    assert sample_chains(funnel, high, 1, escalate=True)[1:] == (high, {})


def funnel_model():
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    pyro.sample("x", dist.Normal(0.0, torch.exp(v / 2)).expand([3]).to_event(1))


def test_refine_reruns_diverging_chains_only_at_its_default_target():
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(funnel_model, "iaf", init="loc", reparam=False)
    guide()  # not fitted: the base space is the funnel itself
    kw = {"num_chains": 2, "num_warmup": 60, "num_samples": 60, "max_tree_depth": 6}
    kw["parallel"] = False
    idata = _quiet_refine(funnel_model, guide, **kw)
    attrs = idata.posterior.attrs
    assert attrs["target_accept_prob"] == ESCALATED_ACCEPT_PROB
    assert attrs["first_run_divergences"] > 0 and attrs["first_run_target_accept_prob"] == 0.9
    explicit = _quiet_refine(funnel_model, guide, target_accept_prob=0.9, **kw).posterior.attrs
    assert explicit["target_accept_prob"] == 0.9 and "first_run_divergences" not in explicit
    assert explicit["divergences"] > 0
