"""The bookkeeping of ``benchmarks/time_to_accuracy.py``: how draws become a row (time to
accuracy, errors), the funnel's second scoring on coordinates whose moments can be estimated,
and the exact-draws floor that shows why the first scoring cannot be met on the funnel."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import benchmark_modules


@pytest.fixture(scope="module")
def tta():
    yield from benchmark_modules("time_to_accuracy")


def _opts(chains=4, samples=500):
    return argparse.Namespace(chains=chains, num_samples=samples)


def _reference(tta, mean, sd):
    names = [f"c{i}" for i in range(len(mean))]
    return tta.hm.Reference(model="toy", names=names, mean=mean, sd=sd, source="exact")


def test_funnel_whitening_makes_exact_draws_standard(tta):
    problem = tta.hm.get_problem("funnel")
    run = tta.run_exact(problem, _opts(chains=2, samples=20_000), seed=0)
    white = tta.funnel_whitened(run.draws).reshape(-1, 10)
    assert np.allclose(white.mean(0), 0.0, atol=0.06)
    assert np.allclose(white.std(0), [3.0] + [1.0] * 9, rtol=0.03)
    # v is kept; x_i is divided by the conditional sd e^{v/2}
    point = np.array([[2.0, 1.0, -3.0] + [0.0] * 7])
    expected = [2.0, np.exp(-1.0), -3.0 * np.exp(-1.0)] + [0.0] * 7
    np.testing.assert_allclose(tta.funnel_whitened(point), [expected])


def test_exact_draws_miss_the_funnels_x_sds_but_not_the_whitened_moments(tta):
    """The reason for the second scoring: 2000 exact independent draws are never accurate on the
    funnel's own coordinates (sd(x_i) has no usable Monte Carlo estimate), and always accurate on
    (v, x e^{-v/2})."""
    problem, ref = tta.hm.get_problem("funnel"), tta.hm.load_reference("funnel")
    scored = {}
    for seed in range(3):
        run = tta.run_exact(problem, _opts(), seed)
        for label, r, transform in tta.scorings("funnel", ref):
            scored.setdefault(label, []).append(tta.score(run, r, transform))
    raw, white = scored["funnel"], scored[tta.FUNNEL_WHITENED]
    assert all(row["time_to_acc_s"] is None and row["log_sd_err"] > 0.2 for row in raw)
    assert all(row["time_to_acc_s"] is not None for row in white)
    assert all(row["mean_err"] < 0.1 and row["log_sd_err"] < 0.1 for row in white)
    # mean errors of the raw coordinates are estimable: the floor there is small
    assert all(row["mean_err"] < 0.1 for row in raw)


def test_exact_draws_apply_only_where_there_is_an_exact_sampler(tta):
    with pytest.raises(tta.NotApplicable):
        tta.run_exact(tta.hm.get_problem("linreg"), _opts(), 0)
    assert [label for label, _, _ in tta.scorings("linreg", None)] == ["linreg"]


def test_a_chain_run_is_timed_to_the_first_draw_from_which_it_stays_accurate(tta):
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((2, 2000, 2))
    draws[:, :20] += 2.0  # a transient at the start of every chain
    times = np.tile(np.arange(1, 2001, dtype=float), (2, 1))  # one second per draw
    run = tta.Run(draws, times, wall=800.0, cpu=400.0, offset=7.0, extra={"divergences": 0})
    row = tta.score(run, _reference(tta, [0.0, 0.0], [1.0, 1.0]))
    k = row["draws_needed"]
    assert 200 <= k < 2000 and row["time_to_acc_s"] == pytest.approx(7.0 + 2 * k)
    assert row["cpu_to_acc_s"] == pytest.approx(row["time_to_acc_s"] / 2)  # the run's CPU/wall
    assert row["divergences"] == 0
    never = tta.score(run, _reference(tta, [3.0, 0.0], [1.0, 1.0]))
    assert never["time_to_acc_s"] is None and never["cpu_to_acc_s"] is None


def test_a_guides_draws_are_accurate_at_its_fit_time_or_never(tta):
    draws = np.random.default_rng(1).standard_normal((1, 20_000, 3))
    run = tta.Run(draws, None, wall=12.0, cpu=10.0, extra={"fit_steps": 300})
    ok = tta.score(run, _reference(tta, [0.0] * 3, [1.0] * 3))
    assert (ok["time_to_acc_s"], ok["cpu_to_acc_s"], ok["fit_steps"]) == (12.0, 10.0, 300)
    off = tta.score(run, _reference(tta, [0.0] * 3, [1.0, 1.0, 1.3]))  # log 1.3 > 0.1
    assert off["time_to_acc_s"] is None and off["log_sd_err"] == pytest.approx(np.log(1.3), 0.05)


def test_verdicts_read_each_scoring_on_its_own(tta):
    def row(model, method, t):
        return {"model": model, "method": method, "seed": 0, "time_to_acc_s": t,
                "cpu_to_acc_s": t, "mean_err": 0.05, "log_sd_err": 0.05}  # fmt: skip

    rows = [
        row("funnel", "FlowGuide+refine", None),
        row("funnel", "NumPyro NUTS", None),
        row(tta.FUNNEL_WHITENED, "FlowGuide+refine", 30.0),
        row(tta.FUNNEL_WHITENED, "NumPyro NUTS", 10.0),
        row(tta.FUNNEL_WHITENED, "Pyro NUTS", None),
    ]
    verdicts = tta.verdicts(tta.summary_rows(rows))
    assert verdicts[0].startswith("funnel: FlowGuide+refine accurate in 0/1")
    assert "vs Pyro NUTS: Pyro NUTS never accurate (target met)" in verdicts[1]
    assert "vs NumPyro NUTS: 3.00x (target <= 2x: NOT met)" in verdicts[1]


def test_a_run_over_budget_is_never_accurate_in_every_scoring(tta, monkeypatch):
    def over_budget(problem, method, fitted, opts, seed):
        raise tta.OverBudget("chain 0, Warmup iteration 7")

    monkeypatch.setattr(tta, "run_method", over_budget)
    opts = argparse.Namespace(seeds=[0], methods=["Pyro NUTS"])
    rows = tta.run_model("funnel", opts)
    assert [r["model"] for r in rows] == ["funnel", tta.FUNNEL_WHITENED]
    assert all(r["time_to_acc_s"] is None and "Warmup" in r["over_budget"] for r in rows)


def test_the_table_lists_problems_then_methods_in_their_order(tta):
    def row(model, method):
        return {"model": model, "method": method, "seed": 0, "time_to_acc_s": None}

    rows = [
        row("hierarchical", "NumPyro NUTS"), row("someone else's", "FlowGuide"),
        row(tta.FUNNEL_WHITENED, "FlowGuide"), row("funnel", "exact draws"),
        row("funnel", "FlowGuide"), row("linreg", "a new method"), row("linreg", "FlowGuide"),
    ]  # fmt: skip
    order = [(s["model"], s["method"]) for s in tta.summary_rows(rows)]
    assert order == [
        ("linreg", "FlowGuide"), ("linreg", "a new method"), ("funnel", "FlowGuide"),
        ("funnel", "exact draws"), (tta.FUNNEL_WHITENED, "FlowGuide"),
        ("hierarchical", "NumPyro NUTS"), ("someone else's", "FlowGuide"),
    ]  # fmt: skip


def test_a_method_that_does_not_apply_leaves_no_row(tta):
    opts = argparse.Namespace(seeds=[0], methods=["exact draws"], chains=2, num_samples=10)
    assert tta.run_model("linreg", opts) == []
    assert len(tta.run_model("funnel", opts)) == 2
