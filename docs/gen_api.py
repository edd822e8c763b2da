"""Write one API page per subpackage (``docs/api/<page>.rst``) at build time.

Each page documents every public module of its subpackage, found by walking the package, so that
a new module appears in the reference without editing the docs. Every object is documented once,
where it is defined, but under its *public* name: ``pyro_nf.FlowGuide`` for what the top level
exports, ``pyro_nf.vae.VAE`` for what a subpackage exports, the module path otherwise. The order of
the pages is the order of the layers, bottom-up (``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

from sphinx.pycode import ModuleAnalyzer

#: (page, title, the subpackage or the single modules at the edge), bottom-up.
PAGES: list[tuple[str, str, list[str]]] = [
    ("utils", "pyro_nf.utils: argument checks and networks", ["pyro_nf.utils"]),
    ("transforms", "pyro_nf.transforms: the bijections", ["pyro_nf.transforms"]),
    ("flows", "pyro_nf.flows: layers, Flow, builders, registry", ["pyro_nf.flows"]),
    ("training", "pyro_nf.training: the one loop", ["pyro_nf.training"]),
    ("diagnostics", "pyro_nf.diagnostics: PSIS, trust, references", ["pyro_nf.diagnostics"]),
    ("infer", "pyro_nf.infer: flow guides for Pyro models", ["pyro_nf.infer"]),
    ("density", "pyro_nf.density: density fits and targets", ["pyro_nf.density"]),
    ("vae", "pyro_nf.vae: VAEs with flow encoders", ["pyro_nf.vae"]),
    ("datasets", "pyro_nf.datasets: data loaders", ["pyro_nf.datasets"]),
    ("plotting", "pyro_nf.plotting: figures", ["pyro_nf.plotting"]),
    ("cli", "pyro_nf.cli: the command line", ["pyro_nf.cli"]),
]


def _modules(package: ModuleType) -> list[str]:
    """The package's public modules (and itself when it is a single module)."""
    if not hasattr(package, "__path__"):
        return [package.__name__]
    found = pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}.")
    return sorted(m.name for m in found if not m.name.rpartition(".")[2].startswith("_"))


def public_name(obj: object, name: str, module: str) -> str:
    """The shortest public path of ``obj``: ``pyro_nf.<name>``, ``pyro_nf.<sub>.<name>``, or the
    module path."""
    parts = module.split(".")
    for depth in range(1, len(parts)):
        owner = importlib.import_module(".".join(parts[:depth]))
        if name in getattr(owner, "__all__", ()) and getattr(owner, name, None) is obj:
            return f"{owner.__name__}.{name}"
    return f"{module}.{name}"


def _own_doc(obj: object) -> bool:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return bool(doc and doc.strip())


def _entries(module: ModuleType) -> list[tuple[int, str, str]]:
    """``(source order, directive, public name)`` of what ``module`` defines and exports."""
    analyzer = ModuleAnalyzer.for_module(module.__name__)
    analyzer.analyze()
    attr_docs = {key[1] for key in analyzer.attr_docs if key[0] == ""}
    entries = []
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if obj.__module__ != module.__name__ or not _own_doc(obj):
                continue  # a re-export (documented where it lives) or undocumented
            directive = "autoclass" if inspect.isclass(obj) else "autofunction"
        elif name in attr_docs:  # a constant with a ``#:`` comment
            directive = "autodata"
        else:
            continue
        order = analyzer.tagorder.get(name, 10**6)
        # a constant's ``#:`` comment is found only under the module that defines it
        public = (
            f"{module.__name__}.{name}"
            if directive == "autodata"
            else public_name(obj, name, module.__name__)
        )
        entries.append((order, directive, public))
    return sorted(entries)


def _page(title: str, names: list[str]) -> str:
    lines = [title, "=" * len(title), ""]
    for name in names:
        package = importlib.import_module(name)
        if hasattr(package, "__path__"):  # the package's own docstring, then its modules
            lines += [f".. automodule:: {name}", "   :no-members:", ""]
        for sub in _modules(package):
            module = importlib.import_module(sub)
            lines += [sub, "-" * len(sub), "", f".. automodule:: {sub}", "   :no-members:", ""]
            for _, directive, public in _entries(module):
                lines += [f".. {directive}:: {public}", ""]
    return "\n".join(lines)


def write_all(out_dir: Path) -> None:
    """Write ``index.rst`` and one page per subpackage into ``out_dir`` (only on change)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = [
        "API reference",
        "=============",
        "",
        "One page per subpackage, bottom-up (see :doc:`../architecture`). Objects are listed",
        "under their public names: ``pyro_nf.FlowGuide`` for what ``import pyro_nf`` exports,",
        "``pyro_nf.vae.VAE`` for what a subpackage exports.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ]
    for page, title, names in PAGES:
        index.append(f"   {page}")
        _write(out_dir / f"{page}.rst", _page(title, names))
    for stale in out_dir.glob("*.rst"):
        if stale.stem not in {p[0] for p in PAGES} | {"index"}:
            stale.unlink()
    _write(out_dir / "index.rst", "\n".join(index) + "\n")


def _write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
