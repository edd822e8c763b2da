"""Tests for the planar layers' two starts (``init="identity"`` / ``"random"``) and the inverse
of the planar constraint, :func:`pyro_nf.transforms.planar_raw_u`."""

from __future__ import annotations

import pyro.distributions.transforms as T
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyro_nf
from pyro_nf.layers import PlanarLayer
from pyro_nf.transforms import planar_constraint, planar_raw_u


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 6), batch=st.integers(1, 5))
def test_planar_raw_u_inverts_the_constraint(seed, dim, batch):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    u = 3 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    u_hat, _, _ = planar_constraint(u, w)
    raw = planar_raw_u(u_hat, w)
    torch.testing.assert_close(planar_constraint(raw, w)[0], u_hat)
    torch.testing.assert_close(raw, u)  # the constraint is one-to-one


def test_planar_raw_u_rejects_a_non_invertible_map():
    w, u_hat = torch.tensor([1.0, 0.0]), torch.tensor([-1.5, 2.0])
    with pytest.raises(ValueError, match=r"u_hat: expected w \. u_hat > -1"):
        planar_raw_u(u_hat, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_init_is_the_map_pyro_starts_from(dtype):
    """Same raw draws, same map: pyro-nf's random start equals Pyro's Planar at those values
    (Rezende & Mohamed's constraint), though pyro-nf stores a different raw u."""
    depth, dim = 3, 2
    torch.manual_seed(5)
    layer = PlanarLayer(dim, depth=depth, init="random").to(dtype)
    torch.manual_seed(5)
    raw = torch.empty(depth, 2 * dim + 1).uniform_(-(dim**-0.5), dim**-0.5).to(dtype)
    z = torch.randn(20, dim, dtype=dtype)
    expected = z
    for k in range(depth):
        pyro_map = T.Planar(dim).to(dtype)
        with torch.no_grad():
            pyro_map.u.copy_(raw[k, :dim])
            pyro_map.w.copy_(raw[k, dim : 2 * dim])
            pyro_map.bias.copy_(raw[k, 2 * dim :])
        expected = pyro_map(expected)
    got, _ = layer.transform().forward_and_log_det(z)
    torch.testing.assert_close(got, expected.detach())


def test_inits_and_their_resets():
    x = torch.randn(6, 2)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    torch.manual_seed(0)
    torch.testing.assert_close(pyro_nf.planar(2, depth=4)().log_prob(x), standard)
    random = pyro_nf.planar(2, depth=4, init="random")
    before = random.layers[1].params.detach().clone()
    assert not torch.allclose(random().log_prob(x), standard)
    random.reset_parameters()
    after = random.layers[1].params.detach()
    assert not torch.equal(before, after)  # a fresh random draw, not back to the identity
    amortized = pyro_nf.planar(2, depth=2, context_dim=3, init="random")
    assert amortized(torch.randn(5, 3)).sample().shape == (5, 2)
    with pytest.raises(ValueError, match="init: expected 'identity' or 'random', got 'zeros'"):
        pyro_nf.planar(2, init="zeros")
