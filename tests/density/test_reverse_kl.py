"""Tests for :mod:`pyro_nf.reverse_kl`: reverse-KL fits, the three kinds of target, annealing,
Monte-Carlo KL estimates and argument checks; and the Rezende & Mohamed U1 target (planar K=32,
KL <= 0.02 nats)."""

from __future__ import annotations

import copy
import functools
import math

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
import torch.nn.functional as F
from conftest import FixedNormal, ShiftedNormal
from torch import nn

import pyro_nf
from pyro_nf.density.reverse_kl import (
    MCEstimate,
    annealing_beta,
    as_log_density,
    elbo_estimate,
    fit_reverse_kl,
    kl_estimate,
)
from pyro_nf.density.targets import as_pyro_model, get_target

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(loc: torch.Tensor, scale: torch.Tensor):
    """Unnormalized N(loc, diag(scale²)); log Z = sum(log scale) + D/2 log 2 pi."""
    log_z = float(scale.log().sum()) + 0.5 * loc.numel() * LOG_2PI
    return (lambda z: -0.5 * (((z - loc) / scale) ** 2).sum(-1)), log_z


# -- fitting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diagonal_flow_recovers_gaussian_target(dtype):
    torch.manual_seed(0)
    loc = torch.tensor([1.5, -2.0], dtype=dtype)
    scale = torch.tensor([0.5, 2.0], dtype=dtype)
    log_p, log_z = gaussian_log_density(loc, scale)
    flow = pyro_nf.Flow(2, [pyro_nf.DiagonalAffineLayer(2)]).to(dtype)
    history = fit_reverse_kl(flow, log_p, steps=600, lr=0.05, annealing=100, progress=False)
    assert history.num_steps == 600 and history.stop_reason == "max_steps"
    kl, se, n = kl_estimate(flow, log_p, log_normalizer=log_z, num_samples=20_000)
    assert n == 20_000 and kl < 5e-3 and se < 2e-3
    layer = flow.layers[0]
    fitted_loc, raw = layer.params.detach().split(2)
    torch.testing.assert_close(fitted_loc, loc, atol=0.03, rtol=0)
    torch.testing.assert_close(F.softplus(raw), scale, atol=0.03, rtol=0.02)
    assert layer.params.dtype == dtype
    # the loss is a negative ELBO once beta = 1: it tends to -log Z
    assert abs(sum(history.losses[-100:]) / 100 + log_z) < 0.02


def test_estimates_are_exact_when_q_equals_p():
    flow = pyro_nf.planar(2, depth=3).double()  # the identity after N(0, I): q = N(0, I)
    log_p, log_z = gaussian_log_density(torch.zeros(2).double(), torch.ones(2).double())
    est = elbo_estimate(flow, log_p, num_samples=1000, chunk_size=300)
    assert isinstance(est, MCEstimate) and est.num_samples == 1000
    assert abs(est.value - log_z) < 1e-9 and est.se < 1e-9
    kl = kl_estimate(flow, log_p, log_normalizer=log_z, num_samples=1000)
    assert abs(kl.value) < 1e-9 and kl.se < 1e-9


def test_kl_estimate_standard_error_matches_spread():
    torch.manual_seed(0)
    flow = pyro_nf.planar(2, depth=2).double()
    target = get_target("U2")
    values = [kl_estimate(flow, target, num_samples=4000).value for _ in range(12)]
    se = kl_estimate(flow, target, num_samples=4000).se
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    assert 0.5 * se < spread < 2.0 * se


# -- three kinds of target -----------------------------------------------------------------------


def test_callable_target_and_model_give_identical_log_density_and_fits():
    target = get_target("U2")
    model = as_pyro_model(target, dtype=torch.float64)
    z = torch.randn(7, 3, 2, dtype=torch.float64)
    log_p_target, dim_target = as_log_density(target)
    log_p_model, dim_model = as_log_density(model)
    log_p_call, dim_call = as_log_density(target.log_prob)
    assert (dim_target, dim_model, dim_call) == (2, 2, None)
    reference = target.log_prob(z)
    for fn in (log_p_target, log_p_model, log_p_call):
        assert torch.equal(fn(z), reference)
    assert torch.equal(log_p_model(z[0, 0]), reference[0, 0])  # unbatched z

    torch.manual_seed(0)
    template = pyro_nf.planar(2, depth=4).double()
    fitted = []
    for tgt in (target, target.log_prob, model):
        flow = copy.deepcopy(template)
        torch.manual_seed(1)
        history = fit_reverse_kl(flow, tgt, steps=40, batch_size=32, annealing=20, progress=False)
        fitted.append((torch.cat([p.detach().ravel() for p in flow.parameters()]), history))
    for params, history in fitted[1:]:
        assert torch.equal(params, fitted[0][0])
        assert history.losses == fitted[0][1].losses


