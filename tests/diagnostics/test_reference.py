"""NUTS reference draws (pyro_nf.diagnostics.reference.run_nuts): the ArviZ groups, the sample
stats against their definitions, a known posterior, options, warnings and errors."""

from __future__ import annotations

import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nf.diagnostics import flat_convergence, flat_draws
from pyro_nf.diagnostics.reference import RHAT_THRESHOLD, ReferenceWarning, run_nuts

QUIET = {"jit_compile": False}


def _model(y, noise=None):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=y.dtype), 1.0).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(torch.zeros((), dtype=y.dtype), 1.0))
    if noise is not None:
        scale = scale + noise
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(loc, scale).to_event(1), obs=y)


def _data():
    return torch.tensor([[0.5, -1.0], [1.5, -0.5], [1.0, -1.5], [0.8, -0.7]])


def _run(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReferenceWarning)
        return run_nuts(*args, **{**QUIET, **kwargs})


def test_groups_dims_sample_stats_and_attrs():
    idata = _run(_model, _data(), num_chains=2, warmup=40, num_samples=30)
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data"} <= set(idata.groups())
    assert idata.posterior["loc"].shape == (2, 30, 2) and idata.posterior["loc"].dtype == np.float64
    assert idata.posterior["scale"].dims == ("chain", "draw")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert bool((idata.posterior["scale"] > 0).all())  # constrained space
    stats = idata.sample_stats
    for name in ("diverging", "step_size", "tree_depth", "energy", "acceptance_rate", "lp"):
        assert stats[name].shape == (2, 30), name
    assert stats["diverging"].dtype == bool
    depth, acc = stats["tree_depth"].values, stats["acceptance_rate"].values
    assert depth.min() >= 1 and depth.max() <= 10 and acc.min() >= 0 and acc.max() <= 1 + 1e-9
    step = stats["step_size"].values
    np.testing.assert_allclose(step, np.repeat(step[:, :1], 30, axis=1))  # constant per chain
    np.testing.assert_allclose(step[:, 0], idata.attrs["step_sizes"])
    assert int(stats["diverging"].values.sum()) == idata.attrs["divergences"]
    assert idata.attrs["seeds"] == [0, 1] and idata.attrs["num_samples_per_chain"] == 30
    assert idata.attrs["init_strategy"] == "init_to_sample"
    for key in ("max_rhat", "min_ess_bulk", "min_ess_tail", "elapsed_s", "pyro_nf_version"):
        assert key in idata.attrs
    conv = flat_convergence(idata)
    assert idata.attrs["max_rhat"] == pytest.approx(float(conv["rhat"].max()))


def test_lp_energy_and_tree_depth_follow_their_definitions():
    """A standard normal in 3 dims: lp is log N(z) (no Jacobian), the Hamiltonian after the
    momentum refresh is 0.5|z|^2 + 0.5|r|^2 + const with E = d (1 + log(2 pi) / 2)."""

    def model():
        pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    idata = _run(model, num_chains=2, warmup=100, num_samples=300, max_tree_depth=2)
    z = torch.as_tensor(idata.posterior["z"].values)
    want = dist.Normal(0.0, 1.0).log_prob(z).sum(-1).numpy()
    np.testing.assert_allclose(idata.sample_stats["lp"].values, want, rtol=1e-10, atol=1e-10)
    assert idata.sample_stats["tree_depth"].values.max() <= 2
    energy = idata.sample_stats["energy"].values
    expected = 3 * (1 + 0.5 * math.log(2 * math.pi))
    assert abs(energy.mean() - expected) < 4 * energy.std() / math.sqrt(energy.size / 4)
    assert float(az.bfmi(idata).min()) > 0.3


@pytest.mark.slow
def test_known_posterior_is_recovered():
    """Conjugate normal mean with known unit variance: mu | y ~ N(sum y / (n + 1), 1 / (n + 1))."""

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([0.3, 1.2, 0.9, 2.0, 1.1, 0.4, 1.6])
    n = len(y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReferenceWarning)  # converged: no warning
        idata = run_nuts(model, y, num_chains=2, warmup=300, num_samples=800, **QUIET)
    mu = idata.posterior["mu"].values
    exact_mean, exact_sd = float(y.sum()) / (n + 1), (1.0 / (n + 1)) ** 0.5
    mcse = exact_sd / idata.attrs["min_ess_bulk"] ** 0.5
    assert abs(mu.mean() - exact_mean) < 5 * mcse
    assert abs(mu.std() / exact_sd - 1) < 0.15
    assert idata.attrs["max_rhat"] <= RHAT_THRESHOLD
    assert az.summary(idata).loc["mu", "r_hat"] <= RHAT_THRESHOLD


