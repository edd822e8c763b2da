"""Rational-quadratic neural spline flows: the spline's own checks (knots, bounds, tails,
monotonicity, Pyro's math), the IAF orientation, and every front end taking the two families.
The generic property grid (log-det vs Jacobian, round trips, integration, save/load, extreme
inputs, float32, hypothesis shapes) runs them through ``tests/conftest.py``'s FAMILIES."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms.spline import _monotonic_rational_spline

import pyro_nf
from pyro_nf.flows import build_flow, flow_spec, get_family, spline_autoregressive, spline_coupling
from pyro_nf.flows.layers import SplineAutoregressiveLayer, SplineCouplingLayer
from pyro_nf.transforms.spline import (
    MIN_BIN_HEIGHT,
    MIN_BIN_WIDTH,
    _knots,
    rational_quadratic_spline,
    spline_parameters,
)
from pyro_nf.vae import make_posterior

DTYPES = [torch.float32, torch.float64]
BOUND = 3.0


def _params(shape, bins=6, scale=2.0, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    raw = scale * torch.randn(*shape, 3 * bins - 1, generator=gen, dtype=torch.float64)
    return [p.to(dtype) for p in spline_parameters(raw)]


def _randomize(flow, scale=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_exactly_on_knots_and_at_the_bound(dtype):
    w, h, d = _params((4,), dtype=dtype)
    xk, yk = _knots(w, BOUND), _knots(h, BOUND)  # (4, K + 1), every knot of every spline
    y, ladj = rational_quadratic_spline(xk.T, w, h, d, BOUND)  # knot j of each of the 4 splines
    assert torch.equal(y.T[:, [0, -1]], yk[:, [0, -1]])  # the end knots exactly: -B and B
    assert torch.allclose(y.T, yk, rtol=0, atol=4 * torch.finfo(dtype).eps * BOUND)
    # the log-derivative at knot k is log d_k; 1 at both ends (continuous with the tails)
    assert torch.allclose(ladj.T, d.log(), atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert torch.equal(ladj.T[:, [0, -1]], torch.zeros(4, 2, dtype=dtype))
    x_back, inv = rational_quadratic_spline(yk.T, w, h, d, BOUND, inverse=True)
    assert torch.allclose(x_back.T, xk, rtol=0, atol=8 * torch.finfo(dtype).eps * BOUND)
    assert torch.allclose(inv.T, -d.log(), atol=1e-4 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_next_to_knots_is_finite_with_finite_gradients(dtype):
    w, h, d = _params((3,), scale=6.0, dtype=dtype)  # very uneven bins and derivatives
    knots = _knots(w, BOUND)
    x = torch.stack([knots.nextafter(knots - 1), knots, knots.nextafter(knots + 1)], -1)
    x = x.reshape(3, -1).T.clone().requires_grad_(True)
    y, ladj = rational_quadratic_spline(x, w, h, d, BOUND)
    (y.sum() + ladj.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all() and torch.isfinite(x.grad).all()
    # monotone through the knots, even at ulp spacing
    assert (y.T.diff(dim=-1) >= 0).all()
    yk = _knots(h, BOUND).detach()
    y2 = torch.stack([yk.nextafter(yk - 1), yk, yk.nextafter(yk + 1)], -1).reshape(3, -1).T
    xb, inv = rational_quadratic_spline(y2, w, h, d, BOUND, inverse=True)
    assert torch.isfinite(xb).all() and torch.isfinite(inv).all()
    assert (xb >= -BOUND - 1).all() and (xb.T.diff(dim=-1) >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_tails_outside_the_bound(dtype):
    w, h, d = _params((2,), dtype=dtype)
    x = torch.tensor([[-1e30, -7.0], [-BOUND - 1e-3, BOUND + 1e-3], [9.0, 1e30]], dtype=dtype)
    x = x.requires_grad_(True)
    y, ladj = rational_quadratic_spline(x, w, h, d, BOUND)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros_like(ladj))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    xb, inv = rational_quadratic_spline(x.detach(), w, h, d, BOUND, inverse=True)
    assert torch.equal(xb, x.detach()) and torch.equal(inv, torch.zeros_like(inv))


def test_derivative_is_continuous_at_the_bound():
    w, h, d = _params((5,), scale=1.0)
    eps = 1e-9
    for edge in (-BOUND, BOUND):
        inside = torch.full((5,), edge - eps * (1 if edge > 0 else -1), dtype=torch.float64)
        _, ladj = rational_quadratic_spline(inside, w, h, d, BOUND)
        assert ladj.abs().max() < 1e-4  # derivative -> 1 as in the tail


@pytest.mark.parametrize("dtype", DTYPES)
def test_monotone_and_the_inverse_is_exact(dtype):
    # steep bins make the inverse ill-conditioned (error ~ ulp / f'): milder ones in float32
    w, h, d = _params((3,), scale=3.0 if dtype == torch.float64 else 1.5, dtype=dtype)
    x = torch.linspace(-BOUND - 1, BOUND + 1, 4001, dtype=dtype)[:, None].expand(-1, 3)
    x = x.clone().requires_grad_(True)
    y, ladj = rational_quadratic_spline(x, w, h, d, BOUND)
    steps = y.diff(dim=0)
    assert (steps > 0).all() if dtype == torch.float64 else (steps >= 0).all()
    # the log-derivative is the autograd derivative's log
    (grad,) = torch.autograd.grad(y.sum(), x)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert (grad >= 0).all() and torch.allclose(ladj, grad.log(), atol=tol)
    x, y, ladj = x.detach(), y.detach(), ladj.detach()
    xb, inv = rational_quadratic_spline(y, w, h, d, BOUND, inverse=True)
    assert torch.allclose(xb, x, atol=tol) and torch.allclose(inv, -ladj, atol=10 * tol)
    assert torch.equal(rational_quadratic_spline(x, w, h, d, BOUND)[0], y)


@pytest.mark.parametrize("inverse", [False, True])
def test_same_math_as_pyro_spline(inverse):
    bins = 7
    gen = torch.Generator().manual_seed(3)
    raw = 2.0 * torch.randn(4, 3 * bins - 1, generator=gen, dtype=torch.float64)
    w_logit, h_logit, d_raw = raw.split([bins, bins, bins - 1], dim=-1)
    widths, heights, derivatives = spline_parameters(raw)
    x = torch.cat([4.0 * torch.rand(50, 4, generator=gen, dtype=torch.float64) - 2.0,
                   torch.tensor([[-2.5, 2.5, 2.0, -2.0]], dtype=torch.float64)])  # fmt: skip
    ours, ours_ladj = rational_quadratic_spline(x, widths, heights, derivatives, 2.0, inverse)
    # Pyro: the same softmax fractions and min widths; interior derivatives given with
    # min_derivative=0, so that its boundary derivatives are exactly 1 as ours are
    theirs, theirs_ladj = _monotonic_rational_spline(
        x, torch.softmax(w_logit, -1).expand(51, 4, -1), torch.softmax(h_logit, -1).expand(51, 4, -1),
        derivatives[..., 1:-1].expand(51, 4, -1), inverse=inverse, bound=2.0,
        min_bin_width=MIN_BIN_WIDTH, min_bin_height=MIN_BIN_HEIGHT, min_derivative=0.0,
    )  # fmt: skip
    assert torch.allclose(ours, theirs, atol=1e-9)
    assert torch.allclose(ours_ladj, theirs_ladj, atol=1e-7)
    assert d_raw.shape[-1] == bins - 1


def test_zero_raw_outputs_are_the_identity_and_minimums_hold():
    w, h, d = spline_parameters(torch.zeros(3 * 5 - 1))
    x = torch.linspace(-6, 6, 101)
    y, ladj = rational_quadratic_spline(x, w, h, d, 5.0)
    assert torch.allclose(y, x, atol=1e-6) and ladj.abs().max() < 1e-6
    w, h, d = spline_parameters(torch.tensor([-1e4, 1e4, 0.0, 1e4, -1e4, 0.0, -1e4, 1e4]))
    assert w.min() >= MIN_BIN_WIDTH and h.min() >= MIN_BIN_HEIGHT and d.min() >= 1e-3
    assert torch.isfinite(rational_quadratic_spline(x, w, h, d, 5.0)[1]).all()
    with pytest.raises(ValueError, match="^raw: expected a last dimension 3K - 1"):
        spline_parameters(torch.zeros(4))


@pytest.mark.parametrize("context_dim", [None, 3])
def test_iaf_orientation_log_det_is_the_jacobian(context_dim):
    torch.manual_seed(0)
    flow = _randomize(spline_autoregressive(3, depth=2, context_dim=context_dim, bins=5,
                                            bound=2.0, hidden=(16,), invert=False)).double()  # fmt: skip
    ctx = None if context_dim is None else torch.randn(context_dim, dtype=torch.float64)
    chain = pyro_nf.transforms.ChainTransform(flow.build_transforms(ctx))
    for x in 1.5 * torch.randn(4, 3, dtype=torch.float64):
        jac = torch.autograd.functional.jacobian(lambda v: chain.forward_and_log_det(v)[0], x)
        _, ladj = chain.forward_and_log_det(x)
        assert torch.allclose(ladj, torch.linalg.slogdet(jac)[1], atol=1e-9)
        y = chain(x)
        x_back, inv = chain.inverse_and_log_det(y)  # D sequential passes per layer
        assert torch.allclose(x_back, x, atol=1e-10) and torch.allclose(inv, -ladj, atol=1e-9)


def test_coupling_inverse_is_one_pass():
    layer = _randomize(SplineCouplingLayer(4, parity=0, hidden=(8,), bins=4))
    calls = []
    layer.net.register_forward_hook(lambda *args: calls.append(1))
    t = layer.transform()
    y = t(torch.randn(5, 4))
    calls.clear()
    t.inv(y)
    assert len(calls) == 1


def test_autoregressive_layer_orientations_are_each_others_inverse():
    torch.manual_seed(1)
    a = _randomize(SplineAutoregressiveLayer(3, hidden=(16,), bins=4, invert=False))
    b = SplineAutoregressiveLayer(3, hidden=(16,), bins=4, invert=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(6, 3, dtype=torch.float32)
    y, ladj = a.transform().forward_and_log_det(x)
    xb, ladj_b = b.transform().forward_and_log_det(y)
    assert torch.allclose(xb, x, atol=1e-5) and torch.allclose(ladj_b, -ladj, atol=1e-4)


def test_bad_arguments_are_refused_naming_them():
    for kwargs, name in [({"bins": 0}, "bins"), ({"bound": -1.0}, "bound"),
                         ({"bound": float("nan")}, "bound"), ({"hidden": ()}, "hidden"),
                         ({"invert": "yes"}, "invert"), ({"permute": "sideways"}, "permute")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"^{name}: "):
            spline_autoregressive(2, **kwargs)
    with pytest.raises(ValueError, match="^dim: coupling flows need at least 2"):
        spline_coupling(1)
    with pytest.raises(ValueError, match="^bins: "):
        spline_coupling(2, bins=1.5)


@pytest.mark.parametrize("name", ["spline_autoregressive", "spline_coupling"])
def test_flowguide_takes_the_family(name):
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    guide = pyro_nf.FlowGuide(model, flow=name)
    guide()
    layers = [m for m in guide.modules() if isinstance(m, SplineAutoregressiveLayer)]
    assert all(not layer.invert for layer in layers)  # IAF orientation for guides
    assert len(layers) == (
        get_family(name).guide_depth_for(3) if name == "spline_autoregressive" else 0
    )
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    assert all(torch.isfinite(torch.tensor(svi.step())) for _ in range(3))


@pytest.mark.parametrize("name", ["spline_autoregressive", "spline_coupling"])
def test_density_estimator_fits_saves_and_loads(name, tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=gen) * torch.tensor([2.0, 0.5]) + 1.0
    est = pyro_nf.DensityEstimator(name, dim=2, depth=2, hidden=[16], standardize=True)
    before = float(est.log_prob(x).mean()) if hasattr(est, "flow") and est.flow else None
    est.fit(x, steps=60, batch_size=100, lr=1e-2, progress=False)
    after = float(est.log_prob(x).mean())
    assert before is None or after > before
    est.save(tmp_path / "est.pt")
    loaded = pyro_nf.DensityEstimator.load(tmp_path / "est.pt")
    assert torch.allclose(loaded.log_prob(x), est.log_prob(x))
    assert flow_spec(loaded.flow)["name"] == name


@pytest.mark.parametrize("name", ["spline_autoregressive", "spline_coupling"])
def test_vae_encoder_takes_the_family(name):
    post = make_posterior(name, 2, context_dim=5)
    q = post(torch.randn(7, 5))
    z, log_q = q.rsample_and_log_prob()
    assert z.shape == (7, 2) and torch.allclose(q.log_prob(z.detach()), log_q, atol=1e-4)


def test_spec_round_trip_and_depth_defaults():
    flow = build_flow("spline_coupling", dim=3, depth=2, bins=5, bound=4.0)
    assert flow_spec(flow)["kwargs"] == {"dim": 3, "depth": 2, "bins": 5, "bound": 4.0}
    layer = flow.layers[-1]
    assert (layer.bins, layer.bound) == (5, 4.0)
    assert get_family("spline_coupling").min_dim == 2
    assert get_family("spline_autoregressive", use="vae").vae_kwargs(3) == {"invert": False}


def test_coupling_transform_checks_its_partition():
    from pyro_nf.transforms import SplineCouplingTransform

    net = torch.nn.Linear(1, 3 * 4 - 1)
    with pytest.raises(ValueError, match="^cond, free: expected a partition of 0..1"):
        SplineCouplingTransform(net, torch.tensor([0]), torch.tensor([0]))
