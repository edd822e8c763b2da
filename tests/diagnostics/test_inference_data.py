"""ArviZ export (pyro_nf.diagnostics.inference_data, importance.to_inference_data): groups, plate
dims, pointwise log-likelihood against hand-computed densities, vectorized vs sequential, the
ArviZ functions that read them, predictive groups, PSIS resampling, the model-arguments rule."""

from __future__ import annotations

import math
import warnings

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nf.diagnostics import (
    diagnose_importance,
    log_evidence,
    log_importance_weights,
    psis_khat,
    to_inference_data,
)
from pyro_nf.diagnostics.inference_data import (
    add_groups,
    flat_convergence,
    flat_draws,
    inference_data_from_samples,
    predictive_samples,
    prior_samples,
)

matplotlib.use("Agg")

Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools(y, sigma, scale=5.0):
    mu = pyro.sample("mu", dist.Normal(0.0, scale))
    tau = pyro.sample("tau", dist.HalfNormal(scale))
    with pyro.plate("school", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.deterministic("shift", theta - mu)
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def schools_guide(y, sigma, scale=5.0):
    pyro.sample("mu", dist.Normal(4.0, 3.0))
    pyro.sample("tau", dist.LogNormal(1.0, 0.5))
    with pyro.plate("school", len(y)):
        pyro.sample("theta", dist.Normal(5.0 * torch.ones(len(y)), 5.0))


def schools_loop(y, sigma, scale=5.0):
    """The same model written with a Python loop over schools: does not vectorize."""
    mu = pyro.sample("mu", dist.Normal(0.0, scale))
    tau = pyro.sample("tau", dist.HalfNormal(scale))
    theta = pyro.sample("theta", dist.Normal(mu, tau).expand([len(y)]).to_event(1))
    for j in range(len(y)):
        pyro.sample(f"obs_{j}", dist.Normal(float(theta[j]), float(sigma[j])), obs=y[j])


def _draws(chains=2, draws=40, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {
        "mu": torch.randn(chains, draws, generator=g, dtype=dtype) * 3 + 4,
        "tau": torch.rand(chains, draws, generator=g, dtype=dtype) * 5 + 0.1,
        "theta": torch.randn(chains, draws, 8, generator=g, dtype=dtype) * 5 + 5,
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_groups_dims_and_pointwise_log_likelihood(dtype):
    s = _draws(dtype=dtype)
    idata = inference_data_from_samples(
        schools, s, Y.to(dtype), SIGMA.to(dtype), attrs={"run": "x"}
    )
    assert set(idata.groups()) == {"posterior", "log_likelihood", "observed_data"}
    assert idata.posterior["theta"].dims == ("chain", "draw", "school")
    assert idata.posterior["mu"].dims == ("chain", "draw")
    assert idata.posterior["shift"].dims == ("chain", "draw", "school")  # deterministic
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "school")
    assert idata.observed_data["obs"].dims == ("school",)
    np.testing.assert_array_equal(idata.observed_data["obs"].values, Y.numpy())
    # hand-computed log N(y_j; theta_sj, sigma_j), draw by draw
    for c, d in [(0, 0), (1, 17), (1, 39)]:
        for j in range(8):
            th, y, sd = float(s["theta"][c, d, j]), float(Y[j]), float(SIGMA[j])
            want = -0.5 * ((y - th) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)
            got = float(idata.log_likelihood["obs"][c, d, j])
            assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    shift = (s["theta"] - s["mu"][..., None]).numpy()
    np.testing.assert_allclose(idata.posterior["shift"].values, shift, rtol=1e-6)
    assert idata.attrs["run"] == "x" and idata.attrs["inference_library"] == "pyro"
    assert "pyro_nf_version" in idata.posterior.attrs


def test_vectorized_equals_sequential_fallback():
    s = _draws(draws=30)
    vec = inference_data_from_samples(schools, s, Y, SIGMA)
    seq = inference_data_from_samples(schools_loop, s, Y, SIGMA)
    assert set(seq.log_likelihood.data_vars) == {f"obs_{j}" for j in range(8)}
    for j in range(8):
        np.testing.assert_allclose(
            seq.log_likelihood[f"obs_{j}"].values,
            vec.log_likelihood["obs"].values[..., j],
            rtol=1e-5,
            atol=1e-5,
        )


def test_model_runs_once_when_it_vectorizes():
    calls = []

    def counted(y, sigma):
        calls.append(1)
        schools(y, sigma)

    inference_data_from_samples(counted, _draws(draws=200), Y, SIGMA)
    assert len(calls) == 2  # the first-draw trace and one vectorized run of all 400 draws


def test_event_dims_coords_dims_override_and_model_kwargs():
    def mvn(y, shift=0.0):
        m = pyro.sample("m", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.MultivariateNormal(m + shift, torch.eye(2)), obs=y)

    y = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    m = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(2))
    idata = inference_data_from_samples(
        mvn, {"m": m}, y, model_kwargs={"shift": 1.0},
        coords={"data": list("abcde")}, dims={"m": ["coef"]},
    )  # fmt: skip
    assert idata.posterior["m"].dims == ("chain", "draw", "coef")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert list(idata.observed_data["data"].values) == list("abcde")
    want = dist.MultivariateNormal(m[1, 3] + 1.0, torch.eye(2)).log_prob(y)
    np.testing.assert_allclose(idata.log_likelihood["y"].values[1, 3], want.numpy(), rtol=1e-5)


def test_sample_stats_and_no_log_likelihood():
    stats = {"energy": torch.arange(80.0).reshape(2, 40), "diverging": np.zeros((2, 40), bool)}
    idata = inference_data_from_samples(
        schools, _draws(), Y, SIGMA, sample_stats=stats, log_likelihood=False
    )
    assert "log_likelihood" not in idata.groups() and "observed_data" in idata.groups()
    assert float(idata.sample_stats["energy"][1, 0]) == 40.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"samples": {"mu": torch.zeros(2, 3)}}, "samples"),  # tau and theta missing
        ({"samples": {"mu": torch.zeros(3)}}, "samples['mu']"),
        ({"samples": []}, "samples"),
        ({"sample_stats": {"e": np.zeros((3, 40))}}, "sample_stats['e']"),
        ({"model_kwargs": [1]}, "model_kwargs"),
        ({"coords": 3}, "coords"),
        ({"attrs": "x"}, "attrs"),
    ],
)
def test_bad_input_is_refused_naming_it(kwargs, name):
    args = {"samples": _draws(), **kwargs}
    with pytest.raises((ValueError, TypeError)) as err:
        inference_data_from_samples(schools, args.pop("samples"), Y, SIGMA, **args)
    assert str(err.value).startswith(f"{name}:"), str(err.value)


