"""The import graph, read from the source: the runtime package in layers, no cycles anywhere,
and the heavy frameworks kept out of what the serving image runs."""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recsys", "serving", "devtools", "training", "registry", "benchmarks", "batch")
# recsys/ from the ground up; a module imports its own sub-package and the layers below it
# (the ground floor's modules import each other; the cycle test keeps that a tree).
LAYERS = {
    "recsys.errors": 0, "recsys.telemetry": 0, "recsys.features": 0, "recsys.settings": 0,
    "recsys.context": 0, "recsys.follows": 0,
    "recsys.breaker": 0, "recsys.models": 1, "recsys.stores": 1, "recsys.experiments": 2,
    "recsys.search": 2, "recsys.pipeline": 3, "recsys.app": 4,
}
NEVER = {
    "recsys": ("serving", "devtools", "training", "registry", "benchmarks", "batch", "bentoml",
               "torch", "mlflow", "starlette", "ray"),
    "serving": ("training", "registry", "benchmarks", "batch", "torch", "mlflow", "ray"),
    # the batch job runs the runtime package's pipeline on Ray; bentoml only to find bundles
    "batch": ("serving", "training", "registry", "benchmarks", "devtools", "torch", "mlflow"),
}
ALLOWED = {("serving.fault_injection", "devtools.faults")}  # RECSYS_FAULTS in a checkout only


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, modules: frozenset[str] = frozenset()) -> Iterator[str]:
    """What a file imports: `from pkg import name` is pkg.name when that is one of `modules`
    (a submodule), else pkg (a name its __init__ defines)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in modules else node.module


def project_imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    names = frozenset(modules)
    return {name: {i for i in imports_of(path, names) if i in modules and i != name}
            for name, path in modules.items()}


def layer_of(module: str) -> tuple[str, int]:
    for prefix, rank in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    raise AssertionError(f"{module} is in no layer of LAYERS: place it")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return project_imports(project_modules())


def test_every_runtime_module_is_in_a_layer_and_imports_only_below_it(
        graph: dict[str, set[str]]) -> None:
    wrong = []
    for module, imported in graph.items():
        if not module.startswith("recsys.") or module == "recsys":
            continue
        package, rank = layer_of(module)
        for other in imported:
            if other == "recsys":
                continue
            other_package, other_rank = layer_of(other)
            if other_package != package and other_rank >= rank > 0:
                wrong.append(f"{module} (layer {rank}) imports {other} (layer {other_rank})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                cycles.append(" -> ".join(path[path.index(other):] + [module, other]))
            elif other not in state:
                visit(other, path + [module] if module not in path else path)
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("package", sorted(NEVER))
def test_what_a_package_never_imports(package: str) -> None:
    found = []
    for name, path in project_modules().items():
        if name != package and not name.startswith(package + "."):
            continue
        for imported in imports_of(path):
            top = imported.split(".")[0]
            if top in NEVER[package] and (name, imported) not in ALLOWED:
                found.append(f"{name} imports {imported}")
    assert not found, "\n".join(sorted(set(found)))


def test_the_layer_map_names_only_what_exists() -> None:
    modules = project_modules()
    for prefix in LAYERS:
        assert any(m == prefix or m.startswith(prefix + ".") for m in modules), prefix
