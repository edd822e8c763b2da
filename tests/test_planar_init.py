"""Tests for the planar layers' two starts, ``init="identity"`` and ``init="random"``."""

from __future__ import annotations

import pyro.distributions.transforms as T
import pytest
import torch

import pyro_nf
from pyro_nf.layers import PlanarLayer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_init_is_rezende_and_mohameds_map_at_the_drawn_values(dtype):
    """The random start is the map of Rezende & Mohamed's (and Pyro's) constraint at the drawn
    raw u, w, b, although pyro-nf's shifted constraint stores a different raw u. (Pyro's own
    Planar would start with bias 0; here it is set to the drawn offset.)"""
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
