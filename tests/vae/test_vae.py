"""VAEs with flow encoders: amortization, the direct ELBO vs Pyro's Trace_ELBO, the IWAE
estimate against a known marginal likelihood, training, likelihoods, devices."""

from __future__ import annotations

import importlib.util
import math

import pyro
import pytest
import torch
from torch import nn

import pyro_nf
from pyro_nf.vae import (
    FLOWS,
    VAE,
    BernoulliLikelihood,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    EpochBatches,
    GaussianLikelihood,
    MLPDecoder,
    evaluate_vae,
    fit_vae,
    flow_vae,
    load_vae_data,
    make_posterior,
    rsample_and_log_prob,
)

OURS = ("diag", "planar", "radial", "iaf")
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _binary(n: int, d: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(3, d, generator=gen)
    return (torch.rand(n, d, generator=gen) < protos[torch.arange(n) % 3]).to(dtype)


def _perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


# -- amortization ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", OURS)
def test_amortized_parameters_are_per_data_point(kind):
    torch.manual_seed(0)
    n, d, h = 5, 3, 7
    post = _perturb(make_posterior(kind, d, context_dim=h, depth=2, hidden=(16,)).double())
    ctx = torch.randn(n, h, dtype=torch.float64)
    transforms = post.build_transforms(ctx)
    if kind != "iaf":  # explicit per-datum parameter tensors
        base = transforms[0]
        assert base.loc.shape == (n, d) and base.scale.shape == (n, d)
    if kind == "planar":
        assert transforms[1].u.shape == (n, 2, d) and transforms[1].b.shape == (n, 2)
    if kind == "radial":
        assert transforms[1].z0.shape == (n, 2, d)
    z = torch.randn(n, d, dtype=torch.float64)
    eps = torch.randn(1, n, d, dtype=torch.float64)
    log_q = post(ctx).log_prob(z)
    z_s, log_q_s = rsample_and_log_prob(post(ctx), eps=eps)
    assert log_q.shape == (n,) and z_s.shape == (1, n, d)
    ctx2 = ctx.clone()
    ctx2[2] += 1.0  # change data point 2's context only
    log_q2 = post(ctx2).log_prob(z)
    z_s2, log_q_s2 = rsample_and_log_prob(post(ctx2), eps=eps)
    others = torch.arange(n) != 2
    assert torch.equal(log_q[others], log_q2[others]) and log_q[2] != log_q2[2]
    assert torch.equal(z_s[:, others], z_s2[:, others]) and not torch.equal(z_s[:, 2], z_s2[:, 2])
    assert torch.equal(log_q_s[:, others], log_q_s2[:, others])


@pytest.mark.parametrize("kind", OURS + ("pyro-planar", "pyro-planar-linear"))
def test_changing_one_image_changes_only_its_row(kind):
    torch.manual_seed(0)
    vae = _perturb(flow_vae(10, flow=kind, depth=2, z_dim=3, hidden=(16,)).double(), 0.1)
    x = _binary(6, 10, dtype=torch.float64)
    x2 = x.clone()
    x2[4] = 1 - x2[4]
    h, h2 = vae.encoder(x), vae.encoder(x2)
    assert h.shape == (6, 16)
    eps = torch.randn(3, 6, 3, dtype=torch.float64)
    e1, e2 = vae.elbo(x, eps=eps), vae.elbo(x2, eps=eps)
    rows = torch.arange(6) != 4
    assert torch.equal(h[rows], h2[rows]) and torch.equal(e1[rows], e2[rows])
    assert e1[4] != e2[4]


def test_pyro_planar_linear_has_the_planar_architecture():
    """Pyro's ConditionalPlanar with the linear hypernetwork reads h exactly like pyro-nf's
    amortized planar flow: one linear map per layer to its 2D + 1 parameters, the same count."""
    H, D, K = 7, 3, 4
    ours = make_posterior("planar", D, context_dim=H, depth=K)
    theirs = make_posterior("pyro-planar-linear", D, context_dim=H, depth=K)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs) == (H + 1) * (2 * D + K * (2 * D + 1))
    assert all(type(t.nn).__name__ == "_LinearPlanarHypernet" for t in theirs.transforms)
    q = theirs(torch.randn(5, H))
    z = q.rsample()
    assert z.shape == (5, D) and q.log_prob(z).shape == (5,)
    with pytest.raises(ValueError, match="hidden: 'pyro-planar-linear' has a linear hypernetwork"):
        make_posterior("pyro-planar-linear", D, context_dim=H, depth=K, hidden=(16,))


