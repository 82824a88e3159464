"""The package's import graph: no cycles, and the lower layers (data/, metrics/) never reach up.

Every `import` and `from ... import` anywhere in a module counts, function-level ones included: a deferred
import still ties the two modules together, it only hides the tie until run time. The graph is read from the
source with `ast` (nothing is imported), so a violation in a rarely used function is caught too.

Edges: `import threedrs.a.b` -> threedrs.a.b; `from threedrs.a.b import name` -> threedrs.a.b; relative imports
are resolved against the importing module. `from threedrs.a import b` -> threedrs.a (the statement reads the
package's namespace, so its `__init__` must have run) and also threedrs.a.b when b is a submodule. Counting the
package there is deliberate: when the package's `__init__` imports the importer, such a statement only works
through Python's fallback to an already-loaded submodule, and breaks the day `b` is a name the `__init__` defines.
The parent packages that `import threedrs.a.b` loads along the way are not counted (every package `__init__`
that imports its own submodules would otherwise be a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "threedrs"

# The lower layers, and what they may use besides each other: the package root (`__version__`) and the top-level
# modules of pure data and math ("foundation" modules, listed in the README's Layout; a foundation package such as
# config/ with its submodules). Everything else at the top level is a command or sits above models/ and
# teachers/; align/, teachers/ and models/ are above data/ and metrics/.
LOWER_LAYERS = ("threedrs.data", "threedrs.metrics")
ROOT = "threedrs"
FOUNDATION = ("threedrs.config", "threedrs.geometry", "threedrs.aabb", "threedrs.pixel_blocks", "threedrs.locking",
              "threedrs.json_files")


def module_name(path: Path, src: Path) -> str:
    """`src/threedrs/data/scene.py` -> `threedrs.data.scene`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(src: Path) -> dict[str, Path]:
    """Every module of the package under `src`: name -> file."""
    return {module_name(p, src): p for p in sorted((src / PACKAGE).rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module `name` (file `path`) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # `from . import x` in a.b.c (module) is relative to a.b; in a package's __init__ to the package.
                base_parts = name.split(".") if is_package else name.split(".")[:-1]
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            for alias in node.names:
                found.add(f"{base}.{alias.name}")
    return {m for m in found if m in known and m != name}


def import_graph(src: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (function-level imports included)."""
    modules = find_modules(src)
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a closed path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        stack = [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def is_foundation(module: str) -> bool:
    return module == ROOT or any(in_layer(module, f) for f in FOUNDATION)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """`lower -> upper` for every import from data/ or metrics/ into anything but data/, metrics/, foundation."""
    bad = []
    for module, targets in sorted(graph.items()):
        if not any(in_layer(module, layer) for layer in LOWER_LAYERS):
            continue
        for target in sorted(targets):
            allowed = is_foundation(target) or any(in_layer(target, layer) for layer in LOWER_LAYERS)
            if not allowed:
                bad.append(f"{module} -> {target}")
    return bad


def test_package_has_no_import_cycles():
    cycle = find_cycle(import_graph(SRC))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_data_and_metrics_never_import_upward():
    bad = upward_imports(import_graph(SRC))
    assert not bad, "lower layer imports upward: " + "; ".join(bad)


def test_foundation_modules_exist_and_stay_foundation():
    """Each foundation module exists and imports only other foundation modules (else the exemption leaks)."""
    graph = import_graph(SRC)
    for module in FOUNDATION:
        assert module in graph, f"foundation module {module} is gone: update FOUNDATION"
    for module in sorted(m for m in graph if is_foundation(m)):
        above = sorted(t for t in graph[module] if not is_foundation(t))
        assert not above, f"foundation module {module} imports {above}"


# --- the checks themselves must be able to fail: a tiny fake package with each violation ---------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_graph_resolves_relative_submodule_and_function_level_imports(tmp_path):
    src = _write(tmp_path, {
        "threedrs/__init__.py": "",
        "threedrs/data/__init__.py": "from .scene import read\n",
        "threedrs/data/scene.py": "def read():\n    from ..align import task\n",
        "threedrs/data/tasks.py": "from threedrs.data import scene\nfrom threedrs import geometry\n",
        "threedrs/geometry.py": "import threedrs.data.tasks as t\n",
        "threedrs/align/__init__.py": "",
        "threedrs/align/task.py": "from . import head\n",
        "threedrs/align/head.py": "",
    })
    graph = import_graph(src)
    assert graph["threedrs.data"] == {"threedrs.data.scene"}
    assert graph["threedrs.data.scene"] == {"threedrs.align", "threedrs.align.task"}
    assert graph["threedrs.data.tasks"] == {"threedrs", "threedrs.data", "threedrs.data.scene", "threedrs.geometry"}
    assert graph["threedrs.geometry"] == {"threedrs.data.tasks"}
    assert graph["threedrs.align.task"] == {"threedrs.align", "threedrs.align.head"}
    assert upward_imports(graph) == ["threedrs.data.scene -> threedrs.align",
                                     "threedrs.data.scene -> threedrs.align.task"]


def test_cycle_through_a_package_init_is_found(tmp_path):
    """The SynthRooms shape: the package __init__ imports generator, generator imports the package."""
    src = _write(tmp_path, {
        "threedrs/__init__.py": "",
        "threedrs/synth/__init__.py": "from threedrs.synth.generator import generate\n",
        "threedrs/synth/generator.py": "def generate():\n    from threedrs.synth import SynthError\n",
    })
    cycle = find_cycle(import_graph(src))
    assert cycle == ["threedrs.synth", "threedrs.synth.generator", "threedrs.synth"]


@pytest.mark.parametrize("target", ["threedrs.train", "threedrs.models.base", "threedrs.teachers.cache"])
def test_upward_import_into_commands_models_or_teachers_is_reported(tmp_path, target):
    src = _write(tmp_path, {
        "threedrs/__init__.py": "",
        "threedrs/train.py": "",
        "threedrs/models/__init__.py": "",
        "threedrs/models/base.py": "",
        "threedrs/teachers/__init__.py": "",
        "threedrs/teachers/cache.py": "",
        "threedrs/metrics/__init__.py": "",
        "threedrs/metrics/qa.py": f"def score():\n    import {target}\n",
    })
    assert upward_imports(import_graph(src)) == [f"threedrs.metrics.qa -> {target}"]
