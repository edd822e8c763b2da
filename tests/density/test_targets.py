"""Tests for pyro_nf.targets: energies, log Z, funnel, two moons, registry, Pyro wrapper."""

from __future__ import annotations

import math
import time

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_nf.density.targets import (
    LOG_NORMALIZERS,
    TARGET_NAMES,
    EnergyTarget,
    NealFunnel,
    Target,
    as_pyro_model,
    energy_u1,
    energy_u2,
    energy_u3,
    energy_u4,
    get_target,
    quadrature_log_normalizer,
    two_moons,
)

ENERGY_NAMES = ["U1", "U2", "U3", "U4"]
ENERGY_FNS = {"U1": energy_u1, "U2": energy_u2, "U3": energy_u3, "U4": energy_u4}


# -- reference energies, written independently in NumPy straight from the paper's Table 1 -------
def _np_energy(name: str, z: np.ndarray) -> np.ndarray:
    z1, z2 = z[:, 0], z[:, 1]
    w1 = np.sin(2 * np.pi * z1 / 4)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    conf = 0.5 * (z1 / 4) ** 2
    if name == "U1":
        r = np.sqrt(z1**2 + z2**2)
        return 0.5 * ((r - 2) / 0.4) ** 2 - np.log(
            np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
        )
    if name == "U2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2 + conf
    if name == "U3":
        return conf - np.log(
            np.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + np.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
        )
    return conf - np.log(
        np.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + np.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2)
    )


@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_energies_match_independent_numpy_formulas(name):
    z = 3.0 * torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = _np_energy(name, z.numpy())
    got = ENERGY_FNS[name](z)
    assert got.shape == (500,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)
    target = get_target(name)
    np.testing.assert_allclose(target.log_prob(z).numpy(), -expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(target.energy(z).numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_energies_broadcast_over_batch_shapes(name):
    z = torch.randn(3, 4, 2, dtype=torch.float64)
    out = get_target(name).log_prob(z)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out[1, 2], get_target(name).log_prob(z[1, 2]))


@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_energies_float32_and_gradients(name):
    z64 = torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z64 = torch.cat([z64, torch.zeros(1, 2, dtype=torch.float64)])  # includes the origin
    z32 = z64.float().requires_grad_()
    out32 = get_target(name).log_prob(z32)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), get_target(name).log_prob(z64), rtol=1e-4, atol=1e-4)
    out32.sum().backward()
    assert z32.grad is not None and bool(torch.isfinite(z32.grad).all())


# -- log-normalizers ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_quadrature_equals_documented_constant(name):
    assert abs(quadrature_log_normalizer(name) - LOG_NORMALIZERS[name]) < 1e-9
    assert get_target(name).log_normalizer == LOG_NORMALIZERS[name]


@pytest.mark.parametrize(
    "name, closed_form",
    [("U2", 3.2 * math.pi), ("U3", 5.6 * math.pi), ("U4", 6.0 * math.pi)],
)
def test_quadrature_matches_closed_forms(name, closed_form):
    # ∫ over z2 is a Gaussian integral independent of the shifts; ∫ over z1 is 4·sqrt(2π).
    assert abs(quadrature_log_normalizer(name) - math.log(closed_form)) < 1e-10


def test_u1_normalizer_by_independent_polar_quadrature():
    # Z = ∫_0^∞ r exp(-½((r-2)/0.4)²) ∫_0^{2π} [g(r cos θ - 2) + g(r cos θ + 2)] dθ dr; the
    # θ-integrand is periodic, so the uniform rule is spectrally accurate; midpoint rule in r.
    nr, nt, r_max = 4000, 256, 8.0
    r = (torch.arange(nr, dtype=torch.float64) + 0.5) * (r_max / nr)
    c = r[:, None] * torch.cos(torch.arange(nt, dtype=torch.float64) * (2 * math.pi / nt))
    log_f = -0.5 * ((r[:, None] - 2) / 0.4) ** 2 + torch.logaddexp(
        -0.5 * ((c - 2) / 0.6) ** 2, -0.5 * ((c + 2) / 0.6) ** 2
    )
    log_z = torch.logsumexp((log_f + r.log()[:, None]).flatten(), 0).item()
    log_z += math.log(r_max / nr) + math.log(2 * math.pi / nt)
    assert abs(log_z - LOG_NORMALIZERS["U1"]) < 1e-9


