"""The package's layers are used in one direction only (README "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: lowest first; a module may import its own layer and the layers before it, never one after it
LAYERS = [
    ("facrnn.errors",),
    ("facrnn.core",),
    ("datamodules",),
    ("facrnn.training",),
    ("facrnn.evaluation",),
    ("facrnn.plots",),
    ("facrnn.runs",),
    ("facrnn.cli",),
    ("train", "evaluate"),
]


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of a dotted module name (None: not one of the project's)."""
    for index, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every project module imported anywhere in ``path`` (also inside functions and TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from facrnn import plots`
    return {name for name in found if layer_of(name) is not None or name == "facrnn"}


def project_files() -> list[Path]:
    files = sorted((ROOT / "facrnn").rglob("*.py")) + sorted((ROOT / "datamodules").rglob("*.py"))
    return files + [ROOT / "train.py", ROOT / "evaluate.py"]


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in project_files()}


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = [name for name in import_graph() if layer_of(name) is None and name != "facrnn"]
    assert not unplaced, f"modules outside every layer of LAYERS: {unplaced}"


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    violations = []
    for module, imports in import_graph().items():
        own = layer_of(module)
        for target in imports:
            target_layer = layer_of(target)
            if own is not None and target_layer is not None and target_layer > own:
                violations.append(f"{module} -> {target}")
    assert not violations, "imports against the layer order:\n" + "\n".join(sorted(violations))


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    known = set(graph)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    edges = {
        module: {t for t in (resolve(name) for name in imports) if t and t != module} for module, imports in graph.items()
    }
    # package __init__ modules are only imported on the way to their submodules; leave them out
    edges = {m: {t for t in ts if t not in ("facrnn",) and not (m.startswith(t + "."))} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(target) is None:
                visit(target)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if state.get(module) is None:
            visit(module)


def test_the_checker_sees_a_violation() -> None:
    """The layer test can fail: a core module importing a run-level one is caught."""
    assert layer_of("facrnn.core.model") < layer_of("facrnn.runs.pipeline")
    assert layer_of("datamodules.base") < layer_of("facrnn.training.module")
    assert layer_of("numpy") is None
