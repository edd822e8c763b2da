"""Every script in examples/ answers --help and runs end to end with --quick (CI smoke test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


def _run(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_help(script):
    result = _run([str(script), "--help"], ROOT, 120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_quick_run(script, tmp_path):
    result = _run([str(script), "--quick", "--out", str(tmp_path)], ROOT, 600)
    assert result.returncode == 0, (
        f"{script.name} --quick failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    assert any(tmp_path.iterdir()), f"{script.name} --quick wrote nothing to --out"


def test_vae_table_rows_subset(tmp_path):
    """``examples/vae.py --table --rows`` trains exactly the rows asked for, in that order."""
    import json

    args = ["examples/vae.py", "--quick", "--table", "--rows", "diag", "planar:2"]
    result = _run([*args, "--out", str(tmp_path)], ROOT, 600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "vae_table_digits.json").read_text())["rows"]
    assert [(r["flow"], r["depth"]) for r in rows] == [("diag", 0), ("planar", 2)]
    bad = _run([*args[:-1], "planar:0", "--out", str(tmp_path)], ROOT, 120)
    assert bad.returncode == 2 and "--rows: expected FLOW[:DEPTH]" in bad.stderr
