"""Issue 17, flow kinds: bad arguments are refused early with a message that starts with the
user's argument name; absurd sizes are refused before anything is allocated; log-densities at
the numeric edges are -inf (never NaN); float32 planar/radial flows with huge parameters warn."""

from __future__ import annotations

import re
import time
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyro_nf
from pyro_nf.flows import (
    build_flow,
    diagonal,
    gaussian,
    iaf,
    maf,
    nice,
    planar,
    radial,
    realnvp,
)
from pyro_nf.flows.layers import AutoregressiveLayer, CouplingLayer, PermuteLayer, PlanarLayer
from pyro_nf.transforms import FLOAT32_SAFE_MAGNITUDE, PlanarTransform, RadialTransform
from pyro_nf.utils.nn import MADE, MLP

BUILDERS = {
    "planar": planar,
    "radial": radial,
    "iaf": iaf,
    "maf": maf,
    "nice": nice,
    "realnvp": realnvp,
    "gaussian": gaussian,
    "diagonal": diagonal,
}
WITH_DEPTH = ("planar", "radial", "iaf", "maf", "nice", "realnvp")
WITH_HIDDEN = ("iaf", "maf", "nice", "realnvp")


def refused(argname: str, fn, *args, **kwargs) -> str:
    """Call ``fn`` and assert a ValueError/TypeError whose message starts with ``argname:``."""
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{argname}:"), message
    return message


# -- wrong types and values of builder arguments ---------------------------------------------

BAD_INTS = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.booleans(),
    st.lists(st.integers(1, 3), max_size=2),
    st.just(None),
)
BAD_WIDTHS = st.one_of(
    st.lists(st.integers(max_value=0), min_size=1, max_size=3),
    st.lists(st.floats(min_value=1.0, max_value=3e9), min_size=1, max_size=2),
    st.text(min_size=1, max_size=4),
    st.integers(),
    st.lists(st.booleans(), min_size=1, max_size=2),
)
BAD_CHOICES = st.one_of(
    st.text(max_size=6).filter(lambda s: s not in ("reverse", "random", "sigmoid", "affine")),
    st.integers(),
    st.floats(),
    st.lists(st.text(max_size=2), max_size=2),
)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@settings(max_examples=25, deadline=None)
@given(bad=BAD_INTS)
def test_builders_refuse_bad_dim(name, bad):
    refused("dim", BUILDERS[name], bad)


@pytest.mark.parametrize("name", WITH_DEPTH)
@settings(max_examples=25, deadline=None)
@given(bad=BAD_INTS.filter(lambda v: v is not None))
def test_builders_refuse_bad_depth(name, bad):
    refused("depth", BUILDERS[name], 2, depth=bad)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@settings(max_examples=25, deadline=None)
@given(bad=BAD_INTS.filter(lambda v: v is not None))
def test_builders_refuse_bad_context_dim(name, bad):
    refused("context_dim", BUILDERS[name], 2, context_dim=bad)


@pytest.mark.parametrize("name", WITH_HIDDEN)
@settings(max_examples=25, deadline=None)
@given(bad=BAD_WIDTHS)
def test_builders_refuse_bad_hidden(name, bad):
    refused("hidden", BUILDERS[name], 2, depth=1, hidden=bad)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@settings(max_examples=25, deadline=None)
@given(bad=BAD_WIDTHS)
def test_builders_refuse_bad_context_hidden(name, bad):
    refused("context_hidden", BUILDERS[name], 2, context_dim=2, context_hidden=bad)


@pytest.mark.parametrize("name", WITH_DEPTH)
@settings(max_examples=25, deadline=None)
@given(bad=BAD_CHOICES)
def test_builders_refuse_bad_base(name, bad):
    refused("base", BUILDERS[name], 2, base=bad)


@pytest.mark.parametrize("name", ("iaf", "maf"))
@settings(max_examples=25, deadline=None)
@given(permute=BAD_CHOICES, update=BAD_CHOICES)
def test_autoregressive_refuse_bad_permute_and_update(name, permute, update):
    refused("permute", BUILDERS[name], 3, permute=permute)
    refused("update", BUILDERS[name], 3, update=update)


@pytest.mark.parametrize("name", ("planar", "radial"))
@settings(max_examples=25, deadline=None)
@given(bad=BAD_CHOICES)
def test_map_flows_refuse_bad_init(name, bad):
    refused("init", BUILDERS[name], 2, init=bad)


