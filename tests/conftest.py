"""Shared fixtures: every flow family, direct and amortized, built the same way for all tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_nf
from pyro_nf.flows import spline_autoregressive, spline_coupling

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def _mixed(dim: int, context_dim: int | None) -> pyro_nf.Flow:
    return pyro_nf.stack(
        pyro_nf.iaf(dim, depth=1, context_dim=context_dim, hidden=(16,)),
        pyro_nf.planar(dim, depth=2, context_dim=context_dim, base="standard"),
        pyro_nf.radial(dim, depth=2, context_dim=context_dim, base="standard"),
    )


#: name -> builder(dim, context_dim) for every family the library offers.
FAMILIES: dict[str, Callable[[int, int | None], pyro_nf.Flow]] = {
    "planar": lambda d, h: pyro_nf.planar(d, depth=3, context_dim=h),
    "radial": lambda d, h: pyro_nf.radial(d, depth=3, context_dim=h),
    "iaf": lambda d, h: pyro_nf.iaf(d, depth=2, context_dim=h, hidden=(16, 16)),
    "iaf_affine": lambda d, h: pyro_nf.iaf(
        d, depth=2, context_dim=h, hidden=(16,), update="affine"
    ),
    "maf": lambda d, h: pyro_nf.maf(d, depth=2, context_dim=h, hidden=(16, 16)),
    "maf_sigmoid": lambda d, h: pyro_nf.maf(
        d, depth=2, context_dim=h, hidden=(16,), update="sigmoid"
    ),
    "nice": lambda d, h: pyro_nf.nice(max(d, 2), depth=3, context_dim=h, hidden=(16,)),
    "realnvp": lambda d, h: pyro_nf.realnvp(max(d, 2), depth=3, context_dim=h, hidden=(16, 16)),
    # bound 3: the tests' standard-normal points fall on both sides of it (splines and tails)
    "spline_autoregressive": lambda d, h: spline_autoregressive(
        d, depth=2, context_dim=h, bins=4, bound=3.0, hidden=(16, 16)
    ),
    "spline_coupling": lambda d, h: spline_coupling(
        max(d, 2), depth=3, context_dim=h, bins=4, bound=3.0, hidden=(8,)
    ),
    "mixed": _mixed,
    "full_affine": lambda d, h: pyro_nf.Flow(
        d,
        [
            pyro_nf.LowerTriangularAffineLayer(d, amortized=h is not None),
            pyro_nf.PlanarLayer(d, 2, amortized=h is not None),
        ],
        context_dim=h,
    ),
}

CONTEXT_DIM = 4


def randomize(flow: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from its (identity) initialisation, reproducibly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
    return flow


def make_flow(
    family: str,
    dim: int,
    amortized: bool,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    scale: float = 0.3,
) -> pyro_nf.Flow:
    torch.manual_seed(seed)
    flow = FAMILIES[family](dim, CONTEXT_DIM if amortized else None).to(dtype)
    return randomize(flow, scale=scale, seed=seed)


def make_context(batch_shape: tuple[int, ...], amortized: bool, dtype=torch.float64, seed: int = 1):
    if not amortized:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*batch_shape, CONTEXT_DIM, generator=gen, dtype=dtype)


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(params=[False, True], ids=["direct", "amortized"])
def amortized(request) -> bool:
    return request.param


@pytest.fixture(autouse=True)
def _pyro_clean():
    import pyro

    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


# Small tensors: one intra-op thread is faster and immune to oversubscription on 2-core CI boxes.
torch.set_num_threads(1)


class ShiftedNormal(nn.Module):
    """q = N(loc, 1) in 1-D whose starts are taken, in turn, from ``STARTS`` (a class attribute:
    shared by the copies a population makes, as the global RNG is); ``resets`` counts fresh
    starts of this instance. Set ``ShiftedNormal.STARTS[:] = [...]`` before building one."""

    STARTS: list[float] = []

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.tensor([self.STARTS.pop(0)]))
        self.resets = 0

    def reset_parameters(self):
        self.resets += 1
        with torch.no_grad():
            self.loc.fill_(self.STARTS.pop(0))

    def forward(self):
        return dist.Normal(self.loc, 1.0).to_event(1)


class FixedNormal(nn.Module):
    """q = N(loc, I) in 2-D with no ``reset_parameters`` anywhere: no fresh starts possible."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))

    def forward(self):
        return dist.Normal(self.loc, 1.0).to_event(1)


# -- a conjugate Gaussian model with a correlated posterior (guides and trust tests) -------------

A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -0.7], [0.8, 0.0, 1.0], [0.3, 0.3, 0.3]])
NOISE = 0.6
Y = torch.tensor([1.0, -0.5, 2.0, 0.4])


def gaussian_model():
    """z ~ N(0, I_3), y ~ N(A z, 0.6^2 I_4) observed at Y: its posterior is Gaussian and known."""
    z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    pyro.sample("y", dist.Normal(z @ A.T, NOISE).to_event(1), obs=Y)


def exact_gaussian_posterior():
    """The exact posterior mean and covariance of :func:`gaussian_model`."""
    precision = torch.eye(3) + A.T @ A / NOISE**2
    cov = torch.linalg.inv(precision)
    mean = cov @ A.T @ Y / NOISE**2
    return mean, cov


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_modules(*names: str) -> Iterator[Any]:
    """Import ``benchmarks/<name>.py`` for each name (the scripts import their neighbours, so
    ``benchmarks/`` is on ``sys.path`` meanwhile) and yield the modules: the body of a module
    fixture, ``yield from benchmark_modules("density")``. Importing ``time_to_accuracy`` sets
    ``XLA_FLAGS`` (one XLA thread) for the process, as the script does."""
    import importlib
    import sys

    sys.path.insert(0, str(BENCHMARKS))
    try:
        modules = tuple(importlib.import_module(name) for name in names)
        yield modules[0] if len(modules) == 1 else modules
    finally:
        sys.path.remove(str(BENCHMARKS))
