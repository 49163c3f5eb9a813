"""notebooks/colab.ipynb runs: its code cells, executed here on the CPU in TEST_MODE, so that it cannot rot."""

import ast
import importlib.metadata
import json
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from conftest import write_scene

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab.ipynb"
PARAMETERS = {"QUICK", "STEPS", "DATA", "RUNS", "HW", "REPORT", "WANDB", "RESUME", "REPO_URL", "GPU_CHECK", "TEST_MODE"}


def code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def code_cell(marker: str) -> str:
    """The one code cell that holds marker."""
    [cell] = [cell for cell in code_cells() if marker in cell]
    return cell


def setup(monkeypatch) -> dict:
    """The namespace after the parameter cell and the setup cell (sh, attempt, FAILED), run as the notebook runs."""
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    for number, cell in enumerate(code_cells()[:2], start=1):
        exec(compile(cell, f"{NOTEBOOK.name}, code cell {number}", "exec"), namespace)
    return namespace


def test_the_first_cell_holds_the_parameters_and_every_cell_is_plain_python():
    cells = code_cells()
    assigned = {
        target.id for node in ast.parse(cells[0]).body if isinstance(node, ast.Assign) for target in node.targets
    }
    assert assigned == PARAMETERS
    for cell in cells:
        ast.parse(cell)  # no shell escapes or magics, which only IPython runs
        assert not any(line.lstrip().startswith(("!", "%")) for line in cell.splitlines())


def test_the_notebook_goes_on_past_a_failed_experiment_quantizes_analyzes_and_shows_the_report(
    tmp_path, monkeypatch, capsys
):
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
    runs = out / "runs"
    # 22 steps: exp3, between exp1 and exp4 in TEST_MODE, refuses a --steps that is not a multiple of 4 (exit 2,
    # one error line), as an experiment this GPU cannot run is refused.
    namespace.update(
        QUICK=True,
        STEPS=22,
        DATA=str(scene),
        RUNS=str(runs),
        HW=str(out / "hw_eval"),
        REPORT=str(out / "report"),
        WANDB="disabled",
        TEST_MODE=True,
    )
    for number, cell in enumerate(cells, start=2):
        exec(compile(cell, f"{NOTEBOOK.name}, code cell {number}", "exec"), namespace)

    reason = namespace["FAILED"].get("exp3", "")
    assert set(namespace["FAILED"]) == {"exp3"} and reason.startswith("error: --steps 22")
    assert json.loads((runs / "failed.json").read_text()) == {"exp3": reason}
    for name in ("exp1", "exp4"):  # exp4 trained after exp3 failed
        assert json.loads((runs / name / "summary.json").read_text())["steps"] == 22
    assert (runs / "exp1" / "ptq.json").is_file() and (out / "report" / "analyses.json").is_file()
    markdown = (out / "report" / "README.md").read_text()
    assert shown[0] == ("markdown", markdown) and "exp4" in markdown
    assert f"- exp3: {reason}\n" in markdown.split("## Missing experiments", 1)[1].split("\n## ", 1)[0]
    plots = sorted(str(p) for p in (out / "report").glob("*.png"))
    assert plots and [item[1] for item in shown[1:]] == plots and all(item[0] == "image" for item in shown[1:])
    assert capsys.readouterr().out.splitlines()[-3:-1] == ["Failed (the other steps ran):", f"  exp3: {reason}"]

    # RESUME, with the commands recorded, not run: the finished exp1 is kept, exp3 (no run directory) starts
    # afresh and succeeds, exp4 (as if stopped after a checkpoint) continues and is interrupted. failed.json,
    # written all the same, no longer holds exp3's earlier failure.
    (runs / "exp4" / "summary.json").unlink()
    commands = []

    def sh(*argv):
        commands.append([str(a) for a in argv])
        if argv[1] == "exp4.py":
            raise KeyboardInterrupt

    namespace.update(RESUME=True, sh=sh)
    with pytest.raises(KeyboardInterrupt):
        exec(compile(code_cell("EXPERIMENTS ="), "training cell", "exec"), namespace)
    assert [(command[1], command[-1]) for command in commands] == [("exp3.py", "--overwrite"), ("exp4.py", "--resume")]
    assert json.loads((runs / "failed.json").read_text()) == {}
    # Without a finished exp1 there is nothing to quantize.
    (runs / "exp1" / "summary.json").unlink()
    exec(compile(code_cell("ptq.py"), "ptq cell", "exec"), namespace)
    assert len(commands) == 2 and "ptq.py skipped: exp1 did not finish" in capsys.readouterr().out


