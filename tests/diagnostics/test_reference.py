"""NUTS reference draws (pyro_nf.diagnostics.reference.run_nuts): shapes, a known posterior, options, errors."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nf.diagnostics.reference import run_nuts


def _model(y):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=y.dtype), 1.0).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(torch.zeros((), dtype=y.dtype), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(loc, scale).to_event(1), obs=y)


def _data():
    return torch.tensor([[0.5, -1.0], [1.5, -0.5], [1.0, -1.5], [0.8, -0.7]])


def test_default_coords_flatten_every_site_and_are_float64():
    out = run_nuts(_model, (_data(),), num_chains=2, warmup=100, num_samples=120, jit_compile=False)
    assert out.draws.shape == (2, 120, 3) and out.draws.dtype == torch.float64
    assert out.rhat.shape == (3,) and out.ess.shape == (3,)
    assert bool((out.draws[..., 2] > 0).all())  # the scale site, in the constrained space
    assert out.info["seeds"] == [0, 1] and out.info["num_samples_per_chain"] == 120
    assert out.info["init_strategy"] == "init_to_sample"
    assert len(out.info["step_sizes"]) == 2
    assert out.info["sites"] == {"loc": [2], "scale": []}


def test_known_posterior_is_recovered():
    """Conjugate normal mean with known unit variance: mu | y ~ N(sum y / (n + 1), 1 / (n + 1))."""

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([0.3, 1.2, 0.9, 2.0, 1.1, 0.4, 1.6])
    n = len(y)
    out = run_nuts(model, (y,), num_chains=2, warmup=300, num_samples=1000, jit_compile=False)
    mean, sd = float(out.draws.mean()), float(out.draws.std())
    exact_mean, exact_sd = float(y.sum()) / (n + 1), (1.0 / (n + 1)) ** 0.5
    mcse = exact_sd / float(out.ess.min()) ** 0.5
    assert abs(mean - exact_mean) < 5 * mcse
    assert abs(sd / exact_sd - 1) < 0.15
    assert out.info["max_rhat"] < 1.02


def test_coords_and_init_values():
    starts = []

    def init_values(c):
        starts.append(c)
        return {"loc": torch.full((2,), 0.1 * c, dtype=torch.float64)}

    def coords(samples, k):
        return samples["loc"].reshape(k, 2).sum(-1, keepdim=True)

    out = run_nuts(
        _model, (_data(),), coords, num_chains=3, warmup=50, num_samples=40, seed=5,
        init_values=init_values, jit_compile=False,
    )  # fmt: skip
    assert out.draws.shape == (3, 40, 1) and starts == [0, 1, 2]
    assert out.info["seeds"] == [5, 6, 7] and out.info["init_strategy"].startswith("init_values")


def test_runs_in_float64_and_restores_the_callers_state():
    """A model that makes its own float32 tensors still runs (and reports) float64, and the
    caller's default dtype and random stream are as before."""

    def model():
        pyro.sample("x", dist.Normal(torch.tensor(0.0), torch.tensor(1.0)))

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    out = run_nuts(model, num_chains=2, warmup=20, num_samples=20, jit_compile=False)
    assert out.draws.dtype == torch.float64 and torch.get_default_dtype() == torch.float32
    assert torch.equal(torch.rand(3), expected_next)


def test_coords_of_the_wrong_shape_and_models_without_latents_are_named():
    with pytest.raises(ValueError, match=r"coords: expected a tensor of shape \(10, P\).*\(10,\)"):
        run_nuts(_model, (_data(),), lambda s, k: s["scale"], num_chains=2, warmup=5,
                 num_samples=10, jit_compile=False)  # fmt: skip

    def no_latents(y):
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="model: expected at least one latent sample site"):
        run_nuts(no_latents, (torch.tensor(0.3),), num_chains=2, warmup=5, num_samples=10,
                 jit_compile=False)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_chains": 1}, "num_chains: expected an integer >= 2"),
        ({"num_samples": 2}, "num_samples: expected an integer >= 4"),
        ({"max_tree_depth": 0}, "max_tree_depth: expected an integer >= 1"),
        ({"seed": 1.5}, "seed: expected an integer >= 0"),
        ({"target_accept_prob": 1.0}, r"target_accept_prob: expected a number in \(0, 1\)"),
        ({"target_accept_prob": "0.8"}, r"target_accept_prob: expected a number in \(0, 1\)"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_nuts(_model, (_data(),), **kwargs)
