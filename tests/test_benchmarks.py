"""The measurement scripts under benchmarks/ run against today's code: each runs here in its --tiny mode (a tiny
model, a step or two), so that a renamed or moved function fails a test instead of leaving a broken script; and
the docs keep no measurement as a Python snippet, only the command line of its script (docs/history/ excepted:
its pages quote the code of their commits)."""

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import write_scene

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
HELPERS = {"common"}  # modules the scripts share, not scripts
# Pages that may still quote a `python -c` one-liner that measures something, until it becomes a script.
UNCONVERTED_ONE_LINERS: set[str] = set()


def script(name: str):
    """benchmarks/<name>.py imported from its path, as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> str:
    """A small random scene (6 views of 16x16): the scripts' --tiny runs need one that loads in no time."""
    return str(write_scene(tmp_path_factory.mktemp("scene") / "scene.npz", n=6, size=16))


@pytest.fixture(autouse=True)
def same_threads():
    """A script may change torch's thread count; the tests after it keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_every_script_runs_here():
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")} - HELPERS
    tested = {name.removeprefix("test_").split("_runs")[0] for name in globals() if name.endswith("_runs_tiny")}
    assert scripts == tested, f"scripts without a --tiny test here: {sorted(scripts - tested)}"


def test_fused_adamw_runs_tiny(scene, capsys):
    result = script("fused_adamw").main(["--tiny", "--data", scene])
    assert set(result["max_difference"]) == {"exp1", "exp4"}
    assert all(difference < 1e-3 for difference in result["max_difference"].values())
    assert len(result["seconds"]) == 2 * 3 + 3  # exp1 and exp2 steps with each AdamW, and AdamW.step alone
    assert "AdamW.step alone, fused" in capsys.readouterr().out


def test_seed_profile_runs_tiny(scene, capsys):
    result = script("seed_profile").main(["--tiny", "--data", scene, "--rows", "3"])
    ours, seed = (value for key, value in result.items() if key != "seed_worker_ms")
    assert ours["user_us"] > 0 and seed["user_us"] > 0 and "aten::" in ours["table"]
    assert "seed worker" in capsys.readouterr().out


def test_memory_per_ray_runs_tiny(scene):
    result = script("memory_per_ray").main(["--tiny", "--data", scene])
    assert list(result) == ["exp1:fp32"] and result["exp1:fp32"]["counted"] > 0  # growth: noise at this size


def test_compile_speed_runs_tiny(scene, monkeypatch):
    compiled = []
    # Compiling costs half a minute: the test checks the script's calls, not what compiling buys.
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compiled.append(kwargs))
    result = script("compile_speed").main(["exp4", "--tiny", "--data", scene])
    assert compiled == [{"fullgraph": True}] * 2 and set(result["exp4"]) == {"eager_s", "compiled_s", "compile_s"}


def test_micro_batches_runs_tiny(scene, monkeypatch, capsys):
    module = script("micro_batches")
    from dataset import load_scene

    monkeypatch.setattr(module, "load_scene", lambda path: load_scene(scene))  # it has no --data: the built-in scene
    module.main(["exp1", "--quick", "--batch-rays", "16", "--steps", "1", "--rounds", "1"])
    assert "4 micro-batches of 4 rays" in capsys.readouterr().out


def test_mac_energies_runs_tiny(capsys):
    pytest.importorskip("accelforge")
    from accel import architectures

    result = script("mac_energies").main(["--tiny"])
    [(design, energies)] = result.items()
    assert design == architectures.CIM[0].name  # --tiny: the first compute-in-memory design alone
    # Fewer weight bits to slice: less energy. A MAC of a compute-in-memory array costs a fraction of a pJ to a
    # few pJ, so a slip of units (per sample instead of per MAC, joules instead of pJ) is out of bounds.
    assert 0.01 < energies["ternary"] < energies["int8"] < 10, design
    out = capsys.readouterr().out
    # The digital table: a row per shipped architecture, a column per number format.
    assert "| architecture | node | clock |" in out and all(
        f" {f} |" in out for f in ("fp32", "fp8", "int8", "ternary")
    )
    assert all(f"\n| {arch.name} | " in out for arch in architectures.SHIPPED)
    # The design's row prints the energies returned, and their ratio.
    [row] = [line.split() for line in out.splitlines() if line.startswith(design + " ")]
    assert row == [
        design,
        f"{architectures.CIM[0].tech_node_nm:g}",
        f"{energies['int8']:.4f}",
        f"{energies['ternary']:.4f}",
        f"{energies['ternary'] / energies['int8']:.2f}",
    ]


def fake_run(root: Path, loss: str = "0.5", wall_s: float = 1.0) -> Path:
    """A run folder with the files same_results.py compares."""
    run = root / "exp1"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"psnr_test": 24.0, "wall_s": wall_s, "run_id": str(root)}))
    (run / "layers.json").write_text("[]")
    (run / "model.pt").write_bytes(b"weights")
    (run / "metrics.csv").write_text(f"step,loss,psnr_test\n100,{loss},20.0\n")
    return root


def test_same_results_runs_tiny(tmp_path, capsys):
    main = script("same_results").main
    base = fake_run(tmp_path / "base")
    assert main([str(base), str(fake_run(tmp_path / "later", wall_s=2.0)), "exp1"])  # timings are not results
    assert not main([str(base), str(fake_run(tmp_path / "other", loss="0.6")), "exp1"])
    assert "metrics.csv losses and test PSNRs equal: False" in capsys.readouterr().out


def snippets(text: str, one_liners: bool = True) -> list[str]:
    """The measurement snippets of a page: ```python blocks (but ```python example), `python - <<` heredocs,
    and (one_liners) `python -c "..."` one-liners."""
    blocks = re.findall(r"^```python(?! example)\b.*?^```", text, re.MULTILINE | re.DOTALL)
    return [
        *blocks,
        *re.findall(r"python3? - <<.*", text),
        *(re.findall(r"python3? -c ['\"].*", text) if one_liners else []),
    ]


def test_docs_quote_no_measurement_code_but_the_scripts_command():
    found = {
        page.name: snippets(page.read_text(), page.name not in UNCONVERTED_ONE_LINERS)
        for page in (ROOT / "docs").glob("*.md")
    }  # not docs/history/: it quotes the code of its commits
    assert not {name: code for name, code in found.items() if code}, (
        "a measurement belongs in benchmarks/ as a script, with its command line in the docs (or mark an"
        " illustration ```python example)"
    )
    assert snippets("```python\nimport torch\n```\n```python example\nx = 1\n```\npython -c 'print(1)'") == [
        "```python\nimport torch\n```",
        "python -c 'print(1)'",
    ]
    assert snippets("python - <<'PY'\npython -c 'print(1)'", one_liners=False) == ["python - <<'PY'"]


def test_each_script_says_which_page_holds_its_result():
    for path in BENCHMARKS.glob("*.py"):
        if path.stem not in HELPERS | {"micro_batches"}:  # micro_batches.py predates the rule; performance.md has it
            assert re.search(r"docs/[\w/.-]+\.md", ast.get_docstring(ast.parse(path.read_text()))), path.name
