"""notebooks/colab.ipynb runs: its code cells, executed here on the CPU in TEST_MODE, so that it cannot rot."""

import ast
import json
import sys
import types
from pathlib import Path

from conftest import write_scene

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab.ipynb"
PARAMETERS = {"QUICK", "STEPS", "DATA", "RUNS", "HW", "REPORT", "WANDB", "REPO_URL", "GPU_CHECK", "TEST_MODE"}


def code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def test_the_first_cell_holds_the_parameters_and_every_cell_is_plain_python():
    cells = code_cells()
    assigned = {target.id for node in ast.parse(cells[0]).body if isinstance(node, ast.Assign)
                for target in node.targets}
    assert assigned == PARAMETERS
    for cell in cells:
        ast.parse(cell)  # no shell escapes or magics, which only IPython runs
        assert not any(line.lstrip().startswith(("!", "%")) for line in cell.splitlines())


def test_the_notebook_trains_quantizes_analyzes_and_shows_the_report(tmp_path, monkeypatch):
    scene = write_scene(tmp_path / "scene.npz", n=8, size=16)
    shown = []
    display = types.ModuleType("IPython.display")
    display.display = shown.append
    display.Markdown = lambda text: ("markdown", text)
    display.Image = lambda filename: ("image", filename)
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    monkeypatch.chdir(REPO)

    parameters, *cells = code_cells()
    namespace: dict = {}
    exec(compile(parameters, "parameters", "exec"), namespace)
    out = tmp_path / "nb"
    namespace.update(QUICK=True, STEPS=20, DATA=str(scene), RUNS=str(out / "runs"), HW=str(out / "hw_eval"),
                     REPORT=str(out / "report"), WANDB="disabled", TEST_MODE=True)
    for number, cell in enumerate(cells, start=2):
        exec(compile(cell, f"{NOTEBOOK.name}, code cell {number}", "exec"), namespace)

    for name in ("exp1", "exp4"):
        assert json.loads((out / "runs" / name / "summary.json").read_text())["steps"] == 20
    assert (out / "runs" / "exp1" / "ptq.json").is_file() and (out / "report" / "analyses.json").is_file()
    markdown = (out / "report" / "README.md").read_text()
    assert shown[0] == ("markdown", markdown) and "exp4" in markdown
    plots = sorted(str(p) for p in (out / "report").glob("*.png"))
    assert plots and [item[1] for item in shown[1:]] == plots and all(item[0] == "image" for item in shown[1:])