def test_a_failed_command_gives_its_last_stderr_line_and_attempt_records_it(monkeypatch):
    namespace = setup(monkeypatch)
    fails = (
        "import sys; print('warning: not the reason', file=sys.stderr);"
        " print('error: the reason', file=sys.stderr, flush=True); print('stdout after it'); sys.exit(2)"
    )
    with pytest.raises(namespace["Failed"]) as failure:
        namespace["sh"](sys.executable, "-c", fails)
    assert failure.value.reason == "error: the reason"
    assert namespace["attempt"]("a step", sys.executable, "-c", fails) is False
    assert namespace["FAILED"] == {"a step": "error: the reason"}
    assert namespace["attempt"]("a step", sys.executable, "-c", "pass") is True and namespace["FAILED"] == {}


# A command that stops as an experiment does on SIGINT: it says so, then takes a while to save its checkpoint and
# exits with 130; its output ends before the checkpoint is saved, which only waiting for its exit then sees.
# Without a SIGINT it ends after 10 s, with no checkpoint.
STOPS_ON_SIGINT = """
import os, signal, sys, time
from pathlib import Path

def stop(signum, frame):
    print("stopping", flush=True)
    os.close(1), os.close(2)
    time.sleep(0.5)
    Path(sys.argv[1]).write_text(str(os.getpid()))
    os._exit(130)

signal.signal(signal.SIGINT, stop)
Path(sys.argv[2]).write_text("")
for step in range(2000):  # 100 s: far longer than a loaded machine takes to send the interrupt
    print("step", step, flush=True)
    time.sleep(0.05)
"""


def test_interrupting_a_cell_stops_the_command_with_sigint_waits_for_it_and_stops_the_notebook(
    tmp_path, monkeypatch, capsys, request
):
    namespace = setup(monkeypatch)
    # Ctrl-C raises KeyboardInterrupt in a notebook's kernel: Python's own handler, whatever a test before set.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    checkpoint, started = tmp_path / "checkpoint", tmp_path / "started"

    def interrupt():  # what Jupyter's interrupt does to the kernel, once the command handles SIGINT
        while not started.exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        namespace["sh"](sys.executable, "-c", STOPS_ON_SIGINT, checkpoint, started)
    pid = int(checkpoint.read_text())  # saved before sh gave the interrupt back
    assert "stopping" in capsys.readouterr().out.splitlines()  # what it said after the interrupt is shown
    with pytest.raises(ProcessLookupError):  # ended and reaped, not left running
        os.kill(pid, 0)


@pytest.mark.parametrize(
    "after, line",
    [
        (
            {"numpy": "2.1.0"},
            "pip replaced numpy 2.0.2 -> 2.1.0: restart the runtime (Runtime -> Restart session),"
            " then run the cells again",
        ),
        (
            {"torch": "2.6.0"},
            "pip replaced torch 2.5.1 -> 2.6.0: restart the runtime (Runtime -> Restart session),"
            " then run the cells again",
        ),
        ({}, None),
    ],
)
def test_the_install_cell_says_to_restart_when_pip_replaced_numpy_or_torch(monkeypatch, capsys, after, line):
    namespace = setup(monkeypatch)
    versions = {"numpy": "2.0.2", "torch": "2.5.1"}
    monkeypatch.setattr(importlib.metadata, "version", lambda package: versions[package])

    def sh(*argv):  # the installs, faked: pip replaces the versions in `after`
        if "pip" in argv:
            versions.update(after)

    namespace.update(TEST_MODE=False, sh=sh)
    exec(compile(code_cell("pip install"), "install cell", "exec"), namespace)
    assert [text for text in capsys.readouterr().out.splitlines() if "restart" in text] == ([line] if line else [])
