"""The package's imports go one way, bottom to top (see docs/internals.md, "Layers").

Read from the source, so an import inside a function counts as much as one at the top of a
module: a lazy import that goes up is a cycle waiting for the next refactoring. Imports under
``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import django_tasks_q

PACKAGE = "django_tasks_q"
SOURCE = Path(django_tasks_q.__file__).parent

# Bottom to top. A module may import modules of its own layer or of a lower one. A name
# ending in ".*" stands for a subpackage and everything in it.
LAYERS: list[set[str]] = [
    # Foundations: settings, errors, JSON, cron, the queue SQL, the retry rules.
    {"compat", "conf", "exceptions", "errors", "serialization", "schedules", "querysets",
     "signals", "stats", "queue", "retry", "backoff", "polling", "limits",
     "routing", "durations", "tracing", "direct"},
    {"registry"},
    {"declarations"},
    {"models"},
    {"tasks", "canvas", "pausing", "queues", "actions"},
    {"results"},
    {"backend"},
    # What runs tasks and shows them: clients of everything below.
    {"schedule_sync", "beat", "worker.*", "bench.*", "admin.*", "checks", "metrics", "health", "testing"},
    {"management.*", "apps", ""},  # "" is the package itself: the public API
]  # fmt: skip

# The deliberate upward imports: a task (and a workflow) finds its backend when asked, as Django's own
# Task.get_backend does, since backends are configured by settings, not known at import.
ALLOWED_UPWARD = {("tasks", "backend"), ("canvas", "backend")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in SOURCE.rglob("*.py"):
        relative = path.relative_to(SOURCE).with_suffix("")
        if relative.parts[0] == "migrations":
            continue
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports, at any depth, as names relative to it."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                names = [f"{child.module}.{alias.name}" for alias in child.names]
                names = [name if _relative(name) in modules else child.module for name in names]
            else:
                visit(child)
                continue
            for name in names:
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    found.add(_relative(name))

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _relative(name: str) -> str:
    return name.removeprefix(PACKAGE).removeprefix(".")


def _layer(module: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            if entry == module or (entry.endswith(".*") and (module + ".").startswith(entry[:-1])):
                return index
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        module: {target for target in _imports(path, modules) if target != module}
        for module, path in modules.items()
    }


def test_every_module_has_a_layer():
    unplaced = sorted(module or PACKAGE for module in _graph() if _layer(module) is None)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def test_imports_only_go_down():
    upward = sorted(
        (module, target)
        for module, targets in _graph().items()
        for target in targets
        if (module, target) not in ALLOWED_UPWARD
        and _layer(target) is not None
        and _layer(module) is not None
        and _layer(target) > _layer(module)
    )
    assert not upward, f"imports going up a layer (module, imported): {upward}"


def test_the_allowed_upward_import_is_still_needed():
    graph = _graph()
    assert all(target in graph[module] for module, target in ALLOWED_UPWARD)


def test_no_import_cycles():
    graph = _graph()
    for module, target in ALLOWED_UPWARD:
        graph[module].discard(target)
    cycles = []
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_walk_sees_imports_inside_functions():
    # models.py imports registry at the top; tasks.py imports backend inside get_backend.
    graph = _graph()
    assert "registry" in graph["models"]
    assert "backend" in graph["tasks"]
