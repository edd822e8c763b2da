"""Pyro's autoguide checks (tests/infer/test_autoguide.py of pyro-ppl), ported to FlowGuide and
run over every guide family of the registry (read at collection time, so that a family added
later is covered too). Tiny models and few steps; the longer fits are marked slow."""

from __future__ import annotations

import io
import pickle
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    JitTraceGraph_ELBO,
    Predictive,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.autoguide import (
    AutoDiscreteParallel,
    AutoGuideList,
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
)
from pyro.infer.reparam import ProjectedNormalReparam
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.optim import Adam, ClippedAdam
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match
from torch import nn
from torch.distributions import constraints

import pyro_nf
from pyro_nf.flows.registry import family_names, get_family

FAMILIES = family_names("guide")
INIT_LOC_FNS = [init_to_feasible, init_to_mean, init_to_median, init_to_sample]


@pytest.fixture(autouse=True)
def _fresh():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def small(model, family, **kwargs):
    """A FlowGuide of ``family`` with few layers (depth 2; IAF/MAF keep their default)."""
    depth = None if family in ("iaf", "maf") else 2
    return pyro_nf.FlowGuide(model, family, depth, **kwargs)


# -- shapes (test_shapes), scores (test_scores), factors (test_factor) ---------------------------
def shapes_model():
    pyro.sample("z1", dist.Normal(0.0, 1.0))
    pyro.sample("z2", dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1))
    with pyro.plate("plate", 3):
        pyro.sample("z3", dist.Normal(torch.zeros(3), torch.ones(3)))
    pyro.sample("z4", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
    pyro.sample("z5", dist.Dirichlet(torch.ones(3)))
    pyro.sample("z6", dist.Normal(0, 1).expand((2,)).mask(torch.arange(2) > 0).to_event(1))
    pyro.sample("z7", dist.LKJCholesky(2, torch.tensor(1.0)))


def check_shapes(guide):
    for Elbo in (Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO):
        for num_particles in (1, 10):
            elbo = Elbo(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
            loss = elbo.loss(shapes_model, guide)
            assert torch.isfinite(torch.tensor(loss)), (Elbo.__name__, num_particles, loss)
    values = guide()
    model_trace = poutine.trace(shapes_model).get_trace()
    model_trace = prune_subsample_sites(model_trace)
    model_values = {name: site["value"] for name, site in model_trace.iter_stochastic_nodes()}
    assert sorted(values) == sorted(model_values)
    for name, value in values.items():
        assert value.shape == model_values[name].shape, name


def family_init_pairs(full: bool) -> list:
    """(family, init_loc_fn) pairs: all of them, or each family once with the four functions
    taken in turn (every family and every function covered in the fast run)."""
    if full:
        return [(f, i) for f in FAMILIES for i in INIT_LOC_FNS]
    return [(f, INIT_LOC_FNS[k % len(INIT_LOC_FNS)]) for k, f in enumerate(FAMILIES)]


FULL_GRID = [p for p in family_init_pairs(True) if p not in family_init_pairs(False)]


@pytest.mark.filterwarnings("error")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    ("family", "init_loc_fn"),
    family_init_pairs(False) + [pytest.param(*p, marks=pytest.mark.slow) for p in FULL_GRID],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_shapes(family, init_loc_fn):
    """Pyro's shape test under warnings-as-errors, with the default Laplace start."""
    check_shapes(small(shapes_model, family, init_loc_fn=init_loc_fn))


@pytest.mark.filterwarnings("error")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("init", ["loc", pytest.param("map", marks=pytest.mark.slow)])
@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_other_starts(family, init):
    check_shapes(small(shapes_model, family, init=init, init_scale=0.1))


@pytest.mark.parametrize("family", FAMILIES)
def test_scores(family):
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))

    guide = small(model, family)
    guide_trace = poutine.trace(guide).get_trace()
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace()
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    assert "_FlowGuide_latent" not in model_trace.nodes
    assert guide_trace.nodes["_FlowGuide_latent"]["log_prob_sum"].item() != 0.0
    assert model_trace.nodes["z"]["log_prob_sum"].item() != 0.0
    assert guide_trace.nodes["z"]["log_prob_sum"].item() == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_factor(family):
    def model(log_factor):
        pyro.sample("z1", dist.Normal(0.0, 1.0))
        pyro.factor("f1", log_factor)
        pyro.sample("z2", dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1))
        with pyro.plate("plate", 3):
            pyro.factor("f2", log_factor)
            pyro.sample("z3", dist.Normal(torch.zeros(3), torch.ones(3)))

    guide = small(model, family)
    for Elbo in (Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO):
        elbo = Elbo()
        elbo.loss(model, guide, torch.tensor(0.0))  # set up
        pyro.set_rng_seed(123)
        loss_5 = elbo.loss(model, guide, torch.tensor(5.0))
        pyro.set_rng_seed(123)
        loss_4 = elbo.loss(model, guide, torch.tensor(4.0))
        assert loss_5 - loss_4 == pytest.approx(-1 - 3, abs=1e-4), Elbo.__name__


