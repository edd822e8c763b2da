r"""``VAE``: a decoder, a likelihood and an amortized (flow) posterior, with a direct ELBO, a
Pyro model/guide pair and an importance-weighted log-likelihood.

Generative model: :math:`z \sim \mathcal N(0, I_{D_z})`, :math:`x \mid z \sim p_\theta(x \mid z)`
(the likelihood's distribution with parameters ``decoder(z)``). Posterior:
:math:`q_\phi(z \mid x)` = ``posterior(encoder(x))`` (see :mod:`pyro_nf.vae.posteriors`).

**ELBO** (one pass, the training hot loop), with ``S`` samples :math:`z_s \sim q(z \mid x)`
drawn together with :math:`\log q(z_s \mid x)`:

.. math::

    \mathcal L_\beta(x) = \frac1S \sum_s \Bigl[\log p_\theta(x \mid z_s)
      + \beta\bigl(\log p(z_s) - \log q_\phi(z_s \mid x)\bigr)\Bigr],

where :math:`\beta = 1` is the ELBO and :math:`\beta < 1` a KL warm-up (annealing of the prior
and entropy terms; Bowman et al. 2016, Sønderby et al. 2016). The same quantity comes out of
Pyro's ``Trace_ELBO`` on :meth:`VAE.model` / :meth:`VAE.guide` (the latent site is scaled by
:math:`\beta` with ``poutine.scale``) — summed over the data instead of per data point.

**Importance-weighted log-likelihood** (Burda et al. 2016), with ``K`` samples
:math:`z_k \sim q(z \mid x)` and :math:`\log w_k = \log p(x, z_k) - \log q(z_k \mid x)`:

.. math::

    \log \hat p_K(x) = \operatorname{logsumexp}_k \log w_k - \log K
    \;\le\; \log p(x) \text{ in expectation},

non-decreasing in ``K`` in expectation and consistent as :math:`K \to \infty`. It is computed
in chunks of samples and data points, so memory stays bounded for ``K = 5000``. All values are
in nats (per data point), for the likelihood's own data space.

References:
    Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014.
    Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016.
    Kingma et al., *Improved Variational Inference with Inverse Autoregressive Flow*,
    NeurIPS 2016.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ..flows.distribution import FlowDistribution
from ..flows.flow import Flow
from ..utils.validation import check_event, check_positive_int, check_widths
from .likelihoods import Likelihood, make_likelihood
from .networks import ConvEncoder, MLPDecoder, MLPEncoder
from .posteriors import FLOWS, make_posterior, rsample_and_log_prob

__all__ = ["VAE", "flow_vae", "standard_normal_log_prob"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \mathcal N(z; 0, I)` summed over the last dimension.

    Example:
        >>> round(float(standard_normal_log_prob(torch.zeros(2))), 4)
        -1.8379
    """
    return -0.5 * (z * z).sum(-1) - z.shape[-1] * _HALF_LOG_2PI


def _check_kl_weight(kl_weight: float) -> float:
    """``kl_weight`` as a float; raise :class:`ValueError` unless it is finite and >= 0."""
    if (
        isinstance(kl_weight, bool)
        or not isinstance(kl_weight, (int, float))
        or not (0.0 <= kl_weight and math.isfinite(kl_weight))
    ):
        raise ValueError(f"kl_weight: expected a finite float >= 0, got {kl_weight!r}")
    return float(kl_weight)


