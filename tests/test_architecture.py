"""The package's layers and the absence of import cycles, read from the source (every import statement counts,
at module level or inside a function).

Layers (docs/architecture.md): the ground floor (``constants``, ``errors``, ``utilities``, ``losses``) imports no
stage; the stages (``dataset_conversion``, ``planning``, ``training``, ``inference``, ``evaluation``,
``postprocessing``, ``synthetic``) import no ``demo``, ``workflow`` or ``cli``; ``workflow`` imports no ``demo``; ``inference`` does not import
``dataset_conversion``; nothing in the package imports ``kits_plugins.testing`` (helpers of tests and benchmarks).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kits_plugins"
GROUND = ("constants", "errors", "utilities", "losses")
STAGES = ("dataset_conversion", "planning", "training", "inference", "evaluation", "postprocessing", "synthetic",
          "statistics", "models")
TOP = ("demo", "workflow", "cli")


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path], root: Path = PACKAGE.parent) -> set[str]:
    """Package modules that ``path`` imports anywhere in its body (the most specific module of each import)."""
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in modules else root for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t.startswith("kits_plugins") and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: components with more than one module are import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> str:
    part = module.split(".")[1] if "." in module else ""
    for name, group in (("ground", GROUND), ("stage", STAGES), ("top", TOP)):
        if part in group:
            return name
    return "testing" if part == "testing" else "root"


def test_no_import_cycles():
    cycles = [c for c in strongly_connected(import_graph()) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_layers():
    bad = []
    for module, targets in import_graph().items():
        for t in targets:
            lm, lt = layer(module), layer(t)
            if lt == "testing" and lm != "testing":
                bad.append(f"{module} -> {t} (kits_plugins.testing is for tests and benchmarks)")
            elif lm in ("ground", "root") and lt in ("stage", "top"):
                bad.append(f"{module} -> {t} (the ground floor imports no stage)")
            elif lm == "stage" and lt == "top":
                bad.append(f"{module} -> {t} (stages import no demo/workflow/cli)")
            elif module.startswith("kits_plugins.workflow") and t.startswith("kits_plugins.demo"):
                bad.append(f"{module} -> {t} (the demo runs the workflow, not the other way round)")
            elif module.startswith("kits_plugins.inference") and t.startswith("kits_plugins.dataset_conversion"):
                bad.append(f"{module} -> {t} (inference imports no dataset_conversion)")
    assert not bad, "layer violations:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "graph, cyclic",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, cyclic):
    assert any(len(c) > 1 for c in strongly_connected(graph)) is cyclic


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "kits_plugins"
    (pkg / "inference").mkdir(parents=True)
    (pkg / "dataset_conversion").mkdir()
    for p in (pkg / "__init__.py", pkg / "inference" / "__init__.py", pkg / "dataset_conversion" / "__init__.py",
              pkg / "dataset_conversion" / "layout.py"):
        p.write_text("")
    (pkg / "inference" / "a.py").write_text("def f():\n    from kits_plugins.dataset_conversion import layout\n")
    (pkg / "inference" / "b.py").write_text("from . import a\n")
    modules = package_modules(pkg)
    assert imported_modules(pkg / "inference" / "a.py", modules, tmp_path) == {"kits_plugins.dataset_conversion.layout"}
    assert imported_modules(pkg / "inference" / "b.py", modules, tmp_path) == {"kits_plugins.inference.a"}
