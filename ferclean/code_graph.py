"""The import graph of ferclean's own modules (and flows'), read from the source with `ast`.

Every `import` / `from ... import` counts, also those inside functions: an import inside a function
still ties two modules together, it only hides a cycle from the interpreter at start-up. Used by the
stage cache (a stage's code version hashes every module its function can reach) and by the test
that keeps the modules free of import cycles.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ferclean", "flows")


def module_files(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py under `root/<package>` (a package is its __init__)."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def imports_of(module: str, path: Path, modules: Iterable[str]) -> set[str]:
    """The modules among `modules` that `module` (source at `path`) imports anywhere in its body.

    `from pkg import name` counts as importing `pkg.name` when that is a module, else `pkg`;
    relative imports are resolved against `module`.
    """
    known = set(modules)
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:  # `import a.b.c` where c is not a module: its nearest module
                t = t.rpartition(".")[0]
            if t and t != module:
                out.add(t)
    return out


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports (anywhere in its body)."""
    mods = module_files(root, packages)
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def reachable(module: str, graph: dict[str, set[str]]) -> list[str]:
    """`module` and every module it reaches through imports, sorted."""
    seen, todo = {module}, [module]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return sorted(seen)


@lru_cache(maxsize=1)
def ferclean_graph() -> dict[str, set[str]]:
    """The import graph of the installed ferclean package (cached per process)."""
    return import_graph(ROOT, ("ferclean",))
