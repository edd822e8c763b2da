"""Tests for :mod:`pyro_nf.training`: optimization, schedules, clipping, early stopping, NaN
recovery, and checkpoint/resume (bit-identical, atomic, validated)."""

from __future__ import annotations

import math
import os
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pyro_nf.training.loop import (
    EarlyStopping,
    History,
    NaNRestoreWarning,
    TrainingDivergedError,
    auto_clip_threshold,
    train,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


def quadratic(w: torch.Tensor, target: float = 3.0):
    return lambda step: ((w - target) ** 2).sum()


# -- basic optimization ------------------------------------------------------------------------


def test_minimizes_quadratic_and_history_lengths():
    w = torch.zeros(3, requires_grad=True)
    h = train(quadratic(w), [w], steps=300, lr=0.1, progress=False)
    assert torch.allclose(w, torch.full((3,), 3.0), atol=1e-3)
    for series in (h.losses, h.smoothed, h.lrs, h.grad_norms):
        assert len(series) == 300 == h.num_steps
    assert h.stop_reason == "max_steps" and not h.converged
    assert h.val_losses == [] and h.num_nan_restores == 0 and h.elapsed > 0
    assert h.losses[-1] < 1e-5 < h.losses[0]
    assert h.best_step is not None and "steps=300" in h.summary() == str(h)


def test_fits_linear_regression_float64_minibatch_sgd():
    x = torch.randn(512, 2, dtype=torch.float64)
    y = x @ torch.tensor([1.5, -2.0], dtype=torch.float64) + 0.5
    model = nn.Linear(2, 1).double()

    def loss_fn(step):
        idx = torch.randint(0, 512, (64,))
        return ((model(x[idx]).squeeze(-1) - y[idx]) ** 2).mean()

    h = train(loss_fn, model, steps=600, optimizer="sgd", lr=0.1, progress=False)
    assert model.weight.dtype == torch.float64
    assert torch.allclose(model.weight, torch.tensor([[1.5, -2.0]], dtype=torch.float64), atol=1e-3)
    assert abs(model.bias.item() - 0.5) < 1e-3 and h.losses[-1] < 1e-6


def test_named_params_optimizer_instance_and_factory():
    a, b = torch.zeros(2, requires_grad=True), torch.ones((), requires_grad=True)
    opt = torch.optim.SGD([a], lr=0.5)
    h = train(
        lambda s: ((a - 1) ** 2).sum() + b * 0,
        {"a": a, "b": b},
        steps=5,
        optimizer=opt,
        progress=False,
    )
    assert h.lrs == [0.5] * 5 and b.item() == 1.0 and torch.allclose(a, torch.ones(2))
    h = train(
        quadratic(a),
        [("a", a)],
        steps=3,
        lr=0.25,
        optimizer=lambda ps: torch.optim.RMSprop(ps, lr=1.0),
        progress=False,
    )
    assert h.lrs == [0.25] * 3


def test_pyro_svi_loss():
    import pyro
    import pyro.distributions as dist

    pyro.clear_param_store()
    data = torch.tensor([1.0, 2.0, 3.0])

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", 3):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)

    guide = pyro.infer.autoguide.AutoNormal(model)
    guide()  # create the lazy parameters
    elbo = pyro.infer.Trace_ELBO(num_particles=4)
    train(
        lambda s: elbo.differentiable_loss(model, guide), guide, steps=600, lr=0.05, progress=False
    )
    assert abs(guide.median()["mu"].item() - 2.0) < 0.15


# -- learning-rate schedules and clipping ------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "exponential", "warmup_cosine"])
def test_lr_schedules_follow_documented_formula(schedule):
    w = torch.zeros((), requires_grad=True)
    T, lr = 100, 0.1
    h = train(quadratic(w), [w], steps=T, lr=lr, lr_schedule=schedule, progress=False)
    W = max(1, T // 20)
    expected = {
        "cosine": [0.5 * (1 + math.cos(math.pi * t / T)) for t in range(T)],
        "exponential": [0.01 ** (t / T) for t in range(T)],
        "warmup_cosine": [
            (t + 1) / W if t < W else 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W)))
            for t in range(T)
        ],
    }[schedule]
    assert h.lrs == pytest.approx([lr * f for f in expected], rel=1e-9, abs=1e-15)
    assert h.lrs[-1] < 0.02 * lr