def test_model_with_plates_and_observed_data():
    """log p(w) + sum_i log p(y_i | x_i, w) for a Bayesian linear regression, batched over w."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(10, generator=gen, dtype=torch.float64)

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(3).double(), 1.0).to_event(1))
        with pyro.plate("data", len(y)):
            # w has shape (3,), or (N, 1, 3) under a particle plate (Pyro's vectorization rule)
            pyro.sample("y", dist.Normal((x * w).sum(-1), 0.5), obs=y)

    log_p, dim = as_log_density(functools.partial(model, x, y), dim=3)
    w = torch.randn(4, 5, 3, dtype=torch.float64)
    expected = dist.Normal(0.0, 1.0).log_prob(w).sum(-1) + dist.Normal(
        (x * w.unsqueeze(-2)).sum(-1), 0.5
    ).log_prob(y).sum(-1)
    assert dim == 3
    torch.testing.assert_close(log_p(w), expected)


def test_fits_a_pyro_transformed_distribution():
    """Any module returning a reparameterizable distribution can be fitted (Pyro's flows)."""

    class PyroPlanar(nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(2))
            self.transforms = nn.ModuleList([T.Planar(2) for _ in range(2)])

        def forward(self):
            base = dist.Normal(self.loc, torch.ones(2)).to_event(1)
            return dist.TransformedDistribution(base, list(self.transforms))

    torch.manual_seed(0)
    module = PyroPlanar()
    log_p, log_z = gaussian_log_density(torch.tensor([1.0, -1.0]), torch.ones(2))
    fit_reverse_kl(module, log_p, steps=300, lr=0.05, annealing=False, progress=False)
    kl, se, _ = kl_estimate(module, log_p, log_normalizer=log_z, num_samples=5000)
    assert kl < 0.02 and se < 0.01


# -- annealing ---------------------------------------------------------------------------------


def test_annealing_beta_values():
    assert annealing_beta(0, 100) == pytest.approx(0.01)
    assert annealing_beta(50, 100) == pytest.approx(0.51)
    assert annealing_beta(98, 100) == pytest.approx(0.99)
    assert annealing_beta(99, 100) == 1.0 == annealing_beta(10**6, 100)
    assert annealing_beta(0, 10, beta0=0.5) == 0.5 and annealing_beta(5, 10, beta0=0.5) == 1.0
    assert annealing_beta(0, 1) == pytest.approx(0.01) and annealing_beta(1, 1) == 1.0


def _observed_betas(annealing, steps: int) -> list[float]:
    """beta_t read off the losses: log p = C (huge, zero gradient), so loss ≈ -beta_t C."""
    big = 1e6
    flow = pyro_nf.planar(2, depth=1).double()
    history = fit_reverse_kl(
        flow,
        lambda z: big + 0.0 * z.sum(-1),
        steps=steps,
        batch_size=8,
        lr=1e-12,
        annealing=annealing,
        progress=False,
    )
    return [-loss / big for loss in history.losses]


@pytest.mark.parametrize(
    ("annealing", "expected"),
    [
        (True, lambda t: min(1.0, 0.01 + t / 20)),  # T_anneal = steps // 10
        (50, lambda t: min(1.0, 0.01 + t / 50)),
        (False, lambda t: 1.0),
        (None, lambda t: 1.0),
        (lambda t: 0.5 if t < 100 else 1.0, lambda t: 0.5 if t < 100 else 1.0),
    ],
    ids=["default", "int", "off", "none", "callable"],
)
def test_annealing_schedule_in_fit(annealing, expected):
    betas = _observed_betas(annealing, steps=200)
    assert len(betas) == 200
    for t, beta in enumerate(betas):
        assert beta == pytest.approx(expected(t), abs=1e-4), t


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps: expected an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size: expected an integer >= 1, got 2.5"),
        ({"lr": -1.0}, "lr: expected a positive finite float, got -1.0"),
        ({"lr": float("nan")}, "lr: expected a positive finite float"),
        ({"annealing": 0}, "annealing: expected True"),
        ({"annealing": "linear"}, "annealing: expected True"),
        ({"beta0": 0.0}, r"beta0: expected a float in \(0, 1\], got 0.0"),
        ({"beta0": 1.5}, r"beta0: expected a float in \(0, 1\], got 1.5"),
        ({"params": []}, "params: fit_reverse_kl builds it itself"),
        ({"lr_schedule": "bogus"}, "lr_schedule: expected None"),
        ({"restarts": 0}, "restarts: expected an integer >= 1, got 0"),
        ({"restarts": 2, "steps": 10, "pilot_steps": 11}, "pilot_steps: expected at most"),
        ({"restarts": 2, "pilot_steps": 0}, "pilot_steps: expected an integer >= 1, got 0"),
    ],
)
def test_fit_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_reverse_kl(pyro_nf.planar(2, depth=1), get_target("U1"), progress=False, **kwargs)


