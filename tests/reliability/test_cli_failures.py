"""Every failure of the ``pyro-nf`` command is one line on stderr with exit status 2 (130 for
Ctrl-C), naming the argument as the user typed it; never a traceback, never a lost fit."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_nf import cli
from pyro_nf.cli import main
from pyro_nf.density.estimator import DensityEstimator

FAST = ["--steps", "3", "--depth", "1", "--quiet"]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``pyro-nf argv`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_failure(code: int, out: str, err: str, status: int = 2) -> str:
    """Assert a clean failure (``status``, one stderr line, no traceback); return the line."""
    assert code == status, (code, out, err)
    assert "Traceback" not in out + err
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), err
    assert "internal error" not in err, err
    return lines[0]


def write_csv(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def good_rows(n: int = 40) -> str:
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    return "x1,x2\n" + "".join(f"{a},{b}\n" for a, b in x.tolist())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny fitted model file (3 steps)."""
    folder = tmp_path_factory.mktemp("model")
    data = write_csv(folder / "data.csv", good_rows())
    path = folder / "model.pt"
    assert main(["fit-density", str(data), "--out", str(path), *FAST]) == 0
    return path


@pytest.fixture
def no_fit(monkeypatch):
    """Make a fit an internal error, to show that a failure came before any fitting."""

    def fit(*args, **kwargs):
        raise AssertionError("the fit ran")

    monkeypatch.setattr(DensityEstimator, "fit", fit)


# -- the data file ---------------------------------------------------------------------------------

BAD_CSV = {
    "empty": ("", ["data:", "is empty"]),
    "blank lines": ("\n \n\n", ["data:", "is empty"]),
    "header only": ("x1,x2\n", ["data:", "header line but no data rows"]),
    "one row": ("x1,x2\n1,2\n", ["data:", "at least 2 data rows, got 1"]),
    "ragged": ("x1,x2\n1,2\n3\n", ["data: line 3", "header = line 1", "expected 2 columns"]),
    "trailing comma": ("x1,x2\n1,2\n3,4,\n", ["line 3", "expected 2 columns", "got 3"]),
    "not a number": (
        "x1,x2\n1,2\n3,abc\n4,5\n",
        ["data: line 3 (CSV line numbers, header = line 1), column 'x2': 'abc' is not a number"],
    ),
    "empty cell": ("x1,x2\n1,2\n3,\n", ["line 3", "column 'x2'", "an empty cell"]),
    "no header": ("1,2\n3,4\nfoo,5\n", ["line 3", "no header line", "column 1", "'foo'"]),
    "NUL byte": ("x1,x2\n1,2\n3,\x004\n", ["line 3", "column 'x2'", "not a number"]),
    "NaN row": (
        "x1,x2\n1,2\n3,4\nnan,5\n6,7\n",
        ["data: 1 of 4 rows hold NaN or inf", "line 4, column 'x1': 'nan'", "--drop-nonfinite"],
    ),
    "inf rows": (
        "x1,x2\n1,inf\n3,4\n5,-inf\n6,7\n",
        ["2 of 4 rows", "lines 2, 4", "--drop-nonfinite"],
    ),
    "overflowing literal": (
        "x1,x2\n1,2\n3,1e999\n5,6\n",
        ["line 3, column 'x2': '1e999' overflows to inf", "--drop-nonfinite"],
    ),
    "near 1e308": (
        "x1,x2\n1.7e308,1\n-1.6e308,2\n1.5e308,3\n",
        ["data: column 'x1' is too large", "overflows float64"],
    ),
    "constant column": ("x1,x2\n1,3\n2,3\n4,3\n", ["data: column 'x2' is constant"]),
    "huge field": ("x1,x2\n1,2\n3," + "9" * 200_000 + "\n", ["data: line 3", "not valid CSV"]),
}


@pytest.mark.parametrize("name", sorted(BAD_CSV))
def test_bad_csv_is_one_line_in_csv_terms(name, tmp_path, capsys, no_fit):
    text, expected = BAD_CSV[name]
    data = write_csv(tmp_path / "data.csv", text)
    out = tmp_path / "model.pt"
    line = one_line_failure(*run(["fit-density", str(data), "--out", str(out), *FAST], capsys))
    assert line.startswith("pyro-nf fit-density: data")
    for part in expected:
        assert part in line, line
    assert "drop_nonfinite" not in line and "rows [" not in line
    assert not out.exists()


@pytest.mark.parametrize("standardize", [[], ["--no-standardize"]])
def test_near_1e308_fails_before_the_fit_either_way(standardize, tmp_path, capsys, no_fit):
    data = write_csv(tmp_path / "d.csv", "a,b\n1e308,1\n-1e308,2\n9e307,3\n")
    argv = ["fit-density", str(data), "--out", str(tmp_path / "m.pt"), *FAST, *standardize]
    assert "column 'a' is too large" in one_line_failure(*run(argv, capsys))


