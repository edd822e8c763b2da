"""Bad input, extreme values, float32, GPU, property-based shapes, and the planar inverse's gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, make_context, make_flow
from hypothesis import given, settings
from hypothesis import strategies as st

import pyro_nf
from pyro_nf.transforms import (
    PlanarInverseError,
    PlanarTransform,
    RadialTransform,
    planar_constraint,
)
from pyro_nf.transforms.planar import _implicit_root, _solve_root

# -- bad input ------------------------------------------------------------------------------------


def test_wrong_event_dim_names_the_argument():
    q = pyro_nf.planar(3)()
    with pytest.raises(
        ValueError, match=r"value: expected a tensor of shape \(\.\.\., 3\).*got shape \(4, 2\)"
    ):
        q.log_prob(torch.zeros(4, 2))


def test_non_finite_value_is_rejected():
    q = pyro_nf.radial(2)()
    with pytest.raises(ValueError, match="value: expected finite values, got 1 non-finite"):
        q.log_prob(torch.tensor([[0.0, float("nan")]]))


def test_missing_unexpected_and_wrong_context():
    amortized = pyro_nf.iaf(2, context_dim=5)
    direct = pyro_nf.iaf(2)
    with pytest.raises(
        ValueError, match=r"context: this flow is amortized \(context_dim=5\).*got None"
    ):
        amortized()
    with pytest.raises(
        ValueError, match=r"context: this flow is directly parameterized.*got \(3, 5\)"
    ):
        direct(torch.zeros(3, 5))
    with pytest.raises(
        ValueError, match=r"context: expected a tensor of shape \(\.\.\., 5\).*got shape \(3, 4\)"
    ):
        amortized(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="context: expected finite values"):
        amortized(torch.full((3, 5), float("inf")))


@pytest.mark.parametrize("builder", [pyro_nf.planar, pyro_nf.radial, pyro_nf.iaf, pyro_nf.maf])
@pytest.mark.parametrize("depth", [0, -1, 2.5])
def test_depth_must_be_a_positive_integer(builder, depth):
    with pytest.raises(ValueError, match=f"depth: expected an integer >= 1, got {depth}"):
        builder(2, depth=depth)


def test_bad_dim_and_base():
    with pytest.raises(ValueError, match="dim: expected an integer >= 1, got 0"):
        pyro_nf.planar(0)
    with pytest.raises(ValueError, match="base: expected 'diagonal' or 'standard', got 'gauss'"):
        pyro_nf.planar(2, base="gauss")
    with pytest.raises(ValueError, match="same dim"):
        pyro_nf.stack(pyro_nf.planar(2), pyro_nf.planar(3))


# -- extremes -------------------------------------------------------------------------------------


def test_planar_constraint_holds_under_adversarial_parameters():
    D = 4
    cases = [
        (torch.full((D,), -1e6), torch.full((D,), 1e-3)),  # wᵀu → -∞
        (torch.full((D,), 1e6), torch.full((D,), 1e3)),  # wᵀu → +∞
        (torch.randn(D) * 1e3, torch.full((D,), 1e-150)),  # tiny w
        (torch.randn(D), torch.zeros(D)),  # w = 0
        (-torch.ones(D), torch.ones(D) / D),  # wᵀu = -1 exactly
    ]
    for u, w in cases:
        u, w = u.double(), w.double()
        u_hat, m, one_plus_m = planar_constraint(u, w)
        assert bool(torch.isfinite(u_hat).all()) and bool(torch.isfinite(m))
        assert float(m) > -1 and float(one_plus_m) > 0
        if float((w * w).sum()) > 1e-200:
            # the realised wᵀû equals the closed form (relative to the size of the terms)
            realised = (w * u_hat).sum()
            assert abs(float(realised - m)) <= 1e-6 * (1 + float((w.abs() * u_hat.abs()).sum()))
        t = PlanarTransform(u[None], w[None], torch.zeros(1, dtype=torch.float64))
        y, ladj = t.forward_and_log_det(torch.randn(10, D, dtype=torch.float64))
        assert bool(torch.isfinite(ladj).all()) and bool(torch.isfinite(y).all())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_no_nan_or_inf_at_large_inputs(name):
    flow = make_flow(name, 3, amortized=False)
    q = flow()
    for scale in (1e3, -1e3):
        x = torch.full((5, 3), scale, dtype=torch.float64) * torch.tensor(
            [1.0, -0.5, 0.25], dtype=torch.float64
        )
        lp = q.log_prob(x)
        assert bool(torch.isfinite(lp).all()), f"{name}: log_prob not finite at |z| = 1e3"
        chain = flow.build_transforms()
        y = x
        for t in chain:
            y, ladj = t.forward_and_log_det(y)
            assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(ladj).all())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_no_nan_or_inf_with_extreme_parameters(name):
    flow = make_flow(name, 3, amortized=False, scale=30.0)
    q = flow()
    z, lp = q.rsample_and_log_prob((50,))
    assert bool(torch.isfinite(z).all()) and bool(torch.isfinite(lp).all())
    (lp.sum() + z.sum()).backward()  # z too: NICE's log q does not depend on its networks
    for pname, p in flow.named_parameters():
        assert bool(torch.isfinite(p.grad).all()), f"{name}: non-finite gradient in {pname}"


def test_radial_at_its_centre_and_at_the_invertibility_boundary():
    z0 = torch.zeros(1, 2, dtype=torch.float64)
    # β' → -∞ gives β → -α: the map collapses space onto the centre, but stays finite
    t = RadialTransform(
        z0, torch.zeros(1, dtype=torch.float64), torch.full((1,), -40.0, dtype=torch.float64)
    )
    x = torch.tensor([[0.0, 0.0], [1e-3, 0.0], [5.0, -5.0]], dtype=torch.float64)
    y, ladj = t.forward_and_log_det(x)
    assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(ladj).all())
    x_back, _ = t.inverse_and_log_det(y)
    assert torch.allclose(x_back[2], x[2], atol=1e-8)


def test_planar_inverse_reports_non_convergence():
    u = torch.randn(1, 2, dtype=torch.float64)
    w = torch.randn(1, 2, dtype=torch.float64)
    t = PlanarTransform(u, w, torch.zeros(1, dtype=torch.float64), max_iter=1)
    with pytest.raises(PlanarInverseError, match="did not converge"):
        t.inverse_and_log_det(torch.randn(50, 2, dtype=torch.float64) * 5)


def test_planar_root_finder_does_not_cycle_between_the_saturated_sides():
    """Regression: plain Newton on ``s + m tanh(s) = c`` with m ≈ 10, c ≈ -8.6 jumps between
    s ≈ 1.4 and s ≈ -4.3 for 200 iterations (seen in float32 during a reverse-KL fit)."""
    c = torch.tensor([-8.5714750289917, 105.0, 0.3])
    m = torch.tensor([9.967839241027832, 9.967839241027832, 9.967839241027832])
    s = _solve_root(c, m, rtol=1e-6, max_iter=200)
    assert (s + m * torch.tanh(s) - c).abs().max() < 1e-4


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    broadcast=st.booleans(),
)
def test_planar_root_finder_converges_property(seed, dtype, broadcast):
    """Any invertible layer (1 + m from 1e-3 to e^5) and any c (|c| from e^-6 to e^6), a batch
    at a time: every root within 30 iterations, to about machine precision."""
    g = torch.Generator().manual_seed(seed)
    n = 2000

    def log_uniform(lo, hi, size):
        return torch.empty(size, dtype=torch.float64).uniform_(lo, hi, generator=g).exp()

    m_shape = (n // 40, 1) if broadcast else (n // 40, 40)
    m = (log_uniform(-7.0, 5.0, m_shape) - 1).to(dtype)
    sign = torch.randint(0, 2, (n // 40, 40), generator=g).double() * 2 - 1
    c = (sign * log_uniform(-6.0, 6.0, (n // 40, 40))).to(dtype)
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    s = _solve_root(c, m, rtol=rtol, max_iter=30)
    assert s.shape == c.shape and s.dtype == dtype
    s64, m64, c64 = s.double(), m.double(), c.double()
    residual = (s64 + m64 * torch.tanh(s64) - c64).abs()
    scale = 1 + c64.abs() + m64.abs()
    assert float((residual / scale).max()) <= 4 * torch.finfo(dtype).eps


def test_planar_root_finder_rejects_non_finite_input():
    with pytest.raises(PlanarInverseError, match="non-finite input"):
        _solve_root(torch.tensor([0.0, float("nan")]), torch.tensor([0.5, 0.5]), 1e-6, 50)


# -- gradients of the numerical inverse ------------------------------------------------------------


def test_planar_inverse_gradients_by_implicit_differentiation():
    torch.manual_seed(0)
    c = torch.randn(6, dtype=torch.float64, requires_grad=True)
    m = (torch.rand(6, dtype=torch.float64) * 3 - 0.9).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, m: _implicit_root(c, m, 1e-13, 200), (c, m))

    u = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def inverse(u, w, b, y):
        x, ladj = PlanarTransform(u, w, b).inverse_and_log_det(y)
        return x, ladj

    assert torch.autograd.gradcheck(inverse, (u, w, b, y))


# -- float32, GPU, properties -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_float32_smoke(name, amortized):
    flow = make_flow(name, 3, amortized, dtype=torch.float32)
    context = make_context((4,), amortized, dtype=torch.float32)
    q = flow(context)
    z, lp = q.rsample_and_log_prob((2,))
    assert z.dtype == lp.dtype == torch.float32
    assert torch.allclose(q.log_prob(z.detach().clone()), lp, atol=1e-3, rtol=1e-4)
    lp.sum().backward()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gpu(name, amortized):
    flow = make_flow(name, 3, amortized).cuda()
    context = make_context((4,), amortized)
    context = context.cuda() if context is not None else None
    q = flow(context)
    z, lp = q.rsample_and_log_prob((2,))
    assert z.is_cuda and lp.is_cuda
    assert torch.allclose(q.log_prob(z.detach().clone()), lp, atol=1e-6)
    lp.sum().backward()
    assert all(p.grad.is_cuda for p in flow.parameters())


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(FAMILIES)),
    dim=st.integers(1, 5),
    batch=st.lists(st.integers(1, 3), max_size=2),
    sample=st.lists(st.integers(1, 3), max_size=2),
    amortized=st.booleans(),
    scale=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_shapes_and_round_trips_property(name, dim, batch, sample, amortized, scale, seed):
    flow = make_flow(name, dim, amortized, seed=seed, scale=scale)
    context = make_context(tuple(batch), amortized, seed=seed)
    q = flow(context) if amortized else flow().expand(tuple(batch))
    z, lp = q.rsample_and_log_prob(tuple(sample))
    assert z.shape == (*sample, *batch, flow.dim) and lp.shape == (*sample, *batch)
    assert bool(torch.isfinite(lp).all())
    assert torch.allclose(q.log_prob(z.detach().clone()), lp, atol=1e-6)


@pytest.mark.parametrize("param_batch", [(), (4,)], ids=["direct", "amortized"])
@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_fused_chain_backward_passes_gradcheck(kind, param_batch):
    """Planar and radial stacks run in one autograd node with a hand-written backward."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    K, D = 3, 2
    x = rand(5, 4, D)
    if kind == "planar":
        params = (rand(*param_batch, K, D), rand(*param_batch, K, D), rand(*param_batch, K))

        def fn(x, u, w, b):
            return PlanarTransform(u, w, b).forward_and_log_det(x)
    else:
        params = (rand(*param_batch, K, D), rand(*param_batch, K), rand(*param_batch, K))

        def fn(x, z0, a, b):
            return RadialTransform(z0, a, b).forward_and_log_det(x)

    assert torch.autograd.gradcheck(fn, (x, *params))