def test_flow_and_target_validation():
    target = get_target("U1")
    with pytest.raises(ValueError, match="flow: expected a pyro_nf.Flow or an nn.Module"):
        fit_reverse_kl(lambda: None, target, steps=1)
    with pytest.raises(ValueError, match="flow: expected a directly parameterized flow"):
        fit_reverse_kl(pyro_nf.planar(2, context_dim=3), target, steps=1)
    with pytest.raises(ValueError, match="target: expected a callable log density"):
        fit_reverse_kl(pyro_nf.planar(2), 3.0, steps=1)
    with pytest.raises(ValueError, match="target: expected a target of dimension 3"):
        fit_reverse_kl(pyro_nf.planar(3), target, steps=1)
    with pytest.raises(ValueError, match="target: expected a latent site of size 3"):
        fit_reverse_kl(pyro_nf.planar(3), as_pyro_model(target), steps=1)
    with pytest.raises(ValueError, match=r"target: expected log densities of shape \(4,\)"):
        fit_reverse_kl(pyro_nf.planar(2), lambda z: z, steps=1, batch_size=4, progress=False)

    def two_latents():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"exactly one latent sample site, got 2: \['a', 'b'\]"):
        as_log_density(two_latents)

    def scalar_latent():
        pyro.sample("a", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="expected the latent site 'a' to be one vector"):
        as_log_density(scalar_latent)

    def broken():
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match="RuntimeError: boom"):
        as_log_density(broken)


def test_estimate_validation():
    flow = pyro_nf.planar(2, depth=1)
    with pytest.raises(ValueError, match="log_normalizer: expected a finite float"):
        kl_estimate(flow, lambda z: -(z**2).sum(-1))
    with pytest.raises(ValueError, match="log_normalizer: expected a finite float, got nan"):
        kl_estimate(flow, get_target("U1"), log_normalizer=float("nan"))
    with pytest.raises(ValueError, match="num_samples: expected an integer >= 2, got 1"):
        elbo_estimate(flow, get_target("U1"), num_samples=1)
    with pytest.raises(ValueError, match="chunk_size: expected an integer >= 1, got 0"):
        elbo_estimate(flow, get_target("U1"), chunk_size=0)
    # the log normalizer of a model made by as_pyro_model is found through model.target
    est = kl_estimate(flow, as_pyro_model(get_target("U3")), num_samples=100)
    assert math.isfinite(est.value) and est.value > 0


# -- restarts ------------------------------------------------------------------------------------


def test_restarts_keep_the_best_pilot_and_continue_it():
    # a target with a deep mode at 0 and a shallow one at 10: plain SGD steps from 10 stay there
    def log_p(z):
        z = z[..., 0]
        return torch.logsumexp(torch.stack([-0.5 * z**2, -0.5 * (z - 10) ** 2 - 5.0]), 0)

    torch.manual_seed(0)
    ShiftedNormal.STARTS[:] = [10.0, 0.5, 9.0]
    q = ShiftedNormal()
    h = fit_reverse_kl(
        q, log_p, steps=120, restarts=3, pilot_steps=40, annealing=False, lr=0.05,
        optimizer="sgd", progress=False,
    )  # fmt: skip
    assert q.resets == 2 and len(h.pilot_losses) == 3
    assert min(range(3), key=h.pilot_losses.__getitem__) == 1  # the start at 0.5
    assert h.pilot_losses[1] < h.pilot_losses[0] - 3 and h.pilot_losses[1] < h.pilot_losses[2] - 3
    assert h.num_steps == 120  # the kept pilot's 40 steps and its continuation
    assert abs(q.loc.item()) < 0.1