# -- direct ELBO == Pyro's Trace_ELBO ----------------------------------------------------------
@pytest.mark.parametrize("kind", FLOWS)
@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
def test_trace_elbo_equals_direct_elbo(kind, kl_weight):
    torch.manual_seed(0)
    vae = _perturb(flow_vae(12, flow=kind, depth=2, z_dim=3, hidden=(16,)).double(), 0.1)
    x = _binary(9, 12, dtype=torch.float64)
    pyro.set_rng_seed(3)
    direct = vae.elbo(x, kl_weight=kl_weight)
    pyro.set_rng_seed(3)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, kl_weight)
    torch.testing.assert_close(-loss, direct.sum(), rtol=1e-10, atol=1e-10)
    # minibatch scaling: the plate scales by num_data / batch
    pyro.set_rng_seed(3)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, kl_weight, 90)
    torch.testing.assert_close(-loss, direct.sum() * 10, rtol=1e-10, atol=1e-9)


def test_trace_elbo_with_discretized_logistic_and_svi_step():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 10)).double() / 255
    vae = flow_vae(
        10, flow="planar", depth=2, z_dim=2, hidden=(8,), likelihood="discretized_logistic"
    ).double()
    pyro.set_rng_seed(1)
    direct = vae.elbo(x).sum()
    pyro.set_rng_seed(1)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    torch.testing.assert_close(-loss, direct)
    svi = pyro.infer.SVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO()
    )
    assert math.isfinite(svi.step(x))


def test_elbo_weights_and_particles():
    torch.manual_seed(0)
    vae = _perturb(flow_vae(8, flow="radial", depth=2, z_dim=2, hidden=(8,)).double(), 0.1)
    x = _binary(5, 8, dtype=torch.float64)
    eps = torch.randn(4, 5, 2, dtype=torch.float64)
    q = vae.encode(x)
    z, log_q = rsample_and_log_prob(q, eps=eps)
    log_px = vae.likelihood.log_prob(x, vae.decoder(z))
    prior = -0.5 * (z * z).sum(-1) - math.log(2 * math.pi)
    torch.testing.assert_close(vae.elbo(x, eps=eps), (log_px + prior - log_q).mean(0))
    torch.testing.assert_close(vae.elbo(x, kl_weight=0.0, eps=eps), log_px.mean(0))
    assert vae.elbo(x, num_particles=7).shape == (5,)
    with pytest.raises(ValueError, match="kl_weight"):
        vae.elbo(x, kl_weight=-1.0)
    with pytest.raises(ValueError, match="x: expected a tensor of shape"):
        vae.elbo(torch.zeros(5, 7))


