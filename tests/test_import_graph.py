"""The import graph of clipvg/: no cycles, no upward imports, Ray only in its wing.

:func:`check_imports` reads every module under a package folder with ``ast`` (every import, at
module top or inside a function, ``TYPE_CHECKING`` blocks included) and returns the problems it
finds; the tests run it on clipvg/ and on small planted packages, so a check that stopped
seeing cycles or upward imports fails too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The layers of clipvg, lowest first. A module may import modules of its own layer and of the
# layers below, never above. An entry is a module or a package (all of its modules); the longest
# entry that names a module decides its layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # leaf libraries: no clipvg import but the version (clipvg/__init__.py) and errors
    ("foundation", ("clipvg", "clipvg.errors", "clipvg.ops", "clipvg.progress", "clipvg.viz")),
    # URIs and files; the config writes through it, so it sits below the config
    ("storage", ("clipvg.data.storage",)),
    ("config", ("clipvg.config",)),
    # formats and I/O: schema, text, transforms, fanout, dataset, validate, pools
    ("data", ("clipvg.data",)),
    # where datasets come from: the official split files, the synthetic world
    ("sources", ("clipvg.sources",)),
    ("model", ("clipvg.model",)),
    ("pretrain", ("clipvg.pretrain",)),
    ("engine", ("clipvg.engine",)),
    ("pseudo", ("clipvg.pseudo",)),
    ("curriculum", ("clipvg.curriculum",)),
    ("distributed", ("clipvg.distributed",)),
    ("bench", ("clipvg.bench",)),
    # commands that are modules of their own (every other subcommand lives in its package)
    ("commands", ("clipvg.cli", "clipvg.demo", "clipvg.predict", "clipvg.compare")),
]

# Ray is imported only by these packages (and by ray_jobs/, outside clipvg/).
RAY_PACKAGES = ("clipvg.distributed",)

# Known upward imports, each with the reason it is still there. Empty this, do not grow it.
PENDING: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (for `from a import b`: a.b when that is a module, else a)
    line: int
    lazy: bool  # inside a function


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package folder ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _resolve(name: str, modules: dict) -> str | None:
    """The longest module of ``modules`` that ``name`` starts with (None: outside the package)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: dict) -> tuple[list[Import], list[tuple[str, int]]]:
    """(imports of package modules, imports of anything else as (name, line)) in one file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    inner, outer = [], []

    def visit(node, lazy: bool):
        for child in ast.iter_child_nodes(node):
            child_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in child.names] if base else []
            for name in names:
                target = _resolve(name, modules)
                if target is None:
                    outer.append((name, child.lineno))
                elif target != module:
                    inner.append(Import(module, target, child.lineno, lazy))
            visit(child, child_lazy)

    visit(tree, False)
    return inner, outer


def layer_of(module: str, layers) -> int | None:
    best, found = -1, None
    for index, (_, entries) in enumerate(layers):
        for entry in entries:
            # the root package names only itself, not everything under it
            matches = module == entry or (module.startswith(entry + ".") and "." in entry)
            if matches and len(entry) > best:
                best, found = len(entry), index
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def check_imports(root: Path, layers=LAYERS, ray_packages=RAY_PACKAGES,
                  pending: dict | None = None) -> list[str]:
    """Every problem of the package at ``root``: cycles between modules, modules outside the
    layer table, upward imports (``layers``, lowest first; ``pending`` excused) and ``ray``
    imported outside ``ray_packages``. Empty when the graph is clean."""
    pending = pending or {}
    modules = module_names(root)
    problems, edges = [], {}
    for module, path in modules.items():
        inner, outer = imports_of(module, path, modules)
        for imp in inner:
            edges.setdefault(module, set()).add(imp.target)
        mine = layer_of(module, layers)
        if mine is None:
            problems.append(f"{module}: in no layer of the table")
            continue
        for imp in inner:
            theirs = layer_of(imp.target, layers)
            if (theirs is not None and theirs > mine and (module, imp.target) not in pending
                    and (module, imp.target.rpartition(".")[0]) not in pending):
                problems.append(f"{module}:{imp.line} imports {imp.target} upward "
                                f"({layers[mine][0]} < {layers[theirs][0]})")
        in_ray_package = any(module == p or module.startswith(p + ".") for p in ray_packages)
        for name, line in outer:
            if (name == "ray" or name.startswith("ray.")) and not in_ray_package:
                problems.append(f"{module}:{line} imports {name} outside {', '.join(ray_packages)}")
    for cycle in _cycles(edges):
        problems.append("import cycle: " + " <-> ".join(cycle))
    return problems


# ------------------------------------------------------------------------------ the real graph
def test_clipvg_has_no_cycle_no_upward_import_and_ray_only_in_its_wing():
    assert check_imports(REPO / "clipvg", pending=PENDING) == []


def test_pending_upward_imports_still_exist():
    """An excused import that is gone must leave PENDING too (the list only shrinks)."""
    modules = module_names(REPO / "clipvg")
    edges = {(i.module, i.target) for m, p in modules.items() for i in imports_of(m, p, modules)[0]}
    assert {k for k in PENDING if k not in edges} == set()


def test_ray_jobs_import_ray_through_clipvg_cli_only():
    """ray_jobs/ scripts are thin: they run a ``clipvg`` command, nothing else of clipvg."""
    for path in sorted((REPO / "ray_jobs").glob("*.py")):
        tree = ast.parse(path.read_text())
        found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 and n.module.startswith("clipvg")}
        assert found == {"clipvg.cli"}, path.name


# ------------------------------------------------------------------------------ planted packages
PLANT_LAYERS = [("low", ("pkg.low", "pkg")), ("high", ("pkg.high",)), ("top", ("pkg.cli",))]


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", "low/__init__.py": "", "high/__init__.py": "",
                       **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_clean_planted_package_passes(tmp_path):
    root = _plant(tmp_path, {"low/a.py": "import os\n", "high/b.py": "from pkg.low import a\n",
                             "cli.py": "from pkg.high.b import x\n"})
    assert check_imports(root, PLANT_LAYERS, ("pkg.high",)) == []


def test_a_planted_cycle_fails_even_through_a_lazy_relative_import(tmp_path):
    root = _plant(tmp_path, {"low/a.py": "from pkg.low.b import f\n",
                             "low/b.py": "def f():\n    from . import a\n"})
    assert check_imports(root, PLANT_LAYERS, ()) == ["import cycle: pkg.low.a <-> pkg.low.b"]


def test_a_planted_upward_import_fails_even_inside_a_function(tmp_path):
    root = _plant(tmp_path, {"high/b.py": "X = 1\n",
                             "low/a.py": "def f():\n    from pkg.high.b import X\n    return X\n"})
    problems = check_imports(root, PLANT_LAYERS, ())
    assert problems == ["pkg.low.a:2 imports pkg.high.b upward (low < high)"]
    assert check_imports(root, PLANT_LAYERS, (), pending={("pkg.low.a", "pkg.high.b"): "why"}) == []


def test_ray_outside_its_packages_and_a_module_in_no_layer_fail(tmp_path):
    root = _plant(tmp_path, {"low/a.py": "def f():\n    import ray.data\n",
                             "high/b.py": "import ray\n", "other.py": ""})
    assert check_imports(root, PLANT_LAYERS, ("pkg.high",)) == [
        "pkg.low.a:2 imports ray.data outside pkg.high", "pkg.other: in no layer of the table"]


# ------------------------------------------------------------------------------ deferred imports
# Files whose function-level imports still lack their reason. Empty: keep it so.
UNCOMMENTED_PENDING: set[str] = set()


def uncommented_deferred_imports(path: Path) -> list[int]:
    """Lines of imports inside functions with no comment saying why they are deferred: a
    comment on the import's line, on an import line above it in its block of consecutive
    imports (blank lines between import groups included), or on the line just above that block."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines), str(path))
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or "#" in lines[node.lineno - 1]:
                continue
            above = node.lineno - 2
            # a block: consecutive imports, with the blank lines between their groups (isort)
            while above >= 0 and (lines[above].strip().startswith(("import ", "from "))
                                  or (not lines[above].strip() and above > 0
                                      and lines[above - 1].strip().startswith(("import ", "from ")))):
                if "#" in lines[above]:  # the block's reason, after its first import
                    break
                above -= 1
            if above < 0 or "#" not in lines[above]:
                found.append(node.lineno)
    return sorted(set(found))


def test_imports_sit_at_module_top_unless_deferred_with_a_reason():
    """A deferred import must say why (start-up time: torch, Ray, matplotlib); anything else
    belongs at the top of its module, where a reader sees the file's dependencies."""
    bad = {}
    for module, path in module_names(REPO / "clipvg").items():
        rel = str(path.relative_to(REPO))
        lines = uncommented_deferred_imports(path)
        if lines and rel not in UNCOMMENTED_PENDING:
            bad[rel] = lines
    assert bad == {}
    clean = {f for f in UNCOMMENTED_PENDING if not uncommented_deferred_imports(REPO / f)}
    assert clean == set(), "these files are clean now: remove them from UNCOMMENTED_PENDING"


def test_the_deferred_import_rule_sees_a_bare_one_and_accepts_a_reasoned_block(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\n\ndef f():\n    import json\n    return json\n\n\n"
                    "def g():\n    # deferred: loads torch\n    import torch\n\n    from torch import nn\n"
                    "    import math  # stdlib, but a reason is a reason\n")
    assert uncommented_deferred_imports(path) == [5]
