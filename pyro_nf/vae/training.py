r"""Training and evaluation of VAEs: minibatch ELBO ascent with :func:`pyro_nf.training.train`.

:func:`fit_vae` maximizes the direct ELBO :math:`\frac1N\sum_i \mathcal L_\beta(x_i)` (see
:mod:`pyro_nf.vae.model`) over minibatches, on CPU or GPU, with an optional KL warm-up
:math:`\beta_t = \min(1, (t+1)/T_{\mathrm{warm}})`, early stopping on the validation ELBO with
best-parameter restore, atomic checkpoints that resume bit-identically, and a progress bar
(all from :func:`~pyro_nf.training.train`).

**Minibatches** follow a seeded schedule (:class:`EpochBatches`), like PyTorch's
``DistributedSampler``: epoch ``e`` shuffles the data with
``torch.randperm(N, generator=Generator().manual_seed(seed + e))`` and step ``t`` of the epoch
takes the ``t``-th block of ``B`` indices; in a data-parallel run rank ``r`` of ``W`` takes
every ``W``-th index of that block (``block[r::W]``), so the union of the ranks' shards is the
single-process batch. The loss of a rank is :math:`-\frac{W}{B}\sum_{i \in \text{shard}}
\mathcal L(x_i)`, so averaging gradients over ranks (what ``DistributedDataParallel`` does)
gives exactly the gradient of the full batch's mean. :func:`train_vae` is the one loop of
:func:`fit_vae` and :func:`pyro_nf.vae.distributed.fit_vae_distributed`; its options are a
:class:`VAETrainConfig`, and the data parallelism is that of :func:`pyro_nf.training.train`.

**Noise.** By default the posterior noise comes from torch's global RNG. With
``seeded_noise=True`` step ``t`` draws the whole batch's base noise from a generator seeded by
``(seed, t)`` and each rank uses its rows — common random numbers that make a ``W``-process run
reproduce the single-process run up to floating-point reduction order. Validation always uses
fixed seeded noise (the same at every validation), so the monitored value is not noisy.

:func:`evaluate_vae` reports the test ELBO and the importance-weighted estimate of
:math:`-\log p(x)` (``K = 5000`` samples by default), both in nats per data point.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ..training.distributed import rank_and_world_size, use_data_parallel
from ..training.loop import EarlyStopping, History, train
from ..utils.hashing import tensor_sha256
from ..utils.validation import check_positive_int
from .model import VAE

__all__ = [
    "EpochBatches",
    "VAEEvaluation",
    "VAETrainConfig",
    "evaluate_vae",
    "fit_vae",
    "seeded_normal",
    "train_vae",
]


class EpochBatches:
    """A seeded, ``DistributedSampler``-like minibatch schedule (see the module docstring).

    Args:
        num_data: ``N``.
        batch_size: global batch size ``B`` (over all ranks).
        seed: shuffling seed (epoch ``e`` uses ``seed + e``).
        rank, world_size: this process's shard ``block[rank::world_size]`` of each batch.
        drop_last: drop the last, smaller batch of an epoch (it is always dropped when it
            has fewer than ``world_size`` points, so that no rank gets an empty shard).

    Example:
        >>> sched = EpochBatches(10, batch_size=4, seed=0)
        >>> sched.steps_per_epoch, [len(sched(t)) for t in range(3)]
        (3, [4, 4, 2])
        >>> r0, r1 = EpochBatches(10, 4, rank=0, world_size=2), EpochBatches(10, 4, rank=1, world_size=2)
        >>> sorted(torch.cat([r0(0), r1(0)]).tolist()) == sorted(sched(0).tolist())
        True
    """

    def __init__(
        self,
        num_data: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.num_data = check_positive_int("num_data", num_data)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.world_size = check_positive_int("world_size", world_size)
        self.rank = check_positive_int("rank", rank, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank: expected an integer in [0, {world_size}), got {rank}")
        if self.batch_size > self.num_data or self.batch_size < self.world_size:
            raise ValueError(
                f"batch_size: expected an integer in [world_size={world_size}, num_data="
                f"{num_data}], got {batch_size}"
            )
        self.seed = int(seed)
        full, rest = divmod(self.num_data, self.batch_size)
        keep_rest = rest >= self.world_size and not drop_last
        self.steps_per_epoch = full + int(keep_rest)
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def global_indices(self, step: int) -> torch.Tensor:
        """The indices of the whole (all ranks) batch of step ``step`` (a CPU ``LongTensor``)."""
        epoch, j = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_data, generator=gen)
        return self._perm[j * self.batch_size : (j + 1) * self.batch_size]

    def __call__(self, step: int) -> torch.Tensor:
        """This rank's indices of step ``step``: ``global_indices(step)[rank::world_size]``."""
        return self.global_indices(step)[self.rank :: self.world_size]