def test_non_utf8_names_the_byte_and_line(tmp_path, capsys, no_fit):
    data = write_csv(tmp_path / "latin1.csv", b"x1,x2\n1,2\n3,\xe94\n")
    line = one_line_failure(*run(["fit-density", str(data), "--out", "m.pt"], capsys))
    assert f"data: {data} is not UTF-8 text (byte 0xe9 at line 3)" in line


def test_missing_file_and_directory_as_data(tmp_path, capsys, no_fit):
    line = one_line_failure(*run(["fit-density", str(tmp_path / "no.csv"), "--out", "m"], capsys))
    assert "data: no such file" in line
    line = one_line_failure(*run(["fit-density", str(tmp_path), "--out", "m.pt"], capsys))
    assert "data:" in line and "is a directory" in line


def test_drop_nonfinite_reports_csv_lines_and_fits(tmp_path, capsys):
    text = good_rows(30).splitlines()
    text[4] = "nan,1"  # CSV line 5
    data = write_csv(tmp_path / "d.csv", "\n".join(text) + "\n")
    out = tmp_path / "m.pt"
    argv = ["fit-density", str(data), "--out", str(out), "--drop-nonfinite", *FAST]
    code, stdout, err = run(argv, capsys)
    assert code == 0 and out.is_file()
    assert "dropped 1 row(s) with NaN or inf (CSV lines 5; --drop-nonfinite)" in err
    assert "29 rows" in stdout
    data = write_csv(tmp_path / "all.csv", "a,b\nnan,1\n2,inf\n")
    line = one_line_failure(*run([*argv[:1], str(data), *argv[2:]], capsys))
    assert "every data row" in line


def test_estimator_errors_speak_cli_flags(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", "a\n1\n2\n3\n")
    argv = ["fit-density", str(data), "--out", str(tmp_path / "m.pt"), "--val-fraction", "0.9"]
    line = one_line_failure(*run([*argv, *FAST], capsys))
    assert line.startswith("pyro-nf fit-density: data: expected at least")
    assert "--val-fraction 0.9" in line and "val_fraction" not in line
    line = one_line_failure(*run([*argv[:4], "--flow", "realnvp", *FAST], capsys))
    assert "data (its number of columns):" in line


@pytest.mark.parametrize(
    "library, cli_words",
    [
        ("n: expected an integer >= 1, got 0", "-n: expected an integer >= 1, got 0"),
        ("seed: expected a non-negative integer, got 'x'", "--seed: expected a non-negative"),
        ("lr: expected a positive finite float, got inf", "--lr: expected a positive"),
        ("x: expected 2 columns (batch_size=8)", "data: expected 2 columns (--batch-size 8)"),
        ("path: expected a DensityEstimator file", "model: expected a DensityEstimator file"),
        ("weight_decay: expected a float", "weight_decay: expected a float"),  # no such flag
    ],
)
def test_library_messages_in_cli_terms(library, cli_words):
    assert cli._cli_terms(library).startswith(cli_words)


# -- output paths ----------------------------------------------------------------------------------


def bad_out_paths(tmp_path: Path) -> dict[str, tuple[str, str]]:
    (tmp_path / "file.txt").write_text("x")
    return {
        "directory": (str(tmp_path), "is a directory"),
        "missing parent": (str(tmp_path / "nodir" / "m.pt"), "does not exist"),
        "parent is a file": (str(tmp_path / "file.txt" / "m.pt"), "is not a directory"),
        "empty": ("", "expected a file path"),
    }


@pytest.mark.parametrize("case", ["directory", "missing parent", "parent is a file", "empty"])
def test_bad_out_fails_before_the_fit(case, tmp_path, capsys, no_fit):
    data = write_csv(tmp_path / "d.csv", good_rows())
    out, expected = bad_out_paths(tmp_path)[case]
    line = one_line_failure(*run(["fit-density", str(data), "--out", out, *FAST], capsys))
    assert "--out:" in line and expected in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_out_directory_fails_before_the_fit(tmp_path, capsys, no_fit):
    data = write_csv(tmp_path / "d.csv", good_rows())
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    line = one_line_failure(*run(["fit-density", str(data), "--out", str(folder / "m")], capsys))
    assert "--out: cannot write to directory" in line


def test_unwritable_out_directory_simulated(tmp_path, capsys, no_fit, monkeypatch):
    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cli.tempfile, "mkstemp", mkstemp)
    data = write_csv(tmp_path / "d.csv", good_rows())
    line = one_line_failure(*run(["fit-density", str(data), "--out", str(tmp_path / "m")], capsys))
    assert "--out: cannot write to directory" in line and "Permission denied" in line