def test_the_hidden_cases_of_the_issue():
    for bad in ([-5], "abc", [0], [2e9], [True]):
        refused("hidden", iaf, 2, hidden=bad)
        refused("hidden", realnvp, 2, hidden=bad)
        refused("hidden", AutoregressiveLayer, 2, hidden=bad)
        refused("hidden", CouplingLayer, 2, hidden=bad)
        refused("hidden", MLP, 2, 2, hidden=bad)
        refused("hidden", MADE, 2, hidden=bad)
    refused("permute", maf, 3, permute="sideways")
    refused("perm", PermuteLayer, 3, perm=[0, 0, 1])
    refused("perm", PermuteLayer, 3, perm=torch.tensor([0.0, 1.0, 2.0]))


def test_vae_front_end_names_its_own_arguments():
    from pyro_nf.vae import flow_vae

    message = refused("flow", flow_vae, 8, flow="x")
    assert "expected one of" in message
    refused("flow_hidden", flow_vae, 8, flow="iaf", z_dim=2, hidden=(4,), flow_hidden=[0])
    refused("hidden", flow_vae, 8, flow="iaf", z_dim=2, hidden="abc")
    refused("depth", flow_vae, 8, flow="iaf", z_dim=2, hidden=(4,), depth=0)


# -- values, contexts and sample shapes ------------------------------------------------------

DTYPE_MESSAGE = re.escape(
    "expected dtype float32 (the flow's dtype), got float64; convert with .to(torch.float32) "
    "or the flow with .double()"
)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_float64_value_and_context_on_a_float32_flow(name):
    flow = BUILDERS[name](2)
    with pytest.raises(ValueError, match="^value: " + DTYPE_MESSAGE):
        flow().log_prob(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="^value: " + DTYPE_MESSAGE):
        pyro_nf.FlowDistribution(flow, validate_args=False).log_prob(
            torch.zeros(3, 2, dtype=torch.float64)
        )
    amortized = BUILDERS[name](2, context_dim=3)
    for call in (amortized, amortized.build_transforms, pyro_nf.FlowDistribution.__new__):
        if call is pyro_nf.FlowDistribution.__new__:
            call = lambda c: pyro_nf.FlowDistribution(amortized, c)  # noqa: E731
        with pytest.raises(ValueError, match="^context: " + DTYPE_MESSAGE):
            call(torch.zeros(4, 3, dtype=torch.float64))
    # the float64 flow takes float64 values, and refuses float32 ones the same way
    with pytest.raises(ValueError, match="^value: expected dtype float64"):
        flow.double()().log_prob(torch.zeros(3, 2))


