"""The shape of the code: data flows one way, and readers of result files need no torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = {path.stem: path for path in ROOT.glob("*.py")}


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports anywhere in it, at the top or inside a function."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    return imported & MODULES.keys()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other] if other in path else [module, other]
            if other not in state and (cycle := visit(other, path + [other])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_project_modules_import_each_other_without_a_cycle():
    graph = {name: project_imports(path) - {name} for name, path in MODULES.items()}
    assert find_cycle(graph) is None


def test_nothing_imports_train_for_helpers():
    importers = {name for name, path in MODULES.items() if "train" in project_imports(path) and name != "train"}
    assert importers <= {f"exp{i}" for i in range(1, 7)}


def test_report_reads_result_files_without_torch():
    code = "import sys, report, hw_eval; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