def test_restarts_run_is_reproducible_and_checkpoints_the_kept_start(tmp_path):
    def run(path=None):
        torch.manual_seed(3)
        flow = pyro_nf.planar(2, depth=4)
        h = fit_reverse_kl(
            flow, get_target("U1"), steps=150, batch_size=64, restarts=3, pilot_steps=50,
            checkpoint=path, progress=False,
        )  # fmt: skip
        return flow, h

    flow_a, h_a = run()
    flow_b, h_b = run(tmp_path / "fit.pt")
    for p, q in zip(flow_a.parameters(), flow_b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert h_a.losses == h_b.losses and h_a.pilot_losses == h_b.pilot_losses
    assert torch.load(tmp_path / "fit.pt", weights_only=True)["step"] == 150
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.pt"]


@pytest.mark.parametrize(
    ("starts", "name"), [({"restarts": 2}, "restarts"), ({"population": 2}, "populations")]
)
def test_several_starts_need_a_fresh_optimizer_and_a_resettable_flow(starts, name):
    flow = pyro_nf.planar(2, depth=2)
    opt = torch.optim.Adam(flow.parameters())
    with pytest.raises(ValueError, match=f"optimizer: {name} need a fresh optimizer"):
        fit_reverse_kl(flow, get_target("U1"), steps=4, optimizer=opt, **starts)
    with pytest.raises(ValueError, match="flow: expected a module with fresh initial parameters"):
        fit_reverse_kl(FixedNormal(), get_target("U1"), steps=4, progress=False, **starts)


def test_restart_of_a_wrapped_pyro_nf_flow_is_a_fresh_identity_start():
    """A module without reset_parameters() of its own is reset through its top-most resettable
    submodules only: resetting the MADE's linear layers again after the flow's own reset would
    undo the zeroed output layer that makes a fresh IAF the identity."""
    from pyro_nf.density.population import reset_flow

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.flow = pyro_nf.iaf(2, depth=2, hidden=(8,))

        def forward(self):
            return self.flow()

    torch.manual_seed(0)
    q = Wrapped()
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.3 * torch.randn_like(p))
    reset_flow(q)
    x = torch.randn(5, 2)
    base = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    assert torch.allclose(q().log_prob(x), base, atol=1e-6)


@pytest.mark.slow
def test_restarts_rescue_a_start_that_collapses_on_u2():
    """Planar K=8 on U2 from seed 1 collapses to a straight band (KL about 1.57 nats, also with
    other sampling noise); four starts with 2000-step pilots find a start that follows the sine."""
    target = get_target("U2")
    torch.manual_seed(1)
    flow = pyro_nf.planar(2, depth=8)
    h = fit_reverse_kl(flow, target, steps=10_000, restarts=4, progress=False)
    assert max(h.pilot_losses) - min(h.pilot_losses) > 0.5  # a collapsed pilot was seen
    torch.manual_seed(0)
    kl, se, _ = kl_estimate(flow, target, num_samples=50_000)
    assert kl < 1.0, (kl, se)


# -- the Rezende & Mohamed target ----------------------------------------------------------------


@pytest.mark.slow
def test_u1_planar_32_reaches_kl_below_0_02():
    """The issue's target (planar K=32 on U1: KL <= 0.02 nats), here at a reduced budget of
    2,000 steps (batch 256, Adam lr 1e-2, annealing over 200 steps, cosine learning rate)."""
    torch.manual_seed(0)
    flow = pyro_nf.planar(2, depth=32)
    target = get_target("U1")
    fit_reverse_kl(flow, target, steps=2000, progress=False)
    kl, se, _ = kl_estimate(flow, target, num_samples=200_000)
    assert se < 0.002  # so that the tolerance means something
    assert kl <= 0.02, (kl, se)