# -- median and quantiles (test_median, test_quantiles, test_median_module) ----------------------
def xyz_model():
    pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.LogNormal(0.0, 1.0))
    pyro.sample("z", dist.Beta(2.0, 2.0))


@pytest.mark.slow
@pytest.mark.parametrize("Elbo", [JitTrace_ELBO, JitTraceGraph_ELBO])
@pytest.mark.parametrize("family", FAMILIES)
def test_median(family, Elbo):
    """Pyro's settings (100 steps of 500 particles, Adam lr 0.02). The guide starts at the exact
    posterior (Laplace), so the steps only add noise; with its many conditioner weights an
    autoregressive spline flow random-walks its median by up to ~0.15 sd at lr 0.02 (plain and
    JIT ELBOs alike), so the spline families take lr 0.005: the same test of the ELBO's
    gradients, at a noise level that the tolerance of 0.1 can resolve."""
    pyro.set_rng_seed(0)  # as Pyro's own test harness seeds every test
    guide = small(xyz_model, family)
    elbo = Elbo(num_particles=500, vectorize_particles=True, ignore_jit_warnings=True)
    lr = 0.005 if family.startswith("spline") else 0.02
    svi = SVI(xyz_model, guide, Adam({"lr": lr, "betas": (0.8, 0.99)}), elbo)
    for _ in range(100):
        svi.step()
    median = guide.median()
    assert median["x"].item() == pytest.approx(0.0, abs=0.1)
    assert median["y"].item() == pytest.approx(1.0, abs=0.1)
    assert median["z"].item() == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_quantiles(family):
    def model():
        pyro.sample("y", dist.LogNormal(0.0, 1.0))
        pyro.sample("z", dist.Beta(2.0, 2.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    guide = small(model, family)
    svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO(num_particles=10))
    for _ in range(10):
        svi.step()
    # x is unconstrained: its 15.9% and 84.1% quantiles are one posterior sd either side
    q = guide.quantiles([0.158655, 0.8413447])
    sd = guide.sample_posterior(20000, seed=1)["x"].std()
    assert float(0.5 * (q["x"][1] - q["x"][0])) == pytest.approx(float(sd), rel=0.05)

    quantiles = guide.quantiles([0.1, 0.5, 0.9])
    median = guide.median()
    for name in ["x", "y", "z"]:
        assert not median[name].requires_grad
        assert len(quantiles[name]) == 3
        for value in quantiles[name]:
            assert not value.requires_grad
            assert value.shape == (() if name != "z" else (2,))
        assert torch.equal(median[name], quantiles[name][1])
    assert -3.0 < quantiles["x"][0]
    assert quantiles["x"][0] + 1.0 < quantiles["x"][1]
    assert quantiles["x"][1] + 1.0 < quantiles["x"][2]
    assert quantiles["x"][2] < 3.0
    assert 0.01 < quantiles["y"][0]
    assert quantiles["y"][0] * 2.0 < quantiles["y"][1]
    assert quantiles["y"][1] * 2.0 < quantiles["y"][2]
    assert quantiles["y"][2] < 100.0
    assert bool((0.01 < quantiles["z"][0]).all())
    assert bool((quantiles["z"][0] + 0.1 < quantiles["z"][1]).all())
    assert bool((quantiles["z"][1] + 0.1 < quantiles["z"][2]).all())
    assert bool((quantiles["z"][2] < 0.99).all())


@pytest.mark.parametrize("Elbo", [Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO])
def test_median_module(Elbo):
    class Model(PyroModule):
        def __init__(self):
            super().__init__()
            self.x_loc = nn.Parameter(torch.tensor(1.0))
            self.x_scale = PyroParam(torch.tensor(0.1), constraints.positive)

        def forward(self):
            x = pyro.sample("x", dist.Normal(self.x_loc, self.x_scale))
            pyro.sample("y", dist.Normal(2.0, 0.1))
            pyro.sample("z", dist.Normal(1.0, 0.1), obs=x)

    for family in FAMILIES:
        pyro.clear_param_store()
        model = Model()
        guide = small(model, family)
        svi = SVI(model, guide, Adam({"lr": 0.005}), Elbo())
        for _ in range(5):
            svi.step()
        median = guide.median()
        assert median["x"].item() == pytest.approx(1.0, abs=0.1), family
        assert median["y"].item() == pytest.approx(2.0, abs=0.1), family


# -- serialization (test_serialization) ----------------------------------------------------------
def serialization_model():
    pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("plate", 2):
        pyro.sample("y", dist.LogNormal(0.0, 1.0))
        pyro.sample("z", dist.Beta(2.0, 2.0))


@pytest.mark.parametrize("how", ["torch.save", "pickle", "jit"])
@pytest.mark.parametrize("family", FAMILIES)
def test_serialization(family, how):
    guide = small(serialization_model, family)
    guide()
    pyro.set_rng_seed(0)
    expected = guide.call()
    latent_names = sorted(guide())
    expected_params = {k: v.detach().clone() for k, v in guide.named_parameters()}
    f = io.BytesIO()
    if how == "jit":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            traced = torch.jit.trace_module(guide, {"call": ()}, check_trace=False)
        torch.jit.save(traced, f)
        f.seek(0)
        loaded = torch.jit.load(f)
    elif how == "pickle":
        loaded = pickle.loads(pickle.dumps(guide))
    else:
        torch.save(guide, f)
        f.seek(0)
        loaded = torch.load(f, weights_only=False)
    # saving leaves the saved guide whole (Pyro's AutoGuide drops its model when pickled)
    assert guide.model is not None and sorted(guide()) == latent_names
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    actual = loaded.call()
    assert len(actual) == len(expected) == len(latent_names)
    for name, a, e in zip(latent_names, actual, expected, strict=True):
        assert torch.allclose(a, e, atol=1e-6), name
    actual_params = {k: v.detach() for k, v in loaded.named_parameters()}
    assert set(actual_params) == set(expected_params)
    for name, value in expected_params.items():
        assert torch.equal(actual_params[name], value), name
    if how != "jit":  # an unpickled guide has no model (as Pyro's), until it is given one
        with pytest.raises(RuntimeError, match="guide.model = model"):
            loaded.report()
        loaded.model = serialization_model
        assert isinstance(loaded.report(num_samples=50), pyro_nf.TrustReport)


# -- Predictive (test_predictive) and PyroModule models (test_linear_regression_smoke) ------------
class RandomLinear(nn.Linear, PyroModule):
    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features)
        self.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))


