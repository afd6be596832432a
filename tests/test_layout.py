"""The house rules a reader relies on: imports point one way (concept files below, plumbing above, no circle),
grpo.rl_step stays copyable, and no line runs past 120 characters."""
import ast
import inspect
import pathlib

import grpo

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONCEPTS = ["world", "rewards", "model", "sample", "grpo", "focus", "shortcut"]  # bottom to top
MODULES = {p.stem for p in ROOT.glob("*.py")}


def is_main_block(node):
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and getattr(node.test.left, "id", "") == "__name__")


def imports_of(source):
    """The project modules a file imports, inside functions too, leaving out its `if __name__ == "__main__":` demo."""
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if is_main_block(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name.split(".")[0] for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.add(child.module.split(".")[0])
            visit(child)
    visit(ast.parse(source))
    return found & MODULES


def cycles(graph):
    """The modules that can reach themselves through the import graph {module: imported modules}."""
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for m in graph.get(todo.pop(), ()):
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen
    return sorted(m for m in graph if m in reach(m))


GRAPH = {m: imports_of((ROOT / f"{m}.py").read_text()) for m in MODULES}


def test_no_import_circle_and_concepts_import_only_concepts_below_them():
    assert cycles(GRAPH) == []
    for i, m in enumerate(CONCEPTS):
        assert GRAPH[m] <= set(CONCEPTS[:i]), (m, sorted(GRAPH[m] - set(CONCEPTS[:i])))


def test_the_checks_can_fail():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == ["a", "b"]
    demo = ('import os\nimport train\ndef f():\n    from compare import x\n'
            'if __name__ == "__main__":\n    import bench\n')
    assert imports_of(demo) == {"train", "compare"}


def test_rl_step_takes_at_most_14_parameters():
    assert len(inspect.signature(grpo.rl_step).parameters) <= 14


def test_no_line_is_over_120_characters():
    files = [*ROOT.glob("*.py"), *ROOT.glob("tests/*.py"), ROOT / "gpu_check.sh", ROOT / ".ci" / "run"]
    long = [f"{p.name}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > 120]
    assert long == []
