"""Tests for :mod:`pyro_nf.plotting` (Agg backend): figures are drawn and written, inputs are
validated, and a missing matplotlib gives an ImportError naming the ``examples`` extra."""

from __future__ import annotations

import math
import sys

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import pyro_nf  # noqa: E402
from pyro_nf.density.estimator import DensityEstimator  # noqa: E402
from pyro_nf.plotting import plot_density_2d, plot_samples_2d, plot_training_curve  # noqa: E402
from pyro_nf.training.loop import History  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_density_heatmap_from_each_kind_of_target(tmp_path):
    torch.manual_seed(0)
    flow = pyro_nf.realnvp(2, depth=2, hidden=(8,))
    est = DensityEstimator("maf", dim=2, depth=1, hidden=[8])
    normal = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    fig, axes = plt.subplots(1, 4, figsize=(12, 3))
    targets = [flow(), est, normal, lambda x: -0.5 * (x**2).sum(-1)]
    for ax, target in zip(axes, targets, strict=True):
        out = plot_density_2d(target, ax=ax, lim=((-3, 3), (-2, 2)), n=40)
        assert out is ax and len(ax.images) == 1
        image = ax.images[0].get_array()
        assert image.shape == (40, 40) and float(image.min()) >= 0 and float(image.max()) > 0
        assert ax.get_xlim() == (-3, 3) and ax.get_ylim() == (-2, 2)
    path = tmp_path / "densities.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000


def test_density_heatmap_values_and_log_mode():
    normal = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    ax = plot_density_2d(normal, lim=4.0, n=41, title="normal", colorbar=True)
    image = torch.as_tensor(ax.images[0].get_array())
    assert ax.get_title() == "normal" and len(ax.figure.axes) == 2  # plus the colorbar
    assert math.isclose(float(image.max()), 1 / (2 * math.pi), rel_tol=1e-3)  # the centre cell
    assert torch.argmax(image).item() == 20 * 41 + 20
    ax = plot_density_2d(normal, lim=4.0, n=41, log=True, log_floor=-5.0)
    log_image = torch.as_tensor(ax.images[0].get_array())
    top = -math.log(2 * math.pi)
    assert math.isclose(float(log_image.max()), top, rel_tol=1e-4)
    assert math.isclose(float(log_image.min()), top - 5.0, rel_tol=1e-6)


def test_density_heatmap_rejects_bad_targets():
    with pytest.raises(ValueError, match="^target: expected a callable"):
        plot_density_2d(42)
    with pytest.raises(ValueError, match="^target: expected a log-density that is finite"):
        plot_density_2d(lambda x: torch.full(x.shape[:-1], -math.inf), n=5)
    with pytest.raises(ValueError, match="^lim: expected"):
        plot_density_2d(lambda x: x.sum(-1), lim="big")


def test_samples_scatter(tmp_path):
    est = DensityEstimator("realnvp", dim=2, depth=2, hidden=[8])
    ax = plot_samples_2d(est.sample(300), lim=3.0, title="samples")
    assert ax.collections[-1].get_offsets().shape == (300, 2)
    assert ax.get_xlim() == (-3.0, 3.0) and ax.get_title() == "samples"
    plot_samples_2d([[0.0, 1.0], [2.0, 3.0]], ax=ax, color="red")
    assert len(ax.collections) == 2
    ax.figure.savefig(tmp_path / "samples.png")
    assert (tmp_path / "samples.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"^samples: expected an array of shape \(N, 2\)"):
        plot_samples_2d(torch.zeros(5, 3))


def test_training_curve_from_a_fit(tmp_path):
    x = pyro_nf.targets.two_moons(400, generator=0)
    est = DensityEstimator("maf", dim=2, depth=1, hidden=[8], standardize=True)
    history = est.fit(x, steps=60, lr=1e-2, validate_every=20, progress=False)
    ax = plot_training_curve(history, title="fit")
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["loss", "smoothed", "validation"]
    assert len(ax.get_lines()[0].get_xdata()) == 60 and len(ax.get_lines()[2].get_xdata()) == 3
    ax.figure.savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
    # NaN losses (rolled-back steps) are skipped; no validation: two lines
    h = History(losses=[2.0, math.nan, 1.0], smoothed=[2.0, 2.0, 1.5])
    ax = plot_training_curve(h, log_scale=True)
    assert len(ax.get_lines()) == 2 and list(ax.get_lines()[0].get_xdata()) == [0, 2]
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="^history: expected a pyro_nf History"):
        plot_training_curve([1.0, 2.0])


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pyro-nf\[examples\]"):
        plot_samples_2d(torch.zeros(3, 2))


def test_axis_labels_default_custom_none_and_bad():
    normal = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    ax = plot_density_2d(normal, n=10, colorbar=True)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x1", "x2")
    assert ax.figure.axes[-1].get_ylabel() == "density"  # the colorbar's label
    ax = plot_density_2d(normal, n=10, log=True, colorbar=True, labels=("theta", "log tau"))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("theta", "log tau")
    assert ax.figure.axes[-1].get_ylabel() == "log density"
    ax = plot_samples_2d(torch.randn(20, 2), labels=None)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("", "")
    ax = plot_samples_2d(torch.randn(20, 2), labels=["a", "b"])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("a", "b")
    figures = len(plt.get_fignums())
    for bad in ("x", ("x",), ("x", "y", "z"), 3):
        with pytest.raises(ValueError, match="^labels: expected None or two axis labels"):
            plot_density_2d(normal, n=10, labels=bad)
        with pytest.raises(ValueError, match="^labels: expected None or two axis labels"):
            plot_samples_2d(torch.randn(5, 2), labels=bad)
    assert len(plt.get_fignums()) == figures  # refused before drawing anything