class LinearRegression(PyroModule):
    def __init__(self, dim, size):
        super().__init__()
        self.linear = RandomLinear(dim, 1)
        self.size = size

    def forward(self, x, y=None):
        mean = self.linear(x).squeeze(-1)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("plate", self.size):
            return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_regression_smoke(family):
    x, y = torch.randn(10, 3), torch.randn(10)
    model = LinearRegression(3, 10)
    guide = small(model, family)
    for Elbo in (Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO):
        svi = SVI(model, guide, Adam({"lr": 0.005}), Elbo())
        assert torch.isfinite(torch.tensor(svi.step(x, y))), Elbo.__name__


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_predictive(family):
    x, y = torch.randn(3, 2), torch.randn(3)
    model = LinearRegression(2, 3)
    guide = small(model, family)
    guide(x, y=y)  # set up with y observed
    model_trace = poutine.trace(model).get_trace(x, y=None)
    predictive = Predictive(model, guide=guide, num_samples=10)
    pyro.set_rng_seed(0)
    samples = predictive(x)
    for site in prune_subsample_sites(model_trace).stochastic_nodes:
        assert site in samples
    assert samples["obs"].shape == (10, 3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace_module(predictive, {"call": (x,)})
    f = io.BytesIO()
    torch.jit.save(traced, f)
    f.seek(0)
    loaded = torch.jit.load(f)
    pyro.set_rng_seed(0)
    assert len(loaded.call(x)) == len(samples)


# -- Pyro's inference algorithms ------------------------------------------------------------------
@pytest.mark.parametrize(
    "Elbo",
    [
        Trace_ELBO,
        TraceGraph_ELBO,
        TraceMeanField_ELBO,
        JitTrace_ELBO,
        pytest.param(JitTraceGraph_ELBO, marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_elbos_take_steps_and_the_guide_matches_the_model(family, Elbo):
    data = torch.tensor([0.3, 1.2, -0.4])

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        scale = pyro.sample("scale", dist.HalfNormal(1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(loc, scale), obs=data)

    guide = small(model, family)
    kwargs = {"ignore_jit_warnings": True} if Elbo in (JitTrace_ELBO, JitTraceGraph_ELBO) else {}
    svi = SVI(model, guide, Adam({"lr": 0.01}), Elbo(num_particles=4, **kwargs))
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step(data)))
    check_model_guide_match(
        poutine.trace(model).get_trace(data), poutine.trace(guide).get_trace(data)
    )


@pytest.mark.parametrize("sample_shape", [(), (6,), (5, 4)], ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_replay_plates(family, sample_shape):
    def model():
        a = pyro.sample("a", dist.Normal(0, 1))
        b = pyro.sample("b", dist.Normal(a[..., None], torch.ones(3)).to_event(1))
        c = pyro.sample("c", dist.MultivariateNormal(torch.zeros(3) + a[..., None], torch.eye(3)))
        with pyro.plate("i", 2):
            d = pyro.sample("d", dist.Dirichlet((b + c).exp()))
            pyro.sample("e", dist.Categorical(logits=d), obs=torch.tensor([0, 0]))
        return a, b, c, d

    # init="loc", as Pyro's autoguides start: the Laplace search takes seconds on this model
    # (its mode runs off, and the start is then rejected); shapes are the point here
    guide = small(model, family, init="loc")
    with pyro.plate_stack("particles", sample_shape, rightmost_dim=-2):
        guide_trace = poutine.trace(guide).get_trace()
        a, b, c, d = poutine.replay(model, guide_trace)()
    assert a.shape == (sample_shape + (1,) if sample_shape else ())
    assert b.shape == (sample_shape + (1, 3) if sample_shape else (3,))
    assert c.shape == (sample_shape + (1, 3) if sample_shape else (3,))
    assert d.shape == sample_shape + (2, 3)


# -- discrete sites (test_discrete_parallel, test_discrete_helpful_error) ------------------------
def mixture_model(data):
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(2)))
    locs = pyro.sample("locs", dist.Normal(0, 10).expand_by([2]).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(0, 1))
    with pyro.plate("data", len(data)):
        weights = weights.expand(torch.Size((len(data),)) + weights.shape)
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


@pytest.mark.parametrize("family", FAMILIES)
def test_discrete_parallel(family):
    """A FlowGuide on the continuous sites, AutoDiscreteParallel on the discrete one."""
    data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])
    guide = AutoGuideList(mixture_model)
    guide.append(small(poutine.block(mixture_model, hide=["assignment"]), family))
    guide.append(AutoDiscreteParallel(poutine.block(mixture_model, expose=["assignment"])))
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss_and_grads(mixture_model, guide, data)
    assert torch.isfinite(torch.tensor(loss))
    grads = [p.grad for p in guide[0].parameters()]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("init_loc_fn", INIT_LOC_FNS, ids=lambda f: f.__name__)
