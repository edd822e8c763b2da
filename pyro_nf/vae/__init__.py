r"""VAEs with flow encoders: amortized planar / radial / IAF posteriors, a direct ELBO, a Pyro
model/guide pair, importance-weighted test log-likelihoods, and training on real data.

A VAE here is :math:`p(z) = \mathcal N(0, I)`, :math:`p_\theta(x \mid z)` from a decoder and a
likelihood (Bernoulli for binary images, a discretized logistic for 8-bit grey levels), and a
posterior :math:`q_\phi(z \mid x)` that is an amortized normalizing flow on the encoder context
:math:`h(x)` — a diagonal Gaussian base and ``K`` planar/radial maps whose per-data-point
parameters come from one linear map of :math:`h` (Rezende & Mohamed 2015), or IAF layers whose
MADEs read :math:`h` (Kingma et al. 2016). Modules, one concept each:

* :mod:`~pyro_nf.vae.likelihoods` — :class:`BernoulliLikelihood`,
  :class:`DiscretizedLogisticLikelihood` (+ the :class:`DiscretizedLogistic` distribution).
* :mod:`~pyro_nf.vae.networks` — :class:`MLPEncoder`, :class:`ConvEncoder`, :class:`MLPDecoder`.
* :mod:`~pyro_nf.vae.posteriors` — :func:`make_posterior` (``diag``, ``planar``, ``radial``,
  ``iaf`` and Pyro's built-ins ``pyro-planar``, ``pyro-planar-linear``, ``pyro-iaf``),
  :func:`rsample_and_log_prob`.
* :mod:`~pyro_nf.vae.model` — :class:`VAE` (``elbo``, ``model``/``guide``, ``log_likelihood``)
  and the builder :func:`flow_vae`.
* :mod:`~pyro_nf.vae.training` — :func:`fit_vae`, :func:`evaluate_vae`, :class:`EpochBatches`.
* :mod:`~pyro_nf.vae.data` — :func:`load_vae_data` (MNIST, Frey faces, Caltech, digits).

Data-parallel training lives in :mod:`pyro_nf.vae.distributed`.

Example:
    >>> import torch
    >>> from pyro_nf.vae import flow_vae, fit_vae, evaluate_vae
    >>> x = (torch.rand(120, 16) < 0.3).float()
    >>> vae = flow_vae(16, flow="planar", depth=4, z_dim=2, hidden=(32,))
    >>> _ = fit_vae(vae, x[:100], epochs=1, batch_size=50, progress=False)
    >>> ev = evaluate_vae(vae, x[100:], num_samples=200)
    >>> ev.nll <= -ev.elbo
    True

References:
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
    Kingma et al., *Improved Variational Inference with Inverse Autoregressive Flow*,
    NeurIPS 2016.
    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016.
"""

from __future__ import annotations

from .data import DATASETS, VAEData, load_vae_data
from .likelihoods import (
    BernoulliLikelihood,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    Likelihood,
    make_likelihood,
)
from .model import VAE, flow_vae, standard_normal_log_prob
from .networks import ConvEncoder, MLPDecoder, MLPEncoder
from .posteriors import FLOWS, PyroConditionalPosterior, make_posterior, rsample_and_log_prob
from .training import (
    EpochBatches,
    VAEEvaluation,
    VAETrainConfig,
    evaluate_vae,
    fit_vae,
    seeded_normal,
    train_vae,
)

__all__ = [
    "BernoulliLikelihood",
    "ConvEncoder",
    "DATASETS",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "EpochBatches",
    "FLOWS",
    "GaussianLikelihood",
    "Likelihood",
    "MLPDecoder",
    "MLPEncoder",
    "PyroConditionalPosterior",
    "VAE",
    "VAEData",
    "VAEEvaluation",
    "VAETrainConfig",
    "evaluate_vae",
    "fit_vae",
    "flow_vae",
    "load_vae_data",
    "make_likelihood",
    "make_posterior",
    "rsample_and_log_prob",
    "seeded_normal",
    "standard_normal_log_prob",
    "train_vae",
]
