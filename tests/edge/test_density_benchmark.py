"""The bookkeeping of ``benchmarks/density.py``: the table and the spline-vs-zuko verdicts, with
a contender that could not be built for a data set (Pyro's autoregressive network needs
hidden widths of at least the data dimension) recorded as not run instead of ending the run."""

from __future__ import annotations

import pytest
from conftest import benchmark_modules


@pytest.fixture(scope="module")
def density():
    yield from benchmark_modules("density")


def _row(ll, se, steps=500):
    return {"fit_s": 1.0, "steps": steps, "diverged": False, "test_ll": ll, "test_se": se,
            "params": 10}  # fmt: skip


def test_verdicts_and_table_with_a_contender_not_run(density):
    results = [
        {
            "dataset": "frey", "dim": 560,
            "rows": {
                "pyro-nf spline_autoregressive": _row(1314.0, 20.0),
                "pyro-nf spline_coupling": _row(1250.0, 10.0),
                "zuko NSF": _row(1300.0, 20.0),
                "Pyro spline_autoregressive": {"not_run": "ValueError: hidden < input"},
            },
        }
    ]  # fmt: skip
    verdicts = {v["family"]: v for v in density.verdicts(results)}
    assert verdicts["pyro-nf spline_autoregressive"]["met"]  # better than zuko
    assert not verdicts["pyro-nf spline_coupling"]["met"]  # 50 below, 1 SE is about 22
    text = density.table(results)
    assert "not run: ValueError: hidden < input" in text
    spline_line = next(line for line in text.splitlines() if "pyro-nf spline_coupling" in line)
    assert [c.strip() for c in spline_line.split("|")][3] == "500"  # the steps column


def test_pyro_autoregressive_spline_is_not_run_where_hidden_is_below_dim(density):
    with pytest.raises(ValueError, match="Hidden dimension"):  # Pyro's own check (no zuko)
        density.pyro_spline_autoregressive(300, 1, 256, 4)
    assert density.hidden_width(560) < 560  # so Frey faces (D = 560) records it as not run