def test_discrete_sites_are_refused_clearly(init_loc_fn):
    def model():
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        x = pyro.sample("x", dist.Bernoulli(p))
        pyro.sample("obs", dist.Bernoulli(p * x + (1 - p) * (1 - x)), obs=torch.tensor([1.0, 0.0]))

    for family in FAMILIES:
        guide = small(model, family, init_loc_fn=init_loc_fn)
        # ours, or Pyro's when init_loc_fn meets the site first: both name it and link the docs
        with pytest.raises(ValueError, match=r"site 'x'.*enumeration\.html"):
            guide()
    # enumerated, and still visible to the guide: refused too (hide it with poutine.block)
    enumerated = pyro.infer.config_enumerate(model)
    with pytest.raises(ValueError, match=r"site 'x' is discrete.*poutine.block"):
        small(enumerated, FAMILIES[0])()


@pytest.mark.parametrize("init_loc_fn", INIT_LOC_FNS, ids=lambda f: f.__name__)
def test_sphere_helpful_error_and_reparam(init_loc_fn):
    def model(dim):
        x = pyro.sample("x", dist.Normal(0.0, 1.0).expand([dim]).to_event(1))
        y = pyro.sample("y", dist.ProjectedNormal(x))
        pyro.sample("obs", dist.Normal(y, 1).to_event(1), obs=torch.eye(dim)[0])

    for family in FAMILIES:
        with pytest.raises(ValueError, match="ProjectedNormalReparam"):
            small(model, family, init_loc_fn=init_loc_fn)(2)
        reparam = poutine.reparam(model, {"y": ProjectedNormalReparam()})
        guide = small(reparam, family, init_loc_fn=init_loc_fn)
        poutine.trace(guide).get_trace(3).compute_log_prob()


