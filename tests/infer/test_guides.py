"""FlowGuide and AmortizedFlowGuide on models with known posteriors, and inside Pyro's machinery."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import NOISE, A, Y, exact_gaussian_posterior, gaussian_model  # noqa: F401
from pyro.infer import MCMC, NUTS, Predictive
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.reparam import NeuTraReparam

import pyro_nf
from pyro_nf.infer.laplace import LaplaceFallbackWarning


@pytest.mark.parametrize("family", ["iaf", "maf", "planar", "radial", "realnvp", "nice"])
def test_recovers_a_conjugate_gaussian_posterior(family):
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(gaussian_model, flow=family, init="loc")  # learn from scratch
    pyro_nf.fit(
        gaussian_model,
        guide,
        steps=1500,
        lr=0.02,
        num_particles=16,
        progress=False,
        lr_schedule="cosine",
        early_stopping=None,  # a capacity test: the full budget for every family
    )
    samples = guide.sample_posterior(20000, seed=1)["z"]
    mean, cov = exact_gaussian_posterior()
    sd = cov.diagonal().sqrt()
    est_sd = samples.std(0)
    corr = cov / (sd[:, None] * sd[None, :])
    est_corr = torch.corrcoef(samples.T)
    assert float(((samples.mean(0) - mean) / sd).abs().max()) < 0.1, family
    assert float((est_sd / sd).log().abs().max()) < 0.1, family
    assert float((est_corr - corr).abs().max()) < 0.1, family


def test_starts_at_its_gaussian_base():
    guide = pyro_nf.FlowGuide(
        gaussian_model,
        flow="iaf",
        init="loc",
        init_loc_fn=init_to_value(values={"z": torch.tensor([1.0, 2.0, 3.0])}),
        init_scale=0.2,
    )
    guide()
    x = torch.randn(10, 3)
    expected = dist.Normal(torch.tensor([1.0, 2.0, 3.0]), 0.2).log_prob(x).sum(-1)
    assert torch.allclose(guide.get_posterior().log_prob(x), expected, atol=1e-5)


def test_constrained_sites_dirichlet_and_half_normal():
    """Dirichlet–multinomial is conjugate: q must recover Dirichlet(alpha + counts)."""
    alpha = torch.tensor([1.0, 2.0, 3.0])
    counts = torch.tensor([10.0, 4.0, 6.0])

    def model():
        p = pyro.sample("p", dist.Dirichlet(alpha))
        pyro.sample("counts", dist.Multinomial(int(counts.sum()), p), obs=counts)
        pyro.sample("s", dist.HalfNormal(2.0))  # no data: posterior = prior

    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(model, flow="iaf")
    pyro_nf.fit(
        model, guide, steps=2000, lr=0.02, num_particles=16, progress=False, lr_schedule="cosine"
    )
    samples = guide.sample_posterior(20000, seed=0)
    post = dist.Dirichlet(alpha + counts)
    assert torch.allclose(samples["p"].sum(-1), torch.ones(20000), atol=1e-5)
    assert float(((samples["p"].mean(0) - post.mean) / post.stddev).abs().max()) < 0.1
    assert float((samples["p"].std(0) / post.stddev).log().abs().max()) < 0.1
    half = dist.HalfNormal(2.0)
    assert abs(float(samples["s"].mean()) - float(half.mean)) < 0.1 * float(half.stddev)
    assert abs(float((samples["s"].std() / half.stddev).log())) < 0.1


def test_median_and_quantiles_agree_with_samples():
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(gaussian_model, flow="planar", depth=4)
    pyro_nf.fit(gaussian_model, guide, steps=300, lr=0.02, progress=False)
    q = guide.quantiles([0.1, 0.5, 0.9])["z"]
    assert q.shape == (3, 3)
    assert bool((q[0] < q[1]).all() and (q[1] < q[2]).all())
    samples = guide.sample_posterior(50000, seed=123)["z"]
    for i, level in enumerate((0.1, 0.5, 0.9)):
        frac = (samples <= q[i]).float().mean(0)
        assert torch.allclose(frac, torch.full((3,), level), atol=0.01)
    assert torch.equal(guide.median()["z"], q[1])


def test_neutra_reparam_with_nuts():
    def funnel():
        v = pyro.sample("v", dist.Normal(0.0, 1.5))
        pyro.sample("x", dist.Normal(0.0, torch.exp(v / 2)))

    # on the sites as written (reparam=False), Pyro's own recipe applies unchanged
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(funnel, flow="iaf", reparam=False)
    pyro_nf.fit(funnel, guide, steps=300, lr=0.02, num_particles=8, progress=False)
    neutra = NeuTraReparam(guide.requires_grad_(False))
    model = pyro.poutine.reparam(funnel, config=lambda _: neutra)
    mcmc = MCMC(NUTS(model), num_samples=60, warmup_steps=40, disable_progbar=True)
    mcmc.run()
    latent = mcmc.get_samples()["v_shared_latent"]
    samples = neutra.transform_sample(latent)
    assert samples["v"].shape == (60,) and bool(torch.isfinite(samples["x"]).all())

    # x is decentered by default: NUTS runs on the model the flow was fitted on
    # (guide.centering.model) and the draws map back to x
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(funnel, flow="iaf")
    pyro_nf.fit(funnel, guide, steps=300, lr=0.02, num_particles=8, progress=False)
    neutra = NeuTraReparam(guide.requires_grad_(False))
    model = pyro.poutine.reparam(guide.centering.model, config=lambda _: neutra)
    mcmc = MCMC(NUTS(model), num_samples=60, warmup_steps=40, disable_progbar=True)
    mcmc.run()
    latent = mcmc.get_samples()["v_shared_latent"]
    samples = guide.centering.to_original_batched(neutra.transform_sample(latent))
    assert set(samples) == {"v", "x"} and samples["x"].shape == (60,)
    assert bool(torch.isfinite(samples["x"]).all())


def test_khat_small_for_a_good_guide_large_for_a_poor_one():
    pyro.set_rng_seed(0)
    good = pyro_nf.FlowGuide(gaussian_model, flow="iaf")
    pyro_nf.fit(
        gaussian_model,
        good,
        steps=1500,
        lr=0.02,
        num_particles=16,
        progress=False,
        lr_schedule="cosine",
    )
    poor = pyro_nf.FlowGuide(gaussian_model, flow="iaf", init="loc", init_scale=0.02)
    poor()
    k_good = pyro_nf.psis_khat(gaussian_model, good, num_samples=2000)
    k_poor = pyro_nf.psis_khat(gaussian_model, poor, num_samples=2000)
    assert k_good < 0.5 < 0.7 < k_poor


def test_fit_resumes_from_a_checkpoint_to_identical_parameters(tmp_path):
    def run(steps, path):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = pyro_nf.FlowGuide(gaussian_model, flow="planar", depth=2)
        pyro_nf.fit(
            gaussian_model, guide, steps=steps, checkpoint=path, checkpoint_every=50, progress=False
        )
        return torch.cat([p.detach().reshape(-1) for p in guide.parameters()])

    full = run(200, tmp_path / "a.pt")
    run(100, tmp_path / "b.pt")  # interrupted after 100 steps ...
    resumed = run(200, tmp_path / "b.pt")  # ... and resumed
    assert torch.equal(full, resumed)


def test_predictive_renyi_and_vectorized_particles():
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(gaussian_model, flow="radial", depth=2)
    pyro_nf.fit(
        gaussian_model, guide, steps=20, elbo="renyi", alpha=0.0, num_particles=4, progress=False
    )
    pyro_nf.fit(
        gaussian_model, guide, steps=20, num_particles=4, vectorize_particles=True, progress=False
    )
    # Pyro's own SVI with its RenyiELBO also takes the guide
    svi = pyro.infer.SVI(
        gaussian_model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.RenyiELBO(num_particles=4)
    )
    assert torch.isfinite(torch.tensor(svi.step()))
    pred = Predictive(gaussian_model, guide=guide, num_samples=7)()
    assert pred["z"].shape == (7, 3) and pred["y"].shape == (7, 4)


def _shape_recorder(shapes: list):
    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        shapes.append(tuple(z.shape))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))

    return model


def test_fit_draws_the_guides_default_particles_vectorized():
    from pyro_nf.infer.svi import default_num_particles

    shapes: list = []
    model = _shape_recorder(shapes)
    guide = pyro_nf.FlowGuide(model, "planar", 1)
    assert default_num_particles(guide) == pyro_nf.FlowGuide.default_num_particles == 4
    pyro_nf.fit(model, guide, steps=3, progress=False, early_stopping=None)
    assert shapes[-1] == (4,)  # one vectorized batch of 4 (Pyro's particle plate)
    shapes.clear()
    pyro_nf.fit(model, guide, steps=3, num_particles=1, progress=False, early_stopping=None)
    assert set(shapes) == {()}  # asked for: one draw
    pyro_nf.fit(model, guide, steps=3, elbo="renyi", progress=False, early_stopping=None)
    assert shapes[-1] == (1,)  # a Renyi bound depends on K: never chosen for the user
    shapes.clear()
    auto = pyro.infer.autoguide.AutoNormal(model)
    pyro_nf.fit(model, auto, steps=3, progress=False, early_stopping=None)
    assert set(shapes) == {()}  # other guides: Pyro's default of one


def test_fit_draws_default_particles_one_by_one_where_the_model_cannot_vectorize():
    def branchy():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        loc = z if z > 0 else -z  # Python control flow on a value: not vectorizable
        pyro.sample("x", dist.Normal(loc, 1.0), obs=torch.tensor(0.5))

    guide = pyro_nf.FlowGuide(branchy, "planar", 1)
    with pytest.warns(RuntimeWarning, match="could not run 4 particles vectorized") as rec:
        history = pyro_nf.fit(branchy, guide, steps=5, progress=False, early_stopping=None)
    assert {w.filename for w in rec if "vectorized" in str(w.message)} == {__file__}
    assert len(history.losses) == 5 and all(map(math.isfinite, history.losses))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # asked for one draw: no warning
        pyro_nf.fit(branchy, guide, steps=2, num_particles=1, progress=False, early_stopping=None)
    with pytest.raises(RuntimeError, match="ambiguous"):  # asked for vectorized: the error
        pyro_nf.fit(branchy, guide, steps=2, num_particles=4, progress=False)


def test_global_latents_with_a_subsampled_data_plate():
    x = torch.randn(200) + 1.5

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", 200, subsample_size=50) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])

    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(model, flow="planar", depth=2)
    pyro_nf.fit(
        model, guide, steps=1000, lr=0.02, num_particles=4, progress=False, lr_schedule="cosine"
    )
    post_mean = x.sum() / (200 + 1 / 100)
    assert abs(float(guide.median()["mu"]) - float(post_mean)) < 0.05


def test_bad_input_errors():
    def discrete():
        pyro.sample("k", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="site 'k' is discrete"):
        pyro_nf.FlowGuide(discrete)()

    def no_latents():
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    with pytest.raises(RuntimeError, match="no latent sample sites in model '.*no_latents'"):
        pyro_nf.FlowGuide(no_latents)()  # as Pyro's autoguides: a RuntimeError
    with pytest.raises(ValueError, match=r"flow: expected one of \[.*\].*got 'glow'"):
        pyro_nf.FlowGuide(gaussian_model, flow="glow")
    with pytest.raises(ValueError, match="init_loc_fn: expected a callable"):
        pyro_nf.FlowGuide(gaussian_model, init_loc_fn="median")
    with pytest.raises(ValueError, match="init_loc_fn: produced non-finite"):
        pyro_nf.FlowGuide(gaussian_model, init_loc_fn=lambda site: torch.full((3,), float("nan")))()
    with pytest.raises(ValueError, match="init_scale: expected a positive finite number, got -1"):
        pyro_nf.FlowGuide(gaussian_model, init_scale=-1)

    def local_subsampled():
        with pyro.plate("data", 100, subsample_size=10):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="subsampled plate 'data'.*AmortizedFlowGuide"):
        pyro_nf.FlowGuide(local_subsampled)()


def test_amortized_guide_for_local_latents():
    """z_i ~ N(0, 1), x_i ~ N(z_i, 1): q(z_i | x_i) must learn N(x_i / 2, 1/2)."""
    torch.manual_seed(0)
    x = 2 * torch.randn(64, 1)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    guide = pyro_nf.AmortizedFlowGuide(
        "z",
        pyro_nf.planar(1, depth=2, context_dim=8),
        encoder=torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh()),
    )
    pyro_nf.fit(
        model, guide, x, steps=1500, lr=0.02, num_particles=8, progress=False, lr_schedule="cosine"
    )
    with torch.no_grad():
        q = guide.flow(guide.encoder(x))
        s = q.sample((4000,))
    assert float((s.mean(0) - x / 2).abs().max()) < 0.15
    assert float((s.std(0) - 0.5**0.5).abs().max()) < 0.1
    # each data point's posterior depends on its own x only
    with torch.no_grad():
        x2 = x.clone()
        x2[3] += 1.0
        lp1 = guide.flow(guide.encoder(x)).log_prob(torch.zeros(64, 1))
        lp2 = guide.flow(guide.encoder(x2)).log_prob(torch.zeros(64, 1))
    changed = (lp1 != lp2).nonzero().reshape(-1).tolist()
    assert changed == [3]


def test_laplace_init_is_the_exact_posterior_of_a_conjugate_gaussian_model():
    """Before any training, the guide is N(mode, H^-1): exact for a Gaussian posterior."""
    guide = pyro_nf.FlowGuide(gaussian_model, flow="iaf")
    guide()
    mean, cov = exact_gaussian_posterior()
    q = guide.get_posterior()
    x = torch.randn(20, 3)
    expected = dist.MultivariateNormal(mean, cov).log_prob(x)
    assert torch.allclose(q.log_prob(x), expected, atol=1e-4)
    assert guide._init_info["init"] == "laplace (full)"


def test_laplace_init_recovers_badly_scaled_coefficients():
    """Flat prior, predictors on scales 1..100: the Laplace start is already right."""
    torch.manual_seed(0)
    n = 200
    X = torch.randn(n, 3, dtype=torch.float64) * torch.tensor(
        [1.0, 10.0, 100.0], dtype=torch.float64
    )
    beta = torch.tensor([1.0, -0.5, 0.02], dtype=torch.float64)
    y = X @ beta + 0.5 * torch.randn(n, dtype=torch.float64)

    def model():
        b = pyro.sample("b", dist.Normal(torch.zeros(3, dtype=torch.float64), 1e4).to_event(1))
        pyro.sample("y", dist.Normal(X @ b, 0.5).to_event(1), obs=y)

    guide = pyro_nf.FlowGuide(model)
    guide()
    cov = torch.linalg.inv(X.T @ X / 0.25 + torch.eye(3, dtype=torch.float64) / 1e8)
    mean = cov @ X.T @ y / 0.25
    samples = guide.sample_posterior(20000, seed=0)["b"]
    sd = cov.diagonal().sqrt()
    assert float(((samples.mean(0) - mean) / sd).abs().max()) < 0.05
    assert float((samples.std(0) / sd).log().abs().max()) < 0.05


def test_singular_hessian_falls_back_with_a_clear_warning():
    """Only a + b is identified (flat prior on the difference): the Hessian is singular."""

    def model():
        ab = pyro.sample("ab", dist.ImproperUniform(dist.constraints.real_vector, (), (2,)))
        pyro.sample("y", dist.Normal(ab.sum(), 1.0), obs=torch.tensor(1.0))

    guide = pyro_nf.FlowGuide(model, init_loc_fn=init_to_value(values={"ab": torch.zeros(2)}))
    with pytest.warns(
        LaplaceFallbackWarning, match="not positive definite.*diagonal approximation"
    ):
        guide()
    assert guide._init_info["init"] == "laplace (diagonal)"


def test_unbounded_density_falls_back_to_init_loc_with_a_warning():
    """Centered eight schools: the density grows without bound as tau -> 0 (no mode)."""
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    for seed in (1, 2):  # seeds on which the mode search runs into tau = 0
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = pyro_nf.FlowGuide(model, reparam=False)  # the sites as written
        guide()
        assert guide._init_info["init"].startswith("loc")
        history = pyro_nf.fit(
            model, guide, steps=200, num_particles=4, progress=False, early_stopping=None
        )
        assert all(torch.isfinite(torch.tensor(history.losses)))


def test_posterior_summaries_of_sites_inside_plates():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("groups", 4):
            pyro.sample("theta", dist.Normal(mu, 1.0))

    guide = pyro_nf.FlowGuide(model, init="loc")
    guide()
    samples = guide.sample_posterior(100, seed=0)
    assert samples["mu"].shape == (100,) and samples["theta"].shape == (100, 4)
    assert guide.quantiles([0.5])["theta"].shape == (1, 4)


def test_laplace_from_a_far_start_on_a_badly_scaled_float32_model():
    """Unstandardized predictors (1..100) with an interaction (posterior correlation ~ -0.99),
    a latent noise scale, float32 data and a start hundreds of sds away: L-BFGS alone may stop
    short (or fail) here; the damped Newton polish still reaches the mode, so the Laplace start
    equals the one found from a good start."""
    g = torch.Generator().manual_seed(0)
    n = 100
    x1 = 1.0 + 0.1 * torch.randn(n, generator=g)
    x2 = 100.0 + 10.0 * torch.randn(n, generator=g)
    X = torch.stack([torch.ones(n), x1, x2, x1 * x2], -1)
    y = X @ torch.tensor([2.0, 0.5, 0.03, 0.01]) + torch.randn(n, generator=g)

    def model():
        b = pyro.sample("b", dist.Normal(torch.zeros(4), 1000.0).to_event(1))
        s = pyro.sample("s", dist.HalfNormal(torch.tensor(5.0)))
        pyro.sample("y", dist.Normal(X @ b, s).to_event(1), obs=y)

    starts = {
        "near": {"b": torch.zeros(4), "s": torch.tensor(1.0)},
        "far": {"b": torch.tensor([-48.9, 40.9, 350.2, 232.2]), "s": torch.tensor(2.2)},
    }
    modes = {}
    for name, values in starts.items():
        pyro.clear_param_store()
        guide = pyro_nf.FlowGuide(model, init_loc_fn=init_to_value(values=values))
        guide()
        assert guide._init_info["init"] == "laplace (full)", name
        modes[name] = guide._init_info["mode"].mode
    cov = guide.flow.layers[-1].scale_tril.double()
    cov = cov @ cov.T
    corr = cov[1, 3] / (cov[1, 1] * cov[3, 3]).sqrt()
    assert float(corr) < -0.9
    sd = cov.diagonal().sqrt()
    assert float(((modes["far"] - modes["near"]).double() / sd).abs().max()) < 0.05


# -- resuming a fit in a differently seeded process (issue 17, kind 5) -------------------------
_RESUME_SCRIPT = """
import os, sys, torch, pyro, pyro.distributions as dist, pyro_nf
seed, mode, path, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
pyro.set_rng_seed(seed)
x = torch.tensor([0.3, 1.9, 1.1, 2.4, 0.7])
def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, tau), obs=x)
guide = pyro_nf.FlowGuide(model)
def crash(step, history):
    if mode == "crash" and step == 25:
        os._exit(3)   # killed between two checkpoints