def test_lr_schedule_callable():
    w = torch.zeros((), requires_grad=True)
    h = train(
        quadratic(w),
        [w],
        steps=10,
        lr=1.0,
        progress=False,
        optimizer="sgd",
        lr_schedule=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 4, gamma=0.5),
    )
    assert h.lrs == [1.0] * 4 + [0.5] * 4 + [0.25] * 2


def test_clip_norm_bounds_the_step():
    w = torch.zeros(4, requires_grad=True)
    h = train(
        lambda s: 1e6 * w.sum(),
        [w],
        steps=1,
        optimizer="sgd",
        lr=1.0,
        clip_norm=1.0,
        progress=False,
    )
    assert h.grad_norms[0] == pytest.approx(2e6)  # recorded before clipping
    assert w.norm().item() == pytest.approx(1.0, rel=1e-5)
    w2 = torch.zeros(4, requires_grad=True)
    train(lambda s: 1e6 * w2.sum(), [w2], steps=1, optimizer="sgd", lr=1.0, progress=False)
    assert w2.norm().item() == pytest.approx(2e6)


def test_auto_clip_cuts_a_spike_to_a_typical_step_and_leaves_the_rest():
    spike = 60

    def run(clip_norm):
        w = torch.zeros((), requires_grad=True)
        scale = lambda s: 1e4 if s == spike else 1.0 + 0.01 * (s % 3)  # noqa: E731
        h = train(
            lambda s: scale(s) * w,
            [w],
            steps=100,
            optimizer="sgd",
            lr=0.1,
            clip_norm=clip_norm,
            progress=False,
        )
        return w.item(), h

    w_plain, h_plain = run(None)
    w_auto, h_auto = run("auto")
    assert h_auto.grad_norms == h_plain.grad_norms  # recorded before clipping
    assert h_auto.num_clipped == 1 and h_plain.num_clipped == 0
    # the spike moved w by 1e3 unclipped; clipped it moves w by 5 x median (1.01) x lr
    assert w_auto - w_plain == pytest.approx(0.1 * (1e4 - 5 * 1.01), rel=1e-4)
    assert auto_clip_threshold(h_auto.grad_norms[:spike]) == pytest.approx(5 * 1.01)
    assert auto_clip_threshold(h_auto.grad_norms[:19]) == math.inf  # too few norms yet


def test_auto_clip_follows_a_steadily_growing_gradient():
    w = torch.zeros((), requires_grad=True)
    h = train(
        lambda s: (1.0 + 0.05 * s) * w,
        [w],
        steps=200,
        optimizer="sgd",
        lr=1e-3,
        clip_norm="auto",
        progress=False,
    )
    assert h.num_clipped == 0


# -- early stopping ----------------------------------------------------------------------------


def test_early_stopping_stops_converged_noisy_run():
    w = torch.zeros((), requires_grad=True)

    def loss_fn(step):  # minibatch loss: noisy value and noisy gradient
        return ((w - 3.0 - 0.5 * torch.randn(32)) ** 2).mean()

    h = train(
        loss_fn,
        [w],
        steps=5000,
        lr=0.05,
        progress=False,
        early_stopping=EarlyStopping(patience=200, rel_delta=1e-3),
    )
    assert h.converged and h.stop_reason == "converged"
    assert 300 < h.num_steps < 2000
    assert abs(w.item() - 3.0) < 0.1


