"""pyro_nf.infer.nuts: the NUTS sampler on its own, against targets with known moments."""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest
import torch

from pyro_nf.infer.nuts import (
    NUTS,
    STAT_NAMES,
    ChainSettings,
    DensityTarget,
    InitializationError,
    Target,
    mass_windows,
    run_chain,
)

COV = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)


def gaussian(mean: torch.Tensor, cov: torch.Tensor, dtype=torch.float64) -> DensityTarget:
    precision = torch.linalg.inv(cov).to(dtype)
    mean = mean.to(dtype)

    def log_density(z):
        r = z - mean
        return -0.5 * r @ precision @ r

    return DensityTarget(log_density, dim=len(mean), dtype=dtype)


def chains(target, num_chains=2, **settings) -> tuple[np.ndarray, list[dict]]:
    """``(C, S, D)`` draws of ``num_chains`` chains and each chain's output."""
    settings = ChainSettings(**{"num_warmup": 200, "num_samples": 500, **settings})
    outs = [run_chain(target, c, settings) for c in range(num_chains)]
    return np.stack([o["draws"] for o in outs]), outs


def ess_bulk(draws: np.ndarray) -> np.ndarray:
    """The bulk ESS of every coordinate of ``(C, S, D)`` draws."""
    return az.ess(az.from_dict(posterior={"z": draws}))["z"].values


def test_correlated_gaussian_mean_and_covariance_within_monte_carlo_error():
    draws, outs = chains(gaussian(MEAN, COV), num_warmup=150, num_samples=500)
    flat = draws.reshape(-1, 2)
    ess = ess_bulk(draws)
    assert ess.min() > 100
    sd = COV.diag().sqrt().numpy()
    # mean: standard error sd / sqrt(ESS); 4 standard errors
    assert (np.abs(flat.mean(0) - MEAN.numpy()) < 4 * sd / np.sqrt(ess)).all(), flat.mean(0)
    # covariance: Var[s_ij] ~ (s_ij^2 + s_ii s_jj) / n for Gaussian draws, with n the ESS of
    # the centred products (NUTS's draws of z_i z_j are far less efficient than those of z)
    centred = draws - MEAN.numpy()
    products = np.stack([centred[..., 0] ** 2, centred[..., 1] ** 2, centred.prod(-1)], -1)
    n = ess_bulk(products).min()
    assert n > 100
    cov = np.cov(flat.T)
    se = np.sqrt((COV.numpy() ** 2 + np.outer(sd**2, sd**2)) / n)
    assert (np.abs(cov - COV.numpy()) < 4 * se).all(), cov
    assert sum(int(o["diverging"].sum()) for o in outs) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ten_dimensional_standard_normal_variance(dtype):
    target = gaussian(torch.zeros(10), torch.eye(10), dtype=dtype)
    draws, outs = chains(target, num_warmup=150, num_samples=250)
    assert draws.dtype == (np.float32 if dtype == torch.float32 else np.float64)
    ess = ess_bulk(draws.astype(np.float64) ** 2)  # the ESS of the squares, not of z
    assert ess.min() > 100
    var = draws.reshape(-1, 10).var(0, ddof=1)
    # relative standard error of a variance ~ sqrt(2 / ESS(z^2)); 4 standard errors
    assert (np.abs(np.log(var)) < 4 * np.sqrt(2 / ess)).all(), var
    # a round target: short trees, no divergence
    assert all(o["tree_depth"].max() <= 5 for o in outs)
    assert sum(int(o["diverging"].sum()) for o in outs) == 0


#: the adapted step's sensible range by target acceptance (a unit 10-D normal at 0.8: about 1)
STEP_RANGE = {0.6: (0.6, 2.5), 0.9: (0.3, 1.2)}


@pytest.mark.parametrize("target_accept", [0.6, 0.9])
def test_adapted_step_size_is_sensible_and_hits_the_acceptance_target(target_accept):
    """A 10-D normal with scales from 0.2 to 5: the windowed mass matrix takes out the
    scales, so that the adapted step is O(1) (it would be about 0.2 without mass adaptation)
    and the acceptance rate is at least the target (the averaged step of dual averaging is
    a little conservative) and below 1."""
    scales = torch.logspace(-0.7, 0.7, 10, dtype=torch.float64)
    target = gaussian(torch.zeros(10), torch.diag(scales**2))
    settings = ChainSettings(
        num_warmup=150, num_samples=150, seed=1, target_accept_prob=target_accept
    )
    out = run_chain(target, 0, settings)
    step = float(out["step_size"][0])
    assert np.ptp(out["step_size"]) == 0.0
    assert STEP_RANGE[target_accept][0] < step < STEP_RANGE[target_accept][1], step
    accept = out["acceptance_rate"].mean()
    assert target_accept - 0.05 < accept < min(target_accept + 0.25, 0.99), accept
    var = out["draws"].var(0, ddof=1)
    assert np.abs(np.log(var / scales.numpy() ** 2)).max() < 0.7, var / scales.numpy() ** 2