# -- initialisation (test_init_loc_fn, test_init_scale) ------------------------------------------
def xy_model():
    pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.MultivariateNormal(torch.zeros(5), torch.eye(5, 5)))


@pytest.mark.parametrize("family", FAMILIES)
def test_init_loc_fn(family):
    """init="loc" starts exactly at init_loc_fn (every flow starts at the identity); the other
    starts move to the posterior mode from there."""
    inits = {"x": torch.randn(()), "y": torch.randn(5)}
    guide = small(
        xy_model, family, init="loc", init_scale=1e-4, init_loc_fn=lambda s: inits[s["name"]]
    )
    guide()
    median = guide.median()
    assert torch.allclose(median["x"], inits["x"], atol=1e-5)
    assert torch.allclose(median["y"], inits["y"], atol=1e-5)
    for init in ("map", "laplace"):
        guide = small(
            xy_model, family, init=init, init_scale=1e-4, init_loc_fn=lambda s: inits[s["name"]]
        )
        guide()
        median = guide.median(num_samples=20000)
        tol = 1e-3 if init == "map" else 0.05  # laplace: sd 1 around the mode, Monte Carlo
        assert abs(median["x"].item()) < tol, (init, median["x"])
        assert float(median["y"].abs().max()) < tol, (init, median["y"])


@pytest.mark.parametrize("init_scale", [1e-1, 1e-4])
@pytest.mark.parametrize("family", FAMILIES)
def test_init_scale(family, init_scale):
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.MultivariateNormal(torch.zeros(5), torch.eye(5, 5)))
        with pyro.plate("plate", 20):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    guide = small(model, family, init="loc", init_scale=init_scale)
    guide()
    latent = guide.get_posterior().sample((2000,))
    scale_rms = latent.std(0).pow(2).mean().sqrt().item()
    assert init_scale * 0.9 < scale_rms < 1.1 * init_scale


# -- the latent vector (test_unpack_latent, get_posterior) and empty models ----------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_unpack_latent_and_get_posterior(family):
    def model():
        return pyro.sample("x", dist.LKJCholesky(2, torch.tensor(1.0)))

    guide = small(model, family)
    if get_family(family).min_dim > 1:  # coupling flows need 2 dimensions: said before any search
        with pytest.raises(
            ValueError, match=f"flow: '{family}' needs a latent dimension >= 2, got 1"
        ):
            guide()
        assert "flow" not in dict(guide.named_children())
        return
    assert guide()["x"].shape == model().shape
    latent = guide.sample_latent()
    assert list(guide._unpack_latent(latent))[0][1].shape == (1,)
    posterior = guide.get_posterior()
    assert posterior.event_shape == (guide.latent_dim,) == (1,)
    draws = posterior.sample((7,))
    assert draws.shape == (7, 1) and bool(torch.isfinite(posterior.log_prob(draws)).all())


