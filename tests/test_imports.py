"""The package's layering, read from its source (every import statement, those inside functions too).

Units are the subpackages (``codec``, ``stages`` ...) and the top-level modules (``pipeline``,
``recipes`` ...). Rules (issue 15, docs/ARCHITECTURE.md "Layers"):

* the library (models, codec, text, diffusion) never imports stages, eval, distill, train or the CLI;
* nothing outside the CLI (``cli``, ``commands``, ``__main__``) imports the CLI;
* the graph between units is acyclic.

The checker itself is tested on synthetic graphs, so a rule that can never fire is caught too.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "presto_cli"
LIBRARY = ("models", "codec", "text", "diffusion")
NOT_FROM_LIBRARY = ("stages", "eval", "distill", "train", "cli", "commands", "__main__")
CLI = ("cli", "commands", "__main__")


def _unit(module: str) -> str | None:
    """``presto_cli.codec.base`` -> ``codec``; ``presto_cli.pipeline`` -> ``pipeline``; the package
    itself (``from presto_cli import __version__``) -> None."""
    parts = module.split(".")
    if parts[0] != "presto_cli" or len(parts) < 2:
        return None
    name = parts[1]
    if (PKG / name).is_dir() or (PKG / f"{name}.py").is_file():
        return name
    return None  # an attribute of the package, e.g. __version__


def _imported_modules(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]  # from presto_cli import pipeline
    return out


def import_graph(pkg: Path = PKG) -> dict[str, dict[str, set[str]]]:
    """``{unit: {imported unit: {files}}}`` over every module of the package."""
    graph: dict[str, dict[str, set[str]]] = {}
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(pkg)
        src = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        graph.setdefault(src, {})
        for mod in _imported_modules(ast.parse(f.read_text(), str(f))):
            dst = _unit(mod)
            if dst is not None and dst != src:
                graph[src].setdefault(dst, set()).add(str(rel))
    return graph


def forbidden_edges(graph: dict[str, dict[str, set[str]]]) -> list[str]:
    bad = []
    for src, dsts in graph.items():
        for dst, files in dsts.items():
            if src in LIBRARY and dst in NOT_FROM_LIBRARY:
                bad.append(f"{src} -> {dst} ({', '.join(sorted(files))})")
            elif src not in CLI and dst in CLI:
                bad.append(f"{src} -> {dst} ({', '.join(sorted(files))}): the core imports the CLI")
    return bad


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, {})):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


# ---------------------------------------------------------------------------------------------
# The package


def test_library_imports_no_stage_eval_distill_train_or_cli():
    assert forbidden_edges(import_graph()) == []


def test_unit_graph_is_acyclic():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_graph_sees_imports_inside_functions():
    # pipeline.py imports the codec lazily, inside a method; the graph must still hold that edge
    assert "codec" in import_graph()["pipeline"]


# ---------------------------------------------------------------------------------------------
# The checker, on synthetic graphs


def _g(*edges: str) -> dict[str, dict[str, set[str]]]:
    graph: dict[str, dict[str, set[str]]] = {}
    for e in edges:
        a, b = e.split("->")
        graph.setdefault(a, {})[b] = {f"{a}/x.py"}
        graph.setdefault(b, {})
    return graph


def test_checker_flags_a_library_importing_a_stage_and_the_core_importing_the_cli():
    assert forbidden_edges(_g("stages->codec", "eval->pipeline", "cli->train")) == []
    bad = forbidden_edges(_g("codec->stages", "diffusion->train", "text->eval", "models->distill"))
    assert len(bad) == 4
    bad = forbidden_edges(_g("pipeline->commands", "eval->cli"))
    assert len(bad) == 2 and all("the core imports the CLI" in b for b in bad)


def test_checker_finds_a_cycle():
    assert find_cycle(_g("a->b", "b->c", "a->c")) is None
    assert find_cycle(_g("a->b", "b->c", "c->a")) == ["a", "b", "c", "a"]


def test_checker_reads_function_level_imports(tmp_path):
    (tmp_path / "codec").mkdir()
    (tmp_path / "stages").mkdir()
    (tmp_path / "codec" / "x.py").write_text("def f():\n    from presto_cli.stages import y\n")
    (tmp_path / "stages" / "y.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["codec"].get("stages") == {"codec/x.py"}
