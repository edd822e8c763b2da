"""Tests for :mod:`pyro_nf.density`: maximum likelihood recovers known densities, fitted 2-D
densities integrate to 1, sampling agrees with log_prob (KS), planar's inverse is trainable,
early stopping restores the best parameters, conditional fits, bit-exact save/load, and every
bad-data case raises a ValueError naming the argument."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from scipy import stats

import pyro_nf
from pyro_nf.density.estimator import (
    DensityEstimator,
    build_flow,
    density_grid_2d,
    fit_density,
    flow_spec,
    register_builder,
    train_val_split,
)
from pyro_nf.training.loop import EarlyStopping

MOONS_LIM = ((-4.0, 5.0), (-3.0, 3.5))


def gaussian_data(n=5000, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor([1.0, -2.0], dtype=dtype)
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]], dtype=dtype)
    L = torch.linalg.cholesky(cov)
    return torch.randn(n, 2, generator=gen, dtype=dtype) @ L.T + mean, mean, cov


@pytest.fixture(scope="module")
def moons():
    return pyro_nf.targets.two_moons(3000, noise=0.05, generator=0)


@pytest.fixture(scope="module")
def fitted(moons):
    """Briefly fitted MAF, RealNVP and planar estimators (shared by several tests)."""
    specs = {
        "maf": dict(flow="maf", dim=2, depth=3, hidden=[32, 32]),
        "realnvp": dict(flow="realnvp", dim=2, depth=4, hidden=[32, 32]),
        "planar": dict(flow="planar", dim=2, depth=8),
    }
    out = {}
    for name, kw in specs.items():
        torch.manual_seed(0)
        est = DensityEstimator(standardize=True, **kw)
        est.fit(moons[:2000], steps=150, batch_size=500, lr=1e-2, progress=False)
        out[name] = est
    return out


# -- maximum likelihood recovers known densities -----------------------------------------------


def test_ml_recovers_gaussian_mle():
    x, mean, cov = gaussian_data()
    torch.manual_seed(0)
    est = fit_density(
        "gaussian", x, steps=600, lr=0.05, batch_size=len(x), val_fraction=0, progress=False
    )
    t = est.flow.build_transforms()[0]
    loc, L = t.loc.detach(), t.scale_tril.detach()
    mle_mean, mle_cov = x.mean(0), torch.cov(x.T, correction=0)
    assert torch.allclose(loc, mle_mean, atol=5e-3)
    assert torch.allclose(L @ L.T, mle_cov, atol=1e-2)
    assert torch.allclose(loc, mean, atol=0.06) and torch.allclose(L @ L.T, cov, atol=0.1)
    mle = torch.distributions.MultivariateNormal(mle_mean, mle_cov)
    assert abs(est.nll(x) - float(-mle.log_prob(x).mean())) < 1e-3


def test_ml_maf_matches_gaussian_entropy():
    x, mean, cov = gaussian_data(4000, seed=1)
    torch.manual_seed(0)
    est = fit_density(
        "maf",
        x,
        builder_kwargs=dict(depth=2, hidden=[16]),
        steps=400,
        lr=1e-2,
        batch_size=1000,
        standardize=True,
        progress=False,
    )
    x_test = gaussian_data(4000, seed=2)[0]
    truth = torch.distributions.MultivariateNormal(mean, cov)
    assert abs(est.nll(x_test) - float(-truth.log_prob(x_test).mean())) < 0.03


def test_standardization_jacobian_on_original_scale():
    gen = torch.Generator().manual_seed(0)
    x = 100.0 * torch.randn(4000, 2, generator=gen, dtype=torch.float64) + 5000.0
    torch.manual_seed(0)
    est = DensityEstimator("diagonal", dim=2, standardize=True).double()
    est.fit(x, steps=300, lr=0.05, batch_size=4000, val_fraction=0, progress=False)
    # the training rows are standardized: the flow itself sees N(0, I) data
    assert torch.allclose(est.loc, x.mean(0)) and torch.allclose(est.scale, x.std(0, False))
    entropy = math.log(2 * math.pi * math.e) + 2 * math.log(100.0)
    assert abs(est.nll(x) - entropy) < 0.05  # without the Jacobian it would be ~2.84
    # exact identity: log q(x) = log q~((x - mu)/sigma) - sum log sigma
    z = (x[:7] - est.loc) / est.scale
    expect = est.flow().log_prob(z) - est.scale.log().sum()
    assert torch.allclose(est.log_prob(x[:7]), expect, rtol=0, atol=1e-12)
    assert est.log_prob(x[:7]).dtype == torch.float64


# -- normalization and sampling agree with the density ------------------------------------------


def _grid_integral(est, n=400):
    xs, ys, log_p = density_grid_2d(est, lim=MOONS_LIM, n=n)
    dx, dy = float(xs[1] - xs[0]), float(ys[1] - ys[0])
    return xs, ys, log_p.double().exp(), dx, dy


@pytest.mark.parametrize("name", ["maf", "realnvp", "planar"])
def test_fitted_density_integrates_to_one(fitted, moons, name):
    est = fitted[name]
    assert est.nll(moons[2000:]) < 1.6  # fitted: the Gaussian baseline is ~1.87
    _, _, p, dx, dy = _grid_integral(est)
    assert abs(float(p.sum()) * dx * dy - 1.0) < 1e-3


@pytest.mark.parametrize("name", ["maf", "planar"])
def test_samples_match_density_ks(fitted, name):
    est = fitted[name]
    xs, _, p, dx, dy = _grid_integral(est)
    marginal = p.sum(0) * dy  # p(x1) on the cell midpoints
    edges = torch.cat([xs[:1] - dx / 2, xs + dx / 2]).double().numpy()
    cdf_edges = np.concatenate([[0.0], np.cumsum(marginal.numpy() * dx)])
    assert abs(cdf_edges[-1] - 1.0) < 1e-3
    torch.manual_seed(1)
    samples = est.sample(2000)[:, 0].double().numpy()
    result = stats.kstest(samples, lambda v: np.interp(v, edges, cdf_edges))
    assert result.pvalue > 0.01, result


# -- planar through its inverse -----------------------------------------------------------------


def test_planar_inverse_is_trainable(moons):
    torch.manual_seed(0)
    est = DensityEstimator("planar", dim=2, depth=8, standardize=True)
    history = est.fit(moons[:2000], steps=1, lr=1e-12, val_fraction=0, progress=False)
    before = est.nll(moons[2000:])  # the (standardized) initialization: a Gaussian
    history = est.fit(moons[:2000], steps=200, batch_size=500, lr=1e-2, progress=False)
    after = est.nll(moons[2000:])
    assert after < before - 0.4, (before, after)
    assert history.val_losses and all(p.grad is not None for p in est.flow.parameters())


def test_planar_log_prob_gradcheck_wrt_data():
    torch.manual_seed(0)
    est = DensityEstimator("planar", dim=2, depth=4).double()
    with torch.no_grad():
        for p in est.flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
        est.loc.copy_(torch.tensor([0.3, -0.2]))
        est.scale.copy_(torch.tensor([1.5, 0.7]))
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: est.log_prob(v), (x,))


@pytest.mark.parametrize(
    "spec",
    [
        dict(flow="iaf", depth=1, hidden=[16]),
        dict(flow="radial", depth=4),
        dict(flow="nice", depth=2, hidden=[16]),
        dict(
            flow="stack",
            parts=[
                ("maf", {"dim": 2, "depth": 1, "hidden": [16]}),
                ("planar", {"dim": 2, "depth": 2, "base": "standard"}),
                ("radial", {"dim": 2, "depth": 2, "base": "standard"}),
            ],
        ),
    ],
    ids=["iaf", "radial", "nice", "mixed"],
)
def test_every_family_fits(moons, spec):
    kw = dict(spec)
    if kw["flow"] != "stack":
        kw["dim"] = 2
    torch.manual_seed(0)
    est = DensityEstimator(standardize=True, **kw)
    h = est.fit(moons[:1000], steps=60, batch_size=500, lr=1e-2, validate_every=20, progress=False)
    first, best = h.val_losses[0][1], min(v for _, v in h.val_losses)
    assert math.isfinite(best) and best < first
    assert est.sample(5).shape == (5, 2)


# -- early stopping and restoring the best parameters -------------------------------------------


def test_early_stopping_restores_best_validation_parameters():
    x = pyro_nf.targets.two_moons(60, noise=0.05, generator=3)
    torch.manual_seed(0)
    est = DensityEstimator("maf", dim=2, depth=4, hidden=[64, 64], standardize=True)
    h = est.fit(
        x,
        steps=3000,
        lr=1e-2,
        val_fraction=0.5,
        validate_every=10,
        seed=4,
        early_stopping=EarlyStopping(patience=300),
        progress=False,
    )
    _, va = train_val_split(60, 0.5, seed=4)
    vals = [v for _, v in h.val_losses]
    assert h.converged and h.stop_reason == "converged" and h.num_steps < 3000
    assert vals[-1] > min(vals) + 0.1  # it overfitted after the best step ...
    assert est.nll(x[va]) == min(vals)  # ... and the best parameters are back, bit for bit
    assert h.best_step == min(h.val_losses, key=lambda sv: sv[1])[0]


def test_weight_decay_uses_adamw():
    x, _, _ = gaussian_data(300)

    def run(**kw):
        torch.manual_seed(0)
        est = DensityEstimator("diagonal", dim=2)
        est.fit(x, steps=5, lr=0.1, val_fraction=0, progress=False, **kw)
        return est.flow.layers[0].params.detach()

    plain, decayed = run(), run(weight_decay=0.5)
    adamw = run(optimizer=lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.5))
    assert not torch.equal(plain, decayed) and torch.equal(decayed, adamw)
    with pytest.raises(ValueError, match="^weight_decay: expected 0 when an optimizer"):
        run(weight_decay=0.1, optimizer="sgd")


def test_explicit_validation_set_and_no_validation():
    x, _, _ = gaussian_data(600)
    est = DensityEstimator("diagonal", dim=2)
    h = est.fit(x[:500], x_val=x[500:], steps=40, lr=0.05, validate_every=10, progress=False)
    assert [s for s, _ in h.val_losses] == [9, 19, 29, 39]
    assert est.nll(x[500:]) == min(v for _, v in h.val_losses)
    h = est.fit(x, steps=20, val_fraction=0, progress=False)
    assert h.val_losses == [] and h.num_steps == 20


# -- conditional density estimation -------------------------------------------------------------


def test_conditional_density_recovers_gaussian_given_context():
    gen = torch.Generator().manual_seed(0)
    y = 4 * torch.rand(4000, 1, generator=gen) - 2
    x = torch.cat([y, -y], dim=-1) + 0.5 * torch.randn(4000, 2, generator=gen)
    torch.manual_seed(0)
    est = DensityEstimator("diagonal", dim=2, context_dim=1, standardize=True)
    est.fit(x[:3000], context=y[:3000], steps=500, lr=0.03, batch_size=1000, progress=False)
    torch.manual_seed(1)
    s = est.sample(4000, context=torch.tensor([1.0]))
    assert s.shape == (4000, 2)
    assert torch.allclose(s.mean(0), torch.tensor([1.0, -1.0]), atol=0.04)
    assert torch.allclose(s.std(0), torch.tensor([0.5, 0.5]), atol=0.03)
    true_nll = math.log(2 * math.pi * 0.25) + 1.0
    assert abs(est.nll(x[3000:], y[3000:]) - true_nll) < 0.03
    assert est.sample(3, context=torch.zeros(5, 1)).shape == (3, 5, 2)
    assert est.log_prob(torch.zeros(2), context=torch.zeros(7, 1)).shape == (7,)


def test_conditional_maf_uses_the_context():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(2000, 1, generator=gen)
    x = torch.cat([2 * y, y**2], dim=-1) + 0.3 * torch.randn(2000, 2, generator=gen)
    torch.manual_seed(0)
    cond = DensityEstimator("maf", dim=2, depth=2, hidden=[32], context_dim=1, standardize=True)
    cond.fit(x[:1500], y[:1500], steps=300, batch_size=500, lr=1e-2, progress=False)
    torch.manual_seed(0)
    marg = DensityEstimator("maf", dim=2, depth=2, hidden=[32], standardize=True)
    marg.fit(x[:1500], steps=300, batch_size=500, lr=1e-2, progress=False)
    assert cond.nll(x[1500:], y[1500:]) < marg.nll(x[1500:]) - 1.0


# -- save / load --------------------------------------------------------------------------------


def test_save_load_bit_exact_with_spec_context_and_float64(tmp_path):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    x = y[:, :2] + 0.3 * torch.randn(300, 2, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    est = DensityEstimator(
        "maf", dim=2, depth=2, hidden=[16], context_dim=3, standardize=True
    ).double()
    est.fit(x, y, steps=30, lr=1e-2, validate_every=10, progress=False)
    path = tmp_path / "sub" / "est.pt"
    est.save(path)
    assert os.listdir(path.parent) == ["est.pt"]  # atomic: no temporary file left behind
    loaded = DensityEstimator.load(path)
    assert loaded.standardize and loaded.loc.dtype == torch.float64
    assert torch.equal(loaded.log_prob(x, y), est.log_prob(x, y))
    assert torch.equal(loaded.loc, est.loc) and torch.equal(loaded.context_scale, est.context_scale)
    assert loaded.history.val_losses == est.history.val_losses
    assert flow_spec(loaded.flow) == flow_spec(est.flow)


def test_save_load_mixed_stack_and_hand_built_flow(tmp_path, moons):
    torch.manual_seed(0)
    est = DensityEstimator(
        "stack",
        parts=[
            ("realnvp", {"dim": 2, "depth": 2, "hidden": [8]}),
            ("radial", {"dim": 2, "depth": 2, "base": "standard"}),
        ],
    )
    est.fit(moons[:200], steps=10, progress=False)
    est.save(tmp_path / "mixed.pt")
    assert torch.equal(
        DensityEstimator.load(tmp_path / "mixed.pt").log_prob(moons), est.log_prob(moons)
    )

    def by_hand():
        return pyro_nf.Flow(2, [pyro_nf.LowerTriangularAffineLayer(2), pyro_nf.PlanarLayer(2, 3)])

    est = DensityEstimator(by_hand(), standardize=True)
    est.fit(moons[:200], steps=10, progress=False)
    est.save(tmp_path / "hand.pt")
    with pytest.raises(ValueError, match="^flow: this file holds no flow spec"):
        DensityEstimator.load(tmp_path / "hand.pt")
    loaded = DensityEstimator.load(tmp_path / "hand.pt", flow=by_hand())
    assert torch.equal(loaded.log_prob(moons), est.log_prob(moons))
    with pytest.raises(ValueError, match="^flow: expected dim=2"):
        DensityEstimator.load(tmp_path / "hand.pt", flow=pyro_nf.planar(3))
    with pytest.raises(ValueError, match="^flow: expected a flow whose parameters match"):
        DensityEstimator.load(tmp_path / "hand.pt", flow=pyro_nf.planar(2))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="^path: expected a file written by"):
        DensityEstimator.load(tmp_path / "junk.pt")


def test_spec_registry():
    register_builder(
        "test_tiny", lambda dim: pyro_nf.maf(dim, depth=1, hidden=(4,)), overwrite=True
    )
    assert flow_spec(build_flow("test_tiny", dim=3)) == {"name": "test_tiny", "kwargs": {"dim": 3}}
    with pytest.raises(ValueError, match="^name: expected one of"):
        build_flow("nope", dim=2)
    with pytest.raises(ValueError, match=r"^kwargs\['hidden'\]\[0\]: expected plain data"):
        build_flow("maf", dim=2, hidden=[torch.tensor(3)])
    with pytest.raises(ValueError, match="^builder_kwargs: expected none with a Flow"):
        DensityEstimator(pyro_nf.maf(2), depth=3)


# -- bad data -----------------------------------------------------------------------------------


def _x(n=20, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def _with(x, row, value):
    x = x.clone()
    x[row, 1] = value
    return x


BAD_FIT = {
    "nan row": (dict(x=_with(_x(), 3, math.nan)), r"^x: expected finite values, got 1 of 20 rows"),
    "inf row": (dict(x=_with(_x(), 5, math.inf)), r"^x: expected finite values.*drop_nonfinite"),
    "wrong dim": (dict(x=torch.randn(20, 3)), r"^x: expected a tensor of shape \(N, 2\)"),
    "1-d": (dict(x=torch.randn(20)), r"^x: expected a tensor of shape \(N, 2\)"),
    "not an array": (dict(x="data"), r"^x: expected a torch.Tensor"),
    "complex": (dict(x=torch.randn(20, 2, dtype=torch.cfloat)), r"^x: expected real-valued"),
    "one row": (dict(x=_x(1), val_fraction=0), r"^x: expected at least 2 rows"),
    "no room for validation": (dict(x=_x(2)), r"^x: expected at least 3 rows \(2 for training, 1"),
    "constant column": (
        dict(x=_with(_x(), slice(None), 7.0)),
        r"^x: expected every column to vary, got 1 constant column\(s\) \[1\]",
    ),
    "bad val_fraction": (dict(x=_x(), val_fraction=1.0), r"^val_fraction: expected a float"),
    "val_fraction with x_val": (dict(x=_x(), x_val=_x(), val_fraction=0.2), r"^val_fraction"),
    "x_val wrong dim": (dict(x=_x(), x_val=torch.randn(5, 3)), r"^x_val: expected a tensor"),
    "x_val nan": (dict(x=_x(), x_val=_with(_x(5), 0, math.nan)), r"^x_val: expected finite"),
    "context for a direct flow": (dict(x=_x(), context=torch.randn(20, 1)), r"^context: this flow"),
    "bad steps": (dict(x=_x(), steps=0), r"^steps: expected an integer >= 1"),
    "bad weight_decay": (dict(x=_x(), weight_decay=-1.0), r"^weight_decay: expected a finite"),
}


@pytest.mark.parametrize("case", list(BAD_FIT), ids=list(BAD_FIT))
def test_bad_data_raises_naming_the_argument(case):
    kwargs, pattern = BAD_FIT[case]
    est = DensityEstimator("diagonal", dim=2)
    before = [p.detach().clone() for p in est.parameters()]
    with pytest.raises(ValueError, match=pattern):
        est.fit(progress=False, **{"steps": 5, **kwargs})
    assert all(torch.equal(a, b) for a, b in zip(before, est.parameters(), strict=True))


BAD_CONDITIONAL = {
    "missing": (dict(context=None), r"^context: this flow is amortized \(context_dim=1\)"),
    "row count": (dict(context=torch.randn(19, 1)), r"^context: expected 20 rows"),
    "width": (dict(context=torch.randn(20, 2)), r"^context: expected a tensor of shape \(N, 1\)"),
    "nan": (
        dict(context=_with(torch.randn(20, 2), 4, math.nan)[:, 1:]),
        r"^context: expected finite values, got 1 of 20 rows",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONDITIONAL), ids=list(BAD_CONDITIONAL))
def test_bad_context_raises(case):
    kwargs, pattern = BAD_CONDITIONAL[case]
    est = DensityEstimator("diagonal", dim=2, context_dim=1)
    with pytest.raises(ValueError, match=pattern):
        est.fit(_x(), steps=5, progress=False, **kwargs)


def test_bad_inputs_to_log_prob_and_sample():
    est = DensityEstimator("maf", dim=2, depth=1, hidden=[8])
    with pytest.raises(ValueError, match=r"^x: expected a tensor of shape \(\.\.\., 2\)"):
        est.log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match="^x: expected finite values"):
        est.log_prob(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="^context: this flow is directly parameterized"):
        est.log_prob(torch.zeros(2), context=torch.zeros(1))
    with pytest.raises(ValueError, match="^n: expected an integer >= 1"):
        est.sample(0)
    with pytest.raises(ValueError, match="^lim: expected finite limits"):
        density_grid_2d(est, lim=(1.0, -1.0))


def test_drop_nonfinite_opt_in_drops_and_warns():
    x = _x(100)
    x[[3, 50, 77], 0] = torch.tensor([math.nan, math.inf, -math.inf])
    est = DensityEstimator("diagonal", dim=2, standardize=True)
    with pytest.warns(UserWarning, match="^x: dropped 3 of 100 rows with NaN or inf"):
        est.fit(x, steps=5, val_fraction=0, drop_nonfinite=True, progress=False)
    clean = x[torch.isfinite(x).all(-1)]
    assert torch.allclose(est.loc, clean.mean(0)) and math.isfinite(est.nll(clean))
    ctx = torch.randn(100, 1)
    ctx[10] = math.nan
    est = DensityEstimator("diagonal", dim=2, context_dim=1)
    with pytest.warns(UserWarning, match="dropped 4 of 100 rows"):
        est.fit(x, ctx, steps=5, drop_nonfinite=True, progress=False)


# -- misc ---------------------------------------------------------------------------------------


def test_log_prob_batching_dtype_and_split():
    torch.manual_seed(0)
    est = DensityEstimator("realnvp", dim=2, depth=2, hidden=[8])
    x = torch.randn(50, 2, dtype=torch.float64)  # converted to the estimator's float32
    full = est.log_prob(x)
    assert full.dtype == torch.float32
    assert torch.allclose(est.log_prob(x, batch_size=7), full)
    tr, va = train_val_split(50, 0.2, seed=3)
    assert len(va) == 10 and len(set(tr.tolist()) | set(va.tolist())) == 50
    with pytest.raises(ValueError, match="^val_fraction"):
        train_val_split(10, -0.1)


def test_minibatches_are_seeded_and_resume_bit_identically(tmp_path):
    x, _, _ = gaussian_data(400)

    def run(steps, checkpoint=None):
        torch.manual_seed(0)
        est = DensityEstimator("maf", dim=2, depth=1, hidden=[8], standardize=True)
        est.fit(
            x,
            steps=steps,
            batch_size=64,
            lr=1e-2,
            val_fraction=0,
            progress=False,
            early_stopping=None,
            checkpoint=checkpoint,
            checkpoint_every=10,
        )
        return est

    a, b = run(40), run(40)
    assert torch.equal(a.log_prob(x), b.log_prob(x))
    ckpt = tmp_path / "ckpt.pt"
    run(20, ckpt)  # stops after 20 steps ...
    c = run(40, ckpt)  # ... and resumes to 40
    assert torch.equal(a.log_prob(x), c.log_prob(x))