def test_lr_decays_at_plateaus_shrink_the_final_jitter():
    """With ``lr_decays`` the first plateaus divide the lr instead of stopping; the final
    iterate's error (stationary jitter ~ lr) is far smaller than at a single plateau."""

    def run(decays: int, seed: int) -> tuple[History, float]:
        torch.manual_seed(seed)
        w = torch.zeros((), requires_grad=True)
        es = EarlyStopping(patience=200, rel_delta=1e-3, lr_decays=decays, decay_factor=0.1)
        h = train(
            lambda s: ((w - 3.0 - 2.0 * torch.randn(4)) ** 2).mean(),
            [w],
            steps=20_000,
            lr=0.1,
            progress=False,
            early_stopping=es,
        )
        return h, abs(w.item() - 3.0)

    plain = [run(0, seed) for seed in range(8)]
    decayed = [run(2, seed) for seed in range(8)]
    for h, _ in decayed:
        assert h.converged and len(h.lr_decay_steps) == 2 and h.num_steps < 20_000
        first, second = h.lr_decay_steps
        assert h.lrs[first] == pytest.approx(0.1) and h.lrs[first + 1] == pytest.approx(0.01)
        assert h.lrs[second + 1] == pytest.approx(1e-3) and h.lrs[-1] == pytest.approx(1e-3)
    for h, _ in plain:
        assert h.converged and h.lr_decay_steps == [] and set(h.lrs) == {0.1}
    rms = lambda runs: math.sqrt(sum(e * e for _, e in runs) / len(runs))  # noqa: E731
    # jitter sd at lr 0.1 with this noise is ~0.45; after two decays ~0.05
    assert rms(decayed) < 0.35 * rms(plain)


def test_early_stopping_keeps_a_slowly_but_steadily_improving_run():
    w = torch.full((), 2.0, requires_grad=True)

    def loss_fn(step):  # improves by 1e-3 per step (0.2 per patience window), noise sd 0.05
        return w + 0.05 * torch.randn(())

    h = train(
        loss_fn,
        [w],
        steps=1500,
        optimizer="sgd",
        lr=1e-3,
        progress=False,
        early_stopping=EarlyStopping(patience=200, min_delta=0.02, rel_delta=1e-3),
    )
    assert not h.converged and h.stop_reason == "max_steps" and h.num_steps == 1500
    assert w.item() == pytest.approx(0.5, abs=1e-4)


def test_early_stopping_min_steps_and_true_default():
    w = torch.zeros((), requires_grad=True)
    h = train(
        lambda s: w * 0 + 1.0,
        [w],
        steps=1000,
        progress=False,
        early_stopping=EarlyStopping(patience=10, min_steps=300),
    )
    assert h.converged and h.num_steps == 300
    h = train(lambda s: w * 0 + 1.0, [w], steps=1000, progress=False, early_stopping=True)
    assert h.converged and h.num_steps == 20 + EarlyStopping().patience  # 20 warm-up updates


def test_validation_early_stopping_restores_best_parameters():
    w = torch.zeros((), requires_grad=True)
    seen = {}

    def validate():  # the training loss overshoots the validation optimum at w = 1.5
        seen[len(seen)] = w.item()
        return (w - 1.5) ** 2

    h = train(
        lambda s: (w - 5.0) ** 2,
        [w],
        steps=2000,
        lr=0.05,
        progress=False,
        validate_fn=validate,
        validate_every=5,
        early_stopping=EarlyStopping(patience=100, min_delta=1e-6),
    )
    assert h.converged and h.num_steps < 2000
    assert len(h.val_losses) == len(seen) == h.num_steps // 5
    vals = [v for _, v in h.val_losses]
    best = int(np.argmin(vals))
    assert h.best_step == h.val_losses[best][0]
    assert w.item() == seen[best] and abs(w.item() - 1.5) < 0.05  # restored, not the last
    assert seen[len(seen) - 1] > 3.0


# -- NaN recovery ------------------------------------------------------------------------------


def test_nan_loss_restores_last_good_parameters_and_halves_lr():
    w = torch.zeros(2, requires_grad=True)
    used = []

    def loss_fn(step):
        used.append(w.detach().clone())
        loss = ((w - 3.0) ** 2).sum()
        return loss * float("nan") if step == 10 else loss

    with pytest.warns(
        NaNRestoreWarning,
        match=r"step 10: non-finite loss nan; restored the "
        r"parameters and optimizer state used at step 9 and halved",
    ):
        h = train(loss_fn, [w], steps=60, optimizer="sgd", lr=0.1, progress=False)
    assert torch.equal(used[11], used[9])  # the step after the NaN starts from step 9's params
    assert math.isnan(h.losses[10]) and h.num_nan_restores == 1 and h.num_steps == 60
    assert h.lrs[9] == 0.1 and h.lrs[11] == 0.05
    assert torch.allclose(w, torch.full((2,), 3.0), atol=1e-2)