def test_to_inference_data_works_with_arviz_functions():
    pyro.set_rng_seed(0)
    idata = to_inference_data(schools, schools_guide, Y, SIGMA, num_samples=400)
    assert idata.posterior["theta"].shape == (1, 400, 8)
    assert idata.posterior["theta"].dims == ("chain", "draw", "school")
    assert idata.attrs["draws"] == "guide"
    lw = idata.sample_stats["log_importance_weight"].values
    assert lw.shape == (1, 400) and np.isfinite(lw).all()
    assert float(idata.sample_stats["psis_khat"]) == pytest.approx(idata.attrs["psis_khat"])
    with warnings.catch_warnings():  # ArviZ's notes on this rough guide (WAIC variance)
        warnings.simplefilter("ignore", UserWarning)
        loo, waic = az.loo(idata), az.waic(idata)
        axes = az.plot_posterior(idata, var_names=["mu", "tau"])
    assert math.isfinite(loo.elpd_loo) and math.isfinite(waic.elpd_waic)
    summary = az.summary(idata)
    assert "theta[0]" in summary.index and "mu" in summary.index
    assert np.asarray(axes).size == 2
    matplotlib.pyplot.close("all")


def test_to_inference_data_log_weights_are_model_minus_guide():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("z", dist.Normal(0.5, 2.0))

    idata = to_inference_data(model, guide, num_samples=50, seed=3)
    z = torch.as_tensor(idata.posterior["z"].values[0])
    want = dist.Normal(0.0, 1.0).log_prob(z) - dist.Normal(0.5, 2.0).log_prob(z)
    got = idata.sample_stats["log_importance_weight"].values[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
    again = to_inference_data(model, guide, num_samples=50, seed=3)
    np.testing.assert_array_equal(again.posterior["z"].values, idata.posterior["z"].values)


def test_resample_moves_guide_draws_to_the_posterior():
    """A too-wide guide for a conjugate posterior N(1/2, 1/2): PSIS resampling recovers it."""

    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))

    def guide():
        pyro.sample("z", dist.Normal(0.0, 3.0))

    raw = to_inference_data(model, guide, num_samples=4000, seed=0)
    res = to_inference_data(model, guide, num_samples=4000, seed=0, resample=True)
    assert res.attrs["draws"] == "psis_resampled"
    assert float(raw.posterior["z"].std()) > 2.0
    assert abs(float(res.posterior["z"].mean()) - 0.5) < 0.05
    assert abs(float(res.posterior["z"].std()) - 0.5**0.5) < 0.05
    idx = res.sample_stats["resample_index"].values[0]
    np.testing.assert_array_equal(res.posterior["z"].values[0], raw.posterior["z"].values[0, idx])


