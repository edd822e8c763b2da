"""The bookkeeping of ``benchmarks/energies.py``: which runs count as one cell, which init a saved
run used, and the rank test that says whether pyro-nf is behind Pyro beyond seed-to-seed chance."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def energies():
    sys.path.insert(0, str(BENCH))
    try:
        import energies

        yield energies
    finally:
        sys.path.remove(str(BENCH))


def run(library, family, seed, kl, **extra):
    return {
        "library": library, "energy": "U1", "family": family, "depth": 32, "seed": seed,
        "steps": 10_000, "batch_size": 256, "lr": 1e-2, "anneal_steps": 1000, "kl": kl,
        "kl_se": 0.001, "fit_s": 1.0, "status": "ok", **extra,
    }  # fmt: skip


def test_record_init_reads_old_and_new_records(energies):
    assert energies.record_init(run("pyro_nf", "radial", 0, 0.1)) == "identity"  # before the key
    assert energies.record_init(run("pyro_nf", "planar", 0, 0.1, init="random")) == "random"
    assert energies.record_init(run("pyro_nf", "iaf", 0, 0.1, init=None)) is None
    assert energies.record_init(run("pyro", "radial", 0, 0.1, init=None)) is None
    same = run("pyro_nf", "radial", 0, 0.1)
    assert energies._key(same) == energies._key({**same, "init": "identity"})
    assert energies._key(same) != energies._key({**same, "init": "random"})


def test_p_worse_is_small_only_when_pyro_nf_is_consistently_behind(energies):
    assert energies.p_worse([0.3, 0.4, 0.5], [0.1, 0.2, 0.25]) == pytest.approx(0.05)
    assert energies.p_worse([0.1, 0.2, 0.25], [0.3, 0.4, 0.5]) == pytest.approx(1.0)
    assert 0.3 < energies.p_worse([0.1, 0.3, 0.5], [0.2, 0.4, 0.6]) < 0.9  # interleaved
    assert math.isnan(energies.p_worse([0.1, 0.2], [0.3, 0.4, 0.5]))  # too few seeds
    assert math.isnan(energies.p_worse([0.1, math.nan, 0.2], [0.3, 0.4, 0.5]))


def test_summary_compares_pyro_with_each_pyro_nf_init(energies):
    runs = [run("pyro", "radial", s, kl, init=None) for s, kl in enumerate([0.010, 0.011, 0.012])]
    runs += [run("pyro_nf", "radial", s, 0.014 + s / 1e4) for s in range(3)]  # old identity records
    runs += [
        run("pyro_nf", "radial", s, kl, init="random") for s, kl in enumerate([0.009, 0.01, 0.013])
    ]
    rows = {r["init"]: r for r in energies.summarize(runs)}
    assert set(rows) == {"identity", "random"}
    assert rows["identity"]["pyro_seeds"] == rows["random"]["pyro_seeds"] == 3
    assert rows["identity"]["pyro_nf_kl"] == 0.0141 and rows["random"]["pyro_nf_kl"] == 0.01
    assert rows["identity"]["p_worse"] == pytest.approx(0.05)
    assert rows["random"]["p_worse"] > 0.5
    table = energies.format_rows(list(rows.values()))
    assert "p worse" in table and "random" in table
