"""The bookkeeping of ``benchmarks/energies.py``: which runs count as one cell, which init a saved
run used, and the rank test that says whether pyro-nf is behind Pyro beyond seed-to-seed chance."""

from __future__ import annotations

import math

import pytest
from conftest import benchmark_modules


@pytest.fixture(scope="module")
def energies():
    yield from benchmark_modules("energies")


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


def test_holm_adjusts_for_the_number_of_cells(energies):
    nan = math.nan
    adjusted = energies.holm([0.01, 0.04, nan, 0.03])
    assert adjusted[:2] == pytest.approx([0.03, 0.06]) and adjusted[3] == pytest.approx(0.06)
    assert math.isnan(adjusted[2])
    assert energies.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert energies.holm([]) == [] and math.isnan(energies.holm([nan])[0])
    # step-down: the smallest p is multiplied by m, the next by m - 1, never below the previous
    assert energies.holm([0.001, 0.002, 0.2]) == pytest.approx([0.003, 0.004, 0.2])


def test_summary_adjusts_p_worse_over_its_rows(energies):
    runs = [run("pyro", "radial", s, kl, init=None) for s, kl in enumerate([0.010, 0.011, 0.012])]
    runs += [run("pyro_nf", "radial", s, 0.02 + s / 1e4) for s in range(3)]  # behind: p 0.05
    runs += [run("pyro_nf", "radial", s, 0.005 + s / 1e4, init="random") for s in range(3)]
    rows = {r["init"]: r for r in energies.summarize(runs)}
    assert rows["identity"]["p_worse"] == pytest.approx(0.05)
    assert rows["identity"]["p_worse_holm"] == pytest.approx(0.10)  # two cells with a p-value
    assert rows["random"]["p_worse_holm"] == pytest.approx(1.0)
    assert "Holm" in energies.format_rows(list(rows.values()))


def test_pyro_init_is_a_cell_of_its_own(energies):
    args = energies.parse_args(["--planar-init", "pyro"])
    assert energies._init("pyro_nf", "planar", args) == "pyro"
    assert energies._init("pyro_nf", "radial", args) == "identity"
    assert energies._init("pyro", "planar", args) is None
    with pytest.raises(SystemExit):
        energies.parse_args(["--planar-init", "zeros"])
    runs = [run("pyro", "planar", s, 0.2 + s / 100, init=None) for s in range(3)]
    runs += [run("pyro_nf", "planar", s, 0.2 + s / 100, init="pyro") for s in range(3)]
    runs += [run("pyro_nf", "planar", s, 0.4 + s / 100) for s in range(3)]
    rows = {r["init"]: r for r in energies.summarize(runs)}
    assert set(rows) == {"identity", "pyro"}
    assert rows["pyro"]["pyro_nf_kl"] == pytest.approx(0.21)
    assert rows["identity"]["p_worse"] == pytest.approx(0.05) and rows["pyro"]["p_worse"] > 0.3