def test_predictive_and_prior_groups():
    idata = to_inference_data(
        schools, schools_guide, Y, SIGMA, num_samples=60, seed=1,
        posterior_predictive=True, prior=True,
    )  # fmt: skip
    for group in ("posterior_predictive", "prior", "prior_predictive"):
        assert group in idata.groups()
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "school")
    assert idata.prior["theta"].dims == ("chain", "draw", "school")
    assert idata.prior_predictive["obs"].shape == (1, 60, 8)
    # y_rep - theta is N(0, sigma): standardized residuals have sd about 1
    z = (idata.posterior_predictive["obs"].values - idata.posterior["theta"].values) / SIGMA.numpy()
    assert 0.85 < z.std() < 1.15
    prior_sd = idata.prior["mu"].values.std()
    assert 3.5 < prior_sd < 6.5


def test_predictive_helpers_fall_back_for_loops():
    s = _draws(draws=5)
    out = predictive_samples(schools_loop, s, Y, SIGMA)
    assert sorted(out) == sorted(f"obs_{j}" for j in range(8)) and out["obs_0"].shape == (2, 5)
    assert prior_samples(schools_loop, 7, Y, SIGMA)["theta"].shape == (1, 7, 8)
    idata = add_groups(inference_data_from_samples(schools, s, Y, SIGMA), {"prior": {}})
    assert "prior" not in idata.groups()


def test_flat_draws_and_convergence_follow_the_same_order():
    idata = inference_data_from_samples(schools, _draws(chains=4, draws=100), Y, SIGMA)
    x, names = flat_draws(idata, ["theta", "mu"])
    assert x.shape == (4, 100, 9) and x.dtype == torch.float64
    assert names[0] == "theta[0]" and names[-1] == "mu"
    np.testing.assert_allclose(x[..., 8].numpy(), idata.posterior["mu"].values)
    conv = flat_convergence(idata, ["theta", "mu"])
    want = az.rhat(idata, var_names=["mu"])["mu"].values
    assert conv["rhat"].shape == (9,) and float(conv["rhat"][8]) == pytest.approx(float(want))
    assert bool((conv["ess_bulk"] > 100).all()) and bool((conv["ess_tail"] > 100).all())
    with pytest.raises(ValueError, match="var_names"):
        flat_draws(idata, ["nope"])


def test_importance_functions_take_model_kwargs_and_refuse_other_keywords():
    def model(scale=1.0):
        pyro.sample("z", dist.Normal(0.0, scale))

    def guide(scale=1.0):
        pyro.sample("z", dist.Normal(0.0, scale))

    kw = {"model_kwargs": {"scale": 2.0}, "num_samples": 40}
    assert float(log_importance_weights(model, guide, **kw).abs().max()) < 1e-5
    assert psis_khat(model, guide, **kw) == -math.inf
    assert log_evidence(model, guide, **kw)[0] == pytest.approx(0.0, abs=1e-5)
    assert diagnose_importance(model, guide, **kw).verdict == "good"
    assert to_inference_data(model, guide, **kw).posterior["z"].shape == (1, 40)
    for fn in (log_importance_weights, psis_khat, log_evidence, diagnose_importance):
        with pytest.raises(TypeError, match="^scale: unexpected keyword"):
            fn(model, guide, num_samples=40, scale=2.0)
    for bad in ({"scale": 2.0}, {"max_plate_nesting": 1}, {"vectorize": False}):
        with pytest.raises(TypeError, match=f"^{next(iter(bad))}: unexpected keyword"):
            to_inference_data(model, guide, num_samples=40, **bad)
    for name, value in (("resample", 1), ("prior", "yes"), ("seed", -1), ("num_samples", 5)):
        with pytest.raises(ValueError, match=f"^{name}:"):
            to_inference_data(model, guide, **{name: value})