def test_meta_tensors_are_refused():
    flow, amortized = planar(2), iaf(2, context_dim=3)
    meta = "expected a tensor with data, got a tensor on the 'meta' device"
    with pytest.raises(ValueError, match="^value: " + re.escape(meta)):
        flow().log_prob(torch.zeros(3, 2, device="meta"))
    with pytest.raises(ValueError, match="^context: " + re.escape(meta)):
        amortized(torch.zeros(4, 3, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_device_mismatch_is_refused():
    flow = planar(2)
    with pytest.raises(ValueError, match="^value: expected a tensor on the flow's device cpu"):
        flow().log_prob(torch.zeros(3, 2, device="cuda"))
    with pytest.raises(ValueError, match="^context: expected a tensor on the flow's device"):
        iaf(2, context_dim=3).cuda()(torch.zeros(4, 3))


@settings(max_examples=25, deadline=None)
@given(
    shape=st.one_of(
        st.lists(st.integers(max_value=-1), min_size=1, max_size=2).map(tuple),
        st.lists(st.floats(), min_size=1, max_size=2).map(tuple),
        st.text(max_size=3),
        st.just((True,)),
    )
)
def test_bad_sample_shapes(shape):
    q = planar(2, depth=1)()
    for method in (q.sample, q.rsample, q.rsample_and_log_prob):
        refused("sample_shape", method, shape)


@settings(max_examples=25, deadline=None)
@given(
    value=st.one_of(
        st.integers(1, 4).flatmap(lambda d: st.just(torch.zeros(2, d + 2))),
        st.just(torch.zeros(3, 2, dtype=torch.long)),
        st.just(torch.zeros(3, 2, dtype=torch.float64)),
        st.just(torch.full((3, 2), float("nan"))),
        st.lists(st.floats(), min_size=2, max_size=2),
        st.just(torch.zeros(7, 2)),
    )
)
def test_bad_values(value):
    q = iaf(2, depth=1, context_dim=3)(torch.zeros(5, 3))
    refused("value", q.log_prob, value)


# -- absurd sizes: refused before anything is allocated --------------------------------------

ABSURD = [
    (lambda: iaf(2, hidden=[2_000_000_000]), "hidden"),
    (lambda: maf(2, hidden=[2**40, 2**40]), "hidden"),
    (lambda: planar(2, depth=10**9), "depth"),
    (lambda: radial(2, depth=10**12), "depth"),
    (lambda: realnvp(4, depth=10**9), "depth"),
    (lambda: iaf(10**9), "dim"),
    (lambda: nice(10**9, depth=1), "dim"),
    (lambda: gaussian(10**6), "dim"),
    (lambda: diagonal(2**31), "dim"),
    (lambda: planar(2, context_dim=10**10), "context_dim"),
    (lambda: planar(2, context_dim=4, context_hidden=[10**6, 10**6]), "context_hidden"),
    (lambda: build_flow("maf", dim=2, depth=10**9), "depth"),
    (lambda: build_flow({"name": "iaf", "kwargs": {"dim": 10**9}}), "dim"),
    (lambda: build_flow("stack", parts=[("planar", {"dim": 2, "depth": 10**10})]), "depth"),
    (lambda: PlanarLayer(2, depth=10**10), "depth"),
    (lambda: MLP(2, 2, hidden=[10**6, 10**6]), "hidden"),
    (lambda: MADE(2, hidden=[10**6, 10**6]), "hidden"),
]


@pytest.mark.parametrize("make,argname", ABSURD)
def test_absurd_sizes_are_refused_fast(make, argname):
    t0 = time.perf_counter()
    message = refused(argname, make)
    assert time.perf_counter() - t0 < 1.0
    assert "2**31 parameters (MAX_PARAMETERS)" in message


def test_sizes_under_the_ceiling_still_build():
    assert iaf(3, hidden=[64, 64]).dim == 3
    assert planar(2, depth=1000).dim == 2


def test_build_flow_names_unknown_and_missing_spec_fields():
    refused("hiden", build_flow, "maf", dim=2, hiden=[8])
    refused("dim", build_flow, "maf", depth=2)
    refused("partz", build_flow, "stack", partz=[])
    refused("dim", build_flow, {"name": "planar", "kwargs": {}})
    refused("depth", build_flow, ("iaf", {"dim": 2, "depth": "x"}))


# -- numerics at the edges ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize(
    "dtype,values",
    [(torch.float32, (2e19, 1e30, 3e38)), (torch.float64, (1e200, 1e300, 1.7e308))],
)
def test_log_prob_far_out_is_minus_inf_not_nan(name, dtype, values):
    torch.manual_seed(0)
    kwargs = {"init": "random"} if name in ("planar", "radial") else {}
    flow = BUILDERS[name](2, **kwargs).to(dtype)
    for v in values:
        lp = flow().log_prob(torch.tensor([[v, -v], [v, v], [0.0, v]], dtype=dtype))
        assert not bool(torch.isnan(lp).any()), (name, v, lp)
        assert bool((lp == -torch.inf).all()), (name, v, lp)


def test_radial_far_out_with_offset_centres():
    t = RadialTransform(torch.full((3, 2), 5.0), torch.randn(3), torch.randn(3))
    x, ladj = t.inverse_and_log_det(torch.tensor([[3e19, 1.0], [1.0, -1e25]]))
    assert bool(torch.isfinite(x).all()) and bool((ladj == 0).all())


def _scaled(build, magnitude: float) -> pyro_nf.Flow:
    torch.manual_seed(0)
    flow = build(2, depth=2, init="random", base="standard")
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn_like(p) * magnitude)
    return flow


@pytest.mark.parametrize("build", [planar, radial])
def test_float32_huge_parameters_warn_with_float64_as_the_fix(build):
    flow = _scaled(build, 1e8)
    z = flow().sample((20,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flow().log_prob(z.clone())
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any("float64" in m and "FLOAT32_SAFE_MAGNITUDE" in m for m in messages), messages
    with warnings.catch_warnings():  # float64: no warning
        warnings.simplefilter("error")
        flow.double()().log_prob(z.double())


@pytest.mark.parametrize("build", [planar, radial])
def test_float32_within_the_safe_magnitude_is_consistent_and_quiet(build):
    flow = _scaled(build, FLOAT32_SAFE_MAGNITUDE / 100)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        z, log_q = flow().rsample_and_log_prob((200,))
        again = flow().log_prob(z.clone())
    assert torch.allclose(again, log_q, rtol=1e-3, atol=1e-3 * float(log_q.abs().max()))


def test_planar_transform_warns_directly():
    t = PlanarTransform(torch.full((1, 2), 1e7), torch.ones(1, 2), torch.zeros(1))
    with pytest.warns(UserWarning, match="float64"):
        t.inverse_and_log_det(torch.zeros(3, 2))