@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_quadrature_is_converged(name):
    base = quadrature_log_normalizer(name)
    assert abs(quadrature_log_normalizer(name, step=0.025) - base) < 1e-6
    assert abs(quadrature_log_normalizer(name, box_scale=1.5) - base) < 1e-6
    # a too-coarse grid or a too-small box must be visibly off: the check can fail
    assert abs(quadrature_log_normalizer(name, step=0.9) - base) > 1e-6


def test_quadrature_is_fast_and_cached():
    t0 = time.perf_counter()
    first = quadrature_log_normalizer("U3", step=0.049)  # a grid no other test caches
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0
    t0 = time.perf_counter()
    assert quadrature_log_normalizer("u3", step=0.049) == first
    assert time.perf_counter() - t0 < 0.01


def test_normalized_log_prob_integrates_to_one():
    target = get_target("U4")
    h = 0.05
    z1 = torch.arange(-40, 40, h, dtype=torch.float64) + h / 2
    z2 = torch.arange(-8, 6, h, dtype=torch.float64) + h / 2
    grid = torch.stack(torch.meshgrid(z1, z2, indexing="ij"), -1)
    mass = target.normalized_log_prob(grid).exp().sum().item() * h * h
    assert abs(mass - 1.0) < 1e-8


# -- Neal's funnel --------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 3, 10])
def test_funnel_log_prob_matches_torch_distributions(dim):
    z = 2.0 * torch.randn(100, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v, x = z[:, 0], z[:, 1:]
    expected = torch.distributions.Normal(0.0, 3.0).log_prob(v) + torch.distributions.Normal(
        torch.zeros_like(x), torch.exp(v / 2).unsqueeze(-1)
    ).log_prob(x).sum(-1)
    target = NealFunnel(dim)
    torch.testing.assert_close(target.log_prob(z), expected)
    assert target.log_normalizer == 0.0
    torch.testing.assert_close(target.normalized_log_prob(z), expected)


def test_funnel_default_dim_and_normalization_by_quadrature():
    assert get_target("funnel").dim == 10
    # D = 2: ∫∫ p(v, x) dx dv with x = e^{v/2} u (dx = e^{v/2} du), midpoint rule over
    # v ∈ [-30, 30] (10 sd) and u ∈ [-12, 12].
    target = NealFunnel(2)
    h = 0.05
    v = torch.arange(-30, 30, h, dtype=torch.float64) + h / 2
    u = torch.arange(-12, 12, h, dtype=torch.float64) + h / 2
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    z = torch.stack([vv, uu * torch.exp(vv / 2)], -1)
    log_mass = torch.logsumexp((target.log_prob(z) + vv / 2).flatten(), 0).item() + 2 * math.log(h)
    assert abs(log_mass) < 1e-8


def test_funnel_sampler_moments():
    n = 200_000
    z = NealFunnel(5).sample(n, generator=3, dtype=torch.float64)
    assert z.shape == (n, 5) and z.dtype == torch.float64
    v = z[:, 0]
    u = z[:, 1:] * torch.exp(-v / 2).unsqueeze(-1)  # standardized x: N(0, 1), independent of v
    se = 1 / math.sqrt(n)
    assert abs(v.mean().item()) < 5 * 3 * se
    assert abs(v.std().item() - 3.0) < 5 * 3 * se
    assert (u.mean(0).abs() < 5 * se).all()
    assert ((u.std(0) - 1).abs() < 5 * se).all()
    corr = torch.corrcoef(torch.cat([v[None], u.T, (u**2).T]))
    off_diag = corr - torch.diag(torch.diag(corr))
    assert off_diag.abs().max() < 6 * se
    # P(|v| < 3) = P(|N(0,1)| < 1)
    frac_inside = (v.abs() < 3).double().mean().item()
    assert abs(frac_inside - 0.682689) < 5 * math.sqrt(0.68 * 0.32 / n)


def test_funnel_sampler_seeding_float32_and_generator():
    f = NealFunnel(3)
    assert torch.equal(f.sample(10, generator=7), f.sample(10, generator=7))
    assert not torch.equal(f.sample(10, generator=7), f.sample(10, generator=8))
    s32 = f.sample(10, generator=7, dtype=torch.float32)
    assert s32.dtype == torch.float32
    gen = torch.Generator().manual_seed(0)
    a, b = f.sample(4, generator=gen), f.sample(4, generator=gen)
    assert not torch.equal(a, b)  # the generator is advanced, not re-seeded
    assert bool(torch.isfinite(f.log_prob(s32)).all()) and f.log_prob(s32).dtype == torch.float32


def test_energies_have_no_exact_sampler():
    with pytest.raises(NotImplementedError, match="'U1' has no exact sampler"):
        get_target("U1").sample(3)


# -- two moons ------------------------------------------------------------------------------------
def test_two_moons_shape_dtype_and_determinism():
    x = two_moons(301, generator=0)
    assert x.shape == (301, 2) and x.dtype == torch.get_default_dtype()
    assert torch.equal(x, two_moons(301, generator=0))
    assert torch.equal(x, two_moons(301, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(x, two_moons(301, generator=1))
    assert two_moons(10, generator=0, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("n", [1000, 1001])
def test_two_moons_balanced_and_noise_level(n):
    noise = 0.05
    x, y = two_moons(n, noise=noise, generator=5, return_labels=True, dtype=torch.float64)
    assert y.shape == (n,) and y.dtype == torch.int64
    assert int((y == 0).sum()) == n // 2 and int((y == 1).sum()) == n - n // 2
    # radial residual to each moon's circle ≈ the radial noise component, N(0, noise²) to first
    # order (curvature bias ~ noise²/2)
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.5]], dtype=torch.float64)[y]
    resid = (x - centers).norm(dim=-1) - 1.0
    assert abs(resid.std().item() - noise) < 0.15 * noise
    assert abs(resid.mean().item()) < 0.01
    # upper moon above, lower moon below on average; shuffled (labels not sorted)
    assert x[y == 0, 1].mean() > 0.5 > x[y == 1, 1].mean()
    assert not torch.equal(y, y.sort().values)


def test_two_moons_noiseless_points_lie_on_the_half_circles():
    x, y = two_moons(50, noise=0.0, generator=0, return_labels=True, dtype=torch.float64)
    upper, lower = x[y == 0], x[y == 1]
    torch.testing.assert_close(upper.norm(dim=-1), torch.ones(25, dtype=torch.float64))
    assert (upper[:, 1] >= -1e-12).all()
    shifted = lower - torch.tensor([1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(shifted.norm(dim=-1), torch.ones(25, dtype=torch.float64))
    assert (shifted[:, 1] <= 1e-12).all()


def test_two_moons_matches_sklearn_layout_when_available():
    datasets = pytest.importorskip("sklearn.datasets")
    for n in (10, 11):
        ref_x, ref_y = datasets.make_moons(n, shuffle=False, noise=0.0)
        x, y = two_moons(n, noise=0.0, shuffle=False, return_labels=True, dtype=torch.float64)
        np.testing.assert_allclose(x.numpy(), ref_x, atol=1e-12)
        np.testing.assert_array_equal(y.numpy(), ref_y)


# -- registry and bad input -----------------------------------------------------------------------
def test_registry():
    assert TARGET_NAMES == ("U1", "U2", "U3", "U4", "funnel")
    for name in TARGET_NAMES:
        t = get_target(name)
        assert isinstance(t, Target) and t.name == name
    assert isinstance(get_target("u2"), EnergyTarget) and get_target("FUNNEL", dim=4).dim == 4
    assert "U1" in repr(get_target("U1"))


@pytest.mark.parametrize("bad", ["banana", "", 3, None, "U5"])
def test_unknown_target_names_raise(bad):
    with pytest.raises(
        ValueError, match=r"name: expected one of \['U1', 'U2', 'U3', 'U4', 'funnel'\]"
    ):
        get_target(bad)


def test_two_moons_name_points_to_the_generator():
    with pytest.raises(ValueError, match="name: 'two_moons' is a data generator.*two_moons\\(n"):
        get_target("two_moons")


def test_bad_dims_raise():
    with pytest.raises(ValueError, match="dim: target 'U1' is 2-dimensional; expected 2, got 3"):
        get_target("U1", dim=3)
    with pytest.raises(ValueError, match="dim: expected an integer >= 2, got 1"):
        NealFunnel(1)
    with pytest.raises(ValueError, match="dim: expected an integer >= 2"):
        get_target("funnel", dim=2.5)
    with pytest.raises(ValueError, match="name: expected one of"):
        EnergyTarget("funnel")


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_bad_z_raises(name):
    target = get_target(name, dim=4 if name == "funnel" else None)
    d = target.dim
    with pytest.raises(
        ValueError,
        match=rf"z: expected a tensor of shape \(\.\.\., {d}\).*got shape \(5, {d + 1}\)",
    ):
        target.log_prob(torch.zeros(5, d + 1))
    with pytest.raises(ValueError, match="z: expected finite values"):
        target.log_prob(torch.full((d,), float("nan")))
    with pytest.raises(ValueError, match="z: expected a floating-point tensor"):
        target.log_prob(torch.zeros(d, dtype=torch.int64))
    with pytest.raises(ValueError, match="z: expected a torch.Tensor"):
        target.log_prob([0.0] * d)


def test_energy_functions_validate():
    with pytest.raises(ValueError, match=r"z: expected a tensor of shape \(\.\.\., 2\)"):
        energy_u3(torch.zeros(3))


def test_bad_sampling_and_quadrature_arguments_raise():
    with pytest.raises(ValueError, match="n: expected an integer >= 1, got 0"):
        NealFunnel().sample(0)
    with pytest.raises(
        ValueError, match="generator: expected a torch.Generator, an int seed or None"
    ):
        NealFunnel().sample(2, generator="seed")
    with pytest.raises(ValueError, match="dtype: expected a floating-point torch.dtype"):
        NealFunnel().sample(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="n: expected an integer >= 2, got 1"):
        two_moons(1)
    for bad in (-0.1, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="noise: expected a finite float >= 0"):
            two_moons(10, noise=bad)
    with pytest.raises(ValueError, match="step: expected a float in \\(0, 1\\], got 0"):
        quadrature_log_normalizer("U1", step=0)
    with pytest.raises(ValueError, match="box_scale: expected a float in \\[1, 10\\], got 0.5"):
        quadrature_log_normalizer("U1", box_scale=0.5)
    with pytest.raises(ValueError, match="name: expected one of"):
        quadrature_log_normalizer("funnel")


# -- Pyro wrapper ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TARGET_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pyro_model_log_joint_equals_target_log_prob(name, dtype):
    target = get_target(name)
    model = as_pyro_model(target, name="theta", dtype=dtype)
    assert model.target is target
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        z = torch.randn(target.dim, generator=gen, dtype=dtype)
        trace = pyro.poutine.trace(pyro.poutine.condition(model, {"theta": z})).get_trace()
        sites = [k for k, v in trace.nodes.items() if v["type"] == "sample"]
        assert sites == ["theta", "theta_log_density"]
        lp = trace.log_prob_sum()
        assert lp.dtype == dtype
        torch.testing.assert_close(lp, target.log_prob(z))


def test_pyro_model_runs_unconditioned_and_inside_svi():
    target = get_target("U2")
    model = as_pyro_model(target, dtype=torch.float64)
    # the placeholder prior can be sampled (needed by autoguide initialisation)
    z = pyro.poutine.trace(model).get_trace().nodes["z"]["value"]
    assert z.shape == (2,) and z.dtype == torch.float64
    # With a point-mass guide at z0 the ELBO loss is exactly -log p(z0) (log q = 0 for a Delta).
    z0 = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def guide():
        pyro.sample("z", dist.Delta(z0, event_dim=1))

    loss = Trace_ELBO().loss(model, guide)
    assert abs(loss + target.log_prob(z0).item()) < 1e-10
    guide_normal = pyro.infer.autoguide.AutoNormal(model)
    svi = pyro.infer.SVI(model, guide_normal, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert math.isfinite(svi.step())


def test_pyro_model_bad_arguments():
    with pytest.raises(ValueError, match="target: expected a pyro_nf.targets.Target, got str"):
        as_pyro_model("U1")
    with pytest.raises(ValueError, match="name: expected a non-empty string, got ''"):
        as_pyro_model(get_target("U1"), name="")


# -- device ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_is_preserved():
    for name in TARGET_NAMES:
        z = torch.randn(8, get_target(name).dim, device="cuda", dtype=torch.float64)
        assert get_target(name).log_prob(z).device == z.device
    assert NealFunnel(3).sample(4, generator=0, device="cuda").device.type == "cuda"
    assert two_moons(10, generator=0, device="cuda").device.type == "cuda"
    model = as_pyro_model(get_target("U1"), device="cuda", dtype=torch.float64)
    z = torch.zeros(2, device="cuda", dtype=torch.float64)
    trace = pyro.poutine.trace(pyro.poutine.condition(model, {"z": z})).get_trace()
    assert trace.log_prob_sum().device.type == "cuda"