class VAE(nn.Module):
    r"""A VAE with an amortized (flow) posterior; see the module docstring for the math.

    Args:
        encoder: module ``x (..., D_x) ↦ h (..., H)``.
        posterior: module ``h ↦ q(z | x)`` (e.g. :func:`~pyro_nf.vae.make_posterior`).
        decoder: module ``z (..., D_z) ↦ params (..., P)``.
        likelihood: a :class:`~pyro_nf.vae.Likelihood` reading ``P`` parameters.
        z_dim: latent dimension ``D_z``.

    Calling the module (``vae(x)``) is :meth:`elbo`, so ``DistributedDataParallel(vae)`` works.

    Example:
        >>> vae = flow_vae(6, flow="planar", depth=2, z_dim=2, hidden=(8,))
        >>> x = torch.randint(0, 2, (5, 6)).float()
        >>> vae.elbo(x).shape, vae.elbo(x, num_particles=3).shape
        (torch.Size([5]), torch.Size([5]))
        >>> bool((vae.log_likelihood(x, num_samples=50) >= -6 * 10).all())
        True
    """

    def __init__(
        self,
        encoder: nn.Module,
        posterior: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        z_dim: int,
    ) -> None:
        super().__init__()
        self.encoder, self.posterior, self.decoder = encoder, posterior, decoder
        self.likelihood = likelihood
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.data_dim = likelihood.data_dim

    # -- pieces ------------------------------------------------------------------------------
    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` itself, after checking that its last dimension is ``data_dim``."""
        check_event("x", x, self.data_dim, finite=False)
        return x

    def encode(self, x: torch.Tensor) -> torch.distributions.Distribution:
        r"""The posterior :math:`q(z \mid x)`: batch shape ``x.shape[:-1]``, event ``(D_z,)``."""
        h = self.encoder(self._check_x(x))
        if isinstance(self.posterior, Flow):  # skip the context check (h is ours): no host sync
            return FlowDistribution(self.posterior, h)
        return self.posterior(h)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x \mid z) + \log p(z)`; ``z`` of shape ``(..., N, D_z)`` against
        ``x`` of shape ``(N, D_x)`` gives ``(..., N)``."""
        return self.likelihood.log_prob(x, self.decoder(z)) + standard_normal_log_prob(z)

    # -- the direct ELBO ---------------------------------------------------------------------
    def elbo(
        self,
        x: torch.Tensor,
        num_particles: int = 1,
        kl_weight: float = 1.0,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Per-data-point ELBO :math:`\mathcal L_\beta(x)` (shape ``x.shape[:-1]``), averaged
        over ``num_particles`` samples, in one pass (encode, sample with ``log q``, decode).

        ``eps`` (shape ``(num_particles, *x.shape[:-1], D_z)``) fixes the base noise (see
        :func:`~pyro_nf.vae.rsample_and_log_prob`). With ``num_particles == 1`` and no
        ``eps`` the noise is drawn with shape ``x.shape[:-1] + (D_z,)`` exactly like
        :meth:`guide` does, so both see the same ``z`` under the same seed.
        """
        check_positive_int("num_particles", num_particles)
        kl_weight = _check_kl_weight(kl_weight)
        q = self.encode(x)
        if eps is not None:
            z, log_q = rsample_and_log_prob(q, eps=eps)
        elif num_particles == 1:
            z, log_q = rsample_and_log_prob(q)
            z, log_q = z.unsqueeze(0), log_q.unsqueeze(0)
        else:
            z, log_q = rsample_and_log_prob(q, (num_particles,))
        log_px = self.likelihood.log_prob(x, self.decoder(z))
        if kl_weight == 1.0:
            out = log_px + standard_normal_log_prob(z) - log_q
        else:
            out = log_px + kl_weight * (standard_normal_log_prob(z) - log_q)
        return out.mean(0)

    forward = elbo

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        r"""Importance log-weights :math:`\log p(x, z_k) - \log q(z_k \mid x)`, shape
        ``(num_samples, *x.shape[:-1])`` (differentiable; one batch, no chunking)."""
        check_positive_int("num_samples", num_samples)
        z, log_q = rsample_and_log_prob(self.encode(x), (num_samples,))
        return self.log_joint(x, z) - log_q

    def iwae(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        r"""The importance-weighted bound :math:`\log \hat p_K(x)` (differentiable), shape
        ``x.shape[:-1]``."""
        log_w = self.log_weights(x, num_samples)
        return torch.logsumexp(log_w, 0) - math.log(num_samples)

    @torch.no_grad()
    def log_likelihood(
        self,
        x: torch.Tensor,
        num_samples: int = 5000,
        max_pairs: int = 32768,
        return_elbo: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        r"""Importance-weighted estimate :math:`\log \hat p_K(x)` per data point, in chunks.

        Args:
            x: data of shape ``(N, D_x)``.
            num_samples: ``K`` (5000 for reported numbers).
            max_pairs: at most this many (sample, data point) pairs per decoder call; data are
                processed ``max(1, max_pairs // K)`` points at a time and samples in chunks of
                ``min(K, max_pairs)``. Memory is ``O(max_pairs · (D_x + hidden))``.
            return_elbo: also return the ``K``-sample average of :math:`\log w_k` (an
                unbiased, low-variance ELBO estimate per data point) from the same samples.

        Returns:
            ``log p̂(x)`` of shape ``(N,)`` (and the ELBO estimates, shape ``(N,)``).
        """
        self._check_x(x)
        if x.dim() != 2:
            raise ValueError(
                f"x: expected a tensor of shape (N, {self.data_dim}), got {tuple(x.shape)}"
            )
        check_positive_int("num_samples", num_samples)
        check_positive_int("max_pairs", max_pairs)
        sample_chunk = min(num_samples, max_pairs)
        log_px, elbos = [], []
        for xb in x.split(max(1, max_pairs // num_samples)):
            lp, elbo = self._log_likelihood_chunk(xb, num_samples, sample_chunk)
            log_px.append(lp)
            elbos.append(elbo)
        out = torch.cat(log_px)
        return (out, torch.cat(elbos)) if return_elbo else out

    def _log_likelihood_chunk(
        self, x: torch.Tensor, num_samples: int, sample_chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`\log \hat p_K(x)` and the mean log-weight for one chunk of data points,
        drawing the ``K = num_samples`` samples ``sample_chunk`` at a time."""
        q = self.encode(x)
        parts, total = [], 0.0
        for start in range(0, num_samples, sample_chunk):
            s = min(sample_chunk, num_samples - start)
            z, log_q = rsample_and_log_prob(q, (s,))
            log_w = self.log_joint(x, z) - log_q
            parts.append(torch.logsumexp(log_w, 0))
            total = total + log_w.sum(0)
        lse = torch.logsumexp(torch.stack(parts), 0) if len(parts) > 1 else parts[0]
        return lse - math.log(num_samples), total / num_samples

    # -- the Pyro model/guide pair -----------------------------------------------------------
    def _plate(self, x: torch.Tensor, num_data: int | None) -> pyro.plate:
        """The data plate over ``x``'s rows, subsampled from ``num_data`` when given."""
        n = x.shape[0]
        if num_data is None:
            return pyro.plate("data", n, dim=-1)
        check_positive_int("num_data", num_data)
        return pyro.plate("data", num_data, subsample=torch.arange(n, device=x.device), dim=-1)

    def model(self, x: torch.Tensor, kl_weight: float = 1.0, num_data: int | None = None) -> None:
        r"""Pyro model: ``z ~ N(0, I)``, ``x ~ likelihood(decoder(z))`` in the plate ``"data"``.

        ``kl_weight`` scales the latent site (``poutine.scale``); ``num_data`` (the full data
        size, for minibatches) scales the plate.

        Example:
            >>> vae = flow_vae(4, flow="iaf", depth=1, z_dim=2, hidden=(8,))
            >>> x = torch.randint(0, 2, (3, 4)).float()
            >>> loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
            >>> loss.shape
            torch.Size([])
        """
        self._check_x(x)
        pyro.module("vae_decoder", self.decoder)
        pyro.module("vae_likelihood", self.likelihood)
        with self._plate(x, num_data):
            prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([self.z_dim]).to_event(1)
            with poutine.scale(scale=_check_kl_weight(kl_weight)):
                z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood.distribution(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0, num_data: int | None = None) -> None:
        r"""Pyro guide: ``z ~ q(z | x)`` from the (flow) encoder, in the plate ``"data"``."""
        pyro.module("vae_encoder", self.encoder)
        pyro.module("vae_posterior", self.posterior)
        with self._plate(x, num_data):
            with poutine.scale(scale=_check_kl_weight(kl_weight)):
                pyro.sample("z", self.encode(x))

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Images from the model: the likelihood's mean (``mean=True``) or a draw, shape
        ``(num_samples, D_x)``."""
        check_positive_int("num_samples", num_samples)
        ref = next(self.decoder.parameters())
        z = torch.randn(num_samples, self.z_dim, dtype=ref.dtype, device=ref.device)
        params = self.decoder(z)
        return (
            self.likelihood.mean(params) if mean else self.likelihood.distribution(params).sample()
        )


def flow_vae(
    data_dim: int,
    flow: str = "planar",
    depth: int | None = None,
    z_dim: int = 40,
    hidden: Sequence[int] = (300, 300),
    decoder_hidden: Sequence[int] | None = None,
    likelihood: str | Likelihood = "bernoulli",
    encoder: str = "mlp",
    image_shape: Sequence[int] | None = None,
    flow_hidden: Sequence[int] | None = None,
    activation: type[nn.Module] = nn.ELU,
) -> VAE:
    r"""Build a :class:`VAE` with an MLP (or conv) encoder, an MLP decoder and a flow posterior.

    Args:
        data_dim: ``D_x`` (e.g. 784).
        flow: posterior kind, one of :data:`~pyro_nf.vae.FLOWS` (``"diag"``, ``"planar"``,
            ``"radial"``, ``"iaf"``, ``"pyro-planar"``, ``"pyro-planar-linear"``, ``"pyro-iaf"``).
        depth: number of flow layers (see :func:`~pyro_nf.vae.make_posterior`).
        z_dim: latent dimension ``D_z``.
        hidden: encoder widths; ``hidden[-1]`` is the context size ``H``.
        decoder_hidden: decoder widths (default: ``hidden`` reversed).
        likelihood: ``"bernoulli"``, ``"discretized_logistic"`` or a Likelihood instance.
        encoder: ``"mlp"`` or ``"conv"`` (needs ``image_shape``; context size ``hidden[-1]``).
        image_shape: ``(H, W)`` of the images for the conv encoder.
        flow_hidden: MADE / hypernetwork widths for the IAF and Pyro posteriors.
        activation: nonlinearity of encoder and decoder.

    Example:
        >>> vae = flow_vae(784, flow="iaf", depth=2, z_dim=40)
        >>> q = vae.encode(torch.rand(3, 784).round())
        >>> q.batch_shape, q.event_shape
        (torch.Size([3]), torch.Size([40]))
    """
    hidden, decoder_hidden, flow_hidden = _check_sizes(
        data_dim, flow, depth, z_dim, hidden, decoder_hidden, flow_hidden
    )
    enc = _make_encoder(encoder, data_dim, hidden, image_shape, activation)
    lik = make_likelihood(likelihood, data_dim)
    dec_hidden = tuple(decoder_hidden) if decoder_hidden is not None else hidden[::-1]
    dec = MLPDecoder(z_dim, lik.num_params, dec_hidden, activation)
    post = make_posterior(flow, z_dim, hidden[-1], depth, flow_hidden)
    return VAE(enc, post, dec, lik, z_dim)


def _check_sizes(
    data_dim: int,
    flow: str,
    depth: int | None,
    z_dim: int,
    hidden: Sequence[int],
    decoder_hidden: Sequence[int] | None,
    flow_hidden: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...] | None, tuple[int, ...] | None]:
    """Check :func:`flow_vae`'s arguments under the names the user typed; widths as tuples."""
    check_positive_int("data_dim", data_dim)
    check_positive_int("z_dim", z_dim)
    # make_posterior names it `kind`; here the user typed `flow`
    if not isinstance(flow, str) or flow not in FLOWS:
        raise ValueError(f"flow: expected one of {list(FLOWS)}, got {flow!r}")
    if depth is not None:
        check_positive_int("depth", depth)
    if isinstance(hidden, (list, tuple)) and not hidden:
        raise ValueError("hidden: expected at least one encoder width, got ()")
    hidden = check_widths("hidden", hidden, allow_empty=False)
    if decoder_hidden is not None:
        decoder_hidden = check_widths("decoder_hidden", decoder_hidden)
    if flow_hidden is not None:
        flow_hidden = check_widths("flow_hidden", flow_hidden)
    return hidden, decoder_hidden, flow_hidden


def _make_encoder(
    encoder: str,
    data_dim: int,
    hidden: tuple[int, ...],
    image_shape: Sequence[int] | None,
    activation: type[nn.Module],
) -> nn.Module:
    """The encoder ``x ↦ h`` of :func:`flow_vae`: an MLP or a conv net with context ``hidden[-1]``."""
    if encoder == "mlp":
        return MLPEncoder(data_dim, hidden, activation)
    if encoder == "conv":
        if image_shape is None:
            raise ValueError("image_shape: expected (H, W) for encoder='conv', got None")
        enc = ConvEncoder(image_shape, out_features=hidden[-1], activation=activation)
        if enc.in_features != data_dim:
            raise ValueError(
                f"image_shape: expected a shape with {data_dim} pixels, got {tuple(image_shape)}"
            )
        return enc
    raise ValueError(f"encoder: expected 'mlp' or 'conv', got {encoder!r}")