def test_empty_model():
    def empty_model():
        pass

    def observed_only():
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    for model in (empty_model, observed_only):
        for family in FAMILIES:
            with pytest.raises(RuntimeError, match=f"model '.*{model.__name__}'"):
                small(model, family)()


# -- guide lists (test_guide_list, test_callable) -------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_guide_list_and_callable(family):
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("y", dist.MultivariateNormal(torch.zeros(5), torch.eye(5, 5)))

    guide = AutoGuideList(model)
    guide.append(small(poutine.block(model, expose=["x"]), family))
    guide.append(small(poutine.block(model, expose=["y"]), family))
    assert set(guide()) == {"x", "y"}
    assert guide[0].latent_dim == 2 and guide[1].latent_dim == 5

    def guide_x():
        pyro.sample("x", dist.Delta(pyro.param("x_loc", torch.zeros(2))).to_event(1))
        return {"x": pyro.param("x_loc")}

    guide = AutoGuideList(model)
    guide.append(guide_x)
    guide.append(small(poutine.block(model, expose=["y"]), family))
    assert set(guide()) == {"x", "y"}
    svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
    assert torch.isfinite(torch.tensor(svi.step()))


# -- subsampling with create_plates (test_subsample_guide) ----------------------------------------
FULL, BATCH = 40, 10
DATA = torch.randn(FULL) + 1.5


