"""Tests for pyro_nf.psis: PSIS / Pareto k-hat, ESS, log evidence and the diagnostics report."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from pyro_nf.diagnostics.psis import (
    MIN_PSIS_SAMPLES,
    ImportanceDiagnostics,
    importance_diagnostics,
    importance_ess,
    khat_threshold,
    khat_verdict,
    log_evidence,
    psis,
)

with warnings.catch_warnings():  # arviz 0.x warns about its upcoming refactor on import
    warnings.simplefilter("ignore")
    try:
        from arviz import psislw as arviz_psislw
    except ImportError:  # arviz >= 1.0 moved it
        arviz_psislw = None

needs_arviz = pytest.mark.skipif(arviz_psislw is None, reason="arviz.psislw is not available")

DTYPES = [torch.float32, torch.float64]


def _log_weights(kind: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Log weights with light to very heavy tails (float64 numpy)."""
    rng = np.random.default_rng(seed)
    if kind == "normal":  # log-normal weights
        return 1.5 * rng.standard_normal(shape)
    if kind == "student_t":  # very heavy right tail
        return rng.standard_t(3.0, size=shape)
    if kind == "lognormal":  # log w itself log-normal: extremely heavy tail
        return rng.lognormal(0.0, 0.8, size=shape)
    if kind == "pareto":  # w = U^(-0.6): exactly Pareto, k = 0.6
        return -0.6 * np.log(rng.uniform(size=shape))
    if kind == "gauss_ratio":  # q = N(0, 1), p = N(0.5, 0.8^2): a realistic IS ratio
        z = rng.standard_normal(shape)
        return (-0.5 * ((z - 0.5) / 0.8) ** 2 - math.log(0.8)) + 0.5 * z**2
    raise AssertionError(kind)