# -- IWAE on a linear Gaussian VAE with a known marginal likelihood ---------------------------
def test_iwae_increases_to_the_exact_log_marginal_likelihood():
    torch.manual_seed(0)
    dx, dz, sigma, n = 5, 2, 0.5, 40
    w = torch.randn(dx, dz, dtype=torch.float64)
    b = torch.randn(dx, dtype=torch.float64)
    decoder = nn.Linear(dz, dx).double()
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
    decoder.requires_grad_(False)  # a fixed decoder: p(x) stays the known marginal
    encoder = nn.Linear(dx, 8).double()
    vae = VAE(
        encoder,
        make_posterior("diag", dz, 8).double(),
        decoder,
        GaussianLikelihood(dx, scale=sigma).double(),
        dz,
    )
    # an imperfect encoder: fit the diagonal posterior briefly (its covariance cannot be exact)
    x = torch.distributions.MultivariateNormal(
        b, w @ w.T + sigma**2 * torch.eye(dx, dtype=torch.float64)
    ).sample((n,))
    fit_vae(vae, x, epochs=60, batch_size=n, lr=3e-2, progress=False)
    log_p = torch.distributions.MultivariateNormal(
        b, w @ w.T + sigma**2 * torch.eye(dx, dtype=torch.float64)
    ).log_prob(x)

    torch.manual_seed(1)
    elbo = vae.elbo(x, num_particles=2000).detach()
    means, ses = {}, {}
    for k in (1, 10, 100, 5000):
        torch.manual_seed(2)
        est = vae.log_likelihood(x, num_samples=k, max_pairs=20000)
        diff = est - log_p
        means[k], ses[k] = float(diff.mean()), float(diff.std() / math.sqrt(n))
    gap_elbo = float((elbo - log_p).mean())
    assert gap_elbo < -0.05  # the encoder is imperfect: a real gap to close
    assert abs(means[1] - gap_elbo) < 4 * ses[1]  # K = 1 is the ELBO
    assert means[1] < means[10] < means[100] < means[5000] + 3 * ses[5000]
    assert means[5000] <= 3 * ses[5000]  # a lower bound in expectation
    assert abs(means[5000]) < max(3 * ses[5000], 0.01 * abs(gap_elbo))


def test_log_likelihood_chunking_matches_one_batch():
    torch.manual_seed(0)
    vae = _perturb(flow_vae(8, flow="planar", depth=3, z_dim=2, hidden=(8,)).double(), 0.1)
    x = _binary(4, 8, dtype=torch.float64)
    torch.manual_seed(5)
    log_w = vae.log_weights(x, 300).detach()
    torch.manual_seed(5)
    est, elbo = vae.log_likelihood(x, num_samples=300, max_pairs=10**6, return_elbo=True)
    torch.testing.assert_close(est, torch.logsumexp(log_w, 0) - math.log(300))
    torch.testing.assert_close(elbo, log_w.mean(0))
    chunked = vae.log_likelihood(x, num_samples=300, max_pairs=70)  # 70 samples x 1 point
    assert chunked.shape == (4,) and (chunked - est).abs().max() < 0.5


# -- training and evaluation -------------------------------------------------------------------
@pytest.mark.skipif(not HAS_SKLEARN, reason="digits need scikit-learn")
def test_short_training_on_digits_improves_the_test_elbo():
    data = load_vae_data("digits")
    torch.manual_seed(0)
    vae = flow_vae(64, flow="planar", depth=4, z_dim=4, hidden=(64,))
    before = evaluate_vae(vae, data.test, num_samples=20)
    hist = fit_vae(
        vae, data.train, data.valid, epochs=4, batch_size=50, lr=3e-3, progress=False, kl_warmup=1
    )
    after = evaluate_vae(vae, data.test, num_samples=20)
    assert hist.num_steps == 4 * 24 and len(hist.val_losses) == 4
    assert after.elbo > before.elbo + 5.0
    assert after.nll <= -after.elbo + 1e-6 and after.nll_se > 0


def test_early_stopping_restores_the_best_validation_parameters():
    torch.manual_seed(0)
    x = _binary(120, 10)
    vae = flow_vae(10, flow="diag", z_dim=2, hidden=(16,))
    seen = {}

    def callback(step, history):
        if history.val_losses and history.val_losses[-1][0] == step:
            seen[step] = {k: v.clone() for k, v in vae.state_dict().items()}

    hist = fit_vae(
        vae,
        x[:80],
        x[80:],
        epochs=30,
        batch_size=40,
        lr=0.05,
        patience=3,
        progress=False,
        callback=callback,
    )
    assert hist.converged and hist.num_steps < 60
    best = hist.best_step
    assert best == min(hist.val_losses, key=lambda sv: sv[1])[0]
    for name, value in vae.state_dict().items():
        assert torch.equal(value, seen[best][name]), name


