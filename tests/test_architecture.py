"""The house rules, checked statically over every ``import`` statement in ``pyro_nf/``.

* the layers (``LAYERS``) only import downward: a module imports from its own folder or from a
  lower layer, counting module-level, function-local and ``TYPE_CHECKING`` imports alike;
* no import circles between modules;
* no underscore-private name (or private module) is imported from another module;
* at most 12 entries at the top of ``pyro_nf/``;
* the public API: ``__all__`` sorted and complete, every name of the 0.1 API still importable,
  and every old module path still importable (``pyro_nf.MOVED_MODULES``).

The checker functions are tested on small synthetic graphs too, so that the rules can fail.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import pyro_nf

PACKAGE = Path(pyro_nf.__file__).resolve().parent

#: bottom to top; a module may import only from its own entry or from entries listed before it.
LAYERS: list[str] = [
    "utils",
    "transforms",
    "flows",
    "datasets",
    "training",
    "diagnostics",
    "infer",
    "density",
    "vae",
    "plotting",
    "cli",
]

#: every name ``import pyro_nf`` offered in 0.1 (before the redesign).
API_0_1 = """AmortizedFlowGuide DensityEstimator build_flow density fit_density plotting vae
ConvergenceWarning RenyiBound TrustReport diagnose reweighted_summary EarlyStopping FlowGuide
History datasets diagnose_importance fit log_evidence log_importance_weights make_elbo psis
psis_khat targets to_inference_data train AutoregressiveLayer CouplingLayer DiagonalAffineLayer
Flow FlowDistribution FixedAffineLayer FlowLayer LowerTriangularAffineLayer PermuteLayer
PlanarLayer RadialLayer iaf maf nice planar radial realnvp stack transforms""".split()


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str, modules: set[str]) -> bool:
    return name in modules


def import_edges(sources: dict[str, tuple[str, bool]]) -> list[tuple[str, str, str]]:
    """``(importer, imported module, imported name or '')`` for every import in ``sources``.

    ``sources`` maps a module name to ``(its source text, whether it is a package __init__)``.
    """
    modules = set(sources)
    edges = []
    for mod, (text, is_package) in sources.items():
        package = mod if is_package else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                edges += [
                    (mod, a.name, "") for a in node.names if a.name.split(".")[0] == "pyro_nf"
                ]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "pyro_nf":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if _is_module(sub, modules):
                        edges.append((mod, sub, ""))
                    else:
                        edges.append((mod, target, alias.name))
    return edges


def entry_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(edges: list[tuple[str, str, str]]) -> list[str]:
    """Imports from a higher layer (or from the top-level package) than the importer's."""
    bad = []
    for src, dst, _ in edges:
        if src == "pyro_nf":  # the top-level __init__ gathers the public API
            continue
        s, d = entry_of(src), entry_of(dst)
        if s == d:
            continue
        if d == "" or s not in LAYERS or d not in LAYERS or LAYERS.index(d) > LAYERS.index(s):
            bad.append(f"{src} imports {dst} (layer {d or 'pyro_nf'} is not below {s})")
    return bad


def import_cycles(edges: list[tuple[str, str, str]]) -> list[list[str]]:
    """Every circle of the module graph, one per strongly connected component (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for src, dst, _ in edges:
        if src != dst:
            graph.setdefault(src, set()).add(dst)
            graph.setdefault(dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def private_imports(edges: list[tuple[str, str, str]]) -> list[str]:
    """Underscore names, or modules, imported from another module."""
    bad = []
    for src, dst, name in edges:
        if name.startswith("_") and not name.startswith("__") and src != dst:
            bad.append(f"{src} imports {dst}.{name}")
        elif any(p.startswith("_") and not p.startswith("__") for p in dst.split(".")):
            bad.append(f"{src} imports the private module {dst}")
    return bad


def package_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(), p.name == "__init__.py") for p in PACKAGE.rglob("*.py")}


# -- the checks on pyro_nf -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edges():
    return import_edges(package_sources())


def test_every_entry_has_a_layer():
    entries = sorted(
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if p.name != "__pycache__" and (p.suffix == ".py" or (p / "__init__.py").exists())
    )
    assert set(entries) - {"__init__"} == set(LAYERS)
    assert len(list(e for e in PACKAGE.iterdir() if e.name != "__pycache__")) <= 12


def test_nothing_imports_upward(edges):
    assert upward_imports(edges) == []


def test_no_import_circles(edges):
    assert import_cycles(edges) == []


def test_no_private_name_crosses_a_module_boundary(edges):
    assert private_imports(edges) == []


def test_all_is_sorted_and_complete():
    assert pyro_nf.__all__ == sorted(pyro_nf.__all__)
    for name in pyro_nf.__all__:
        assert hasattr(pyro_nf, name), name
    # submodules appear as attributes once anything imports them (``pyro_nf.cli`` by the CLI)
    public = {
        n for n, v in vars(pyro_nf).items() if not n.startswith("_") and not inspect.ismodule(v)
    }
    public -= {"annotations", "MOVED_MODULES"}
    assert public <= set(pyro_nf.__all__), sorted(public - set(pyro_nf.__all__))


def test_the_0_1_api_is_still_importable():
    missing = [n for n in API_0_1 if not hasattr(pyro_nf, n)]
    assert missing == []
    assert callable(pyro_nf.fit_reverse_kl)
    assert pyro_nf.reverse_kl.fit_reverse_kl is pyro_nf.fit_reverse_kl


@pytest.mark.parametrize("old", sorted(pyro_nf.MOVED_MODULES))
def test_old_module_paths_still_import(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(pyro_nf.MOVED_MODULES[old])
    assert getattr(pyro_nf, old.rpartition(".")[2]) is not None


def test_subpackage_all_lists_are_sorted_and_resolve():
    for name in ["utils", "flows", "training", "diagnostics", "infer", "density", "vae"]:
        sub = importlib.import_module(f"pyro_nf.{name}")
        for attr in sub.__all__:
            assert hasattr(sub, attr), f"pyro_nf.{name}.{attr}"


# -- the checkers can fail -------------------------------------------------------------------------


def test_checker_finds_an_upward_import():
    edges = import_edges(
        {
            "pyro_nf.flows.flow": ("from ..infer.guides import FlowGuide\n", False),
            "pyro_nf.infer.guides": ("FlowGuide = 1\n", False),
        }
    )
    assert upward_imports(edges) == [
        "pyro_nf.flows.flow imports pyro_nf.infer.guides (layer infer is not below flows)"
    ]


def test_checker_finds_a_function_local_and_type_checking_import():
    text = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..density.estimator import DensityEstimator\n"
        "def f():\n    from pyro_nf.cli import main\n"
    )
    edges = import_edges({"pyro_nf.training.loop": (text, False)})
    assert len(upward_imports(edges)) == 2


def test_checker_finds_a_circle():
    edges = import_edges(
        {
            "pyro_nf.flows.a": ("from .b import x\n", False),
            "pyro_nf.flows.b": ("def f():\n    from .a import y\n", False),
        }
    )
    assert import_cycles(edges) == [["pyro_nf.flows.a", "pyro_nf.flows.b"]]


def test_checker_finds_a_private_import():
    edges = import_edges(
        {
            "pyro_nf.density.estimator": ("from ..training.loop import _atomic_save\n", False),
            "pyro_nf.training.loop": ("", False),
        }
    )
    assert private_imports(edges) == [
        "pyro_nf.density.estimator imports pyro_nf.training.loop._atomic_save"
    ]