def seeded_normal(
    seed: int, step: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from a generator seeded by ``(seed, step)``.

    Example:
        >>> a = seeded_normal(0, 5, (2, 3), torch.float32, "cpu")
        >>> torch.equal(a, seeded_normal(0, 5, (2, 3), torch.float32, "cpu"))
        True
    """
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    return torch.randn(shape, generator=gen, dtype=dtype).to(device)


def _check_float(name: str, value: Any, minimum: float = 0.0) -> float:
    """``value`` as a float if it is a finite number ``>= minimum``, else ``ValueError``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value >= minimum)
    ):
        raise ValueError(f"{name}: expected a finite number >= {minimum}, got {value!r}")
    return float(value)


def _check_data(name: str, data: Any, vae: VAE) -> torch.Tensor:
    """``data`` if it is a non-empty ``(N, data_dim)`` real tensor with values the likelihood
    accepts (finite, and in its range), else a ``ValueError`` naming the bad rows."""
    dim = vae.data_dim
    if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.shape[1] != dim:
        got = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"{name}: expected a tensor of shape (N, {dim}), got {got}")
    if data.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one data point, got shape {tuple(data.shape)}")
    if data.device.type == "meta":
        raise ValueError(f"{name}: expected a tensor with data, got a tensor on the 'meta' device")
    if data.is_complex():
        raise ValueError(f"{name}: expected a real (float, int or bool) tensor, got {data.dtype}")
    lik = vae.likelihood
    if data.is_floating_point():
        _refuse_rows(name, data, ~torch.isfinite(data), "expected finite values", "NaN or inf")
    lo, hi = getattr(lik, "value_range", (-math.inf, math.inf))
    if lo > -math.inf or hi < math.inf:
        outside = (data < lo) | (data > hi)
        text = getattr(lik, "value_text", "the likelihood")
        _refuse_rows(name, data, outside, f"{text} needs values in [{lo:g}, {hi:g}]", "outside")
    return data


def _refuse_rows(name: str, data: torch.Tensor, bad: torch.Tensor, need: str, what: str) -> None:
    """Raise ``"<name>: <need>; rows 3, 17, ... (5 of 1000) have values <what>, e.g. ..."`` if
    ``bad`` (a mask like ``data``) has any entry."""
    rows = bad.any(dim=1).nonzero().flatten()
    if len(rows) == 0:
        return
    shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    row = int(rows[0])
    col = int(bad[row].nonzero()[0])
    value = data[row, col].item()
    word = "row" if len(rows) == 1 else "rows"
    verb = "has" if len(rows) == 1 else "have"
    raise ValueError(
        f"{name}: {need}; {word} {shown} ({len(rows)} of {len(data)}) {verb} values {what}, "
        f"e.g. {value!r} at row {row}, column {col}"
    )


