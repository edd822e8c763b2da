"""FlowGuide's automatic non-centering (``reparam=True``, the default): the guide works on
decentered location–scale sites and reports the user's own sites everywhere (traces, draws,
Predictive, pickling, refine), with densities that stay normalized; and the float32 floor that
keeps a collapsing scale from producing NaN."""

from __future__ import annotations

import pickle
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive

import pyro_nf
from pyro_nf.diagnostics.importance import log_evidence
from pyro_nf.infer.reparam import (
    INIT_CENTEREDNESS,
    LearnableCentering,
    auto_reparam,
    floored_log_scale,
)

Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y=Y, sigma=SIGMA):
    """Centered eight schools (a funnel-shaped posterior)."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("schools", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def prior_only(dtype=torch.float64):
    """A normalized model without data: log p(data) = 0 exactly."""
    one = torch.ones((), dtype=dtype)
    mu = pyro.sample("mu", dist.Normal(0.0 * one, 1.0))
    tau = pyro.sample("tau", dist.LogNormal(-1.0 * one, 0.5))  # E log tau = -1: not 0
    with pyro.plate("groups", 3):
        pyro.sample("theta", dist.Normal(mu, tau))


def sample_sites(trace):
    return {n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}


def test_default_guide_decenters_and_reports_the_users_sites():
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(eight_schools, "planar", 2)
    guide()
    assert isinstance(guide.centering, LearnableCentering)
    assert guide.centering.sites == ("theta",)
    assert guide.describe()["reparam"] is True
    trace = pyro.poutine.trace(guide).get_trace()
    assert {"mu", "tau", "theta"} <= sample_sites(trace)
    assert not any("decentered" in name for name in trace.nodes)
    assert trace.nodes["theta"]["value"].shape == (8,)
    draws = guide.sample_posterior(20, seed=0)
    assert {k: tuple(v.shape) for k, v in draws.items()} == {
        "mu": (20,),
        "tau": (20,),
        "theta": (20, 8),
    }
    assert torch.equal(draws["theta"], guide.sample_posterior(20, seed=0)["theta"])
    predictive = Predictive(eight_schools, guide=guide, num_samples=7)()
    assert predictive["obs"].shape == (7, 8) and predictive["theta"].shape == (7, 8)


def test_reparam_false_keeps_the_sites_as_written_and_bad_values_are_refused():
    guide = pyro_nf.FlowGuide(eight_schools, "planar", 2, reparam=False)
    guide()
    assert guide.centering is None and guide.describe()["reparam"] is False
    with pytest.raises(ValueError, match="reparam: expected True or False, got 'yes'"):
        pyro_nf.FlowGuide(eight_schools, reparam="yes")


def test_guide_density_of_the_users_sites_is_normalized():
    """E_q[p/q] = 1 for a model without data: a wrong log-Jacobian of the way back (the
    decentered density vs the user's sites) would bias log Z away from 0."""
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(prior_only, "planar", 2)
    guide()
    assert guide.centering is not None
    with torch.no_grad():  # learned c away from 1/2: the Jacobian depends on it
        guide.centering.logits[0].fill_(0.8)
    pyro.set_rng_seed(0)
    log_z, se = log_evidence(prior_only, guide, num_samples=20000)
    assert se < 0.05 and abs(log_z) < 4 * se + 1e-3, (log_z, se)


def test_fit_with_the_default_guide_recovers_from_nothing_and_stays_finite():
    pyro.set_rng_seed(1)
    guide = pyro_nf.FlowGuide(eight_schools)
    history = pyro_nf.fit(eight_schools, guide, steps=300, progress=False, early_stopping=None)
    assert all(torch.isfinite(torch.tensor(history.losses)))
    c = guide.centering.centered("theta")
    assert c.shape == (8,) and bool(((c > 0) & (c < 1)).all())
    draws = guide.sample_posterior(2000, seed=0)
    assert bool(torch.isfinite(draws["theta"]).all()) and float(draws["tau"].min()) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_floored_log_scale_keeps_gradients_finite_where_the_scale_underflows(dtype):
    tiny = torch.finfo(dtype).tiny
    scale = torch.tensor([1.0, 1e-3, tiny, 0.0], dtype=dtype, requires_grad=True)
    log_scale = floored_log_scale(scale)
    assert log_scale.dtype == dtype
    assert float(log_scale[0]) == 0.0 and float(log_scale[1]) == pytest.approx(-6.9078, abs=1e-4)
    assert (
        float(log_scale[2])
        == float(log_scale[3])
        == pytest.approx(0.25 * float(torch.tensor(tiny, dtype=dtype).log()))
    )
    # a location-scale density at the floor still has a finite gradient
    c = torch.tensor(0.6, dtype=dtype, requires_grad=True)
    value = torch.tensor(3.0, dtype=dtype)
    lp = dist.Normal(value.new_zeros(()), torch.exp(c * log_scale)).log_prob(value).sum()
    lp.backward()
    assert bool(torch.isfinite(scale.grad).all()) and bool(torch.isfinite(c.grad))
    assert float(scale.grad[2]) == float(scale.grad[3]) == 0.0  # no gradient below the floor


def test_a_collapsing_scale_gives_no_nan_in_the_decentered_model():
    rep = auto_reparam(eight_schools)
    values = {
        "mu": torch.tensor(0.5, requires_grad=True),
        "tau": torch.tensor(1e-30, requires_grad=True),  # below float32's floor
        "theta_decentered": torch.full((8,), -100.0, requires_grad=True),
    }
    trace = pyro.poutine.trace(pyro.poutine.condition(rep.model, data=values)).get_trace()
    log_p = trace.log_prob_sum()
    log_p.backward()
    assert bool(torch.isfinite(log_p))
    grads = [values[k].grad for k in ("mu", "theta_decentered")] + [rep.logits[0].grad]
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def closure_model():
    offset = 0.25  # noqa: F841 - a closure below, so the model does not pickle

    def model():
        eight_schools()

    return model


def test_pickled_guide_keeps_a_picklable_model_and_asks_for_a_closure(tmp_path):
    guide = pyro_nf.FlowGuide(eight_schools, "planar", 2)
    guide()
    copy = pickle.loads(pickle.dumps(guide))
    assert copy.sample_posterior(5, seed=0)["theta"].shape == (5, 8)
    local = closure_model()
    guide = pyro_nf.FlowGuide(local, "planar", 2)
    guide()
    copy = pickle.loads(pickle.dumps(guide))
    with pytest.raises(RuntimeError, match="guide.model = model"):
        copy.sample_posterior(5, seed=0)
    copy.model = local
    assert copy.sample_posterior(5, seed=0)["theta"].shape == (5, 8)


def test_refine_runs_in_the_decentered_space_and_returns_the_users_sites():
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(eight_schools, "planar", 2)
    pyro_nf.fit(eight_schools, guide, steps=200, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyro_nf.RefinementWarning)
        idata = pyro_nf.refine(
            eight_schools, guide, num_chains=2, num_warmup=40, num_samples=40, parallel=False
        )
    assert set(idata.posterior.data_vars) == {"mu", "tau", "theta"}
    assert idata.posterior["theta"].shape == (2, 40, 8)
    assert float(idata.posterior["tau"].min()) > 0
    assert idata.log_likelihood["obs"].shape == (2, 40, 8)


def test_a_draw_the_model_rejects_mid_run_counts_as_a_nan_step():
    """A guide draw that makes a model's parameter invalid (a scale that underflowed to 0)
    after a first good step is answered by the NaN guard; at the first step it is a bug and
    is raised."""
    calls = {"n": 0}

    def model():
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, s), obs=torch.tensor(0.5))

    def guide():
        calls["n"] += 1
        loc = pyro.param("loc", torch.tensor(0.0))
        value = torch.zeros(()) if calls["n"] == 3 else loc.exp()  # one step: s = 0
        pyro.sample("s", dist.Delta(value))

    pyro.clear_param_store()
    with pytest.warns(
        RuntimeWarning, match=r"step \d: the model rejected a draw of the guide"
    ) as rec:
        history = pyro_nf.fit(model, guide, steps=6, progress=False, early_stopping=None)
    assert history.num_nan_restores == 1 and history.num_steps == 6
    assert {w.filename for w in rec if "rejected a draw" in str(w.message)} == {__file__}

    def broken_guide():
        pyro.sample("s", dist.Delta(torch.zeros(())))

    with pytest.raises(ValueError, match="constraint"):
        pyro_nf.fit(model, broken_guide, steps=3, progress=False)