def _reference(lw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    smoothed, khat = arviz_psislw(lw.copy())
    return np.asarray(smoothed), np.asarray(khat)


# ----------------------------------------------------------------------------------------------
# agreement with arviz.psislw
# ----------------------------------------------------------------------------------------------


@needs_arviz
@pytest.mark.parametrize("kind", ["normal", "student_t", "lognormal", "pareto", "gauss_ratio"])
@pytest.mark.parametrize("num_samples", [MIN_PSIS_SAMPLES, 100, 1000, 4000])
def test_psis_matches_arviz(kind, num_samples):
    lw = _log_weights(kind, (4, num_samples), seed=num_samples)
    ref_lw, ref_k = _reference(lw)
    smoothed, khat = psis(torch.from_numpy(lw))
    np.testing.assert_allclose(khat.numpy(), ref_k, rtol=1e-9, atol=0)
    np.testing.assert_allclose(smoothed.numpy(), ref_lw, rtol=0, atol=1e-9)


@needs_arviz
def test_psis_matches_arviz_batched_with_zero_weights():
    lw = _log_weights("gauss_ratio", (2, 3, 500), seed=7)
    lw[..., ::11] = -np.inf  # zero weights
    ref_lw, ref_k = _reference(lw)
    smoothed, khat = psis(torch.from_numpy(lw))
    assert khat.shape == (2, 3) and smoothed.shape == (2, 3, 500)
    np.testing.assert_allclose(khat.numpy(), ref_k, rtol=1e-9, atol=0)
    assert torch.equal(torch.isneginf(smoothed), torch.from_numpy(np.isneginf(ref_lw)))
    finite = np.isfinite(ref_lw)
    np.testing.assert_allclose(smoothed.numpy()[finite], ref_lw[finite], rtol=0, atol=1e-9)


@needs_arviz
def test_psis_matches_arviz_when_few_draws_dominate():
    # three draws ~800 nats above the rest: fewer than 5 weights above tiny * max -> k = inf
    lw = np.concatenate([_log_weights("normal", (200,), seed=3), [800.0, 801.0, 802.0]])
    ref_lw, ref_k = _reference(lw)
    smoothed, khat = psis(torch.from_numpy(lw))
    assert math.isinf(ref_k) and float(khat) == math.inf
    assert khat_verdict(khat) == "bad"
    np.testing.assert_allclose(smoothed.numpy(), ref_lw, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# known answers and invariances of psis
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape_k", [0.3, 0.9])
def test_khat_recovers_pareto_shape(shape_k):
    # w = U^(-k) is Pareto with tail index 1/k, so its exceedances are GPD with shape k
    gen = torch.Generator().manual_seed(11)
    u = torch.rand(16, 10_000, generator=gen, dtype=torch.float64)
    _, khat = psis(-shape_k * torch.log(u))
    assert khat.shape == (16,)
    assert abs(float(khat.mean()) - shape_k) < 0.1
    assert float((khat - shape_k).abs().max()) < 0.3


def test_constant_weights():
    lw = torch.full((3, 1000), -2.5, dtype=torch.float64)
    smoothed, khat = psis(lw)
    assert torch.all(khat == -math.inf)
    assert khat_verdict(khat[0], 1000) == "good"
    torch.testing.assert_close(smoothed, torch.full_like(lw, -math.log(1000)))
    torch.testing.assert_close(importance_ess(lw), torch.full((3,), 1000.0, dtype=torch.float64))


def test_tied_maximum_means_bounded_weights():
    # more than M + 1 draws share the largest weight: bounded weights, no tail to fit
    lw = torch.zeros(1000, dtype=torch.float64)
    lw[:400] = -torch.rand(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    smoothed, khat = psis(lw)
    assert float(khat) == -math.inf
    torch.testing.assert_close(smoothed, lw - torch.logsumexp(lw, 0))


@pytest.mark.parametrize("offset", [-1e4, 1e4])
def test_psis_is_shift_invariant(offset):
    lw = torch.from_numpy(_log_weights("student_t", (3, 800), seed=5))
    smoothed, khat = psis(lw)
    smoothed_shifted, khat_shifted = psis(lw + offset)
    torch.testing.assert_close(khat_shifted, khat, rtol=1e-9, atol=0)
    torch.testing.assert_close(smoothed_shifted, smoothed, rtol=0, atol=1e-9)


def test_psis_properties():
    lw = torch.from_numpy(_log_weights("student_t", (5, 1000), seed=9))
    smoothed, khat = psis(lw)
    assert torch.all(torch.isfinite(khat))
    torch.testing.assert_close(torch.logsumexp(smoothed, -1), torch.zeros(5, dtype=lw.dtype))
    # only the M = 95 largest weights change; the body is merely renormalized
    order = lw.argsort(-1)
    diff = (smoothed - lw).gather(-1, order)
    body, tail = diff[..., :-95], diff[..., -95:]
    torch.testing.assert_close(body, body[..., :1].expand_as(body))
    assert torch.all((tail - body[..., :1]).abs().amax(-1) > 1e-3)
    # the smoothed weights keep the order of the raw ones and are truncated at the largest raw one
    ranked = smoothed.gather(-1, order)
    assert torch.all(ranked[..., 1:] >= ranked[..., :-1])
    assert torch.all(ranked[..., -1] <= lw.amax(-1) + body[..., 0] + 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_psis_batch_dims_and_dtype(dtype):
    lw = torch.from_numpy(_log_weights("gauss_ratio", (2, 3, 300), seed=2)).to(dtype)
    smoothed, khat = psis(lw)
    assert smoothed.dtype == dtype and khat.dtype == dtype
    assert smoothed.shape == (2, 3, 300) and khat.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            s_ij, k_ij = psis(lw[i, j])
            assert k_ij.shape == ()
            torch.testing.assert_close(k_ij, khat[i, j])
            torch.testing.assert_close(s_ij, smoothed[i, j])
    # float32 input: same answer as the float64 computation on the same values
    _, khat64 = psis(lw.double())
    torch.testing.assert_close(khat.double(), khat64, rtol=1e-6, atol=0)


def test_psis_does_not_track_gradients():
    lw = torch.randn(100, generator=torch.Generator().manual_seed(0), requires_grad=True)
    smoothed, khat = psis(lw)
    assert not smoothed.requires_grad and not khat.requires_grad


# ----------------------------------------------------------------------------------------------
# khat verdict and threshold
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "khat, num_samples, expected",
    [
        (-math.inf, None, "good"),
        (0.2, None, "good"),
        (0.49, None, "good"),
        (0.5, None, "ok"),
        (0.7, None, "ok"),
        (0.71, None, "bad"),
        (1.5, None, "bad"),
        (math.inf, None, "bad"),
        (0.6, 10_000, "ok"),
        (0.68, 1000, "bad"),  # 1 - 1/log10(1000) = 0.667
        (0.66, 1000, "ok"),
        (0.55, 100, "bad"),  # threshold 0.5 at S = 100
        (0.45, 50, "bad"),  # threshold 0.41 at S = 50: stricter than "good"
        (0.3, 50, "good"),
    ],
)
def test_khat_verdict(khat, num_samples, expected):
    assert khat_verdict(khat, num_samples) == expected
    assert khat_verdict(torch.tensor(khat), num_samples) == expected


def test_khat_threshold():
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(1000) == pytest.approx(2 / 3)
    assert khat_threshold(2000) == pytest.approx(1 - 1 / math.log10(2000))
    assert khat_threshold(10**6) == 0.7
    assert khat_threshold(np.int64(10_000)) == 0.7


# ----------------------------------------------------------------------------------------------
# effective sample size
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["normal", "student_t", "lognormal", "pareto"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ess_bounds_and_formula(kind, dtype):
    lw64 = torch.from_numpy(_log_weights(kind, (6, 500), seed=4))
    lw = lw64.to(dtype)
    for smoothed in (False, True):
        ess = importance_ess(lw, pareto_smoothed=smoothed)
        assert ess.dtype == dtype and ess.shape == (6,)
        assert torch.all(ess >= 1.0) and torch.all(ess <= 500.0)
    w = torch.exp(lw64 - lw64.max(-1, keepdim=True).values)
    direct = w.sum(-1) ** 2 / (w * w).sum(-1)
    torch.testing.assert_close(importance_ess(lw).double(), direct, rtol=1e-5, atol=0)
    w_s = torch.exp(psis(lw64)[0])
    direct_s = 1.0 / (w_s * w_s).sum(-1)
    torch.testing.assert_close(importance_ess(lw64, pareto_smoothed=True), direct_s)


def test_ess_extremes_and_stability():
    lw = torch.tensor([[0.0, 1e4, -1e4, 3.0], [-1e4, -1e4, -1e4, -1e4]], dtype=torch.float64)
    torch.testing.assert_close(importance_ess(lw), torch.tensor([1.0, 4.0], dtype=torch.float64))
    assert float(importance_ess(torch.tensor([0.0]))) == 1.0
    zeros = torch.tensor([0.0, -math.inf, 0.0, -math.inf, 0.0])
    assert float(importance_ess(zeros)) == pytest.approx(3.0)


# ----------------------------------------------------------------------------------------------
# log evidence
# ----------------------------------------------------------------------------------------------

LOG_Z = math.log(3.7)


def _gaussian_log_weights(num: tuple[int, ...], q_scale: float, seed: int) -> torch.Tensor:
    """log w for p(z) = Z N(z; 0, 1) (unnormalized), q = N(0, q_scale^2)."""
    gen = torch.Generator().manual_seed(seed)
    z = q_scale * torch.randn(*num, generator=gen, dtype=torch.float64)
    log_p = LOG_Z - 0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    log_q = -0.5 * (z / q_scale) ** 2 - math.log(q_scale) - 0.5 * math.log(2 * math.pi)
    return log_p - log_q


def test_log_evidence_exact_importance_sampling():
    lw = _gaussian_log_weights((2000,), q_scale=1.0, seed=0)  # q = p: every weight equals Z
    est, se = log_evidence(lw)
    assert abs(float(est) - LOG_Z) < 1e-12
    assert float(se) < 1e-12
    # log p - log q is constant only up to rounding (~1e-16): k-hat of that noise is negative
    diag = importance_diagnostics(lw)
    assert diag.khat < 0 and diag.verdict == "good"
    assert diag.ess == pytest.approx(2000, rel=1e-12)
    assert importance_diagnostics(torch.full((2000,), LOG_Z)).khat == -math.inf  # exactly equal


def test_log_evidence_recovers_known_normalizer():
    lw = _gaussian_log_weights((4000,), q_scale=1.5, seed=1)
    est, se = log_evidence(lw)
    assert 0 < float(se) < 0.05
    assert abs(float(est) - LOG_Z) < 3 * float(se)


def test_log_evidence_standard_error_is_calibrated():
    # 400 independent replications: the spread of the estimates matches the reported se
    lw = _gaussian_log_weights((400, 1000), q_scale=1.5, seed=2)
    est, se = log_evidence(lw)
    assert est.shape == se.shape == (400,)
    z = (est - LOG_Z) / se
    assert float(est.std() / se.mean()) == pytest.approx(1.0, abs=0.15)
    assert float((z.abs() < 2).double().mean()) > 0.9
    assert float(z.abs().max()) < 5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [-1e4, 1e4])
def test_log_evidence_is_stable_at_large_offsets(dtype, offset):
    lw = _gaussian_log_weights((3, 1000), q_scale=1.5, seed=3)
    est, se = log_evidence(lw)
    shifted = (lw + offset).to(dtype)
    est_s, se_s = log_evidence(shifted)
    assert est_s.dtype == dtype and se_s.dtype == dtype
    assert torch.all(torch.isfinite(est_s)) and torch.all(torch.isfinite(se_s))
    # float32 cannot hold the shifted log weights to better than ~1e-3 (ulp at 1e4)
    tol = 1e-9 if dtype == torch.float64 else 3e-3
    torch.testing.assert_close(est_s.double(), est + offset, rtol=0, atol=tol)
    torch.testing.assert_close(se_s.double(), se, rtol=0, atol=tol)


def test_log_evidence_small_example_and_gradient():
    lw = torch.log(torch.tensor([1.0, 3.0], dtype=torch.float64)).requires_grad_()
    est, se = log_evidence(lw)
    assert float(est.detach()) == pytest.approx(math.log(2.0))
    # se = sd(w) / sqrt(S) / mean(w) = sqrt(2) / sqrt(2) / 2
    assert float(se.detach()) == pytest.approx(0.5)
    est.backward()
    torch.testing.assert_close(lw.grad, torch.tensor([0.25, 0.75], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# the diagnostics report
# ----------------------------------------------------------------------------------------------


def test_importance_diagnostics_report():
    lw = _gaussian_log_weights((2000,), q_scale=1.5, seed=4).float()
    diag = importance_diagnostics(lw)
    lw = lw.double()  # the same values, to compare with float64 computations
    assert isinstance(diag, ImportanceDiagnostics)
    assert diag.num_samples == 2000
    assert diag.khat == pytest.approx(float(psis(lw)[1]), rel=1e-5)
    assert diag.ess == pytest.approx(float(importance_ess(lw)), rel=1e-5)
    est, se = log_evidence(lw)
    assert diag.log_evidence == pytest.approx(float(est), abs=1e-5)
    assert diag.log_evidence_se == pytest.approx(float(se), rel=1e-4)
    assert diag.verdict == khat_verdict(diag.khat, 2000) == "good"  # q wider than p
    assert all(type(v) in (float, int, str) for v in dataclasses.astuple(diag))
    text = str(diag)
    assert "S = 2000" in text and "k-hat" in text and "ESS" in text and "good" in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        diag.khat = 0.0  # type: ignore[misc]


def test_importance_diagnostics_flags_a_too_narrow_proposal():
    # q narrower than p: the weights have an infinite-variance tail (true k = 1 - 0.6^2 = 0.64)
    lw = _gaussian_log_weights((4000,), q_scale=0.6, seed=5)
    diag = importance_diagnostics(lw)
    assert diag.khat > 0.5
    assert diag.verdict in ("ok", "bad")
    assert diag.ess < 0.5 * diag.num_samples


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [psis, importance_ess, log_evidence, importance_diagnostics])
def test_nan_and_posinf_are_rejected(fn):
    lw = torch.zeros(50)
    lw[3] = math.nan
    with pytest.raises(ValueError, match=r"log_weights: .*NaN.*shape \(50,\)"):
        fn(lw)
    lw[3] = math.inf
    with pytest.raises(ValueError, match=r"log_weights: .*\+inf.*shape \(50,\)"):
        fn(lw)
    lw = torch.zeros(2, 50)
    lw[1] = -math.inf
    if fn is importance_diagnostics:
        lw = lw[1]
    with pytest.raises(ValueError, match=r"log_weights: .*all zero \(-inf\).*shape \((2, )?50"):
        fn(lw)


def test_too_few_samples():
    with pytest.raises(ValueError, match=r"log_weights: .*at least 21 samples.*shape \(4, 20\)"):
        psis(torch.zeros(4, 20))
    with pytest.raises(ValueError, match=r"log_weights: .*at least 21 samples.*shape \(10,\)"):
        importance_diagnostics(torch.zeros(10))
    with pytest.raises(ValueError, match=r"log_weights: .*at least 21 samples"):
        importance_ess(torch.zeros(10), pareto_smoothed=True)
    with pytest.raises(ValueError, match=r"log_weights: .*at least 2 samples.*shape \(3, 1\)"):
        log_evidence(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"log_weights: .*at least 1 samples.*shape \(\)"):
        importance_ess(torch.tensor(0.0))
    psis(torch.randn(MIN_PSIS_SAMPLES, generator=torch.Generator().manual_seed(0)))  # enough


def test_wrong_types_and_shapes():
    with pytest.raises(ValueError, match="log_weights: expected a torch.Tensor.*got ndarray"):
        psis(np.zeros(100))
    with pytest.raises(ValueError, match="log_weights: expected a floating-point.*torch.int64"):
        log_evidence(torch.zeros(100, dtype=torch.long))
    with pytest.raises(ValueError, match=r"log_weights: expected a 1-D tensor.*\(2, 100\)"):
        importance_diagnostics(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="khat: expected a number.*nan"):
        khat_verdict(math.nan)
    with pytest.raises(ValueError, match=r"khat: expected a single number.*\(2,\)"):
        khat_verdict(torch.zeros(2))
    with pytest.raises(ValueError, match="num_samples: expected an integer >= 2, got 1"):
        khat_verdict(0.3, num_samples=1)
    with pytest.raises(ValueError, match="num_samples: expected an integer >= 2"):
        khat_threshold(100.0)


# ----------------------------------------------------------------------------------------------
# device
# ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    lw = torch.from_numpy(_log_weights("gauss_ratio", (3, 1000), seed=6)).to(dtype)
    lw[..., ::13] = -math.inf
    cuda = lw.cuda()
    smoothed, khat = psis(cuda)
    assert smoothed.device == cuda.device and khat.device == cuda.device
    assert smoothed.dtype == dtype and khat.dtype == dtype
    torch.testing.assert_close(khat.cpu(), psis(lw)[1])
    torch.testing.assert_close(smoothed.cpu(), psis(lw)[0])
    for fn in (importance_ess, lambda x: log_evidence(x)[0], lambda x: log_evidence(x)[1]):
        out = fn(cuda)
        assert out.device == cuda.device and out.dtype == dtype
        torch.testing.assert_close(out.cpu(), fn(lw))
    assert importance_diagnostics(cuda[0]) == importance_diagnostics(lw[0])