def test_derived_init_values_model_kwargs_and_labels():
    starts = []

    def init_values(c):
        starts.append(c)
        return {"loc": torch.full((2,), 0.1 * c, dtype=torch.float64)}

    def total(samples):
        return {"total": samples["loc"].sum(-1, keepdim=True)}

    idata = _run(
        _model, _data(), model_kwargs={"noise": torch.tensor(0.1)}, num_chains=3, warmup=30,
        num_samples=20, seed=5, init_values=init_values, derived=total,
        dims={"total": ["one"], "loc": ["axis"]}, coords={"axis": ["x", "y"]},
    )  # fmt: skip
    assert starts == [0, 1, 2] and idata.attrs["seeds"] == [5, 6, 7]
    assert idata.attrs["init_strategy"].startswith("init_values")
    assert idata.posterior["total"].dims == ("chain", "draw", "one")
    assert list(idata.posterior["axis"].values) == ["x", "y"]
    np.testing.assert_allclose(
        idata.posterior["total"].values[..., 0], idata.posterior["loc"].values.sum(-1)
    )
    x, names = flat_draws(idata, ["loc", "scale"])
    assert x.shape == (3, 20, 3) and names == ["loc[0]", "loc[1]", "scale"]
    # the model kwargs reached the model: the log-likelihood uses scale + 0.1
    loc, scale = (torch.as_tensor(idata.posterior[k].values[0, 0]) for k in ("loc", "scale"))
    noise = torch.tensor(0.1).double()  # run_nuts casts the float32 0.1 to float64
    want = dist.Normal(loc, scale + noise).to_event(1).log_prob(_data().double())
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0, 0], want.numpy(), rtol=1e-8)


def test_runs_in_float64_and_restores_the_callers_state():
    """A model that makes its own float32 tensors still runs (and reports) float64, and the
    caller's default dtype and random stream are as before."""

    def model():
        pyro.sample("x", dist.Normal(torch.tensor(0.0), torch.tensor(1.0)))

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    idata = _run(model, num_chains=2, warmup=20, num_samples=20)
    assert idata.posterior["x"].dtype == np.float64 and torch.get_default_dtype() == torch.float32
    assert torch.equal(torch.rand(3), expected_next)


def test_unconverged_chains_warn():
    """Two chains stuck far apart (no warm-up, starts at -5 and +5 of a narrow posterior)."""

    def model():
        pyro.sample("x", dist.Normal(torch.tensor(0.0), torch.tensor(0.01)))

    def init_values(c):
        return {"x": torch.tensor(5.0 if c else -5.0, dtype=torch.float64)}

    with pytest.warns(ReferenceWarning, match="not a reference yet: R-hat up to"):
        idata = run_nuts(
            model, num_chains=2, warmup=0, num_samples=8, init_values=init_values, **QUIET
        )
    assert idata.attrs["max_rhat"] > RHAT_THRESHOLD


def test_bad_derived_and_models_without_latents_are_named():
    with pytest.raises(ValueError, match=r"derived: expected \{new name: tensor.*'loc': a latent"):
        _run(_model, _data(), num_chains=2, warmup=5, num_samples=10,
             derived=lambda s: {"loc": s["loc"]})  # fmt: skip
    with pytest.raises(ValueError, match=r"derived: expected \{new name.*'m': \(10,\)"):
        _run(_model, _data(), num_chains=2, warmup=5, num_samples=10,
             derived=lambda s: {"m": s["scale"][0]})  # fmt: skip

    def no_latents(y):
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="model: expected at least one latent sample site"):
        _run(no_latents, torch.tensor(0.3), num_chains=2, warmup=5, num_samples=10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_chains": 1}, "num_chains: expected an integer >= 2"),
        ({"num_samples": 2}, "num_samples: expected an integer >= 4"),
        ({"max_tree_depth": 0}, "max_tree_depth: expected an integer >= 1"),
        ({"seed": 1.5}, "seed: expected a non-negative integer"),
        ({"target_accept_prob": 1.0}, r"target_accept_prob: expected a number in \(0, 1\)"),
        ({"target_accept_prob": "0.8"}, r"target_accept_prob: expected a number in \(0, 1\)"),
        ({"model_kwargs": [1]}, "model_kwargs: expected None or a dict"),
        ({"derived": 3}, "derived: expected a callable"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_nuts(_model, _data(), **kwargs)


def test_unknown_keywords_are_refused():
    with pytest.raises(TypeError, match="noise"):
        run_nuts(_model, _data(), noise=0.1)
