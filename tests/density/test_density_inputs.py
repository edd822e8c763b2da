"""DensityEstimator takes the data as users have it: the flow's dim is inferred from the data,
NumPy arrays and pandas DataFrames are accepted (column names kept, saved, and checked on
scoring), and log_prob returns plain tensors unless a gradient is asked for."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pyro_nf import DensityEstimator, fit_density

pd = pytest.importorskip("pandas")


def _frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"height": rng.normal(170, 10, n), "weight": rng.normal(70, 5, n)})


@pytest.mark.parametrize("family", ["maf", "realnvp", "planar", "gaussian"])
def test_dim_is_inferred_from_the_data(family):
    est = DensityEstimator(family, standardize=True)
    assert est.dim is None and est.flow is None
    est.fit(np.random.default_rng(0).normal(size=(100, 3)), steps=5, progress=False)
    assert est.dim == 3 and est.flow.dim == 3 and est.loc.shape == (3,)
    assert est.log_prob(torch.zeros(2, 3)).shape == (2,)


def test_spec_without_dim_and_amortized():
    est = DensityEstimator({"name": "maf", "kwargs": {"depth": 1, "context_dim": 2}})
    x, c = torch.randn(50, 4), torch.randn(50, 2)
    est.fit(x, c, steps=3, progress=False)
    assert (est.dim, est.context_dim) == (4, 2)


def test_before_fit_every_method_says_what_to_do():
    est = DensityEstimator("maf")
    for call in (
        lambda: est.log_prob(torch.zeros(1, 2)),
        lambda: est.sample(3),
        lambda: est.distribution(),
        lambda: est.save("never.pt"),
    ):
        with pytest.raises(RuntimeError, match="call fit\\(x\\) first, or pass dim="):
            call()
    assert not os.path.exists("never.pt")


def test_bad_data_for_inference_names_x():
    with pytest.raises(ValueError, match="x: expected data of shape \\(N, D\\)"):
        DensityEstimator("maf").fit(torch.zeros(10), steps=1, progress=False)


def test_dataframe_columns_are_kept_saved_and_checked(tmp_path):
    df = _frame()
    est = fit_density("maf", df, standardize=True, steps=30, progress=False,
                      builder_kwargs={"depth": 1})  # fmt: skip
    assert est.feature_names == ("height", "weight")
    assert "feature_names=('height', 'weight')" in repr(est)
    path = tmp_path / "est.pt"
    est.save(path)
    loaded = DensityEstimator.load(path)
    assert loaded.feature_names == ("height", "weight")
    assert torch.equal(loaded.log_prob(df), est.log_prob(df.to_numpy()))
    with pytest.raises(ValueError, match="fitted columns \\['height', 'weight'\\]"):
        est.log_prob(df[["weight", "height"]])
    with pytest.raises(ValueError, match="x_val: expected a DataFrame with the fitted columns"):
        est.fit(df, x_val=df.rename(columns={"weight": "w"}), steps=1, progress=False)


def test_refit_on_unnamed_data_forgets_names():
    est = DensityEstimator("diagonal", dim=2)
    est.fit(_frame(), steps=2, progress=False)
    est.fit(np.zeros((20, 2)) + np.random.default_rng(1).normal(size=(20, 2)), steps=2,
            progress=False)  # fmt: skip
    assert est.feature_names is None


def test_non_numeric_columns_are_named():
    df = _frame().assign(city=["a"] * 200)
    with pytest.raises(ValueError, match="non-numeric columns \\['city'\\]"):
        DensityEstimator("maf").fit(df, steps=1, progress=False)


def test_damaged_feature_names_in_a_file_are_refused(tmp_path):
    est = DensityEstimator("diagonal", dim=2)
    est.feature_names = ("a", "b", "c")  # wrong length: what an edited file would hold
    path = tmp_path / "est.pt"
    est.save(path)
    with pytest.raises(ValueError, match="feature_names"):
        DensityEstimator.load(path)


def test_log_prob_needs_no_detach_unless_a_gradient_is_asked_for():
    est = DensityEstimator("realnvp", dim=2, depth=2)
    x = np.random.default_rng(0).normal(size=(5, 2))
    out = est.log_prob(x)
    assert not out.requires_grad and np.asarray(out).shape == (5,)
    assert est.log_prob(torch.tensor(x, dtype=torch.float32), grad=True).requires_grad
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    (g,) = torch.autograd.grad(est.log_prob(xt).sum(), xt)  # x requires grad: the graph is kept
    assert g.shape == (5, 2) and torch.isfinite(g).all()
    assert not est.log_prob(xt, grad=False).requires_grad
    with pytest.raises(TypeError, match="grad: expected None, True or False"):
        est.log_prob(x, grad="yes")
