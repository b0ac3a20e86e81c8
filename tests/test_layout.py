"""The package's shape, checked: no import circle (type-only and function-level imports
included), layers that import only downwards, and backends that never import each other."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "runq"

# Each layer may import only itself and the layers listed before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "ground floor",
        (
            "runq.models",
            "runq.errors",
            "runq.context",
            "runq.options",
            "runq.logs",
            "runq.settings",
            "runq.signing",
            "runq.fastinit",
        ),
    ),
    ("the middleware seam", ("runq.observe.middleware",)),
    ("brokers", ("runq.brokers",)),
    ("producer API", ("runq.handles", "runq.tasks", "runq.schedule", "runq.observe", "runq.app", "runq.workflow")),
    ("runtime and edges", ("runq.worker", "runq.cli", "runq.dashboard", "runq.contrib", "runq")),
]
# The one import against the layers, and why it makes no circle.
ALLOWED_UPWARD = {
    ("runq.app", "runq.worker.drain"): "app.drain() (SPEC §12) runs the worker's own algorithm in the caller's"
    " thread; the runtime names what it needs of the App as protocols and never imports app.py",
}
BACKENDS = ("runq.brokers.sqlite", "runq.brokers.postgres", "runq.brokers.redis", "runq.brokers.memory")


@cache
def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str) -> str | None:
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports(module: str) -> frozenset[str]:
    """Every runq module ``module`` imports, anywhere in it (under TYPE_CHECKING too)."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for name in names if (target := _resolve(name)) and target.startswith("runq"))
    # Importing a module runs its packages' __init__ first: that is not an edge of ours.
    return frozenset(t for t in found if t != module and not module.startswith(t + "."))


def _layer(module: str) -> int:
    best, depth = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    return best


def test_every_module_has_a_layer() -> None:
    assert [m for m in modules() if _layer(m) < 0] == []


def test_layers_import_only_downwards() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module in sorted(modules())
        for target in sorted(imports(module))
        if _layer(target) > _layer(module) and (module, target) not in ALLOWED_UPWARD
    ]
    assert upward == []


def test_no_backend_imports_another() -> None:
    def backend(module: str) -> str | None:
        return next((b for b in BACKENDS if module == b or module.startswith(b + ".")), None)

    crossing = [
        f"{module} imports {target}"
        for module in sorted(modules())
        if (own := backend(module))
        for target in sorted(imports(module))
        if backend(target) not in (None, own)
    ]
    assert crossing == []


def test_no_import_circle() -> None:
    """Tarjan's strongly connected components over every import, type-only ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in imports(module):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(modules()):
        if module not in index:
            visit(module)
    assert circles == []


@pytest.mark.parametrize("name", ["runq.testing", "runq.runner", "runq.pools", "runq.child", "runq.bench", "runq.demo"])
def test_no_test_or_bench_code_at_the_package_root(name: str) -> None:
    assert name not in modules()
