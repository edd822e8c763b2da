"""Guides, fit and diagnostics: every documented form works, every bad argument is refused
early with a message that starts with the user's argument name (issue 17, kinds 1 and 10)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyro_nf

X = torch.tensor([0.3, 1.9, 1.1])


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, tau), obs=x)


_GUIDE: list[pyro_nf.FlowGuide] = []


def fitted_guide() -> pyro_nf.FlowGuide:
    """One set-up guide for the whole module (hypothesis needs no function fixtures)."""
    if not _GUIDE:
        pyro.clear_param_store()
        guide = pyro_nf.FlowGuide(model, flow="planar", depth=2)
        guide(X)
        _GUIDE.append(guide)
    return _GUIDE[0]


def expect_error(name: str, fn, *args, **kwargs) -> None:
    with pytest.raises((ValueError, TypeError)) as err:
        fn(*args, **kwargs)
    assert str(err.value).startswith(f"{name}:"), str(err.value)


# -- documented forms ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flow",
    ["iaf", "planar", "radial", "maf", "realnvp", "nice", "flow-instance", "factory"],
)
def test_every_documented_flow_form_builds_samples_and_fits(flow):
    pyro.clear_param_store()
    if flow == "flow-instance":
        flow = pyro_nf.planar(2, depth=2)  # docs: "or a Flow" of the latent dimension
    elif flow == "factory":
        flow = lambda dim: pyro_nf.radial(dim, depth=2)  # noqa: E731
    guide = pyro_nf.FlowGuide(model, flow=flow)
    history = pyro_nf.fit(model, guide, X, steps=3, early_stopping=None, progress=False)
    assert len(history.losses) == 3
    assert sorted(guide(X)) == ["mu", "tau"]
    if isinstance(flow, pyro_nf.Flow):  # registered once, inside the guide's flow
        names = [n for n, _ in guide.named_parameters()]
        assert names and all(n.startswith("flow.") for n in names)


def test_every_documented_keyword_form():
    pyro.clear_param_store()
    for kw in [
        {"depth": 2},
        {"init": "map"},
        {"init": "loc", "init_scale": 0.5},
        {"affine": "full"},
        {"affine": "diagonal"},
        {"init_loc_fn": pyro.infer.autoguide.init_to_mean},
        {"hidden": (5,)},
    ]:
        guide = pyro_nf.FlowGuide(model, "iaf", **kw)
        assert sorted(guide(X)) == ["mu", "tau"], kw


def test_documented_summaries_and_diagnostics():
    guide = fitted_guide()
    pyro_nf.fit(model, guide, X, steps=2, early_stopping=True, progress=False)
    pyro_nf.fit(
        model, guide, X, steps=2, elbo="renyi", num_particles=4, progress=False, early_stopping=None
    )
    pyro_nf.fit(model, guide, steps=2, model_kwargs={"x": X}, progress=False, early_stopping=None)
    assert isinstance(guide.report(X), pyro_nf.TrustReport)
    assert isinstance(guide.report(X, num_samples=100), pyro_nf.TrustReport)
    report = guide.report(num_samples=100, model_kwargs={"x": X})  # the one convention
    assert isinstance(report, pyro_nf.TrustReport)
    assert isinstance(pyro_nf.diagnose(model, guide, X, num_samples=50), pyro_nf.TrustReport)
    summary = pyro_nf.reweighted_summary(model, guide, X, num_samples=100)
    assert sorted(summary) == ["mu", "tau"]
    idata = pyro_nf.to_inference_data(model, guide, X, num_samples=30)
    assert tuple(idata.posterior["mu"].shape) == (1, 30)
    assert math.isfinite(pyro_nf.psis_khat(model, guide, X, num_samples=50))
    est, se = pyro_nf.log_evidence(model, guide, X, num_samples=50)
    assert math.isfinite(est) and se >= 0
    for q in ([0.05, 0.5, 0.95], (0.5,), torch.tensor([0.25, 0.75]), 0.5):
        out = guide.quantiles(q, num_samples=200)
        assert out["mu"].shape == (torch.as_tensor(q).numel(),)
    assert guide.median(num_samples=200)["tau"].shape == ()
    # as Pyro's autoguides, median and quantiles take the model's arguments (and ignore them)
    assert torch.equal(guide.median(X)["mu"], guide.median(model_kwargs={"x": X})["mu"])
    assert guide.quantiles([0.5], X, model_kwargs={})["mu"].shape == (1,)
    assert torch.equal(guide.median(seed=3)["mu"], guide.median(seed=3)["mu"])


def test_amortized_guide_documented_forms():
    for plate in ("data", lambda *a, **k: pyro.plate("data", 3, dim=-1)):
        guide = pyro_nf.AmortizedFlowGuide(
            "z",
            pyro_nf.planar(2, depth=2, context_dim=4),
            encoder=torch.nn.Linear(1, 4),
            plate=plate,
        )
        assert guide(torch.randn(3, 1)).shape == (3, 2)


# -- the examples of the issue -------------------------------------------------------------------
def test_the_issue_examples_fail_early_naming_the_argument():
    guide = fitted_guide()
    expect_error("model", pyro_nf.FlowGuide, None)
    expect_error("guide", pyro_nf.fit, model, None, X)
    expect_error("quantiles", guide.quantiles, [float("nan")])
    expect_error("num_samples", guide.report, X, num_samples=1)
    with pytest.raises(ValueError, match="at least 21"):
        guide.report(X, num_samples=1)
    expect_error("init_scal", pyro_nf.FlowGuide, model, init_scal=0.1)
    expect_error("create_plates", pyro_nf.FlowGuide, model, create_plates=3)
    expect_error("flow", pyro_nf.FlowGuide, model, flow=pyro_nf.planar(2, context_dim=3))
    expect_error("depth", pyro_nf.FlowGuide, model, flow=pyro_nf.planar(2), depth=3)


def test_unknown_keywords_are_refused_at_once_naming_them():
    calls = []

    def counted(x):
        calls.append(1)
        model(x)

    def refused(match, fn, *args, **kwargs):
        with pytest.raises(TypeError, match=match):
            fn(*args, **kwargs)

    for flow in ("iaf", "planar", pyro_nf.planar(2), lambda dim: pyro_nf.radial(dim)):
        refused(
            "^init_scal: .*did you mean 'init_scale'",
            pyro_nf.FlowGuide,
            counted,
            flow,
            init_scal=0.1,
        )
    refused("^hiden: .*did you mean 'hidden'", pyro_nf.FlowGuide, counted, "iaf", hiden=(3,))
    refused("^create_plate: .*'create_plates'", pyro_nf.FlowGuide, counted, create_plate=None)
    guide = pyro_nf.FlowGuide(counted, "planar", 2)
    # fit: a misspelt option or a model keyword given directly is refused before any trace
    refused(
        "^num_particle: .*fit; did you mean 'num_particles'",
        pyro_nf.fit,
        counted,
        guide,
        X,
        num_particle=4,
    )
    refused("^x: .*of fit; .*model_kwargs=", pyro_nf.fit, counted, guide, x=X)
    refused("^progres: .*'progress'", pyro_nf.fit, counted, guide, X, progres=False)
    assert calls == [] and guide.prototype_trace is None
    guide = fitted_guide()
    refused("^x: .*FlowGuide.report; .*model_kwargs=", guide.report, x=X)
    refused("^num_sample: .*did you mean 'num_samples'", guide.report, X, num_sample=100)
    refused("^x: .*FlowGuide.median", guide.median, x=X)
    refused("^sed: .*did you mean 'seed'", guide.quantiles, [0.5], sed=1)
    expect_error("model_kwargs", guide.median, model_kwargs=[X])
    expect_error("model_kwargs", guide.report, X, model_kwargs=X)
    flow, encoder = pyro_nf.planar(2, context_dim=4), torch.nn.Linear(1, 4)
    refused(
        "^plates: .*did you mean 'plate'",
        pyro_nf.AmortizedFlowGuide,
        "z",
        flow,
        encoder,
        plates="data",
    )
    expect_error("create_plates", pyro_nf.AmortizedFlowGuide, "z", flow, encoder, create_plates=1)


def test_a_model_without_latent_sites_is_a_runtime_error_naming_it():
    def only_data(x):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(
        RuntimeError, match="^model: FlowGuide found no latent sample sites in model '.*only_data'"
    ):
        pyro_nf.FlowGuide(only_data)(X)


# -- hypothesis: wrong types and values --------------------------------------------------------
BAD = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=2),
    st.just(torch.zeros(2)),
    st.just(object()),
)
NOT_POS_INT = st.one_of(BAD, st.integers(max_value=0)).filter(
    lambda v: not (isinstance(v, int) and not isinstance(v, bool) and v > 0)
)


@settings(max_examples=25, deadline=None)
@given(value=NOT_POS_INT, which=st.sampled_from(["depth", "steps", "num_samples"]))
def test_positive_integer_arguments(value, which):
    guide = fitted_guide()
    if which == "depth":
        if value is None:
            return
        expect_error("depth", pyro_nf.FlowGuide, model, "planar", value)
    elif which == "steps":
        expect_error("steps", pyro_nf.fit, model, guide, X, steps=value)
    else:
        calls = [(guide.report, (X,)), (guide.quantiles, ([0.5],)), (guide.median, ())]
        for fn, args in calls:
            expect_error("num_samples", fn, *args, num_samples=value)
        for fn in (
            pyro_nf.reweighted_summary,
            pyro_nf.to_inference_data,
            pyro_nf.psis_khat,
            pyro_nf.log_evidence,
            pyro_nf.diagnose,
        ):
            expect_error("num_samples", fn, model, guide, X, num_samples=value)


def test_a_flow_map_start_given_as_the_guides_init_says_where_it_goes():
    with pytest.raises(
        ValueError, match=r"init: .*got 'random'.*pyro_nf\.radial\(dim, .*init='random'"
    ):
        pyro_nf.FlowGuide(model, flow="radial", init="random")
    with pytest.raises(ValueError, match=r"pyro_nf\.radial\(dim, depth=3, init='random'\)"):
        pyro_nf.FlowGuide(model, flow="radial", depth=3, init="random")
    with pytest.raises(ValueError, match=r"init: .*got 'pyro'.*pyro_nf\.planar\("):
        pyro_nf.FlowGuide(model, init="pyro")  # the default IAF has no such start: planar's
    # the form the hint gives works
    guide = pyro_nf.FlowGuide(model, flow=lambda dim: pyro_nf.radial(dim, depth=2, init="random"))
    assert set(guide(X)) == {"mu", "tau"}


@settings(max_examples=25, deadline=None)
@given(value=BAD.filter(lambda v: not isinstance(v, str) or v not in ("iaf", "planar")))
def test_guide_choice_arguments(value):
    for name in ("flow", "init", "affine"):
        if name == "flow" and (value is None or callable(value)):
            continue
        expect_error(name, pyro_nf.FlowGuide, model, **{name: value})
    if not callable(value):
        expect_error("init_loc_fn", pyro_nf.FlowGuide, model, init_loc_fn=value)
    if not (isinstance(value, float) and value > 0 and math.isfinite(value)):
        expect_error("init_scale", pyro_nf.FlowGuide, model, init_scale=value)
    expect_error("seed", fitted_guide().median, seed=value if value is not None else 1.5)


@settings(max_examples=25, deadline=None)
@given(value=st.one_of(BAD, st.floats(min_value=1.0001), st.floats(max_value=-1e-6)))
def test_quantiles_are_checked_before_sampling(value):
    if isinstance(value, float | list | torch.Tensor) and not isinstance(value, bool):
        q = torch.as_tensor(value, dtype=torch.float64)
        if q.numel() and bool(((q >= 0) & (q <= 1)).all()):
            return  # a valid form
    expect_error("quantiles", fitted_guide().quantiles, value)


@settings(max_examples=25, deadline=None)
@given(value=BAD)
def test_model_guide_and_options_of_the_diagnostics(value):
    guide = fitted_guide()
    entry_points = (
        pyro_nf.reweighted_summary,
        pyro_nf.to_inference_data,
        pyro_nf.psis_khat,
        pyro_nf.log_evidence,
        pyro_nf.diagnose,
        pyro_nf.log_importance_weights,
    )
    for fn in entry_points:
        if not callable(value):
            expect_error("model", fn, value, guide, X, num_samples=30)
            expect_error("guide", fn, model, value, X, num_samples=30)
        if value is not None:
            expect_error("model_kwargs", fn, model, guide, num_samples=30, model_kwargs=value)
    if not callable(value):
        expect_error("model", pyro_nf.fit, value, guide, X)
        expect_error("guide", pyro_nf.fit, model, value, X)
    if not isinstance(value, float) or not value > 0 or not math.isfinite(value):
        expect_error("lr", pyro_nf.fit, model, guide, X, lr=value)
    if value is not None and not isinstance(value, bool):
        expect_error("early_stopping", pyro_nf.fit, model, guide, X, early_stopping=value)
    if value is not None and not isinstance(value, dict):
        expect_error("model_kwargs", pyro_nf.fit, model, guide, model_kwargs=value)
    if value is not None and not isinstance(value, bool):
        expect_error("history", pyro_nf.diagnose, model, guide, X, history=value)
    expect_error(
        "max_plate_nesting",
        pyro_nf.psis_khat,
        model,
        guide,
        X,
        max_plate_nesting=-1 if value is None else "x",
    )
    expect_error("foo", pyro_nf.psis_khat, model, guide, X, foo=value)


@settings(max_examples=25, deadline=None)
@given(value=BAD)
def test_amortized_guide_arguments(value):
    flow, encoder = pyro_nf.planar(2, context_dim=4), torch.nn.Linear(1, 4)
    if not isinstance(value, str) or not value:
        expect_error("site", pyro_nf.AmortizedFlowGuide, value, flow, encoder)
    expect_error("flow", pyro_nf.AmortizedFlowGuide, "z", value, encoder)
    if not callable(value):
        expect_error("encoder", pyro_nf.AmortizedFlowGuide, "z", flow, value)
    if not callable(value) and not (isinstance(value, str) and value):
        expect_error("plate", pyro_nf.AmortizedFlowGuide, "z", flow, encoder, plate=value)
    if value is not None:
        expect_error("support", pyro_nf.AmortizedFlowGuide, "z", flow, encoder, support=value)
