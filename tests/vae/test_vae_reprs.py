"""What a VAE user sees printed: epochs where epochs were asked for, shapes instead of pixel
dumps, rounded metrics."""

from __future__ import annotations

import torch

from pyro_nf.training import History
from pyro_nf.vae import VAEData, fit_vae, flow_vae
from pyro_nf.vae.training import VAEEvaluation


def test_history_counts_epochs():
    torch.manual_seed(0)
    x = (torch.rand(60, 6) > 0.5).float()
    vae = flow_vae(6, flow="diag", z_dim=2, hidden=(8,))
    hist = fit_vae(vae, x[:40], x[40:], epochs=3, batch_size=20, progress=False)
    assert hist.steps_per_epoch == 2 and hist.num_steps == 6
    assert hist.epochs == 3.0
    assert "steps=6, epochs=3," in str(hist)


def test_history_repr_never_dumps_the_lists():
    h = History(losses=[1.0] * 10_000, smoothed=[1.0] * 10_000)
    assert len(repr(h)) < 300 and repr(h) == str(h) and "epochs" not in repr(h)


def test_vae_data_repr_shows_shapes_not_pixels():
    d = VAEData(
        torch.rand(500, 784), torch.rand(50, 784), torch.rand(50, 784), "bernoulli", (28, 28)
    )
    r = repr(d)
    assert "500/50/50" in r and "data_dim=784" in r and "tensor(" not in r and len(r) < 200


def test_vae_evaluation_is_rounded():
    r = repr(VAEEvaluation(-90.123456789, 0.2034567, 86.98765, 0.19999, 5000, 10000, 12.3456))
    assert r == (
        "VAEEvaluation(elbo=-90.12 ± 0.20, nll=86.99 ± 0.20, gap=3.14 nats, K=5000, N=10000, "
        "12.3 s)"
    )