def _model_dtype_device(vae: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's (first) parameter."""
    p = next(vae.parameters())
    return p.dtype, p.device


def _fused_adam(params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """Adam with the fused (one kernel for all tensors) update where torch supports it."""
    try:
        return torch.optim.Adam(params, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - old torch / odd device
        return torch.optim.Adam(params)


@dataclass(frozen=True)
class VAETrainConfig:
    r"""The options of :func:`fit_vae` (and :func:`~pyro_nf.vae.distributed.fit_vae_distributed`),
    checked once on construction.

    Attributes:
        epochs: number of passes over the data (may be fractional).
        batch_size: minibatch size ``B`` (global, over all ranks).
        lr: learning rate (of Adam by default, with torch's fused update where supported).
        num_particles: samples of ``z`` per data point and step.
        kl_warmup: length of the linear KL warm-up, in epochs (0: none).
        seed: seed of the minibatch schedule (and of ``seeded_noise``).
        patience: early-stopping patience in epochs (``None``: no early stopping).
        lr_decays: with ``patience``: at each of the first ``lr_decays`` plateaus of the
            validation ELBO divide the learning rate by 10 and go on (see
            :class:`pyro_nf.training.EarlyStopping`); the next plateau stops.
        validate_every: validation period in steps (default: once per epoch).
        valid_batch_size: batch size of the validation pass.
        seeded_noise: draw each step's noise from a ``(seed, step)``-seeded generator.
        drop_last: drop the last, smaller batch of each epoch.
        nan_policy: ``"raise"`` (default) stops at the first non-finite loss or gradient with
            the last good parameters in place; ``"restore"`` rolls back and halves the lr, but
            copies all parameters and optimizer state every step. See
            :func:`pyro_nf.training.train`.
        clip_norm: gradient-norm clipping as in :func:`pyro_nf.training.train`; the default
            ``"auto"`` cuts only spikes above 5 times the recent median norm (planar encoders
            need it). ``None`` turns it off.
        optimizer, lr_schedule, checkpoint, checkpoint_every (default one epoch),
            resume, progress, desc, callback: as in :func:`pyro_nf.training.train`.
        distributed: data-parallel over the initialized process group, as in
            :func:`pyro_nf.training.train` (``False`` for :func:`fit_vae`, ``None``: automatic,
            for :func:`~pyro_nf.vae.distributed.fit_vae_distributed`).

    Example:
        >>> VAETrainConfig(epochs=2).batch_size
        100
        >>> VAETrainConfig(lr_decays=1)
        Traceback (most recent call last):
        ...
        ValueError: lr_decays: needs patience (early stopping), got lr_decays=1
    """

    epochs: float = 10
    batch_size: int = 100
    lr: float = 1e-3
    num_particles: int = 1
    kl_warmup: float = 0.0
    seed: int = 0
    patience: float | None = None
    lr_decays: int = 0
    validate_every: int | None = None
    valid_batch_size: int = 1000
    seeded_noise: bool = False
    drop_last: bool = False
    optimizer: Any = "adam"
    lr_schedule: Any = None
    clip_norm: float | str | None = "auto"
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int | None = None
    resume: bool = True
    nan_policy: str = "raise"
    progress: bool | None = None
    desc: str = "vae"
    callback: Callable[[int, History], bool | None] | None = None
    distributed: bool | None = False

    def __post_init__(self) -> None:
        epochs = _check_float("epochs", self.epochs)
        if epochs <= 0:
            raise ValueError(f"epochs: expected a positive number, got {epochs!r}")
        check_positive_int("num_particles", self.num_particles)
        check_positive_int("valid_batch_size", self.valid_batch_size)
        for name in ("epochs", "kl_warmup", "lr") + (
            ("patience",) if self.patience is not None else ()
        ):
            object.__setattr__(self, name, _check_float(name, getattr(self, name)))
        if self.patience is None and self.lr_decays:
            raise ValueError(
                f"lr_decays: needs patience (early stopping), got lr_decays={self.lr_decays}"
            )

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], **overrides: Any) -> VAETrainConfig:
        """The config of the fields found in ``arguments`` (e.g. a fitter's ``locals()``).

        Example:
            >>> VAETrainConfig.from_arguments({"epochs": 3, "vae": None}, desc="x").desc
            'x'
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in arguments.items() if k in names}, **overrides)

    def train_options(self, steps_per_epoch: int) -> dict[str, Any]:
        """The keywords of :func:`pyro_nf.training.train` (periods default to one epoch)."""
        es = None
        if self.patience is not None:
            es = EarlyStopping(
                patience=max(1, round(self.patience * steps_per_epoch)),
                min_steps=round(self.kl_warmup * steps_per_epoch),
                lr_decays=self.lr_decays,
            )
        options = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            **{k: options[k] for k in _TRAIN_KEYS},
            "optimizer": _fused_adam if self.optimizer == "adam" else self.optimizer,
            "early_stopping": es,
            "validate_every": self.validate_every or steps_per_epoch,
            "restore_best": True,
            "checkpoint_every": self.checkpoint_every or steps_per_epoch,
        }


#: The options that :func:`train_vae` hands to :func:`pyro_nf.training.train` unchanged.
_TRAIN_KEYS = (
    "lr", "lr_schedule", "clip_norm", "checkpoint", "resume", "nan_policy", "progress", "desc",
    "callback", "distributed",
)  # fmt: skip


def _elbo_loss(
    vae: VAE,
    data: torch.Tensor,
    batches: EpochBatches,
    config: VAETrainConfig,
) -> Callable[[int], torch.Tensor]:
    r"""The loss closure: this rank's :math:`-\frac{W}{B}\sum_{i\in\text{shard}}\mathcal L_\beta(x_i)`."""
    dtype, device = _model_dtype_device(vae)
    rank, world_size = batches.rank, batches.world_size
    warm = round(config.kl_warmup * batches.steps_per_epoch)
    k, z_dim = config.num_particles, vae.z_dim

    def loss_fn(step: int) -> torch.Tensor:
        idx = batches.global_indices(step)
        n_global = len(idx)
        xb = data[idx[rank::world_size].to(device)].to(dtype)
        beta = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        eps = None
        if config.seeded_noise:
            eps = seeded_normal(config.seed, step, (k, n_global, z_dim), dtype, device)
            eps = eps[:, rank::world_size]
        elbo = vae(xb, num_particles=k, kl_weight=beta, eps=eps)
        return -elbo.sum() * (world_size / n_global)

    return loss_fn


def _validation(
    vae: VAE, data: torch.Tensor, config: VAETrainConfig, rank: int, world_size: int
) -> Callable[[], float]:
    """The negative validation ELBO per point under fixed seeded noise (this rank's share of it:
    the mean over the ranks, which :func:`~pyro_nf.training.train` takes, is the whole set's)."""
    dtype, device = _model_dtype_device(vae)
    eps = seeded_normal(config.seed, -1, (len(data), vae.z_dim), dtype, device)
    points, noise = data[rank::world_size], eps[rank::world_size]
    per_rank = len(data) / world_size
    size = config.valid_batch_size

    def validate_fn() -> float:
        was_training = vae.training
        vae.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for xb, eb in zip(points.split(size), noise.split(size), strict=True):
            total[0] += vae.elbo(xb.to(dtype), eps=eb.unsqueeze(0)).double().sum()
            total[1] += len(xb)
        vae.train(was_training)
        return float(-total[0] / (total[1] if world_size == 1 else per_rank))

    return validate_fn


def train_vae(
    vae: VAE,
    train_data: torch.Tensor,
    valid_data: torch.Tensor | None = None,
    config: VAETrainConfig | None = None,
) -> History:
    """Train ``vae`` in place with the options ``config``: the loop of :func:`fit_vae`.

    With ``config.distributed`` (or ``None`` inside a process group with several ranks) each
    rank trains on its shard of every batch, data-parallel through
    :func:`pyro_nf.training.train`.

    Example:
        >>> from pyro_nf.vae import flow_vae
        >>> vae = flow_vae(8, flow="diag", z_dim=2, hidden=(16,))
        >>> x = (torch.rand(40, 8) < 0.5).float()
        >>> train_vae(vae, x, config=VAETrainConfig(epochs=1, batch_size=20, progress=False)).num_steps
        2
    """
    config = VAETrainConfig() if config is None else config
    if not isinstance(vae, VAE):
        raise ValueError(f"vae: expected a pyro_nf.vae.VAE, got {type(vae).__name__}")
    train_data = _check_data("train_data", train_data, vae)
    if valid_data is not None:
        valid_data = _check_data("valid_data", valid_data, vae)
    rank, world_size = rank_and_world_size() if use_data_parallel(config.distributed) else (0, 1)
    batches = EpochBatches(
        len(train_data), config.batch_size, config.seed, rank, world_size, config.drop_last
    )
    device = _model_dtype_device(vae)[1]
    loss_fn = _elbo_loss(vae, train_data.to(device), batches, config)
    validate_fn = None
    if valid_data is not None:
        validate_fn = _validation(vae, valid_data.to(device), config, rank, world_size)
    spe = batches.steps_per_epoch
    steps = max(1, round(config.epochs * spe))
    options = config.train_options(spe)
    if config.checkpoint is not None:  # a resumed run must see the same data and architecture
        options["fingerprint"] = run_fingerprint(vae, train_data, valid_data)
    history = train(loss_fn, vae, steps, validate_fn=validate_fn, **options)
    history.steps_per_epoch = spe
    return history


def run_fingerprint(
    vae: VAE, train_data: torch.Tensor, valid_data: torch.Tensor | None = None
) -> dict[str, Any]:
    """What a checkpoint of :func:`train_vae` must match to be resumed (plain data): the
    SHA-256 of the training and validation data and the VAE's architecture (sizes, module
    types, parameter shapes).

    Example:
        >>> from pyro_nf.vae import flow_vae
        >>> vae = flow_vae(4, flow="diag", z_dim=2, hidden=(8,))
        >>> fp = run_fingerprint(vae, torch.zeros(3, 4))
        >>> sorted(fp), fp["architecture"]["z_dim"]
        (['architecture', 'train_data', 'valid_data'], 2)
    """
    modules = ("encoder", "posterior", "decoder", "likelihood")
    return {
        "train_data": tensor_sha256(train_data),
        "valid_data": None if valid_data is None else tensor_sha256(valid_data),
        "architecture": {
            "data_dim": vae.data_dim,
            "z_dim": vae.z_dim,
            **{m: type(getattr(vae, m)).__name__ for m in modules},
            "parameters": {k: list(v.shape) for k, v in vae.state_dict().items()},
        },
    }


def fit_vae(
    vae: VAE,
    train_data: torch.Tensor,
    valid_data: torch.Tensor | None = None,
    *,
    epochs: float = 10,
    batch_size: int = 100,
    lr: float = 1e-3,
    num_particles: int = 1,
    kl_warmup: float = 0.0,
    device: str | torch.device | None = None,
    seed: int = 0,
    patience: float | None = None,
    lr_decays: int = 0,
    validate_every: int | None = None,
    valid_batch_size: int = 1000,
    seeded_noise: bool = False,
    drop_last: bool = False,
    optimizer: Any = "adam",
    lr_schedule: Any = None,
    clip_norm: float | str | None = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    nan_policy: str = "raise",
    progress: bool | None = None,
    desc: str = "vae",
    callback: Callable[[int, History], bool | None] | None = None,
) -> History:
    r"""Train ``vae`` by minibatch ascent on the direct ELBO (see the module docstring).

    Args:
        vae: the :class:`~pyro_nf.vae.VAE` (moved to ``device``; trained in place).
        train_data: ``(N, D_x)`` training data (any dtype; batches are cast to the model's).
        valid_data: ``(N_v, D_x)`` validation data: the negative validation ELBO is computed
            every ``validate_every`` steps (default: once per epoch), early stopping monitors
            it and the best parameters are restored at the end.
        device: ``"cpu"``, ``"cuda"``, … (default: where the model is).
        epochs, batch_size, lr, ...: the fields of :class:`VAETrainConfig` (documented there).

    Returns:
        The :class:`~pyro_nf.History` (``losses`` are negative minibatch ELBOs per data point,
        ``val_losses`` negative validation ELBOs).

    Example:
        >>> from pyro_nf.vae import flow_vae
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> x = (torch.rand(200, 16) < 0.3).float()
        >>> vae = flow_vae(16, flow="planar", depth=2, z_dim=2, hidden=(32,))
        >>> hist = fit_vae(vae, x[:150], x[150:], epochs=2, batch_size=50, progress=False)
        >>> hist.num_steps, len(hist.val_losses)
        (6, 2)
    """
    if device is not None:
        vae.to(device)
    return train_vae(vae, train_data, valid_data, VAETrainConfig.from_arguments(locals()))


@dataclass
class VAEEvaluation:
    """Test metrics of a VAE, in nats per data point.

    Attributes:
        elbo: mean ELBO (each data point's ELBO estimated from the same ``K`` samples).
        elbo_se: standard error of that mean over the data points.
        nll: mean importance-weighted estimate of :math:`-\\log p(x)` with ``K`` samples.
        nll_se: standard error of that mean over the data points.
        num_samples: ``K``.
        num_data: number of data points evaluated.
        seconds: wall time of the evaluation.

    Example:
        >>> VAEEvaluation(-90.0, 0.2, 86.0, 0.2, 5000, 10000, 1.0).gap
        4.0
        >>> VAEEvaluation(-90.123456, 0.2034, 86.0, 0.2, 5000, 10000, 1.04)
        VAEEvaluation(elbo=-90.12 ± 0.20, nll=86.00 ± 0.20, gap=4.12 nats, K=5000, N=10000, 1.0 s)
    """

    elbo: float
    elbo_se: float
    nll: float
    nll_se: float
    num_samples: int
    num_data: int
    seconds: float

    @property
    def gap(self) -> float:
        """``-elbo - nll``: how much looser the ELBO is than the IWAE estimate (nats)."""
        return -self.elbo - self.nll

    def __repr__(self) -> str:
        return (
            f"VAEEvaluation(elbo={self.elbo:.2f} ± {self.elbo_se:.2f}, nll={self.nll:.2f} ± "
            f"{self.nll_se:.2f}, gap={self.gap:.2f} nats, K={self.num_samples}, "
            f"N={self.num_data}, {self.seconds:.1f} s)"
        )

    def as_dict(self) -> dict[str, float]:
        """The fields (and ``gap``) as a plain dict (for JSON)."""
        return {**asdict(self), "gap": self.gap}


def _score(
    vae: VAE, data: torch.Tensor, num_samples: int, max_pairs: int, batch_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point ``(log p(x) estimate, ELBO)`` (float64, CPU) under a fixed seed, in eval mode."""
    dtype, device = _model_dtype_device(vae)
    devices = [device] if device.type == "cuda" else []
    was_training = vae.training
    vae.eval()
    log_px, elbos = [], []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for xb in data.split(batch_size):
            lp, el = vae.log_likelihood(
                xb.to(device=device, dtype=dtype), num_samples, max_pairs, return_elbo=True
            )
            log_px.append(lp.double().cpu())
            elbos.append(el.double().cpu())
    vae.train(was_training)
    return torch.cat(log_px), torch.cat(elbos)


def _standard_error(values: torch.Tensor) -> float:
    """Standard error of the mean of ``values`` (NaN for a single value)."""
    n = len(values)
    return float(values.std() / math.sqrt(n)) if n > 1 else math.nan


def evaluate_vae(
    vae: VAE,
    data: torch.Tensor,
    num_samples: int = 5000,
    *,
    max_pairs: int = 32768,
    batch_size: int = 1000,
    seed: int = 0,
) -> VAEEvaluation:
    r"""Test ELBO and importance-weighted :math:`-\log p(x)` (``K = num_samples``) of ``vae``.

    Data are moved to the model's device ``batch_size`` points at a time and scored with
    :meth:`VAE.log_likelihood` (at most ``max_pairs`` sample-data pairs per decoder call), under
    a fixed seed (the global RNG state is restored afterwards).

    Example:
        >>> from pyro_nf.vae import flow_vae
        >>> vae = flow_vae(8, flow="diag", z_dim=2, hidden=(16,))
        >>> ev = evaluate_vae(vae, (torch.rand(20, 8) < 0.5).float(), num_samples=100)
        >>> ev.nll <= -ev.elbo, ev.num_data
        (True, 20)
    """
    if not isinstance(vae, VAE):
        raise ValueError(f"vae: expected a pyro_nf.vae.VAE, got {type(vae).__name__}")
    data = _check_data("data", data, vae)
    check_positive_int("num_samples", num_samples)
    check_positive_int("batch_size", batch_size)
    t0 = time.perf_counter()
    lp, el = _score(vae, data, num_samples, max_pairs, batch_size, seed)
    return VAEEvaluation(
        elbo=float(el.mean()),
        elbo_se=_standard_error(el),
        nll=float(-lp.mean()),
        nll_se=_standard_error(lp),
        num_samples=num_samples,
        num_data=len(lp),
        seconds=time.perf_counter() - t0,
    )
