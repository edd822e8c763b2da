"""Smoke tests of the flow-guide examples (``--quick``, as CI runs them) and checks of their
shared harness (``examples/_models.py``): models, cached NUTS references and metrics."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_nf

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "reference"


def _load(name: str):
    """Import ``examples/{name}.py`` as a module (its directory goes on ``sys.path``)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    if name == "_models":  # the module the examples themselves import
        return importlib.import_module("_models")
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    """The examples pin torch to one thread; give the rest of the suite its setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _has_german_credit() -> bool:
    data_dir = pyro_nf.datasets.default_data_dir()
    return data_dir is not None and (data_dir / pyro_nf.datasets.GERMAN_CREDIT_FILE).exists()


def _check_outputs(out: Path, stem: str, results: list[dict], with_errors: bool) -> None:
    assert (out / f"{stem}.md").read_text().startswith("# ")
    saved = json.loads((out / f"{stem}.json").read_text())
    assert saved["quick"] is True
    assert [r["guide"] for r in saved["results"]] == [r["guide"] for r in results]
    for r in results:
        assert "error" not in r, r.get("error")
        assert r["steps"] == saved["settings"]["steps"]  # equal budgets: no early stopping
        assert math.isfinite(r["elbo"]) and r["elbo_se"] >= 0 and r["khat"] == r["khat"]
        if with_errors:
            assert math.isfinite(r["mean_err"]) and math.isfinite(r["log_sd_err"])


# -- the three examples with --quick -------------------------------------------------------------


def test_funnel_quick(tmp_path, capsys):
    results = _load("funnel").main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "FlowGuide(iaf)" in printed and "k̂" in printed
    _check_outputs(tmp_path, "funnel", results, with_errors=True)


def test_eight_schools_quick(tmp_path):
    out = _load("eight_schools").main(["--quick", "--out", str(tmp_path), "--no-plot"])
    assert set(out) == {"centered", "noncentered"}
    for param, results in out.items():
        _check_outputs(tmp_path, f"eight_schools_{param}", results, with_errors=True)


@pytest.mark.skipif(not _has_german_credit(), reason="German credit data not available")
def test_logistic_regression_quick(tmp_path):
    results = _load("logistic_regression").main(
        ["--quick", "--out", str(tmp_path), "--no-plot", "--guides", "AutoNormal", "FlowGuide(iaf)"]
    )
    _check_outputs(tmp_path, "logistic_regression", results, with_errors=True)


@pytest.mark.parametrize("name", ["funnel", "eight_schools", "logistic_regression"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


# -- the shared harness -------------------------------------------------------------------------


def test_funnel_model_is_the_exact_funnel():
    M = _load("_models")
    problem = M.funnel_problem(4)
    z = problem.model.target.sample(5, generator=torch.Generator().manual_seed(0))
    for zi in z:
        trace = pyro.poutine.trace(pyro.poutine.condition(problem.model, {"z": zi})).get_trace()
        assert torch.isclose(trace.log_prob_sum(), problem.model.target.log_prob(zi), atol=1e-4)
    # exact moments: sd(v) = 3, sd(x_i) = exp(9/4), checked against exact draws
    draws = problem.model.target.sample(
        200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    assert abs(draws[:, 0].std().item() - problem.reference.sd[0]) < 0.03
    assert abs(draws[:, 1:].std().log().item() - math.log(problem.reference.sd[1])) < 0.1


def test_eight_schools_parameterizations_report_the_same_coordinates():
    M = _load("_models")
    c, nc = M.eight_schools_problem(True), M.eight_schools_problem(False)
    mu, tau, tilde = torch.tensor([1.0]), torch.tensor([2.0]), torch.arange(8.0)[None]
    z_nc = nc.coords({"mu": mu, "tau": tau, "theta_tilde": tilde}, 1)
    z_c = c.coords({"mu": mu, "tau": tau, "theta": mu + tau * tilde}, 1)
    assert torch.equal(z_c, z_nc) and z_c.shape == (1, 10)


@pytest.mark.parametrize("name", ["eight_schools", "german_credit"])
def test_cached_nuts_references_are_converged(name):
    M = _load("_models")
    path = REFERENCE_DIR / f"{name}.json"
    ref = M.Reference.load(path)
    expected = {"eight_schools": 10, "german_credit": 25}[name]
    assert ref.source == "nuts" and len(ref.names) == len(ref.mean) == len(ref.sd) == expected
    assert all(s > 0 for s in ref.sd)
    settings = ref.settings
    assert settings["num_chains"] >= 4 and settings["max_rhat"] <= 1.01
    assert max(settings["rhat"]) <= 1.01 and settings["min_ess"] > 1000


def test_eight_schools_reference_matches_known_posterior():
    """Sanity against published values (e.g. Stan's non-centered fit: mu ≈ 4.4 ± 3.3,
    tau ≈ 3.6 ± 3.2, theta[0] ≈ 6.2 ± 5.6)."""
    M = _load("_models")
    ref = M.Reference.load(REFERENCE_DIR / "eight_schools.json")
    mean, sd = (
        dict(zip(ref.names, ref.mean, strict=True)),
        dict(zip(ref.names, ref.sd, strict=True)),
    )
    assert abs(mean["mu"] - 4.4) < 0.3 and abs(sd["mu"] - 3.3) < 0.3
    assert abs(mean["tau"] - 3.6) < 0.3 and abs(sd["tau"] - 3.2) < 0.4
    assert abs(mean["theta[0]"] - 6.2) < 0.4 and abs(sd["theta[0]"] - 5.6) < 0.5


def test_evaluate_on_an_exact_guide():
    """With q equal to the posterior: ELBO = log Z exactly (SE 0), k̂ tiny, moment errors ~ 0."""
    M = _load("_models")
    y = torch.tensor(1.0, dtype=torch.float64)

    def model():  # z ~ N(0, 1), y ~ N(z, 1): posterior N(1/2, 1/2), log Z = log N(1; 0, 2)
        z = pyro.sample("z", dist.Normal(y.new_zeros(()), 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=y)

    def guide():
        pyro.sample("z", dist.Normal(y.new_tensor(0.5), 0.5**0.5))

    ref = M.Reference(names=["z"], mean=[0.5], sd=[0.5**0.5], source="exact")
    problem = M.Problem(
        "toy", model, (), 0, lambda s, n: s["z"].reshape(n, 1), ["z"], ref, 0.0, ("z",)
    )
    r = M.evaluate(problem, guide, num_samples=4000)
    log_z = dist.Normal(0.0, 2**0.5).log_prob(y).item()
    assert abs(r["elbo"] - log_z) < 1e-6 and r["elbo_se"] < 1e-6
    assert r["mean_err"] < 0.05 and r["log_sd_err"] < 0.05
    assert abs(r["log_z_is"] - log_z) < 1e-6


def test_a_failing_guide_is_reported_not_fatal():
    M = _load("_models")
    problem = M.funnel_problem(3)
    M.add_flowguide_variant("broken", {"flow": "no-such-flow"})
    try:
        settings = M.Settings(steps=2, num_particles=1, eval_samples=50)
        (row,) = M.compare_guides(problem, ["broken"], settings, verbose=False)
    finally:
        del M.GUIDES["broken"]
    assert row["error"].startswith("ValueError: flow:") and math.isnan(row["elbo"])
    assert "n/a" in M.table_rows([row])[0][3]


def test_warnings_are_summarized_by_kind():
    import warnings

    M = _load("_models")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (1, 20, 300):
            warnings.warn(
                f"step {step}: non-finite loss nan; lr halved to {0.01 / step}", stacklevel=1
            )
        warnings.warn("something else", DeprecationWarning, stacklevel=1)
    lines = M.summarize_warnings(caught)
    assert lines == [
        "UserWarning (x3): step 1: non-finite loss nan; lr halved to 0.01",
        "DeprecationWarning: something else",
    ]