def test_lr_decay_at_the_validation_plateau_then_stop():
    torch.manual_seed(0)
    x = _binary(120, 10)
    vae = flow_vae(10, flow="planar", depth=2, z_dim=2, hidden=(16,))
    hist = fit_vae(
        vae, x[:80], x[80:], epochs=200, batch_size=40, lr=0.05, patience=3, lr_decays=1,
        progress=False,
    )  # fmt: skip
    assert hist.converged and len(hist.lr_decay_steps) == 1
    decay = hist.lr_decay_steps[0]
    assert hist.lrs[decay] == pytest.approx(0.05) and hist.lrs[decay + 1] == pytest.approx(0.005)
    assert hist.num_steps > decay + 1
    with pytest.raises(ValueError, match="lr_decays: needs patience"):
        fit_vae(vae, x, epochs=1, lr_decays=1, progress=False)
    with pytest.raises(ValueError, match="clip_norm: expected None, 'auto'"):
        fit_vae(vae, x, epochs=1, clip_norm="spikes", progress=False)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    x = _binary(60, 8)

    def run(epochs, ckpt=None):
        torch.manual_seed(0)
        vae = flow_vae(8, flow="iaf", depth=1, z_dim=2, hidden=(8,))
        h = fit_vae(vae, x, epochs=epochs, batch_size=20, progress=False, checkpoint=ckpt)
        return vae, h

    full, h_full = run(4)
    run(2, tmp_path / "ck.pt")
    resumed, h_res = run(4, tmp_path / "ck.pt")
    assert h_res.losses == h_full.losses
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_epoch_batches_cover_the_data_and_shard_it():
    sched = EpochBatches(23, batch_size=5, seed=3)
    assert sched.steps_per_epoch == 5
    epoch0 = torch.cat([sched(t) for t in range(5)])
    assert sorted(epoch0.tolist()) == list(range(23))
    assert not torch.equal(epoch0, torch.cat([sched(t) for t in range(5, 10)]))
    shards = [EpochBatches(23, 5, seed=3, rank=r, world_size=2) for r in range(2)]
    assert shards[0].steps_per_epoch == 5  # last batch of 3 >= 2 ranks is kept
    for t in range(5):
        both = torch.cat([s(t) for s in shards])
        assert sorted(both.tolist()) == sorted(sched(t).tolist())
    assert EpochBatches(23, 11, world_size=2).steps_per_epoch == 2  # a last batch of 1 < 2 ranks
    with pytest.raises(ValueError, match="rank"):
        EpochBatches(10, 5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatches(10, 11)


# -- likelihoods -------------------------------------------------------------------------------
@pytest.mark.parametrize("loc", [-3.0, 0.0, 0.37, 1.0, 4.0])
@pytest.mark.parametrize("scale", [1e-3, 0.02, 0.5, 20.0])
def test_discretized_logistic_is_a_distribution_on_the_grid(loc, scale):
    bins = 256
    grid = torch.arange(bins, dtype=torch.float64) / (bins - 1)
    d = DiscretizedLogistic(
        torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64), bins
    )
    lp = d.log_prob(grid)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(
        lp.exp().sum(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-9, atol=1e-9
    )
    # against the naive cdf difference where that is accurate
    cdf = lambda v: torch.sigmoid((v - loc) / scale)  # noqa: E731
    half = 0.5 / (bins - 1)
    naive = cdf(grid + half) - cdf(grid - half)
    naive[0], naive[-1] = cdf(grid[0] + half), 1 - cdf(grid[-1] - half)
    ok = naive > 1e-8
    torch.testing.assert_close(lp[ok], naive[ok].log(), rtol=1e-6, atol=1e-9)


def test_discretized_logistic_float32_extremes_and_sampling():
    lik = DiscretizedLogisticLikelihood(3, num_bins=256)
    x = torch.tensor([[0.0, 0.5, 1.0]])
    for a in (-50.0, 0.0, 50.0):
        assert torch.isfinite(lik.log_prob(x, torch.full((1, 3), a))).all()
    with torch.no_grad():
        lik.log_scale.fill_(-20.0)  # clamped at -7: still finite
    assert torch.isfinite(lik.log_prob(x, torch.zeros(1, 3))).all()
    s = lik.distribution(torch.zeros(100, 3)).sample()
    assert s.shape == (100, 3) and set((s * 255).round().unique().tolist()) <= set(range(256))


def test_bernoulli_likelihood_matches_torch():
    logits = torch.randn(4, 6)
    x = (torch.rand(4, 6) < 0.5).float()
    lik = BernoulliLikelihood(6)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(lik.log_prob(x, logits), expected)
    torch.testing.assert_close(lik.distribution(logits).log_prob(x), expected)


def test_builders_validate_their_arguments():
    with pytest.raises(ValueError, match="kind"):
        make_posterior("sylvester", 2, 4)
    with pytest.raises(ValueError, match="likelihood"):
        flow_vae(4, likelihood="poisson")
    with pytest.raises(ValueError, match="encoder"):
        flow_vae(4, encoder="rnn")
    with pytest.raises(ValueError, match="image_shape"):
        flow_vae(784, encoder="conv")
    with pytest.raises(ValueError, match="train_data"):
        fit_vae(flow_vae(4, z_dim=2, hidden=(4,)), torch.zeros(10, 5), progress=False)
    with pytest.raises(ValueError, match="name"):
        load_vae_data("cifar")


def test_conv_encoder_vae():
    torch.manual_seed(0)
    vae = flow_vae(
        64, flow="iaf", depth=1, z_dim=3, hidden=(32,), encoder="conv", image_shape=(8, 8)
    )
    x = _binary(5, 64)
    assert vae.elbo(x).shape == (5,) and vae.log_likelihood(x, num_samples=10).shape == (5,)
    assert isinstance(vae.decoder, MLPDecoder)


# -- dtypes and devices ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["planar", "iaf", "pyro-planar", "pyro-planar-linear"])
def test_dtypes(kind, dtype):
    vae = flow_vae(8, flow=kind, depth=2, z_dim=2, hidden=(8,)).to(dtype)
    x = _binary(4, 8, dtype=dtype)
    assert vae.elbo(x).dtype == dtype
    assert vae.log_likelihood(x, num_samples=20).dtype == dtype
    assert vae.sample(3).dtype == dtype
    hist = fit_vae(vae, x, x, epochs=1, batch_size=2, progress=False)
    assert hist.num_steps == 2


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["diag", "planar", "radial", "iaf", "pyro-planar", "pyro-iaf"])
def test_cuda_training_and_evaluation(kind):
    x = _binary(64, 16)  # data stay on the CPU: fit/evaluate move batches
    vae = flow_vae(16, flow=kind, depth=2, z_dim=3, hidden=(32,))
    hist = fit_vae(vae, x[:48], x[48:], epochs=2, batch_size=16, device="cuda", progress=False)
    assert next(vae.parameters()).is_cuda and hist.num_steps == 6
    ev = evaluate_vae(vae, x[48:], num_samples=100)
    assert math.isfinite(ev.nll) and ev.nll <= -ev.elbo + 1e-4
    pyro.set_rng_seed(0)
    xc = x[:8].cuda()
    direct = vae.elbo(xc).sum()
    pyro.set_rng_seed(0)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, xc)
    torch.testing.assert_close(-loss, direct, rtol=1e-5, atol=1e-3)


def test_exports():
    assert pyro_nf.vae.flow_vae is flow_vae


@pytest.mark.parametrize("kind", ["realnvp", "nice"])
def test_coupling_flow_encoders(kind):
    """Coupling flows work as amortized VAE posteriors like every other family."""
    from pyro_nf.vae import fit_vae, flow_vae

    torch.manual_seed(0)
    x = (torch.rand(64, 12) < 0.3).float()
    vae = flow_vae(12, flow=kind, depth=2, z_dim=3, hidden=(16,))
    q = vae.posterior(vae.encoder(x))
    z, log_q = q.rsample_and_log_prob()
    assert z.shape == (64, 3) and log_q.shape == (64,)
    assert torch.allclose(q.log_prob(z.detach()), log_q, atol=1e-5)
    history = fit_vae(vae, x, epochs=2, batch_size=32, progress=False)
    assert all(torch.isfinite(torch.tensor(history.losses)))
