"""Sphinx configuration of the pyro-nf documentation (built with ``-W``: warnings are errors).

The tutorials are MyST-NB text notebooks (``file_format: mystnb``): they are executed at build
time and their outputs cached in ``docs/_build/.jupyter_cache``, so a rebuild re-executes only a
page whose code changed. A cell that raises fails the build.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS))

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
    "sphinx-mathjax-offline",  # MathJax 3 served from _static: math renders without a network
    "sphinx.ext.viewcode",
    "myst_nb",  # MyST Markdown and executed text notebooks (includes myst_parser)
    "sphinx_design",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("References", "notes_style")]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = "pyro-nf"
html_static_path = ["_static"]
html_css_files = ["custom.css"]  # compact tables
suppress_warnings = ["myst.header"]

# --- executed pages (MyST-NB) ------------------------------------------------------------------
nb_execution_mode = "cache"  # execute a page only when its code changed
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_execution_timeout = 300  # seconds per cell; the slowest cell takes ~30 s on 2 busy cores
nb_execution_raise_on_error = True  # a broken tutorial fails the build (and CI)
nb_execution_show_tb = True  # ... with the traceback in the log
nb_merge_streams = True
nb_kernel_rgx_aliases = {".*": "python3"}
# One thread per kernel: the pages run one after another, and the timings printed in them stay
# comparable on a shared machine. (No MPLBACKEND here: the kernels need their inline backend.)
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- API reference --------------------------------------------------------------------------
def _skip_inherited_module_docs(app, what, name, obj, skip, options):  # noqa: ARG001
    """Skip a method that only overrides an ``nn.Module`` method (``forward``, ``extra_repr``)
    without a docstring of its own: autodoc would print PyTorch's generic text for it."""
    import torch

    if inspect.isroutine(obj) and getattr(obj, "__doc__", None) is None:
        if hasattr(torch.nn.Module, name):
            return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_inherited_module_docs)


# Benchmark pages and charts are generated at build time from the JSON the benchmark scripts
# write, never typed by hand.
gen_benchmarks.write_all(ROOT / "benchmarks" / "results", DOCS / "_generated")
# One API page per subpackage, listing every public module (docs/api/ is generated).
gen_api.write_all(DOCS / "api")