def test_nan_gradient_with_finite_loss_is_caught():
    w = torch.ones(2, requires_grad=True)

    def loss_fn(step):
        loss = ((w - 3.0) ** 2).sum()
        return loss + (w - w.detach()).abs().sqrt().sum() if step == 3 else loss  # grad NaN

    with pytest.warns(NaNRestoreWarning, match="gradient norm nan"):
        h = train(loss_fn, [w], steps=20, lr=0.1, progress=False)
    assert h.num_nan_restores == 1 and torch.isfinite(w).all()


def test_alternating_nan_steps_give_up_instead_of_halving_the_lr_forever():
    w = torch.zeros((), requires_grad=True)

    def loss_fn(step):  # every other step fails, forever
        loss = (w - 3.0) ** 2
        return loss if step % 2 == 0 else loss * float("nan")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NaNRestoreWarning)
        with pytest.raises(TrainingDivergedError, match="fewer than 100 good steps") as info:
            train(loss_fn, [w], steps=1000, lr=0.1, max_nan_restores=4, progress=False)
    h = info.value.history
    assert h.num_nan_restores == 4 and h.num_steps == 10
    assert min(h.lrs) == pytest.approx(0.1 / 2**4)


def test_nan_restore_count_starts_again_after_a_long_good_stretch():
    w = torch.zeros((), requires_grad=True)

    def loss_fn(step):  # one failure every 150 steps: each is recovered from
        loss = (w - 3.0) ** 2
        return loss * float("nan") if step % 150 == 149 else loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NaNRestoreWarning)
        h = train(loss_fn, [w], steps=1500, lr=0.05, max_nan_restores=2, progress=False)
    assert h.stop_reason == "max_steps" and h.num_nan_restores == 10


def test_persistent_nan_raises_with_last_good_parameters_in_place(tmp_path):
    w = torch.ones(2, requires_grad=True)
    path = tmp_path / "ckpt.pt"

    def loss_fn(step):
        loss = ((w - 3.0) ** 2).sum()
        return loss if step < 5 else loss * float("nan")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match=r"3 restores with halved lr.*gave up") as info:
            train(
                loss_fn, [w], steps=50, lr=0.1, max_nan_restores=3, checkpoint=path, progress=False
            )
    assert sum(issubclass(c.category, NaNRestoreWarning) for c in caught) == 3
    assert isinstance(info.value, TrainingDivergedError)
    assert info.value.history.stop_reason == "diverged" and info.value.history.num_steps == 9
    assert torch.isfinite(w).all() and not torch.equal(w, torch.ones(2))
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["params"]["param0"], w.detach())


def test_always_nan_loss_raises_and_keeps_initial_parameters():
    w = torch.ones(2, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NaNRestoreWarning)
        with pytest.raises(
            RuntimeError,
            match=r"step 5: non-finite loss nan after 5 restores with "
            r"halved lr and fewer than 100 good steps in a row between them; gave up\. The parameters are those used at "
            r"step 0\. Check the model",
        ):
            train(lambda s: (w * float("nan")).sum(), [w], steps=50, progress=False)
    assert torch.equal(w, torch.ones(2))


def test_nan_policy_raise():
    w = torch.ones((), requires_grad=True)
    with pytest.raises(TrainingDivergedError, match="step 0: non-finite loss nan"):
        train(lambda s: w * float("nan"), [w], steps=5, nan_policy="raise", progress=False)


# -- checkpoint / resume -----------------------------------------------------------------------


class Killed(Exception):
    pass