def test_start_is_init_loc_on_decentered_sites_and_laplace_is_found_non_centered():
    auto = pyro_nf.FlowGuide(eight_schools, "planar", 2)
    auto()
    assert auto._init_info["init"] == "loc (auto: decentered sites)"
    assert auto.describe()["init"] == "auto"
    pyro.set_rng_seed(0)
    laplace = pyro_nf.FlowGuide(eight_schools, "planar", 2, init="laplace")
    laplace()
    info = laplace._init_info
    assert info["init"].startswith("laplace") and info["init"].endswith("(found non-centered)")
    # the mode was searched at c = 0, where log tau has an interior mode (no neck at -inf)
    assert -10.0 < float(info["mode"].mode[1]) < 5.0
    start = torch.tensor(INIT_CENTEREDNESS)
    assert laplace.centering.centered("theta").allclose(start)  # pushed to the usual start
    flat = pyro_nf.FlowGuide(prior_only, "planar", 2, reparam=False)
    flat()
    assert flat._init_info["init"].startswith("laplace")  # no decentered sites: Laplace


def test_pushed_start_is_the_linearized_pushforward():
    from pyro_nf.infer.prototype import pushed_start

    a = torch.tensor([[2.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    tril = torch.tensor([[1.0, 0.0], [0.5, 0.2]], dtype=torch.float64)
    start = {"loc": torch.tensor([1.0, -1.0], dtype=torch.float64), "scale_tril": tril}
    moved = pushed_start({**start, "init": "laplace (full)"}, lambda u: u @ a.T + 1.0)
    cov = a @ tril @ tril.T @ a.T
    torch.testing.assert_close(moved["scale_tril"] @ moved["scale_tril"].T, cov)
    torch.testing.assert_close(moved["loc"], a @ start["loc"] + 1.0)
    plain = pushed_start({**start, "init": "loc"}, lambda u: u @ a.T + 1.0)
    assert torch.equal(plain["scale_tril"], tril)  # no curvature to push
    flat = pushed_start({**start, "init": "laplace (full)"}, lambda u: 0.0 * u)
    assert flat["init"].endswith("curvature dropped") and torch.equal(
        flat["scale_tril"], torch.eye(2, dtype=torch.float64)
    )


def test_set_centered_and_fixed():
    rep = auto_reparam(eight_schools)
    rep.set_centered({"theta": torch.linspace(0.1, 0.9, 8)})
    torch.testing.assert_close(rep.centered("theta").detach(), torch.linspace(0.1, 0.9, 8))
    with rep.fixed(0.0):
        assert torch.equal(rep.centered("theta"), torch.zeros(8))
        with rep.fixed({"theta": torch.ones(8)}):
            assert torch.equal(rep.centered("theta"), torch.ones(8))
        assert torch.equal(rep.centered("theta"), torch.zeros(8))
    torch.testing.assert_close(rep.centered("theta").detach(), torch.linspace(0.1, 0.9, 8))
