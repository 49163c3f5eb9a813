"""The shape of the code: data flows one way, and readers of result files need no torch (nor AccelForge)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(d for d in ROOT.iterdir() if (d / "__init__.py").is_file())


def module_name(path: Path) -> str:
    """accel/results.py -> accel.results, accel/__init__.py -> accel, rundir.py -> rundir."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in [*ROOT.glob("*.py"), *(p for d in PACKAGES for p in d.rglob("*.py"))]}
# The side that reads what training wrote (the accelerator models and the report), and the helpers it may use.
READERS = {"hw_eval", "report", *(name for name in MODULES if name.split(".")[0] in ("accel", "reporting"))}
READERS_MAY_IMPORT = {"rundir", "runlog", "configs", "precision", "stats", "utils", "files"}
# What the report takes from the accelerator side: its results and their formatting, not the mapper.
REPORT_TAKES_FROM_ACCEL = {"accel", "accel.results", "accel.sparsity"}


def project_module(dotted: str) -> str | None:
    """The project module a dotted import name lands in (its longest prefix that is one), or None."""
    parts = dotted.split(".")
    return next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in MODULES), None)


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports anywhere in it, at the top or inside a function; `from package import
    name` counts the submodule where name is one."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import; the project imports absolutely, as this graph reads"
            names += [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                for alias in node.names
            ]
    return {module for name in names if (module := project_module(name))}


GRAPH = {name: project_imports(path) - {name} for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return path[path.index(other) :] + [other] if other in path else [module, other]
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


def test_the_graph_sees_the_modules_inside_packages():
    assert {"accel", "accel.results", "accel.costing", "reporting.hardware"} <= MODULES.keys()
    assert {"accel.results", "reporting.plots"} <= GRAPH["reporting.hardware"]  # from ... import ...
    assert "accel.sparsity" in GRAPH["accel.architectures"]  # from accel import sparsity: the submodule
    assert {"rundir", "accel.sparsity", "files"} <= GRAPH["accel.results"]


def test_the_project_modules_import_each_other_without_a_cycle():
    assert find_cycle(GRAPH) is None


def test_nothing_imports_train_for_helpers():
    importers = {name for name, imported in GRAPH.items() if "train" in imported and name != "train"}
    assert importers <= {name for name in MODULES if re.fullmatch(r"exp\d+", name)}  # the experiment scripts


def test_the_result_readers_never_point_back_up():
    # hw_eval.py, report.py and their packages read run directories: nothing of training, nothing of each
    # other's commands; the accelerator side knows nothing of the report; the report none of the mapper.
    for name in READERS:
        assert GRAPH[name] <= READERS | READERS_MAY_IMPORT, (name, GRAPH[name] - READERS - READERS_MAY_IMPORT)
        assert not GRAPH[name] & {"hw_eval", "report"}, name
        if name.startswith("accel"):
            assert not any(other.startswith("reporting") for other in GRAPH[name]), name
        if name == "report" or name.startswith("reporting"):
            assert {other for other in GRAPH[name] if other.startswith("accel")} <= REPORT_TAKES_FROM_ACCEL, name
    assert not any(GRAPH[name] & {"hw_eval", "report"} for name in MODULES)  # the commands are imported by no one


def test_report_reads_result_files_without_torch():
    code = "import sys, report, hw_eval; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_report_starts_without_accelforge():
    # Where AccelForge cannot be installed (Python 3.11), training and the report still work.
    code = "import sys; sys.modules['accelforge'] = sys.modules['hwcomponents'] = None; import report"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Sizes a reader can hold: a function on a screen or two, a module read in one sitting.
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 80, 450


def test_no_function_is_longer_than_80_lines_and_no_module_longer_than_450():
    code = [*MODULES.values(), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    long_functions = [
        f"{path.relative_to(ROOT)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in code
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    long_modules = [
        f"{path.relative_to(ROOT)} ({len(path.read_text().splitlines())} lines)"
        for path in MODULES.values()
        if len(path.read_text().splitlines()) > MAX_MODULE_LINES
    ]
    assert not long_functions and not long_modules