kw = {} if mode == "plain" else {"checkpoint": path, "checkpoint_every": 10}
pyro_nf.fit(model, guide, x, steps=60, early_stopping=None, progress=False,
            callback=crash, **kw)
torch.save(guide.state_dict(), out)
"""


def test_resume_in_a_differently_seeded_process_is_bit_identical(tmp_path):
    import subprocess
    import sys

    def run(seed, mode, name):
        out = tmp_path / f"{name}.pt"
        args = [sys.executable, "-c", _RESUME_SCRIPT, str(seed), mode, str(tmp_path / "ck.pt")]
        return subprocess.run([*args, str(out)], capture_output=True, text=True, timeout=300), out

    done, plain = run(0, "plain", "plain")
    assert done.returncode == 0, done.stderr[-2000:]
    crashed, _ = run(0, "crash", "crashed")
    assert crashed.returncode == 3, crashed.stderr[-2000:]
    assert (tmp_path / "ck.pt").exists() and (tmp_path / "ck.pt.guide").exists()
    resumed, out = run(12345, "resume", "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = torch.load(plain), torch.load(out)
    assert sorted(a) == sorted(b)
    assert any("loc" in k for k in a)  # the fixed preconditioner is part of the state
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resuming_a_fit_with_other_data_is_refused(tmp_path):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    ck = tmp_path / "ck.pt"
    kw = {"steps": 4, "early_stopping": None, "progress": False, "checkpoint": ck}
    pyro.clear_param_store()
    pyro_nf.fit(model, pyro_nf.FlowGuide(model, "planar", 2), torch.zeros(3), **kw)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="another run: model_args differs"):
        pyro_nf.fit(model, pyro_nf.FlowGuide(model, "planar", 2), torch.ones(3), **kw)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="another run: guide"):  # another flow family
        pyro_nf.fit(model, pyro_nf.FlowGuide(model, "radial", 2), torch.zeros(3), **kw)
