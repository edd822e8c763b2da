"""The pyro-nf command: help, clear errors, fit-density -> sample round trip, demo smoke run."""

from __future__ import annotations

import csv

import pytest
import torch

import pyro_nf
from pyro_nf.cli import main


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
    "demo": {"--out": "out", "--steps": "1000", "--seed": "0"},
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
    },
    "sample": {"-n": "1000", "--out": "stdout", "--seed": "0"},
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


def test_fit_density_then_sample(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 2, generator=gen) * torch.tensor([3.0, 0.5]) + torch.tensor([10.0, -2.0])
    data = tmp_path / "data.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x1", "x2"])
        writer.writerows(x.tolist())
    model = tmp_path / "model.pt"
    assert (
        main(
            [
                "fit-density",
                str(data),
                "--flow",
                "maf",
                "--depth",
                "2",
                "--steps",
                "300",
                "--out",
                str(model),
                "--quiet",
            ]
        )
        == 0
    )
    assert "saved" in capsys.readouterr().out
    out = tmp_path / "samples.csv"
    assert main(["sample", str(model), "-n", "2000", "--out", str(out)]) == 0
    samples = torch.tensor([[float(v) for v in row] for row in csv.reader(out.open())])
    assert samples.shape == (2000, 2)
    assert torch.allclose(samples.mean(0), torch.tensor([10.0, -2.0]), atol=0.3)
    assert torch.allclose(samples.std(0), torch.tensor([3.0, 0.5]), rtol=0.15)


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "KL(q||p)" in text and "k-hat" in text
    for name in ("demo_energies.png", "demo_eight_schools.png", "demo_results.json"):
        assert (tmp_path / name).stat().st_size > 0
