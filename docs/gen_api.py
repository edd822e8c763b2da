"""Write one API page per layer of the package (``docs/api/<layer>.rst``) at build time.

Each page documents every module of its subpackage, found by walking the package, so that a new
module appears in the reference without editing the docs. The order of the pages is the order of
the layers, bottom-up (``docs/architecture.md``).
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

#: (page, title, the modules' package or the single modules at the edge), bottom-up.
PAGES: list[tuple[str, str, list[str]]] = [
    ("utils", "Utilities: argument checks and networks", ["pyro_nf.utils"]),
    ("transforms", "Transforms: the bijections", ["pyro_nf.transforms"]),
    ("flows", "Flows: layers, Flow, builders and the family registry", ["pyro_nf.flows"]),
    ("training", "Training: the one loop", ["pyro_nf.training"]),
    (
        "diagnostics",
        "Diagnostics: PSIS, the trust report, NUTS references",
        ["pyro_nf.diagnostics"],
    ),
    ("infer", "Inference: flow guides for Pyro models", ["pyro_nf.infer"]),
    ("density", "Density estimation and unnormalized targets", ["pyro_nf.density"]),
    ("vae", "VAEs with flow encoders", ["pyro_nf.vae"]),
    (
        "edge",
        "Data, plotting and the command line",
        ["pyro_nf.datasets", "pyro_nf.plotting", "pyro_nf.cli"],
    ),
]


def _modules(name: str) -> list[str]:
    module = __import__(name, fromlist=["_"])
    if not hasattr(module, "__path__"):
        return [name]
    found = [m.name for m in pkgutil.iter_modules(module.__path__, prefix=f"{name}.")]
    return sorted(m for m in found if not m.rpartition(".")[2].startswith("_"))


def _page(title: str, names: list[str]) -> str:
    lines = [title, "=" * len(title), ""]
    for name in names:
        module = __import__(name, fromlist=["_"])
        if hasattr(module, "__path__"):  # the package's own docstring, then its modules
            lines += [f".. automodule:: {name}", "   :no-members:", ""]
        for sub in _modules(name):
            # only what the module defines: re-exports are documented where they live
            lines += [
                sub,
                "-" * len(sub),
                "",
                f".. automodule:: {sub}",
                "   :ignore-module-all:",
                "",
            ]
    return "\n".join(lines)


def write_all(out_dir: Path) -> None:
    """Write ``index.rst`` and one page per layer into ``out_dir`` (rewritten only on change)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = [
        "API reference",
        "=============",
        "",
        "One page per layer of the package, bottom-up (see :doc:`../architecture`).",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ]
    for page, title, names in PAGES:
        index.append(f"   {page}")
        _write(out_dir / f"{page}.rst", _page(title, names))
    _write(out_dir / "index.rst", "\n".join(index) + "\n")


def _write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