def subsampled_model(x):
    """Two global latents (the coupling flows need two dimensions) and subsampled data."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    nu = pyro.sample("nu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x), subsample_size=BATCH) as idx:
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x[idx])
    return nu


def subsample_plates(x):
    return pyro.plate("data", len(x), subsample_size=BATCH)


@pytest.mark.parametrize("family", FAMILIES)
def test_create_plates_draws_the_subsample_the_model_uses(family):
    calls = []

    def create_plates(x):
        calls.append(x)
        return subsample_plates(x)

    guide = small(subsampled_model, family, create_plates=create_plates)
    guide_trace = poutine.trace(guide).get_trace(DATA)
    model_trace = poutine.trace(poutine.replay(subsampled_model, guide_trace)).get_trace(DATA)
    idx = guide_trace.nodes["data"]["value"]
    assert idx.shape == (BATCH,) and torch.equal(model_trace.nodes["data"]["value"], idx)
    assert torch.equal(model_trace.nodes["obs"]["value"], DATA[idx])
    assert len(calls) == 1 and calls[0] is DATA  # called with the model's arguments
    # the Laplace search saw one fixed subsample: a deterministic density, a Newton-polished mode
    assert guide._init_info["init"].startswith("laplace")
    assert guide._init_info["mode"].grad_norm < 1e-3
    svi = SVI(subsampled_model, guide, Adam({"lr": 0.01}), Trace_ELBO())
    assert torch.isfinite(torch.tensor(svi.step(DATA)))


@pytest.mark.slow
def test_create_plates_fit_recovers_the_full_data_posterior():
    guide = pyro_nf.FlowGuide(subsampled_model, "planar", 2, create_plates=subsample_plates)
    pyro_nf.fit(
        subsampled_model, guide, DATA, steps=1500, lr=0.02, num_particles=4, progress=False,
        lr_schedule="cosine", early_stopping=None,
    )  # fmt: skip
    post_mean = DATA.sum() / (FULL + 1 / 100)
    post_sd = (FULL + 1 / 100) ** -0.5
    samples = guide.sample_posterior(20000, seed=0)["mu"]
    assert abs(float(samples.mean() - post_mean)) < 0.25 * post_sd
    assert abs(float(samples.std()) / post_sd - 1) < 0.25


def test_create_plates_is_checked():
    def local_model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("obs", dist.Normal(z, 1.0), obs=x)

    family = FAMILIES[0]
    guide = small(local_model, family, create_plates=subsample_plates)
    with pytest.raises(
        ValueError, match="create_plates: plate 'data' holds latent sites of size 40"
    ):
        guide(DATA)
    guide = small(subsampled_model, family, create_plates=lambda x: "data")
    with pytest.raises(
        TypeError, match="create_plates: expected a callable returning a pyro.plate"
    ):
        guide(DATA)
    with pytest.raises(ValueError, match="create_plates: expected None or a callable"):
        small(subsampled_model, family, create_plates="data")
    # a full plate for local latents is fine (the guide's plate is the model's)
    guide = small(local_model, family, create_plates=lambda x: pyro.plate("data", len(x)))
    assert guide(DATA)["z"].shape == (FULL,)

    def local_subsampled(batch, subsample, full_size):  # Pyro's test_subsample_guide model
        pyro.sample("drift", dist.LogNormal(-1, 0.5))
        with pyro.plate("data", full_size, subsample=subsample):
            pyro.sample("state", dist.Normal(0.0, 1.0))

    guide = small(
        local_subsampled, family, create_plates=lambda b, s, n: pyro.plate("data", n, subsample=s)
    )
    with pytest.raises(ValueError, match="subsampled plate 'data'.*AmortizedFlowGuide"):
        guide(None, torch.arange(5), 20)


def test_amortized_guide_with_create_plates():
    x = torch.randn(FULL, 1)

    def model(x):
        with pyro.plate("data", len(x), subsample_size=BATCH) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x[idx])

    guide = pyro_nf.AmortizedFlowGuide(
        "z",
        pyro_nf.planar(2, depth=2, context_dim=4),
        encoder=nn.Linear(1, 4),  # sees all of x: the subsample's rows are taken
        create_plates=lambda x: pyro.plate("data", len(x), subsample_size=BATCH),
    )
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x)
    idx = guide_trace.nodes["data"]["value"]
    assert torch.equal(model_trace.nodes["data"]["value"], idx)
    assert guide_trace.nodes["z"]["value"].shape == (BATCH, 2)
    with torch.no_grad():  # data point i's posterior is computed from x[i]
        expected = guide.flow(guide.encoder(x[idx])).log_prob(guide_trace.nodes["z"]["value"])
    assert torch.allclose(
        guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"]), expected
    )
    loss = Trace_ELBO().differentiable_loss(model, guide, x)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="create_plates: expected a plate named 'data'"):
        pyro_nf.AmortizedFlowGuide(
            "z", pyro_nf.planar(2, context_dim=4), nn.Linear(1, 4),
            create_plates=lambda x: pyro.plate("batch", len(x)),
        )(x)  # fmt: skip


# -- exact posteriors (test_exact) -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_exact(family):
    """A conjugate model under JitTrace_ELBO (two independent locations, so that the coupling
    flows apply): moments, and the ELBO equal to minus the log evidence."""
    data = torch.tensor([[0.5, 1.0], [-1.2, 0.3], [2.0, -0.4]])

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(loc, 1.0).to_event(1), obs=data)
        return loc

    expected_mean = data.sum(0) / (1 + len(data))
    expected_std = (1 + len(data)) ** -0.5
    marginal = dist.MultivariateNormal(torch.zeros(3), torch.eye(3) + torch.ones(3, 3))
    expected_loss = -float(marginal.log_prob(data.T).sum())

    guide = small(model, family)
    elbo = JitTrace_ELBO(num_particles=100, vectorize_particles=True, ignore_jit_warnings=True)
    svi = SVI(model, guide, ClippedAdam({"lr": 0.005}), elbo)
    for _ in range(30):
        svi.step(data)
    guide.requires_grad_(False)
    with torch.no_grad():
        vectorize = pyro.plate("particles", 10000, dim=-2)
        guide_trace = poutine.trace(vectorize(guide)).get_trace(data)
        samples = poutine.replay(vectorize(model), guide_trace)(data).reshape(10000, 2)
        assert torch.allclose(samples.mean(0), expected_mean, atol=0.05)
        assert torch.allclose(samples.std(0), torch.full((2,), expected_std), rtol=0.05)
        assert elbo.loss(model, guide, data) == pytest.approx(expected_loss, abs=0.01)