def failing_save(monkeypatch, bad: set[str]) -> None:
    """Make the model file's atomic write fail (disk full) on the paths in ``bad`` (all if
    empty)."""
    from pyro_nf.training import checkpoint

    save = checkpoint.atomic_save

    def patched(obj, path, argname="checkpoint"):
        if not bad or os.fspath(path) in bad:
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, path, argname)

    monkeypatch.setattr(checkpoint, "atomic_save", patched)


def test_write_failing_after_the_fit_saves_a_fallback(tmp_path, capsys, monkeypatch):
    data = write_csv(tmp_path / "d.csv", good_rows())
    out = tmp_path / "m.pt"
    monkeypatch.chdir(tmp_path)
    failing_save(monkeypatch, {str(out)})
    line = one_line_failure(*run(["fit-density", str(data), "--out", str(out), *FAST], capsys))
    assert f"--out: could not write {out} (No space left on device)" in line
    fallback = Path(line.rpartition("the fitted model was saved to ")[2])
    assert fallback.parent == tmp_path and fallback.suffix == ".pt" and not out.exists()
    assert DensityEstimator.load(fallback).dim == 2


def test_write_failing_everywhere_says_the_fit_is_lost(tmp_path, capsys, monkeypatch):
    data = write_csv(tmp_path / "d.csv", good_rows())
    monkeypatch.chdir(tmp_path)
    failing_save(monkeypatch, set())
    argv = ["fit-density", str(data), "--out", str(tmp_path / "m.pt"), *FAST]
    assert "nor a fallback copy" in one_line_failure(*run(argv, capsys))


def test_sample_bad_out(model, tmp_path, capsys):
    for out, expected in [
        (tmp_path / "nodir" / "x.csv", "directory"),
        (tmp_path, "is a directory"),
    ]:
        line = one_line_failure(*run(["sample", str(model), "-n", "3", "--out", str(out)], capsys))
        assert line.startswith("pyro-nf sample: --out:") and expected in line


def test_sample_to_a_closed_pipe(model, capsys, monkeypatch):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    line = one_line_failure(*run(["sample", str(model), "-n", "5"], capsys))
    assert line == "pyro-nf sample: stdout: closed before all samples were written (broken pipe)"


# -- the model file --------------------------------------------------------------------------------


def damage(model: Path, folder: Path, how: str) -> Path:
    """A copy of ``model`` damaged in the way ``how`` names."""
    raw = model.read_bytes()
    path = folder / f"{how}.pt"
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "flipped bytes":
        path.write_bytes(bytes(b ^ 0xFF if i % 97 == 50 else b for i, b in enumerate(raw)))
    elif how == "text":
        path.write_text("not a model\n")
    else:
        blob = torch.load(model, weights_only=True)
        state = dict(blob["state_dict"])
        if how == "NaN parameters":
            state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
        elif how == "huge scale":  # finite, but the draws overflow
            state["scale"] = torch.full_like(state["scale"], 1e308)
        elif how == "empty state":
            state = {}
        elif how == "bad spec":
            blob["spec"] = {"name": "maf", "kwargs": {"dim": 2, "depth": "five"}}
        elif how == "missing key":
            del blob["dim"]
        elif how == "edited columns":  # the integrity record no longer matches
            blob["feature_names"] = ["a", "b"]
        elif how == "bad columns":  # integrity recomputed: only the field check can tell
            from pyro_nf.training.integrity import INTEGRITY_KEY, integrity_record

            blob["feature_names"] = ["a", "b", "c"]
            blob[INTEGRITY_KEY] = integrity_record(blob)
        blob["state_dict"] = state
        torch.save(blob if how != "not a dict" else [blob], path)
    return path