def test_without_warmup_the_step_is_the_initial_search():
    target = gaussian(torch.zeros(3), torch.eye(3))
    out = run_chain(target, 0, ChainSettings(num_warmup=0, num_samples=5))
    assert out["warmup_divergences"] == 0 and out["draws"].shape == (5, 3)
    # Stan's heuristic only doubles or halves a step of 1
    assert math.log2(float(out["step_size"][0])).is_integer()


def test_output_layout_determinism_and_independent_chains():
    target = gaussian(MEAN, COV)
    settings = ChainSettings(num_warmup=30, num_samples=20, seed=7)
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    first, again = run_chain(target, 0, settings), run_chain(target, 0, settings)
    assert torch.get_num_threads() == threads and torch.equal(rng, torch.get_rng_state())
    for name in STAT_NAMES:
        assert first[name].shape == (20,), name
        np.testing.assert_array_equal(first[name], again[name])
    np.testing.assert_array_equal(first["draws"], again["draws"])
    assert first["draw_times"].shape == (20,) and first["elapsed_s"] >= first["warmup_s"]
    other_chain = run_chain(target, 1, settings)
    other_seed = run_chain(target, 0, ChainSettings(num_warmup=30, num_samples=20, seed=8))
    assert not np.array_equal(first["draws"], other_chain["draws"])
    assert not np.array_equal(first["draws"], other_seed["draws"])
    # the lp statistic is the log density of the draw
    z = torch.from_numpy(first["draws"][4])
    assert first["lp"][4] == pytest.approx(-target.potential_and_grad(z)[0], rel=1e-12)


def test_a_transition_from_a_fixed_state_leaves_the_generator_deterministic():
    target = gaussian(MEAN, COV)
    z = MEAN.clone()
    results = []
    for _ in range(2):
        nuts = NUTS(target.potential_and_grad, torch.Generator().manual_seed(3), 10, torch.ones(2))
        nuts.step = 0.4
        results.append(nuts.transition(z, *target.potential_and_grad(z)))
    torch.testing.assert_close(results[0]["state"][0], results[1]["state"][0], rtol=0, atol=0)
    assert 1 <= results[0]["tree_depth"] <= 10 and results[0]["n_steps"] >= 1


def test_mass_windows_follow_stans_schedule():
    assert mass_windows(10) == (10, [])
    assert mass_windows(500) == (75, [100, 150, 250, 450])
    start, ends = mass_windows(2000)
    assert start == 75 and ends[-1] == 1950 and ends == sorted(ends)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_warmup", -1, "num_warmup: expected an integer >= 0, got -1"),
        ("num_samples", 0, "num_samples: expected an integer >= 1, got 0"),
        ("num_samples", 2.0, "num_samples: expected an integer >= 1, got 2.0"),
        ("seed", -3, "seed: expected a non-negative integer, got -3"),
        ("seed", True, "seed: expected a non-negative integer, got True"),
        ("target_accept_prob", 1.0, r"target_accept_prob: expected a number in \(0, 1\)"),
        ("target_accept_prob", "0.8", r"target_accept_prob: expected a number in \(0, 1\)"),
        ("max_tree_depth", 0, "max_tree_depth: expected an integer >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message):
        ChainSettings(**{"num_warmup": 10, "num_samples": 10, field: value})


def test_bad_targets_and_arguments_are_refused():
    settings = ChainSettings(num_warmup=5, num_samples=5)
    target = gaussian(MEAN, COV)
    assert isinstance(target, Target)
    with pytest.raises(TypeError, match="target: expected an object with dim, dtype, device"):
        run_chain(lambda z: (0.0, z), 0, settings)
    with pytest.raises(ValueError, match="chain: expected an integer >= 0, got -1"):
        run_chain(target, -1, settings)
    with pytest.raises(TypeError, match="settings: expected a ChainSettings, got dict"):
        run_chain(target, 0, {"num_warmup": 5, "num_samples": 5})
    nowhere = DensityTarget(lambda z: torch.tensor(-math.inf, dtype=z.dtype), dim=2)
    with pytest.raises(InitializationError, match="not finite at any of 100 standard normal"):
        run_chain(nowhere, 0, settings)
    with pytest.raises(TypeError, match="log_density: expected a callable, got int"):
        DensityTarget(3, dim=2)
    with pytest.raises(ValueError, match="dim: expected an integer >= 1, got 0"):
        DensityTarget(lambda z: z.sum(), dim=0)
    with pytest.raises(TypeError, match="dtype: expected a floating torch.dtype"):
        DensityTarget(lambda z: z.sum(), dim=2, dtype=torch.int64)


def test_a_nan_or_inf_density_is_a_divergence_not_a_crash():
    """A half-space target: leapfrog steps into z[0] < 0 (density zero) end the trajectory."""

    def half_normal(z):
        return torch.where(z[0] > 0, -0.5 * (z * z).sum(), torch.tensor(-math.inf, dtype=z.dtype))

    target = DensityTarget(half_normal, dim=2, dtype=torch.float64)
    out = run_chain(target, 0, ChainSettings(num_warmup=100, num_samples=200, seed=2))
    assert (out["draws"][:, 0] > 0).all()
    assert np.isfinite(out["energy"]).all() and out["diverging"].any()
