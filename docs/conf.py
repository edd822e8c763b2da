"""Sphinx configuration of the pyro-nf documentation (built with ``-W``: warnings are errors)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_api  # noqa: E402
import gen_benchmarks  # noqa: E402

project = "pyro-nf"
author = "the pyro-nf developers"
copyright = "2026, the pyro-nf developers"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath", "amsmath"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("References", "notes_style")]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
exclude_patterns = ["_build", "_generated"]
html_theme = "furo"
html_title = "pyro-nf"
suppress_warnings = ["myst.header"]

# Benchmark tables are generated from the JSON the benchmark scripts write, never typed by hand.
gen_benchmarks.write_all(
    ROOT / "benchmarks" / "results", Path(__file__).resolve().parent / "_generated"
)
# One API page per layer, listing every module of the package (docs/api/ is generated).
gen_api.write_all(Path(__file__).resolve().parent / "api")
