"""The one flow-family registry: one entry makes a family usable by guides, VAE encoders, density
fits and saved estimators, with the per-use default depths beside it."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_nf
from pyro_nf.flows import (
    build_flow,
    family_names,
    flow_spec,
    get_family,
    register_family,
    unregister_family,
)
from pyro_nf.flows.distribution import FlowDistribution, FlowLike
from pyro_nf.flows.registry import IAF_TWO_LAYER_MAX_DIM
from pyro_nf.vae import make_posterior


def _counting_builder(calls: list):
    def build(dim, depth=3, context_dim=None, base="diagonal", **kwargs):
        calls.append({"dim": dim, "depth": depth, "context_dim": context_dim, **kwargs})
        return pyro_nf.planar(dim, depth, context_dim=context_dim, base=base)

    return build


@pytest.fixture
def new_family():
    calls: list = []
    register_family("test_family", _counting_builder(calls), guide_depth=3, vae_depth=5)
    yield calls
    unregister_family("test_family")


def _model():
    pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))


def test_one_entry_reaches_every_front_end(new_family, tmp_path):
    assert "test_family" in family_names("guide") and "test_family" in family_names("vae")
    guide = pyro_nf.FlowGuide(_model, flow="test_family")
    guide()
    assert new_family[-1]["depth"] == 3  # the guide default, beside the entry
    post = make_posterior("test_family", 2, context_dim=4)
    assert {k: new_family[-1][k] for k in ("dim", "depth", "context_dim")} == {
        "dim": 2,
        "depth": 5,  # the VAE default
        "context_dim": 4,
    }
    assert post(torch.randn(3, 4)).batch_shape == (3,)
    est = pyro_nf.DensityEstimator("test_family", dim=2, depth=2)
    assert flow_spec(est.flow) == {"name": "test_family", "kwargs": {"dim": 2, "depth": 2}}
    est.save(tmp_path / "est.pt")
    loaded = pyro_nf.DensityEstimator.load(tmp_path / "est.pt")
    x = torch.randn(5, 2)
    assert torch.allclose(loaded.log_prob(x), est.log_prob(x))


def test_a_family_without_a_guide_default_is_not_a_guide_family(new_family):
    register_family("density_only", lambda dim: pyro_nf.maf(dim, depth=1))
    try:
        assert "density_only" not in family_names("guide")
        with pytest.raises(ValueError, match="^flow: expected one of"):
            pyro_nf.FlowGuide(_model, flow="density_only")
        assert build_flow("density_only", dim=3).dim == 3
    finally:
        unregister_family("density_only")


def test_registry_errors():
    with pytest.raises(ValueError, match="^name: expected a new family name"):
        register_family("iaf", pyro_nf.iaf)
    with pytest.raises(ValueError, match="^guide_depth: expected None or an integer >= 1"):
        register_family("bad", pyro_nf.iaf, guide_depth=0)
    with pytest.raises(ValueError, match="^builder: expected a callable"):
        register_family("bad", "iaf")
    with pytest.raises(ValueError, match="^name: 'iaf' is built in"):
        unregister_family("iaf")
    with pytest.raises(ValueError, match="^kind: expected one of"):
        get_family("nope", use="vae", argname="kind")
    with pytest.raises(ValueError, match="^use: expected None"):
        family_names("gpu")


@pytest.mark.parametrize("name", ["nice", "realnvp", "spline_coupling"])
def test_min_dim_is_enforced_for_every_use(name):
    def one_dim():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="needs a latent dimension >= 2, got 1"):
        pyro_nf.FlowGuide(one_dim, flow=name)()
    with pytest.raises(ValueError, match="^dim: .* needs a latent dimension >= 2, got 1"):
        make_posterior(name, 1, context_dim=3)


def test_builtin_defaults_are_the_documented_ones():
    depths = {
        n: (get_family(n).guide_depth_for(10) if get_family(n).guide_depth else None,
            get_family(n).vae_depth)
        for n in family_names()
    }  # fmt: skip
    assert depths["planar"] == (8, 10) and depths["radial"] == (8, 10)
    assert depths["iaf"] == (2, 2) and depths["maf"] == (2, None)
    # the guide's IAF: two layers in small latent spaces, one in large ones
    iaf = get_family("iaf")
    assert iaf.guide_depth_for(IAF_TWO_LAYER_MAX_DIM) == 2
    assert iaf.guide_depth_for(IAF_TWO_LAYER_MAX_DIM + 1) == 1
    assert depths["nice"] == (4, 4) and depths["realnvp"] == (4, 4)
    assert depths["gaussian"] == (None, None) and depths["stack"] == (None, None)
    assert get_family("iaf").guide_kwargs(3) == {"update": "affine", "hidden": (10,)}
    assert depths["spline_autoregressive"] == (2, 2) and depths["spline_coupling"] == (4, 4)
    # guides and VAE encoders sample: the autoregressive spline in its IAF orientation there
    spline = get_family("spline_autoregressive")
    assert spline.guide_kwargs(3) == spline.vae_kwargs(3) == {"invert": False}
    assert get_family("iaf").vae_kwargs(3) == {}


def test_a_family_can_register_vae_defaults():
    register_family("vae_kw", pyro_nf.iaf, vae_depth=1, vae_kwargs=lambda dim: {"hidden": (dim,)})
    try:
        assert get_family("vae_kw", use="vae").vae_kwargs(5) == {"hidden": (5,)}
    finally:
        unregister_family("vae_kw")


def test_flow_distribution_needs_only_the_protocol():
    flow = pyro_nf.planar(2, depth=2)

    class Wrapped:  # not a Flow: dim, context_dim, parameters() and build_transforms()
        dim, context_dim = 2, None

        def parameters(self):
            return flow.parameters()

        def build_transforms(self, context=None, validate=True):
            return flow.build_transforms(context, validate)

    assert isinstance(Wrapped(), FlowLike)
    x = torch.randn(4, 2)
    assert torch.allclose(FlowDistribution(Wrapped()).log_prob(x), flow().log_prob(x))


def test_flow_distribution_construction_is_validated():
    with pytest.raises(TypeError, match="^flow: expected an object with an integer `dim`"):
        FlowDistribution(object())
    amortized = pyro_nf.planar(2, depth=1, context_dim=3)
    with pytest.raises(ValueError, match="^context: this flow is amortized"):
        FlowDistribution(amortized, None)
    with pytest.raises(ValueError, match="^context: expected"):
        FlowDistribution(amortized, torch.randn(4, 5))
    with pytest.raises(ValueError, match="^context: this flow is directly parameterized"):
        FlowDistribution(pyro_nf.planar(2), torch.randn(4, 3))
