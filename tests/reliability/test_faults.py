"""Faults a hostile user or a bad day brings (issue 17): killed and interrupted runs, damaged
or edited files, checkpoints of another run, full or read-only disks, overflowing data and
wrongly typed arguments. Every one ends in a clear error naming the file or argument, or in a
consistent state, never in a silent NaN."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from pyro_nf.density import DensityEstimator
from pyro_nf.training import TrainingDivergedError, atomic_save, train
from pyro_nf.training.checkpoint import CheckpointWriteError
from pyro_nf.training.integrity import integrity_record

# a small seeded run whose loss draws from torch's RNG, so resume must restore generators too
RUN_SRC = textwrap.dedent(
    """
    import os, signal, sys, json, torch
    from pyro_nf.training import train

    def run(path=None, seed=0, kill_at=None, sigint_at=None, steps=60):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        torch.manual_seed(1)
        x = torch.randn(128, 2)
        y = x.sum(-1, keepdim=True)

        def loss_fn(step):
            idx = torch.randint(0, 128, (16,))
            return ((net(x[idx] + 0.1 * torch.randn(16, 2)) - y[idx]) ** 2).mean()

        def callback(step, history):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if step == sigint_at:
                os.kill(os.getpid(), signal.SIGINT)

        h = train(loss_fn, net, steps=steps, lr=0.02, checkpoint=path, checkpoint_every=10,
                  validate_fn=lambda: float(((net(x) - y) ** 2).mean()), validate_every=5,
                  callback=callback, progress=False)
        return net, h
    """
)


def _run_module():
    ns: dict = {}
    exec(RUN_SRC, ns)  # noqa: S102 - the same source the subprocesses run
    return ns["run"]


def _subprocess(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN_SRC + "\n" + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )


# -- kind 4: killed and interrupted runs -------------------------------------------------------


def test_kill_9_then_resume_is_bit_identical(tmp_path):
    run = _run_module()
    ref_net, ref = run()
    path = tmp_path / "run.pt"
    proc = _subprocess(f"run({str(path)!r}, kill_at=25)")
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(path, weights_only=True)["step"] == 20
    net, h = run(path, seed=123)  # another init and RNG state: all of it comes from the file
    for p, q in zip(ref_net.parameters(), net.parameters(), strict=True):
        assert torch.equal(p, q)
    assert h.losses == ref.losses and h.val_losses == ref.val_losses


def test_sigint_stops_at_a_step_boundary_restores_best_and_checkpoints(tmp_path):
    path = tmp_path / "run.pt"
    code = f"""
    try:
        run({str(path)!r}, sigint_at=32)
    except KeyboardInterrupt as err:
        h = err.history
        print(json.dumps({{"reason": h.stop_reason, "steps": h.num_steps,
                          "best": min(v for _, v in h.val_losses)}}))
        sys.exit(3)
    """
    proc = _subprocess(code)
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["reason"] == "interrupted" and out["steps"] == 33
    assert "interrupted after 33 of 60 steps" in proc.stderr and str(path) in proc.stderr
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 33 and ckpt["history"]["stop_reason"] == "interrupted"
    # resuming the interrupted run gives the uninterrupted one
    run = _run_module()
    ref_net, ref = run()
    net, h = run(path, seed=7)
    assert h.losses == ref.losses
    assert all(
        torch.equal(p, q) for p, q in zip(ref_net.parameters(), net.parameters(), strict=True)
    )


def test_keyboard_interrupt_in_density_fit_restores_best_and_keeps_history(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(300, 2) * torch.tensor([2.0, 0.5])
    est = DensityEstimator("maf", dim=2, depth=1, hidden=[8], standardize=True)
    path = tmp_path / "fit.pt"

    def stop(step, history):
        if step == 57:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        est.fit(x, steps=500, lr=0.05, validate_every=10, progress=False, callback=stop,
                checkpoint=path, early_stopping=None)  # fmt: skip
    h = est.history
    assert info.value.history is h and h.stop_reason == "interrupted" and h.num_steps == 58
    best_val = min(v for _, v in h.val_losses)
    data = torch.load(path, weights_only=True)
    assert data["step"] == 58 and data["history"]["stop_reason"] == "interrupted"
    # the best parameters are back: the validation NLL now is the best one recorded
    from pyro_nf.density.data import split_for_fit

    x_val = split_for_fit(x, None, 0.1, 0).x_val
    assert est.nll(x_val) == pytest.approx(best_val, abs=1e-6)


# -- kind 2: damaged, poisoned and edited files ------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    est = DensityEstimator("maf", dim=2, depth=2, hidden=[8])
    path = tmp_path / "est.pt"
    est.save(path)
    return est, path


def _resave(path, edit, *, rehash: bool):
    blob = torch.load(path, weights_only=True)
    edit(blob)
    if rehash:  # a careful editor who also rewrote the integrity record
        blob["integrity"] = integrity_record(blob)
    torch.save(blob, path)


def test_truncated_estimator_file_is_refused(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match=f"^path: .*{path.name}"):
        DensityEstimator.load(path)


def test_flipped_bytes_inside_a_tensor_are_refused(saved):
    est, path = saved
    name, tensor = next((k, v) for k, v in est.state_dict().items() if v.numel() >= 8)
    raw = path.read_bytes()
    payload = tensor.detach().contiguous().numpy().tobytes()
    at = raw.find(payload)
    assert at >= 0
    damaged = bytearray(raw)
    damaged[at + 5] ^= 0x40
    path.write_bytes(bytes(damaged))
    msg = f"path: {path} failed its integrity check: tensor '{name}' does not match its recorded"
    with pytest.raises(ValueError, match=re.escape(msg)):
        DensityEstimator.load(path)


def test_nan_parameters_are_refused_on_load_and_on_save(saved):
    est, path = saved
    key = next(iter(est.flow.state_dict()))

    def poison(blob):
        blob["state_dict"]["flow." + key][..., 0] = float("nan")

    _resave(path, poison, rehash=True)
    with pytest.raises(ValueError, match=f"path: {path} holds non-finite parameters"):
        DensityEstimator.load(path)
    with torch.no_grad():
        next(iter(est.flow.parameters())).fill_(float("inf"))
    with pytest.raises(ValueError, match="path: refusing to save"):
        est.save(path.with_name("nan.pt"))
    assert not path.with_name("nan.pt").exists()


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda b: b["spec"]["kwargs"].update(hidden=[2_000_000_000]), "spec.kwargs.hidden.0"),
        (lambda b: b["spec"]["kwargs"].update(depth=10**9), "spec.kwargs.depth"),
        (lambda b: b["spec"]["kwargs"].update(depth="deep"), "spec"),
        (lambda b: b["spec"]["kwargs"].update(dim=3), "spec.kwargs.dim"),
        (lambda b: b.update(dtype="float128"), "dtype"),
        (lambda b: b.update(spec=["maf"]), "spec"),
        (lambda b: b.update(state_dict={}), "state_dict"),
        (lambda b: b.pop("dim"), "dim"),
    ],
)
def test_hand_edited_estimator_files_are_refused_naming_file_and_field(saved, edit, field):
    _, path = saved
    _resave(path, edit, rehash=True)
    with pytest.raises(ValueError, match=f"^path: {path}.*{field}"):
        DensityEstimator.load(path)
    _resave(path, lambda b: None, rehash=False)  # (already edited; the record now matches)


def test_edited_file_without_rehash_fails_its_integrity_check(saved):
    _, path = saved
    _resave(path, lambda b: b["spec"]["kwargs"].update(depth=10**9), rehash=False)
    with pytest.raises(ValueError, match=f"path: {path} failed its integrity check"):
        DensityEstimator.load(path)


def test_legacy_file_without_integrity_record_still_loads(saved):
    est, path = saved
    _resave(path, lambda b: b.pop("integrity"), rehash=False)
    x = torch.randn(4, 2)
    assert torch.equal(DensityEstimator.load(path).log_prob(x), est.log_prob(x))


def _quadratic_run(path, **kw):
    w = torch.zeros(3, requires_grad=True)
    return train(lambda s: ((w - 1.0) ** 2).sum(), [w], steps=kw.pop("steps", 20),
                 checkpoint=path, progress=False, **kw)  # fmt: skip


def test_damaged_and_poisoned_checkpoints_are_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    _quadratic_run(path, steps=10)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="checkpoint: expected a pyro-nf training checkpoint"):
        _quadratic_run(path)
    path.write_bytes(good)
    _resave(path, lambda b: b["params"]["param0"].add_(1.0), rehash=False)
    with pytest.raises(ValueError, match=f"checkpoint: {path} failed its integrity check: tensor "
                       "'params.param0'"):  # fmt: skip
        _quadratic_run(path)
    path.write_bytes(good)
    _resave(path, lambda b: b["params"]["param0"].fill_(float("nan")), rehash=True)
    with pytest.raises(ValueError, match=f"checkpoint: {path} holds non-finite parameters"):
        _quadratic_run(path)


# -- kind 5: a checkpoint knows its run --------------------------------------------------------


def test_resume_with_another_optimizer_is_refused_unless_forced(tmp_path):
    path = tmp_path / "ckpt.pt"
    _quadratic_run(path, steps=10)
    with pytest.raises(ValueError, match=r"belongs to another run: train\.optimizer.* differs "
                       r"\(saved .*now .*\); pass resume='force'"):  # fmt: skip
        _quadratic_run(path, optimizer="sgd")
    with (
        pytest.warns(UserWarning, match="another run"),
        pytest.warns(UserWarning, match="optimizer starts fresh"),
    ):
        h = _quadratic_run(path, optimizer="sgd", resume="force")
    assert h.num_steps == 20


def test_density_resume_with_other_data_or_flow_is_refused(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(200, 2)
    path = tmp_path / "fit.pt"
    kw = {"steps": 20, "progress": False, "checkpoint": path, "val_fraction": 0}
    DensityEstimator("diagonal", dim=2, standardize=True).fit(x, **kw)
    with pytest.raises(ValueError, match=rf"checkpoint: {path} belongs to another run: "
                       r"density\.data\.x differs"):  # fmt: skip
        DensityEstimator("diagonal", dim=2, standardize=True).fit(x * 2, **{**kw, "steps": 40})
    with pytest.raises(ValueError, match=r"density\.(flow|standardize)"):
        DensityEstimator("diagonal", dim=2).fit(x, **{**kw, "steps": 40})
    with pytest.warns(UserWarning, match="belongs to another run"):
        est = DensityEstimator("diagonal", dim=2, standardize=True)
        h = est.fit(x * 2, **{**kw, "steps": 40, "resume": "force"})
    assert h.num_steps == 40
    # the forced run now owns the checkpoint: its data continue silently
    h = DensityEstimator("diagonal", dim=2, standardize=True).fit(x * 2, **{**kw, "steps": 60})
    assert h.num_steps == 60


class _WithBuffer(torch.nn.Module):
    def __init__(self, fill):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.register_buffer("pre", torch.full((2,), float(fill)))


def test_module_buffers_are_checkpointed_and_restored(tmp_path):
    path = tmp_path / "ckpt.pt"
    m = _WithBuffer(3.0)
    train(lambda s: ((m.w - m.pre) ** 2).sum(), m, steps=10, checkpoint=path, progress=False)
    other = _WithBuffer(-1.0)  # "a differently seeded process"
    train(lambda s: ((other.w - other.pre) ** 2).sum(), other, steps=20, checkpoint=path,
          progress=False)  # fmt: skip
    assert torch.equal(other.pre, torch.full((2,), 3.0))


# -- kind 7: disk full, read-only, leftovers ---------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                        capture_output=True).returncode == 0  # fmt: skip
    if not ok:
        pytest.skip("mounting a tmpfs is not permitted here")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_gives_one_clear_error_and_keeps_the_previous_file(tiny_tmpfs):
    path = tiny_tmpfs / "ckpt.pt"
    atomic_save({"w": torch.zeros(10)}, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointWriteError, match=f"checkpoint: could not write {path}: No "
                       "space left on device; the previous file is intact"):  # fmt: skip
        atomic_save({"w": torch.zeros(100_000)}, path)
    assert path.read_bytes() == before and os.listdir(tiny_tmpfs) == ["ckpt.pt"]


def test_read_only_directory_gives_one_clear_error(tiny_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    est = DensityEstimator("diagonal", dim=2)
    with pytest.raises(OSError, match=f"path: could not write {tiny_tmpfs}/est.pt: Read-only"):
        est.save(tiny_tmpfs / "est.pt")


def test_leftover_tmp_files_of_killed_writers_are_removed(tmp_path):
    path = tmp_path / "ckpt.pt"
    dead = tmp_path / "ckpt.pt.999999999.abc123.tmp"  # no process has this pid
    legacy = tmp_path / "ckpt.pt.k2j4h5.tmp"  # written by an older pyro-nf
    other = tmp_path / "other.pt.999999999.x.tmp"  # another file's: left alone
    for p in (dead, legacy, other):
        p.write_bytes(b"partial")
    _quadratic_run(path, steps=5)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", other.name]


# -- kind 3 (density): data that overflows; fits that end non-finite ---------------------------


def test_data_whose_standardization_overflows_is_refused():
    x = torch.randn(100, 2, dtype=torch.float64)
    x[:, 1] *= 1e307
    est = DensityEstimator("diagonal", dim=2, standardize=True).double()
    with pytest.raises(ValueError, match=r"^x: .*column\(s\) \[1\] where they overflow"):
        est.fit(x, steps=5, progress=False)


def test_fit_refuses_to_return_non_finite_parameters():
    est = DensityEstimator("diagonal", dim=2)

    def poison(step, history):
        if step == 4:
            with torch.no_grad():
                next(est.flow.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match="NaN/inf"):
        est.fit(torch.randn(50, 2), steps=5, val_fraction=0, progress=False, callback=poison)


# -- kind 10: wrongly typed arguments ----------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"checkpoint": 123}, "^checkpoint: expected None or a file path"),
        ({"checkpoint": "x.pt", "resume": "yes"}, "^resume: expected True, False or 'force'"),
        ({"checkpoint_every": "10"}, "^checkpoint_every"),
        ({"fingerprint": 5}, "^fingerprint: expected None or a mapping"),
        ({"fingerprint": {"f": object()}}, "^fingerprint: expected plain data"),
    ],
)
def test_wrong_types_for_checkpoint_arguments_are_refused_at_once(kw, match):
    w = torch.zeros(1, requires_grad=True)
    calls = []
    with pytest.raises((TypeError, ValueError), match=match):
        train(lambda s: calls.append(s) or (w**2).sum(), [w], steps=3, progress=False, **kw)
    assert calls == []


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"seed": "a"}, "^seed: expected a non-negative integer"),
        ({"checkpoint": 123}, "^checkpoint: expected"),
    ],
)
def test_wrong_types_in_density_fit_are_refused_at_once(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        DensityEstimator("diagonal", dim=2).fit(torch.randn(20, 2), steps=3, progress=False, **kw)