def _run(path, kill_at=None, seed=0, device="cpu", clip_norm=1.0):
    """A stochastic run (torch, numpy and python RNG in the loss) with every stateful feature."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).to(device)  # seed-dependent
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0)).to(device)  # fixed data
    y = (x[:, :1] * x[:, 1:]).sin()

    def loss_fn(step):
        idx = torch.randint(0, 256, (32,), device=device)
        noise = 0.01 * random.random() + 0.01 * float(np.random.randn())
        return (
            (net(x[idx] + 0.1 * torch.randn(32, 2, device=device)) - y[idx]) ** 2
        ).mean() + noise

    def callback(step, history):
        if step == kill_at:
            raise Killed

    h = train(
        loss_fn,
        net,
        steps=400,
        lr=0.02,
        lr_schedule="warmup_cosine",
        clip_norm=clip_norm,
        early_stopping=EarlyStopping(patience=10_000),
        checkpoint_every=100,
        validate_fn=lambda: ((net(x + 0.1 * torch.randn(256, 2, device=device)) - y) ** 2).mean(),
        validate_every=50,
        checkpoint=path,
        callback=callback,
        progress=False,
    )
    return net, h


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
            ],
        ),
    ],
)
def test_checkpoint_resume_is_bit_identical(tmp_path, device):
    ref_net, ref = _run(None, device=device)
    path = tmp_path / "run.pt"
    with pytest.raises(Killed):
        _run(path, kill_at=250, device=device)
    assert torch.load(path, weights_only=True)["step"] == 200
    net, h = _run(path, seed=123, device=device)  # "new process": other init and RNG, resumes
    for p, q in zip(ref_net.parameters(), net.parameters(), strict=True):
        assert torch.equal(p, q)
    assert h.losses == ref.losses and h.val_losses == ref.val_losses and h.num_steps == 400
    assert torch.load(path, weights_only=True)["step"] == 400
    h2 = _run(path, device=device)[1]  # already done: nothing left to run
    assert h2.losses == ref.losses


def test_resume_with_auto_clipping_is_bit_identical(tmp_path):
    ref_net, ref = _run(None, clip_norm="auto")
    path = tmp_path / "run.pt"
    with pytest.raises(Killed):
        _run(path, kill_at=250, clip_norm="auto")
    net, h = _run(path, seed=123, clip_norm="auto")
    for p, q in zip(ref_net.parameters(), net.parameters(), strict=True):
        assert torch.equal(p, q)
    assert h.losses == ref.losses and h.num_clipped == ref.num_clipped


def test_checkpoint_keeps_the_final_state_and_resume_restores_the_best(tmp_path):
    w = torch.zeros((), requires_grad=True)
    path = tmp_path / "v.pt"
    kwargs = {
        "validate_fn": lambda: (w - 1.5) ** 2,
        "validate_every": 5,
        "early_stopping": EarlyStopping(patience=100, min_delta=1e-6),
        "checkpoint": path,
        "lr": 0.05,
        "progress": False,
    }
    h = train(lambda s: (w - 5.0) ** 2, [w], steps=2000, **kwargs)
    best = w.item()
    assert h.converged and abs(best - 1.5) < 0.05
    ckpt = torch.load(path, weights_only=True)
    last = float(ckpt["params"]["param0"])
    assert last > 3.0  # the state the run ended in, consistent with the optimizer state
    assert float(ckpt["best_params"][0]) == best
    with torch.no_grad():
        w.fill_(-7.0)
    h2 = train(lambda s: (w - 5.0) ** 2, [w], steps=2000, **kwargs)
    assert h2.converged and w.item() == best


def test_converged_checkpoint_returns_immediately(tmp_path):
    w = torch.zeros((), requires_grad=True)
    path = tmp_path / "c.pt"
    es = EarlyStopping(patience=20)
    h = train(lambda s: w * 0, [w], steps=500, checkpoint=path, early_stopping=es, progress=False)
    calls = []
    h2 = train(
        lambda s: calls.append(s) or w * 0,
        [w],
        steps=500,
        checkpoint=path,
        early_stopping=es,
        progress=False,
    )
    assert h2.converged and h2.num_steps == h.num_steps and calls == []


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    w = torch.zeros(3, requires_grad=True)
    path = tmp_path / "ckpt.pt"
    train(quadratic(w), [w], steps=100, checkpoint=path, checkpoint_every=50, progress=False)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train(
            quadratic(w),
            [w],
            steps=100,
            checkpoint=path,
            checkpoint_every=10,
            resume=False,
            progress=False,
        )
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def test_resume_with_mismatched_parameters_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    w = torch.zeros(3, requires_grad=True)
    train(quadratic(w), [w], steps=5, checkpoint=path, progress=False)
    v = torch.zeros(4, requires_grad=True)
    with pytest.raises(ValueError, match=r"checkpoint: expected parameters matching.*param0"):
        train(quadratic(v), [v], steps=10, checkpoint=path, progress=False)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint: expected a pyro-nf training checkpoint"):
        train(quadratic(w), [w], steps=10, checkpoint=tmp_path / "junk.pt", progress=False)


# -- argument validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, r"steps: expected an integer >= 1, got 0"),
        ({"steps": 2.5}, r"steps: expected an integer >= 1, got 2.5"),
        ({"optimizer": "adamx"}, r"optimizer: expected one of .*'adam'.*got 'adamx'"),
        ({"optimizer": 3}, r"optimizer: expected .* got 3"),
        ({"lr": 0.0}, r"lr: expected a positive finite float, got 0.0"),
        ({"lr": -1e-3}, r"lr: expected a positive finite float, got -0.001"),
        ({"lr": float("nan")}, r"lr: expected a positive finite float, got nan"),
        ({"lr_schedule": "linear"}, r"lr_schedule: expected None, one of .*got 'linear'"),
        ({"clip_norm": -1.0}, r"clip_norm: expected None, 'auto' or a positive .*, got -1.0"),
        ({"clip_norm": "spikes"}, r"clip_norm: expected None, 'auto' or a positive .*'spikes'"),
        ({"nan_policy": "ignore"}, r"nan_policy: expected 'restore' or 'raise', got 'ignore'"),
        ({"max_nan_restores": -1}, r"max_nan_restores: expected an integer >= 0, got -1"),
        ({"validate_every": 0}, r"validate_every: expected an integer >= 1, got 0"),
        ({"early_stopping": "yes"}, r"early_stopping: expected None, True or an EarlyStopping"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    w = torch.zeros((), requires_grad=True)
    with pytest.raises(ValueError, match=match):
        train(quadratic(w), [w], **{"progress": False, **kwargs})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patience": 0}, "patience: expected an integer >= 1, got 0"),
        ({"min_delta": -1.0}, r"min_delta: expected a finite float >= 0, got -1.0"),
        ({"smoothing": 0.0}, r"smoothing: expected a float in \(0, 1\], got 0.0"),
        ({"lr_decays": -1}, r"lr_decays: expected an integer >= 0, got -1"),
        ({"decay_factor": 1.0}, r"decay_factor: expected a float in \(0, 1\), got 1.0"),
    ],
)
def test_bad_early_stopping_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


def test_bad_params_and_loss():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="params: expected leaf floating-point tensors"):
        train(quadratic(w), [w * 2], steps=1, progress=False)
    with pytest.raises(ValueError, match="params: expected at least one trainable tensor"):
        train(quadratic(w), [], steps=1, progress=False)
    with pytest.raises(ValueError, match="none of which receives a gradient"):
        train(lambda s: torch.zeros(2, requires_grad=True).sum(), [w], steps=1, progress=False)
    with pytest.raises(ValueError, match=r"loss_fn: expected a scalar tensor .* shape \(2,\)"):
        train(lambda s: w * 2, [w], steps=1, progress=False)
    with pytest.raises(ValueError, match=r"optimizer: expected an optimizer over"):
        train(
            quadratic(w),
            [w],
            optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
            progress=False,
        )


# -- progress: True always, None when interactive (a terminal or a Jupyter kernel), False never ---


class _RecordingBar:
    """Stands in for ``tqdm.auto.tqdm``: records its keywords, postfixes and updates."""

    made: list[_RecordingBar] = []

    def __init__(self, **kwargs):
        self.kwargs, self.postfixes, self.n = kwargs, [], kwargs.get("initial", 0)
        _RecordingBar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def set_postfix(self, **kwargs):
        self.postfixes.append(kwargs)

    def update(self, n):
        self.n += n


class _FakeKernelShell:
    kernel = object()  # what a Jupyter kernel's shell (ipykernel's ZMQInteractiveShell) has


@pytest.fixture
def bars(monkeypatch):
    import tqdm.auto
    import tqdm.std

    _RecordingBar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", _RecordingBar)
    monkeypatch.setattr(tqdm.std, "tqdm", _RecordingBar)  # a kernel without ipywidgets
    return _RecordingBar.made


def test_a_kernel_without_ipywidgets_gets_a_text_bar_not_a_warning(monkeypatch):
    import importlib.util

    import tqdm.auto
    import tqdm.std

    from pyro_nf.training import progress

    monkeypatch.setattr(progress, "interactive", lambda: True)
    monkeypatch.setattr(progress, "_in_kernel", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ipywidgets" else real(name, *a),
    )
    assert progress.bar_class() is tqdm.std.tqdm
    monkeypatch.setattr(progress, "_in_kernel", lambda: False)
    assert progress.bar_class() is tqdm.auto.tqdm


def _set_terminal(monkeypatch, is_tty: bool):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: is_tty, raising=False)


@pytest.mark.parametrize(
    "progress, tty, kernel, shown",
    [
        (True, False, False, True),  # forced, even into a log file
        (False, True, True, False),  # off, even in a terminal or a notebook
        (None, False, False, False),  # automatic: nobody watching
        (None, True, False, True),  # automatic: a terminal
        (None, False, True, True),  # automatic: a Jupyter kernel (stderr is not a tty there)
    ],
)
def test_progress_true_none_false(bars, monkeypatch, progress, tty, kernel, shown):
    import sys
    import types

    _set_terminal(monkeypatch, tty)
    ipython = types.SimpleNamespace(get_ipython=lambda: _FakeKernelShell() if kernel else None)
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    w = torch.zeros((), requires_grad=True)
    train(quadratic(w), [w], steps=7, lr=0.1, progress=progress, desc="quad")
    (bar,) = bars
    assert bar.kwargs["disable"] is (not shown)
    assert bar.kwargs["total"] == 7 and bar.kwargs["desc"] == "quad"
    assert bar.n == (7 if shown else 0)
    assert len(bar.postfixes) == (7 if shown else 0)
    if shown:
        assert float(bar.postfixes[-1]["loss"]) < 9.0  # the smoothed loss, falling from 9


def test_progress_defaults_to_automatic(bars, monkeypatch):
    _set_terminal(monkeypatch, True)
    w = torch.zeros((), requires_grad=True)
    train(quadratic(w), [w], steps=3)
    _set_terminal(monkeypatch, False)
    train(quadratic(w), [w], steps=3)
    assert [b.kwargs["disable"] for b in bars] == [False, True]


def test_progress_true_writes_a_bar_to_stderr_without_a_tty(capsys):
    w = torch.zeros((), requires_grad=True)
    train(quadratic(w), [w], steps=5, progress=True, desc="forced")
    err = capsys.readouterr().err
    assert "forced" in err and "5/5" in err and "loss=" in err
    train(quadratic(w), [w], steps=5, progress=None)  # pytest's stderr is not a terminal
    train(quadratic(w), [w], steps=5, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("bad", ["yes", 1, 0, "auto"])
def test_progress_refuses_other_values_before_the_run(bad, tmp_path):
    w = torch.zeros((), requires_grad=True)
    path = tmp_path / "ck.pt"
    with pytest.raises(
        TypeError, match=r"^progress: expected True, False or None \(automatic\), got"
    ):
        train(quadratic(w), [w], steps=3, progress=bad, checkpoint=path)
    assert not path.exists() and w.item() == 0.0


def test_history_summary():
    h = History(losses=[1.0], smoothed=[1.0], val_losses=[(0, 0.5)], stop_reason="max_steps")
    assert "best val loss=0.5" in str(h)
