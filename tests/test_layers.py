"""The package's import graph, read from the source (ast), not by importing: no cycle among acllib's
modules, counting imports inside functions too (a function-local import that only dodged a cycle
still is one). `python tests/test_layers.py [ACLLIB_DIR]` prints the graph."""
import ast
import collections
import pathlib
import sys

ACLLIB = pathlib.Path(__file__).resolve().parents[1] / "acllib"


def import_graph(root: pathlib.Path = ACLLIB) -> tuple[dict, dict]:
    """(module-level edges, function-local edges): module -> the acllib modules it imports. A
    subpackage (strategies/) is one node: its files' imports are its imports."""
    files = {p.stem: [p] for p in root.glob("*.py")}
    packages = {d.name for d in root.iterdir() if (d / "__init__.py").exists()}
    for package in packages:
        files[package] = sorted((root / package).glob("*.py"))
    top, local = collections.defaultdict(set), collections.defaultdict(set)
    for name, paths in files.items():
        inside = name in packages  # a subpackage's files import acllib's modules with "..", siblings with "."

        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ImportFrom) and child.level >= 1:
                    if child.level == (2 if inside else 1):
                        targets = [child.module] if child.module else [a.name for a in child.names]
                        for target in targets:
                            target = target.split(".")[0]
                            if target in files and target != name:
                                (local if in_function else top)[name].add(target)
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
        for path in paths:
            visit(ast.parse(path.read_text()), False)
    return dict(top), dict(local)


def cycles(edges: dict) -> list[list[str]]:
    """Every elementary cycle's set of modules (depth-first search from each module)."""
    found = set()

    def walk(node, path):
        for nxt in edges.get(node, ()):
            if nxt in path:
                found.add(frozenset(path[path.index(nxt):]))
            else:
                walk(nxt, path + [nxt])
    for start in edges:
        walk(start, [start])
    return sorted(sorted(c) for c in found)


def test_a_hand_made_cycle_is_found(tmp_path):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .c import x\n")
    (tmp_path / "c.py").write_text("from .a import y\n")
    top, local = import_graph(tmp_path)
    assert top == {"a": {"b"}, "c": {"a"}} and local == {"b": {"c"}}
    both = {k: top.get(k, set()) | local.get(k, set()) for k in "abc"}
    assert cycles(both) == [["a", "b", "c"]] and cycles(top) == []


def test_a_subpackage_is_one_node(tmp_path):
    (tmp_path / "a.py").write_text("from . import pkg\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from .one import x\n")
    (tmp_path / "pkg" / "one.py").write_text("from .. import a\nfrom . import two\n")
    top, _ = import_graph(tmp_path)
    assert top == {"a": {"pkg"}, "pkg": {"a"}} and cycles(top) == [["a", "pkg"]]


def test_acllib_has_no_import_cycle_and_imports_at_module_level():
    top, local = import_graph()
    both = {k: top.get(k, set()) | local.get(k, set()) for k in set(top) | set(local)}
    assert cycles(both) == []
    # inside functions only in the command line, which loads a subcommand's modules when it runs
    # (so that --help and bad input answer at once): nowhere to dodge a cycle
    assert {k for k, v in local.items() if v} <= {"__main__"}


if __name__ == "__main__":
    top, local = import_graph(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ACLLIB)
    for kind, edges in (("module level", top), ("inside functions", local)):
        print(f"{kind} ({sum(map(len, edges.values()))} imports):")
        for name in sorted(edges):
            if edges[name]:
                print(f"  {name} -> {', '.join(sorted(edges[name]))}")
    both = {k: top.get(k, set()) | local.get(k, set()) for k in set(top) | set(local)}
    print("cycles:", cycles(both) or "none")
