"""Issue 17, kind 6: VAE data are checked before training, and the error names the bad rows."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyro_nf.training
from pyro_nf.utils.hashing import tensor_sha256
from pyro_nf.vae import VAETrainConfig, evaluate_vae, fit_vae, flow_vae, train_vae
from pyro_nf.vae.training import run_fingerprint

D = 20


def _vae(likelihood: str = "bernoulli"):
    torch.manual_seed(0)
    return flow_vae(D, flow="diag", z_dim=2, hidden=(8,), likelihood=likelihood)


def _binary(n: int = 1000) -> torch.Tensor:
    return (torch.rand(n, D, generator=torch.Generator().manual_seed(1)) < 0.5).float()


def _fit(vae, train, valid=None):
    return fit_vae(vae, train, valid, epochs=1, batch_size=50, progress=False)


def test_grey_levels_under_a_bernoulli_likelihood_name_the_rows():
    x = _binary()
    x[[3, 17, 40, 500, 999]] = x[[3, 17, 40, 500, 999]] * 5
    x[3, 12] = 4.0
    x[3, :12] = 0.0
    vae = _vae()
    before = [p.detach().clone() for p in vae.parameters()]
    message = (
        "train_data: the Bernoulli likelihood needs values in [0, 1]; rows 3, 17, 40, 500, 999 "
        "(5 of 1000) have values outside, e.g. 4.0 at row 3, column 12"
    )
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        _fit(vae, x)
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters(), strict=True))


def test_many_bad_rows_are_elided():
    x = _binary(100)
    x[10:20] = 2.0
    with pytest.raises(ValueError, match=re.escape("rows 10, 11, 12, 13, 14, ... (10 of 100)")):
        _fit(_vae(), x)


def test_one_nan_pixel_is_refused_up_front_not_as_a_divergence():
    x = _binary()
    x[417, 3] = float("nan")
    message = (
        "train_data: expected finite values; row 417 (1 of 1000) has values NaN or inf, "
        "e.g. nan at row 417, column 3"
    )
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        _fit(_vae(), x)


def test_valid_data_and_evaluate_data_are_checked_too():
    x, bad = _binary(200), _binary(50)
    bad[7, 0] = -1.0
    with pytest.raises(ValueError, match=r"^valid_data: the Bernoulli .* row 7 \(1 of 50\)"):
        _fit(_vae(), x, bad)
    with pytest.raises(ValueError, match=r"^data: the Bernoulli .* row 7 \(1 of 50\)"):
        evaluate_vae(_vae(), bad, num_samples=2)
    config = VAETrainConfig(epochs=1, batch_size=50, progress=False)
    with pytest.raises(ValueError, match=r"^train_data: the Bernoulli"):
        train_vae(_vae(), bad, config=config)


def test_discretized_logistic_needs_grey_levels_in_the_unit_interval():
    raw = torch.randint(0, 256, (300, D)).float()  # forgot to divide by 255
    with pytest.raises(ValueError, match=r"^train_data: the discretized logistic likelihood"):
        _fit(_vae("discretized_logistic"), raw)
    _fit(_vae("discretized_logistic"), raw / 255)


def test_gaussian_accepts_any_finite_value_but_not_inf():
    x = torch.randn(200, D) * 100
    _fit(_vae("gaussian"), x)
    x[5, 5] = float("inf")
    with pytest.raises(ValueError, match=r"^train_data: expected finite values; row 5"):
        _fit(_vae("gaussian"), x)


@settings(max_examples=25, deadline=None)
@given(
    data=st.one_of(
        st.integers(1, 3).map(lambda k: torch.zeros(10, D + k)),
        st.just(torch.zeros(10)),
        st.just(torch.zeros(0, D)),
        st.just(torch.zeros(10, D, dtype=torch.complex64)),
        st.just(torch.zeros(10, D, device="meta")),
        st.lists(st.floats(0, 1), min_size=D, max_size=D).map(lambda row: [row]),
    )
)
def test_shape_dtype_and_kind_of_the_data(data):
    with pytest.raises(ValueError, match="^train_data: expected "):
        _fit(_vae(), data)


def test_integer_and_bool_data_are_still_accepted():
    x = _binary(100)
    _fit(_vae(), x.to(torch.uint8))
    _fit(_vae(), x.bool())


def test_resuming_with_other_data_is_refused(tmp_path):
    assert "fingerprint" in inspect.signature(pyro_nf.training.train).parameters
    x = _binary(200)
    ckpt = tmp_path / "vae.pt"
    kw = dict(epochs=1, batch_size=50, progress=False, checkpoint=ckpt)
    fit_vae(_vae(), x, **kw)
    fit_vae(_vae(), x, epochs=2, batch_size=50, progress=False, checkpoint=ckpt)  # same data
    other = 1 - x
    with pytest.raises(ValueError, match="train_data"):
        fit_vae(_vae(), other, epochs=3, batch_size=50, progress=False, checkpoint=ckpt)


def test_the_fingerprint_holds_the_data_hashes_and_the_architecture():
    x = _binary(10)
    fp = run_fingerprint(_vae(), x, x[:5])
    assert fp["train_data"] == tensor_sha256(x) and fp["valid_data"] == tensor_sha256(x[:5])
    assert fp["architecture"]["data_dim"] == D and fp["architecture"]["likelihood"] == (
        "BernoulliLikelihood"
    )
    assert run_fingerprint(_vae("gaussian"), x) != run_fingerprint(_vae(), x)
