"""Tests for :mod:`pyro_nf.density.population` and ``fit_reverse_kl(population=...)``: stacked members
are the flows they stand for (densities and gradients), halving keeps the better half, the best
member ends up in the flow, argument checks, and the U2 planar K=32 target."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from conftest import ShiftedNormal
from torch import nn

import pyro_nf
from pyro_nf.density.population import (
    ModulePopulation,
    StackedPopulation,
    halving_steps,
    make_population,
)
from pyro_nf.density.reverse_kl import fit_reverse_kl, kl_estimate
from pyro_nf.density.targets import get_target
from pyro_nf.flows.distribution import FlowDistribution
from pyro_nf.flows.flow import Flow
from pyro_nf.flows.layers import PermuteLayer, PlanarLayer, RadialLayer

FLOWS = {
    "planar": lambda: pyro_nf.planar(3, depth=3),
    "radial": lambda: pyro_nf.radial(3, depth=3),
    "planar, random start": lambda: pyro_nf.planar(3, depth=3, init="random"),
    "radial, random start": lambda: pyro_nf.radial(3, depth=3, init="random"),
    "planar, Pyro's start and coordinates": lambda: pyro_nf.planar(3, depth=3, init="pyro"),
    "planar, standard base": lambda: pyro_nf.planar(3, depth=2, base="standard"),
    "permutation first": lambda: Flow(3, [PermuteLayer(3), PlanarLayer(3, 2), RadialLayer(3, 2)]),
}


def perturbed(make):
    flow = make().double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("name", list(FLOWS))
def test_stacked_members_have_their_own_flows_densities_and_gradients(name):
    torch.manual_seed(0)
    flow = perturbed(FLOWS[name])
    pop = make_population(flow, 3)
    assert isinstance(pop, StackedPopulation)
    pop.keep([0, 2])
    z = torch.randn(6, 2, 3, dtype=torch.float64)
    log_q = FlowDistribution(pop, None, batch_shape=(2,)).log_prob(z)  # (6, 2)
    log_q.sum().backward()
    for col, member in enumerate(pop.active):
        alone = FLOWS[name]().double()
        pop.copy_member_into(member, alone)
        expected = alone().log_prob(z[:, col])
        torch.testing.assert_close(log_q[:, col], expected)
        expected.sum().backward()
        for layer, stacked in zip(alone.layers, pop.stacked, strict=True):
            if stacked.numel():
                torch.testing.assert_close(stacked.grad[member], layer.params.grad)
    for stacked in pop.stacked:
        if stacked.numel():
            assert torch.count_nonzero(stacked.grad[1]) == 0  # the dropped member gets nothing


def test_member_0_is_the_flow_and_the_others_are_fresh_starts():
    torch.manual_seed(0)
    flow = perturbed(FLOWS["planar"])
    before = [p.clone() for p in flow.parameters()]
    pop = make_population(flow, 3)
    for p, b in zip(flow.parameters(), before, strict=True):
        assert torch.equal(p, b)  # the flow is not modified
    for layer, stacked in zip(flow.layers, pop.stacked, strict=True):
        assert torch.equal(stacked[0], layer.params)
    planar_w = pop.stacked[1].detach().reshape(3, 3, 7)[:, :, 3:6]  # (member, layer, w)
    assert not torch.equal(planar_w[1], planar_w[2])  # fresh random hyperplanes
    fresh = FLOWS["planar"]().double()
    pop.copy_member_into(1, fresh)
    x = torch.randn(4, 3, dtype=torch.float64)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    torch.testing.assert_close(fresh().log_prob(x), standard)  # a fresh start: the identity


def test_draw_shapes_dtype_and_module_population_of_a_network_flow():
    torch.manual_seed(0)
    pop = make_population(pyro_nf.planar(2, depth=2).double(), 4)
    z, log_q = pop.draw(5)
    assert z.shape == (5, 4, 2) and log_q.shape == (5, 4) and z.dtype == torch.float64
    iaf = make_population(pyro_nf.iaf(2, depth=2, hidden=(8,)), 3)
    assert isinstance(iaf, ModulePopulation)
    iaf.keep([1])
    z, log_q = iaf.draw(7)
    assert z.shape == (7, 1, 2) and log_q.shape == (7, 1)
    torch.testing.assert_close(iaf.members[1]().log_prob(z[:, 0]), log_q[:, 0])


def test_halving_steps_and_keep_validation():
    assert halving_steps(100, 2) == [50]
    assert halving_steps(100, 3) == [25, 50]
    assert halving_steps(100, 5) == [16, 33, 50]
    with pytest.raises(ValueError, match="population: expected an integer >= 1, got 0"):
        halving_steps(100, 0)
    pop = make_population(pyro_nf.planar(2, depth=1), 3)
    pop.keep([0, 1])
    for bad in ([], [2], [0, 5]):
        with pytest.raises(ValueError, match=r"members: expected a non-empty subset of the active"):
            pop.keep(bad)


def test_population_halves_the_worse_starts_and_keeps_the_best():
    # a deep mode at 0 and a shallow one at 10: plain SGD from near 10 stays there
    def log_p(z):
        z = z[..., 0]
        return torch.logsumexp(torch.stack([-0.5 * z**2, -0.5 * (z - 10) ** 2 - 5.0]), 0)

    torch.manual_seed(0)
    ShiftedNormal.STARTS[:] = [10.0, 9.0, 0.5, 11.0]
    q = ShiftedNormal()
    h = fit_reverse_kl(
        q, log_p, steps=120, population=4, annealing=False, lr=0.05, optimizer="sgd",
        batch_size=64, progress=False,
    )  # fmt: skip
    (s1, first), (s2, second) = h.halvings
    assert (s1, s2) == (30, 60) and sorted(first) == [0, 1, 2, 3]
    assert min(first, key=first.__getitem__) == 2  # the start at 0.5
    assert 2 in second and len(second) == 2
    assert abs(q.loc.item()) < 0.1  # member 2 written back
    assert h.num_steps == 120 == len(h.smoothed) and all(math.isfinite(v) for v in h.losses)
    assert abs(h.losses[-1] + 0.5 * math.log(2 * math.pi) + 0.5) < 0.5  # its own loss, not a sum


def test_population_of_pyro_flows_writes_the_best_member_back():
    class PyroPlanar(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([T.Planar(2) for _ in range(2)])

        def forward(self):
            return dist.TransformedDistribution(
                dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1), list(self.layers)
            )

    torch.manual_seed(0)
    flow = PyroPlanar()
    before = [p.detach().clone() for p in flow.parameters()]
    h = fit_reverse_kl(
        flow, get_target("U1"), steps=60, population=3, batch_size=32, progress=False
    )
    assert [len(s) for _, s in h.halvings] == [3, 2]
    assert all(math.isfinite(v) for v in h.losses)
    assert not any(torch.equal(p, q) for p, q in zip(flow.parameters(), before, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"population": 0}, "population: expected an integer >= 1, got 0"),
        ({"population": 2, "restarts": 2}, "population: expected 1 when restarts > 1"),
        (
            {"population": 2, "checkpoint": "x.pt"},
            r"checkpoint: expected None with population > 1 \(the halving state is not "
            r"checkpointed\), got 'x.pt'",
        ),
        (
            {"population": 2, "early_stopping": True},
            "early_stopping: expected None with population > 1",
        ),
        ({"population": 2, "validate_fn": lambda: 0.0}, "validate_fn: expected None with"),
        ({"population": 2, "pilot_steps": 2}, "pilot_steps: expected None with population > 1"),
        ({"population": 8, "steps": 5}, r"steps: expected at least 6 steps .* population=8, got 5"),
    ],
)
def test_population_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kwargs = {"steps": 4, **kwargs}
        fit_reverse_kl(pyro_nf.planar(2, depth=1), get_target("U1"), progress=False, **kwargs)


def test_stacked_samples_carry_each_members_own_gradient():
    """The path training uses: reparameterized draws through the batched transforms."""
    torch.manual_seed(1)
    flow = perturbed(FLOWS["permutation first"])
    pop = make_population(flow, 3)
    torch.manual_seed(2)
    z, log_q = pop.draw(8)
    per_member = (log_q + (z**2).sum(-1)).mean(0)  # any loss of the draws
    per_member.sum().backward()
    for member in range(3):
        alone = FLOWS["permutation first"]().double()
        pop.copy_member_into(member, alone)
        torch.manual_seed(2)
        eps = torch.randn(8, 3, 3, dtype=torch.float64)[:, member]  # the member's noise
        x, log_det = eps, torch.zeros(8, dtype=torch.float64)
        for t in alone.build_transforms():
            x, ladj = t.forward_and_log_det(x)
            log_det = log_det + ladj
        lq = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum(-1).to(eps) - log_det
        torch.testing.assert_close(x, z[:, member].detach())
        (lq + (x**2).sum(-1)).mean().backward()
        for layer, stacked in zip(alone.layers, pop.stacked, strict=True):
            if stacked.numel():
                torch.testing.assert_close(stacked.grad[member], layer.params.grad)


def test_fit_writes_the_kept_member_into_a_pyro_nf_flow_and_reports_its_losses():
    log_p = lambda z: -0.5 * (((z - 1.5) / 0.7) ** 2).sum(-1)  # noqa: E731
    torch.manual_seed(0)
    flow = pyro_nf.planar(2, depth=2).double()
    h = fit_reverse_kl(flow, log_p, steps=200, population=4, batch_size=64, progress=False)
    kept = min(h.halvings[-1][1], key=h.halvings[-1][1].__getitem__)
    assert kept in h.halvings[0][1] and len(h.losses) == 200
    # the flow is the kept member: its own ELBO is close to the final losses it reports
    torch.manual_seed(1)
    z, log_q = flow().rsample_and_log_prob((20_000,))
    loss = float((log_q - log_p(z)).mean().detach())
    assert abs(loss - sum(h.losses[-50:]) / 50) < 0.05
    assert h.best_step is not None and math.isfinite(h.smoothed[h.best_step])


def test_a_member_with_a_non_finite_loss_is_dropped_with_a_warning():
    class Exploding(ShiftedNormal):
        """A member that starts at 50 returns NaN densities (a broken start)."""

        def forward(self):
            q = super().forward()
            if float(self.loc.detach()) > 40:
                return dist.Normal(self.loc * float("nan"), 1.0, validate_args=False).to_event(1)
            return q

    ShiftedNormal.STARTS[:] = [0.5, 50.0, 1.0, 2.0]
    q = Exploding()
    log_p = lambda z: -0.5 * (z**2).sum(-1)  # noqa: E731
    with pytest.warns(RuntimeWarning, match=r"population: members \[1\] had a non-finite loss"):
        h = fit_reverse_kl(
            q, log_p, steps=40, population=4, annealing=False, lr=0.05, progress=False
        )
    assert sorted(h.halvings[0][1]) == [0, 2, 3]  # member 1 was gone before the first halving
    assert math.isfinite(float(q.loc.detach())) and h.num_nan_restores == 0


def test_a_callback_stop_before_any_halving_keeps_the_best_of_all():
    ShiftedNormal.STARTS[:] = [3.0, 0.2, 2.0]
    q = ShiftedNormal()
    log_p = lambda z: -0.5 * (z**2).sum(-1)  # noqa: E731
    h = fit_reverse_kl(
        q, log_p, steps=100, population=3, annealing=False, lr=1e-3, optimizer="sgd",
        callback=lambda step, _: step >= 9, progress=False,
    )  # fmt: skip
    assert h.stop_reason == "callback" and h.halvings == [] and h.num_steps == 10
    assert abs(float(q.loc.detach()) - 0.2) < 0.05


@pytest.mark.slow
def test_u2_planar_32_population_reaches_kl_below_0_05():
    """The issue's U2 target (planar K=32, 10,000 steps: KL <= 0.05 nats) with random starts, 4
    side by side, batch 1024 per member. Over seeds 0-9 of benchmarks/results/energies.json this
    setting ends at 0.015-0.028 nats; seed 0 at 0.015."""
    target = get_target("U2")
    torch.manual_seed(0)
    flow = pyro_nf.planar(2, depth=32, init="random")
    torch.manual_seed(10_000)
    fit_reverse_kl(flow, target, steps=10_000, batch_size=1024, population=4, progress=False)
    torch.manual_seed(20_000)
    kl, se, _ = kl_estimate(flow, target, num_samples=100_000)
    assert kl <= 0.05, (kl, se)
