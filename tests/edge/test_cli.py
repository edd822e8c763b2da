"""The pyro-nf command: help, clear errors, fit-density -> sample round trip, demo smoke run."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import pyro_nf
from pyro_nf import cli
from pyro_nf.cli import demo_reference, main
from pyro_nf.density.estimator import DensityEstimator


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["demo", "--help"],
        ["fit-density", "--help"],
        ["sample", "--help"],
        ["bench", "--help"],
    ],
)
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: pyro-nf" in capsys.readouterr().out


DEFAULTS = {
    "demo": {
        "--out": "out",
        "--steps": "1000",
        "--seed": "0",
        "--quiet": "bars on stderr when it is a terminal",
    },
    "fit-density": {
        "--flow": "maf",
        "--depth": "5",
        "--steps": "5000",
        "--batch-size": "256",
        "--val-fraction": "0.1",
        "--lr": "0.001",
        "--seed": "0",
        "--no-standardize": "standardize",
        "--drop-nonfinite": "such rows are an error",
        "--quiet": "a bar on stderr when it is a terminal",
    },
    "sample": {
        "-n": "1000",
        "--out": "stdout",
        "--seed": "0",
        "--no-header": "the training CSV's header, when it had one",
    },
}


@pytest.mark.parametrize("command", sorted(DEFAULTS))
def test_help_gives_every_option_its_default_and_the_exit_statuses(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    entries = {}
    for block in text.split("\n  -")[1:]:  # one block per option
        flag = "-" + block.split()[0].rstrip(",")
        entries[flag] = " ".join(block.split())
    for flag, default in DEFAULTS[command].items():
        assert f"(default: {default})" in entries[flag], entries[flag]
    assert all(len(entry.split()) > 2 for entry in entries.values()), entries  # a help text
    assert "130 when interrupted" in " ".join(text.split())


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"pyro-nf {pyro_nf.__version__}\n"


def test_bad_arguments_and_paths_give_clear_errors(tmp_path, capsys):
    assert (
        main(["fit-density", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m.pt")]) == 2
    )
    assert "data: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,x\n")
    assert main(["fit-density", str(bad), "--out", str(tmp_path / "m.pt")]) == 2
    assert "line 3" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nope.pt")]) == 2
    assert "model: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["fit-density", str(bad), "--out", "m.pt", "--depth", "0"])
    assert exc.value.code == 2
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit-density", str(bad), "--out", "m.pt", "--flow", "glow"])
    assert "invalid choice: 'glow'" in capsys.readouterr().err


def _write_data(path, header=("x1", "x2")):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 2, generator=gen) * torch.tensor([3.0, 0.5]) + torch.tensor([10.0, -2.0])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        if header is not None:
            writer.writerow(header)
        writer.writerows(x.tolist())
    return path


def test_fit_density_then_sample_keeps_the_header(tmp_path, capsys):
    data = _write_data(tmp_path / "data.csv", header=("height cm", "log, weight"))
    model = tmp_path / "model.pt"
    argv = ["fit-density", str(data), "--depth", "2", "--steps", "300", "--out", str(model)]
    assert main([*argv, "--quiet"]) == 0
    assert "saved" in capsys.readouterr().out
    out = tmp_path / "samples.csv"
    assert main(["sample", str(model), "-n", "2000", "--out", str(out)]) == 0
    header, *rows = list(csv.reader(out.open()))
    assert header == ["height cm", "log, weight"]  # quoted as CSV needs
    samples = torch.tensor([[float(v) for v in row] for row in rows])
    assert samples.shape == (2000, 2)
    assert torch.allclose(samples.mean(0), torch.tensor([10.0, -2.0]), atol=0.3)
    assert torch.allclose(samples.std(0), torch.tensor([3.0, 0.5]), rtol=0.15)
    # to stdout too; --no-header leaves it out; the same seed gives the same draws
    assert main(["sample", str(model), "-n", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'height cm,"log, weight"' and len(lines) == 4
    assert main(["sample", str(model), "-n", "3", "--no-header"]) == 0
    assert capsys.readouterr().out.splitlines() == lines[1:]
    # the file is still an ordinary estimator file
    assert DensityEstimator.load(model).dim == 2


def test_sample_without_a_training_header_writes_none(tmp_path, capsys):
    data = _write_data(tmp_path / "plain.csv", header=None)
    model = tmp_path / "m.pt"
    assert main(["fit-density", str(data), "--steps", "3", "--depth", "1", "--out", str(model),
                 "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["sample", str(model), "-n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(_is_numbers(line) for line in lines)
    # a model saved by the library itself has no names either
    DensityEstimator("maf", dim=2, depth=1).save(tmp_path / "lib.pt")
    assert main(["sample", str(tmp_path / "lib.pt"), "-n", "2"]) == 0
    assert all(_is_numbers(line) for line in capsys.readouterr().out.splitlines())


def _is_numbers(line: str) -> bool:
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True


# -- demo ------------------------------------------------------------------------------------------


def test_demo_reference_is_shipped_with_its_provenance():
    ref = demo_reference()
    p = ref["provenance"]
    assert p["num_chains"] >= 4 and p["divergences"] == 0 and p["max_rhat"] < 1.01
    assert p["min_ess"] > 1000 and isinstance(p["seed"], int) and p["warmup"] >= 500
    assert ref["names"][:2] == ["mu", "tau"] and len(ref["names"]) == 10
    # its moments match the draws it ships (thinned), and the known posterior (tau mean ~3.6)
    tau = torch.tensor(ref["draws"]["tau"])
    assert abs(tau.mean().item() - ref["mean"][1]) < 4 * ref["sd"][1] / len(tau) ** 0.5
    assert 3.0 < ref["mean"][1] < 4.2 and 3.8 < ref["mean"][0] < 5.0
    hist = ref["funnel_histogram"]
    density = torch.tensor(hist["density"])
    (xlo, xhi), (ylo, yhi) = hist["x_range"], hist["y_range"]
    mass = density.sum() * (xhi - xlo) * (yhi - ylo) / hist["bins"] ** 2
    assert abs(mass.item() + hist["fraction_outside"] - 1.0) < 1e-3


def test_demo_without_its_reference_fails_in_one_line_before_any_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "DEMO_REFERENCE", "no_such_reference.json")
    monkeypatch.setattr(cli, "_demo_energies", _must_not_run)
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("pyro-nf demo: the NUTS reference pyro_nf/datasets/no_such_reference")
    assert "reinstall" in err


def _must_not_run(*args, **kwargs):
    raise AssertionError("the demo started fitting")


def test_demo_quiet_turns_progress_off_else_automatic(tmp_path, monkeypatch):
    seen = []

    def record(out, steps, seed, progress, *rest):
        seen.append(progress)
        return []

    monkeypatch.setattr(cli, "_demo_energies", record)
    monkeypatch.setattr(cli, "_demo_bayes", record)
    assert main(["demo", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert main(["demo", "--steps", "2", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen == [None, None, False, False]


def test_demo_shows_progress_and_flow_vs_gaussian_against_nuts(tmp_path, capsys, monkeypatch):
    import sys

    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, **kwargs):
            bars.append(kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def set_postfix(self, **kwargs):
            pass

        def update(self, n):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal
    assert main(["demo", "--steps", "5", "--out", str(tmp_path)]) == 0
    assert [b["disable"] for b in bars] == [False] * 9  # 6 energies, 3 guides
    assert {b["desc"] for b in bars} >= {"U1 planar K=16", "U2 iaf K=4", "FlowGuide"}
    text = capsys.readouterr().out
    assert "KL(q||p)" in text and "k-hat" in text and "mean err (sd)" in text
    assert "errors against NUTS (4 chains" in text
    results = json.loads((tmp_path / "demo_results.json").read_text())
    methods = [row["method"] for row in results["bayes"]]
    assert methods == [
        "AutoNormal (diagonal Gaussian)",
        "AutoMultivariateNormal (Gaussian)",
        "FlowGuide (pyro-nf default)",
    ]
    assert all(row["mean_err"] >= 0 and row["log_sd_err"] >= 0 for row in results["bayes"])
    assert results["reference"]["max_rhat"] < 1.01
    for name in ("demo_energies.png", "demo_eight_schools.png"):
        assert (tmp_path / name).stat().st_size > 10_000


@pytest.mark.slow
def test_demo_quick_flow_beats_the_gaussian_guides(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr().err.count("Traceback") == 0
    rows = {r["method"].split(" ")[0]: r for r in json.loads(
        (tmp_path / "demo_results.json").read_text())["bayes"]}  # fmt: skip
    flow = rows["FlowGuide"]
    for gaussian in ("AutoNormal", "AutoMultivariateNormal"):
        assert flow["log_sd_err"] < 0.5 * rows[gaussian]["log_sd_err"], rows
        assert flow["mean_err"] < rows[gaussian]["mean_err"], rows
