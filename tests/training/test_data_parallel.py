"""Data parallelism is a property of the one loop: ``train(..., distributed=None)`` inside a
2-process gloo group (CPU, loopback) with ``shard`` in the loss closure equals the
single-process run, for a plain regression and for ``DensityEstimator.fit``."""

from __future__ import annotations

import pytest
import torch

import pyro_nf
from pyro_nf.training import launch_local, shard, train
from pyro_nf.training.distributed import init_distributed, rank_and_world_size, use_data_parallel

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

N, BATCH, STEPS = 64, 16, 12


def _regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(
        N, generator=gen, dtype=torch.float64
    )
    return x, y


def _fit_regression(shard_sizes: list[int] | None = None) -> tuple[torch.nn.Module, list[float]]:
    """A linear regression by minibatch SGD: batch ``t`` is a fixed block, sharded over ranks."""
    x, y = _regression_data()
    torch.manual_seed(5)
    lin = torch.nn.Linear(3, 1).double()
    if rank_and_world_size()[0] == 1:  # another start on rank 1: rank 0's must be broadcast
        with torch.no_grad():
            lin.weight.add_(1.0)

    def loss_fn(step: int) -> torch.Tensor:
        block = torch.arange(N)[(step * BATCH) % N :][:BATCH]
        idx = shard(block)
        if shard_sizes is not None:
            shard_sizes.append(len(idx))
        return ((lin(x[idx]).squeeze(-1) - y[idx]) ** 2).mean()

    validate = lambda: ((lin(x).squeeze(-1) - y) ** 2).mean()  # noqa: E731
    hist = train(loss_fn, lin, STEPS, optimizer="sgd", lr=0.1, validate_fn=validate,
                 validate_every=4, progress=False)  # fmt: skip
    return lin, hist.losses + [v for _, v in hist.val_losses]


def _fit_density() -> tuple[dict[str, torch.Tensor], list[float]]:
    """``DensityEstimator("maf", dim=2).fit`` on fixed float64 minibatches."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 2, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 0.5])
    torch.manual_seed(3)
    est = pyro_nf.DensityEstimator("maf", dim=2, depth=2, hidden=[8]).double()
    hist = est.fit(x, steps=STEPS, batch_size=32, lr=1e-2, val_fraction=0.25,
                   validate_every=4, early_stopping=None, progress=False)  # fmt: skip
    state = {k: v.detach().clone() for k, v in est.state_dict().items()}
    return state, hist.losses + [v for _, v in hist.val_losses]


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed(backend="gloo", device="cpu", timeout_s=60)
    assert (ctx.rank, ctx.world_size) == (rank, world_size) and use_data_parallel(None)
    sizes: list[int] = []
    lin, reg_losses = _fit_regression(sizes)
    state, density_losses = _fit_density()
    torch.save(
        {
            "regression": {k: v.detach() for k, v in lin.state_dict().items()},
            "regression_losses": reg_losses,
            "shard_sizes": sizes,
            "density": state,
            "density_losses": density_losses,
        },
        f"{out_dir}/rank{rank}.pt",
    )


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    try:
        launch_local(_worker, world_size=2, args=(str(out),), timeout_s=90)
    except TimeoutError as e:  # pragma: no cover - a stuck machine, not a wrong result
        pytest.skip(f"gloo processes did not finish in time: {e}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _assert_same(a: dict, b: dict, tol: float | None = None) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        if tol is None:
            assert torch.equal(value, b[name]), name
        else:
            torch.testing.assert_close(value, b[name], rtol=tol, atol=tol, msg=name)


def test_regression_with_shard_matches_the_single_process_run(ranks):
    r0, r1 = ranks
    assert r0["shard_sizes"] == [BATCH // 2] * STEPS  # each rank saw half of every batch
    _assert_same(r0["regression"], r1["regression"])  # identical parameters on both ranks
    assert r0["regression_losses"] == r1["regression_losses"]  # all-reduced, so identical
    lin, losses = _fit_regression()
    _assert_same(r0["regression"], lin.state_dict(), tol=1e-12)
    torch.testing.assert_close(
        torch.tensor(r0["regression_losses"]), torch.tensor(losses), rtol=1e-12, atol=1e-12
    )


def test_density_fit_matches_the_single_process_run(ranks):
    r0, r1 = ranks
    _assert_same(r0["density"], r1["density"])
    assert r0["density_losses"] == r1["density_losses"]
    state, losses = _fit_density()
    _assert_same(r0["density"], state, tol=1e-10)
    torch.testing.assert_close(
        torch.tensor(r0["density_losses"]), torch.tensor(losses), rtol=1e-10, atol=1e-10
    )


def test_single_process_shard_and_switch():
    batch = torch.arange(12).reshape(3, 4)
    assert shard(batch) is batch and shard(batch, dim=1) is batch
    assert not use_data_parallel(None)
    with pytest.raises(ValueError, match="distributed: expected an initialized"):
        use_data_parallel(True)
    with pytest.raises(ValueError, match="distributed: expected None, True or False"):
        use_data_parallel("yes")
    w = torch.zeros((), requires_grad=True)
    with pytest.raises(ValueError, match="distributed"):
        train(lambda step: (w - 1) ** 2, [w], 3, progress=False, distributed=True)