DAMAGES = [
    "truncated",
    "flipped bytes",
    "text",
    "NaN parameters",
    "huge scale",
    "empty state",
    "bad spec",
    "missing key",
    "not a dict",
    "edited columns",
    "bad columns",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_model_is_one_line(how, model, tmp_path, capsys):
    path = damage(model, tmp_path, how)
    code, out, err = run(["sample", str(path), "-n", "500"], capsys)
    line = one_line_failure(code, out, err)
    assert line.startswith(f"pyro-nf sample: model: {path}")
    assert "nan" not in out.lower() and out == ""


def test_model_missing_or_a_directory(tmp_path, capsys):
    assert "model: no such file" in one_line_failure(*run(["sample", "nope.pt"], capsys))
    assert "is a directory" in one_line_failure(*run(["sample", str(tmp_path)], capsys))


def test_any_loader_exception_is_one_line(model, capsys, monkeypatch):
    def load(*args, **kwargs):
        raise StopIteration

    monkeypatch.setattr(DensityEstimator, "load", load)
    line = one_line_failure(*run(["sample", str(model)], capsys))
    assert "not a usable pyro-nf density model (StopIteration" in line


def test_a_bug_is_one_line_internal_error(model, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "_draw", broken)
    code, out, err = run(["sample", str(model)], capsys)
    assert code == 2 and "Traceback" not in out + err
    assert err == "pyro-nf: internal error: RuntimeError: boom second line (please report)\n"


# -- flags -----------------------------------------------------------------------------------------

BAD_FLAGS = [
    (["fit-density", "d.csv", "--out", "m.pt", "--steps", "abc"], "argument --steps"),
    (["fit-density", "d.csv", "--out", "m.pt", "--steps", "-1"], "argument --steps"),
    (["fit-density", "d.csv", "--out", "m.pt", "--steps", "0"], "argument --steps"),
    (["fit-density", "d.csv", "--out", "m.pt", "--depth", "1.5"], "argument --depth"),
    (["fit-density", "d.csv", "--out", "m.pt", "--batch-size", "x"], "argument --batch-size"),
    (["fit-density", "d.csv", "--out", "m.pt", "--val-fraction", "1.5"], "--val-fraction"),
    (["fit-density", "d.csv", "--out", "m.pt", "--lr", "nan"], "argument --lr"),
    (["fit-density", "d.csv", "--out", "m.pt", "--lr", "-1"], "argument --lr"),
    (["fit-density", "d.csv", "--out", "m.pt", "--seed", "abc"], "argument --seed"),
    (["fit-density", "d.csv", "--out", "m.pt", "--seed", str(2**64)], "argument --seed"),
    (["fit-density", "d.csv", "--out", "m.pt", "--flow", "glow"], "argument --flow"),
    (["fit-density", "d.csv", "--out", "m.pt", "--bogus"], "unrecognized arguments: --bogus"),
    (["fit-density", "d.csv"], "required: --out"),
    (["sample", "m.pt", "-n", "0"], "argument -n"),
    (["sample", "m.pt", "-n", "abc"], "argument -n"),
    (["demo", "--seed", "-1"], "argument --seed"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "required: command"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_FLAGS)
def test_bad_flags_are_one_line(argv, expected, capsys):
    line = one_line_failure(*run(argv, capsys))
    assert line.startswith("pyro-nf") and expected in line


# -- Ctrl-C ----------------------------------------------------------------------------------------


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_the_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(DensityEstimator, "fit", interrupt)
    data = write_csv(tmp_path / "d.csv", good_rows())
    out = tmp_path / "m.pt"
    argv = ["fit-density", str(data), "--out", str(out), *FAST]
    line = one_line_failure(*run(argv, capsys), status=130)
    assert line == "pyro-nf fit-density: interrupted during the fit; nothing was saved"
    assert not out.exists()


def test_ctrl_c_while_sampling(model, capsys, monkeypatch):
    monkeypatch.setattr(DensityEstimator, "sample", interrupt)
    assert (
        one_line_failure(*run(["sample", str(model)], capsys), 130) == "pyro-nf sample: interrupted"
    )


# -- the real command, and hostile files -----------------------------------------------------------


def test_python_m_pyro_nf_cli_shows_no_traceback(tmp_path):
    data = write_csv(tmp_path / "latin1.csv", b"a,b\n1,2\n\xff\n")
    for argv, expected in [
        (["fit-density", str(data), "--out", str(tmp_path / "m.pt")], "not UTF-8 text"),
        (["frobnicate"], "invalid choice"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "pyro_nf.cli", *argv], capture_output=True, text=True
        )
        one_line_failure(proc.returncode, proc.stdout, proc.stderr)
        assert expected in proc.stderr


TOKENS = ["0", "1", "-2.5", "1e308", "1e999", "nan", "inf", "x", "", " ", '"', ",", "\n", "\r"]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=st.one_of(
        st.binary(max_size=120),
        st.lists(st.sampled_from(TOKENS), max_size=60).map("".join),
        st.text(max_size=80),
    )
)
def test_hostile_csv_never_shows_a_traceback(content, tmp_path, capsys):
    data = write_csv(tmp_path / "hostile.csv", content)
    argv = ["fit-density", str(data), "--out", str(tmp_path / "m.pt"), "--steps", "2"]
    code, out, err = run([*argv, "--depth", "1", "--quiet"], capsys)
    assert code in (0, 2), (code, err)
    assert "Traceback" not in out + err
    if code == 2:
        one_line_failure(code, out, err)
