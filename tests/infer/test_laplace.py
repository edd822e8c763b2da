"""The Laplace start: full factors, SoftAbs at indefinite points (a scale at its boundary),
masked-out coordinates without a spurious warning, and the diagonal fallback where a direction
has no curvature."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_nf
from pyro_nf.infer.laplace import (
    LaplaceFallbackWarning,
    laplace_approximation,
    laplace_scale_tril,
)
from pyro_nf.infer.prototype import minus_inf_on_error

ES_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], dtype=torch.float64)
ES_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_factor_of_a_gaussian(dtype):
    cov = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]], dtype=torch.float64)
    prec = torch.linalg.inv(cov).to(dtype)
    scale_tril, kind = laplace_scale_tril(
        lambda u: -0.5 * u @ prec @ u, torch.zeros(3, dtype=dtype)
    )
    assert kind == "full" and scale_tril.dtype == dtype
    assert torch.allclose((scale_tril @ scale_tril.T).double(), cov, atol=1e-5)


def test_softabs_factor_at_a_saddle_matches_the_eigen_formula():
    """Indefinite but curved everywhere: Sigma = Q |Lambda|^-1 Q^T, no warning."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    lam = torch.tensor([-3.0, -0.5, 1.0, 7.0], dtype=torch.float64)
    precision = q @ torch.diag(lam) @ q.T
    with warnings.catch_warnings():
        warnings.simplefilter("error", LaplaceFallbackWarning)
        scale_tril, kind = laplace_scale_tril(
            lambda u: -0.5 * u @ precision @ u, torch.zeros(4, dtype=torch.float64)
        )
    assert kind == "softabs"
    expected = q @ torch.diag(1.0 / lam.abs()) @ q.T
    assert torch.allclose(scale_tril @ scale_tril.T, expected, atol=1e-12)
    assert torch.equal(scale_tril, scale_tril.tril())


def test_flat_direction_still_falls_back_with_a_warning():
    """Only a + b is identified: a zero eigenvalue that no SoftAbs width can fix."""
    with pytest.warns(LaplaceFallbackWarning, match="without curvature"):
        _, kind = laplace_scale_tril(
            lambda u: -0.5 * u.sum() ** 2, torch.zeros(2, dtype=torch.float64)
        )
    assert kind == "diagonal"


def test_masked_out_coordinates_get_the_fallback_scale_without_a_warning():
    """Coordinate 1 does not enter the density (row and column of the Hessian exactly 0,
    eigenvalue -0): the others keep their exact factor, it gets the fallback scale."""
    prec = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)

    def logp(u):
        v = u[[0, 2]]
        return -0.5 * v @ prec @ v + 0.0 * u[1]

    with warnings.catch_warnings():
        warnings.simplefilter("error", LaplaceFallbackWarning)
        scale_tril, kind = laplace_scale_tril(logp, torch.zeros(3, dtype=torch.float64), 0.3)
    assert kind == "full"
    cov = scale_tril @ scale_tril.T
    assert torch.allclose(cov[[0, 2]][:, [0, 2]], torch.linalg.inv(prec), atol=1e-12)
    assert float(cov[1, 1]) == pytest.approx(0.09)
    assert float(cov[1, 0].abs() + cov[1, 2].abs()) == 0.0


def test_everything_masked_is_the_fallback_scale_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LaplaceFallbackWarning)
        scale_tril, kind = laplace_scale_tril(
            lambda u: 0.0 * u.sum(), torch.zeros(2, dtype=torch.float64), 0.5
        )
    assert kind == "fallback"
    assert torch.equal(scale_tril, 0.5 * torch.eye(2, dtype=torch.float64))


def _masked_model():
    """Pyro's autoguide shape-test style: a partly masked site and a site masked out entirely."""
    pyro.sample("a", dist.Normal(1.0, 2.0))
    pyro.sample("b", dist.Normal(0.0, 1.0).expand([2]).mask(torch.arange(2) > 0).to_event(1))
    pyro.sample("c", dist.Normal(0.0, 1.0).mask(False))


def test_flowguide_on_a_masked_model_takes_the_laplace_start_silently():
    pyro.clear_param_store()
    guide = pyro_nf.FlowGuide(_masked_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LaplaceFallbackWarning)
        guide()
    assert guide._init_info["init"] == "laplace (full)"
    tril = guide.flow.layers[-1].scale_tril.double()
    sd = (tril @ tril.T).diagonal().sqrt()
    # a ~ N(1, 2^2) exactly; b[1] ~ N(0, 1); b[0] and c are flat (masked): scale 1 (init_scale)
    assert sd.tolist() == pytest.approx([2.0, 1.0, 1.0, 1.0], abs=1e-5)


def _eight_schools_density(u: torch.Tensor, c: float) -> torch.Tensor:
    """Eight schools with centeredness ``c`` (1: the user's centered model, 0: non-centered) in
    unconstrained coordinates (mu, log tau, theta_decentered_1..8), as
    :mod:`pyro_nf.infer.reparam` writes it."""
    mu, log_tau, dec = u[0], u[1], u[2:]
    tau = log_tau.exp()
    theta = mu + tau ** (1 - c) * (dec - c * mu)
    return (
        dist.Normal(0.0, 5.0).log_prob(mu)
        + dist.HalfCauchy(torch.tensor(5.0, dtype=u.dtype)).log_prob(tau)
        + log_tau
        + dist.Normal(c * mu, tau**c).log_prob(dec).sum()
        + dist.Normal(theta, ES_SIGMA.to(u.dtype)).log_prob(ES_Y.to(u.dtype)).sum()
    )


def test_scale_at_its_boundary_centered_falls_back_decentered_has_a_full_start():
    """Centered eight schools has no mode (the density grows like tau^-7 as tau -> 0): the
    search runs into the boundary and the Hessian there is useless (warned). With the
    centeredness of the automatic reparameterization below 1/8 the boundary repels, the mode
    exists and the Laplace factor is full, without a warning."""
    init = torch.zeros(10, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN")
        with pytest.warns(LaplaceFallbackWarning):
            mode, _, _ = laplace_approximation(
                minus_inf_on_error(lambda u: _eight_schools_density(u, 1.0)), init
            )
        assert float(mode.mode[1]) < -20  # log tau ran off towards the boundary
        warnings.simplefilter("error", LaplaceFallbackWarning)
        mode, scale_tril, kind = laplace_approximation(
            minus_inf_on_error(lambda u: _eight_schools_density(u, 0.01)), init
        )
    assert kind == "full" and float(mode.mode[1]) > -5
    assert bool(torch.isfinite(scale_tril).all()) and bool((scale_tril.diagonal() > 0).all())
