import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

import report

HW_COLUMNS = ["run", "experiment", "arch", "precision", "energy_per_frame_j", "latency_per_frame_s", "edp_j_s",
              "energy_dram_j", "energy_global_buffer_j", "energy_scratchpad_j", "energy_mac_j", "energy_other_j",
              "macs_per_frame", "zero_gating_saving_frac"]
LAYERS = ["coarse.layers.0", "coarse.layers.1", "coarse.output_head"]
REPO = Path(__file__).resolve().parents[1]


def write_run(runs_dir: Path, name: str, precision: str = "fp32", model: str = "nerf", world_size: int = 1,
              psnr: float = 20.0, samples_per_s: int = 250000, compiled: bool | None = False,
              experiment: str | None = None, seed: int = 0) -> Path:
    """A finished run directory as train.run writes it, with made-up numbers and 8x8 renders of test views 8 and 9."""
    run_dir = runs_dir / name
    (run_dir / "renders").mkdir(parents=True)
    summary = {
        "experiment": experiment or name, "seed": seed, "model": model, "precision": precision, "world_size": world_size,
        "global_batch_rays": 256, "steps": 20, "wall_s": 12.5, "train_s": 10.0, "train_samples_per_s": samples_per_s,
        "peak_mem_bytes": 1_400_000_000, "psnr_test": psnr, "ssim_test": 0.8, "psnr_test_per_view": [psnr, psnr],
        "params": 110344, "weight_bits": 1.58 if model == "bitnerf" else 32, "checkpoint_bytes": 1_300_000,
        "model_bytes": 52_000 if model == "bitnerf" else 448_000, "scene": "builtin", "device": "cpu",
        "torch_version": "2.5.0", **({} if compiled is None else {"compiled": compiled}),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "wall_s", "loss", "psnr_train", "grad_norm", "lr", "samples_per_s", "psnr_test"])
        writer.writerow([10, 5.0, 0.02, 17.0, 0.1, 1e-3, 250000, psnr - 3.0])
        writer.writerow([20, 9.0, 0.01, 19.0, 0.1, 5e-4, 250000, ""])
    layers = [{"name": n, "in_features": 8, "out_features": 8, "weight_bits": 32, "input_bits": 32, "output_bits": 32,
               "input_sparsity": 0.5, "samples_per_frame": 1000} for n in LAYERS]
    (run_dir / "layers.json").write_text(json.dumps({"samples_per_frame": 1000, "layers": layers}))
    rng = np.random.default_rng(0)
    for view in (8, 9):
        for kind in ("rgb", "gt", "depth"):
            iio.imwrite(run_dir / "renders" / f"{kind}_{view:03d}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return run_dir


def write_hw_results(hw_dir: Path, runs: list[str]) -> None:
    hw_dir.mkdir()
    with open(hw_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HW_COLUMNS)
        writer.writeheader()
        for arch, energy in (("eyeriss", 56.0), ("tpu_v4i", 5.0)):
            for run in runs:
                writer.writerow({"run": run, "experiment": run, "arch": arch, "precision": "fp32",
                                 "energy_per_frame_j": energy, "latency_per_frame_s": 0.012, "edp_j_s": energy * 0.012,
                                 "energy_dram_j": 0.4 * energy, "energy_global_buffer_j": 0.2 * energy,
                                 "energy_scratchpad_j": 0.2 * energy, "energy_mac_j": 0.15 * energy,
                                 "energy_other_j": 0.05 * energy, "macs_per_frame": 1e12,
                                 "zero_gating_saving_frac": 0.1})


@pytest.fixture
def runs(tmp_path) -> Path:
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, "exp4", precision="ternary-int8", model="bitnerf", psnr=19.0, samples_per_s=100000)
    write_run(runs_dir, "exp1")
    write_run(runs_dir, "exp2", precision="bf16-amp", samples_per_s=500000)
    (runs_dir / "unfinished").mkdir()  # no summary.json: not a run
    return runs_dir


def results_table(readme: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first Markdown table after '## Results'."""
    section = readme.split("## Results", 1)[1]
    lines = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def assert_images_of(readme: str, out: Path, expected: set[str]) -> None:
    """Every image the README shows is a valid PNG in out, and they are the expected ones."""
    shown = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme))
    assert shown == expected
    for name in shown:
        image = iio.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


def test_report_has_a_row_per_experiment_with_every_column_filled(runs, tmp_path):
    write_hw_results(tmp_path / "hw", ["exp1", "exp2", "exp4"])
    out = tmp_path / "report"
    report.main(["--runs", str(runs), "--hw", str(tmp_path / "hw"), "--out", str(out)])
    readme = (out / "README.md").read_text()
    header, rows = results_table(readme)
    assert [row[0] for row in rows] == ["exp1", "exp2", "exp4"]
    assert header[:3] == ["experiment", "precision", "world size"]
    assert {"eyeriss energy/frame", "eyeriss latency/frame", "tpu_v4i energy/frame",
            "tpu_v4i latency/frame"} <= set(header)
    assert all(len(row) == len(header) and all(cell and cell != "n/a" for cell in row) for row in rows)
    exp4 = dict(zip(header, rows[2]))
    assert exp4["precision"] == "ternary-int8" and exp4["weight bits"] == "1.58" and exp4["model size"] == "52 kB"
    assert exp4["test PSNR (dB)"] == "19.00" and exp4["eyeriss energy/frame"] == "56 J"
    assert exp4["tpu_v4i latency/frame"] == "12 ms" and exp4["peak memory"] == "1.4 GB"
    assert_images_of(readme, out, {"psnr.png", "pareto.png", "renders.png", "energy.png"})
    assert "Post-training quantization" not in readme
    # No analyses.json: the report says how to compute the analyses, and computes nothing itself.
    assert f"Not computed: run `python analyze.py --runs {runs} --out {out}`" in readme
    assert not (out / "analyses.json").exists()


def test_throughput_is_compared_only_between_runs_with_the_same_compile_setting(runs, tmp_path):
    write_run(runs, "exp3", precision="bf16-amp", samples_per_s=1_000_000, compiled=True)
    write_run(runs, "exp5", compiled=None)  # a summary from before the record
    out = tmp_path / "report"
    report.main(["--runs", str(runs), "--hw", str(tmp_path / "no_hw"), "--out", str(out)])
    header, rows = results_table((out / "README.md").read_text())
    cells = {row[0]: dict(zip(header, row)) for row in rows}
    assert {name: (cells[name]["compiled"], cells[name]["samples/s vs exp1"]) for name in cells} == {
        "exp1": ("no", "1.00×"), "exp2": ("no", "2.00×"), "exp4": ("no", "0.40×"),
        "exp3": ("yes", "not compared (compiled: yes, exp1 no)"),
        "exp5": ("unknown", "not compared (compiled: unknown, exp1 no)")}


def test_missing_hardware_results_are_na_with_a_note(runs, tmp_path):
    out = tmp_path / "report"
    report.main(["--runs", str(runs), "--hw", str(tmp_path / "no_hw"), "--out", str(out)])
    readme = (out / "README.md").read_text()
    header, rows = results_table(readme)
    assert header[-2:] == ["energy/frame", "latency/frame"]
    assert all(row[-2:] == ["n/a", "n/a"] and all(row[:-2]) for row in rows)
    assert f"no hardware results at `{tmp_path / 'no_hw' / 'results.csv'}`" in readme
    assert_images_of(readme, out, {"psnr.png", "pareto.png", "renders.png"})


def test_ptq_results_and_stored_analyses_are_rendered(runs, tmp_path):
    (runs / "exp1" / "ptq.json").write_text(json.dumps([
        {"variant": v, "weight_bits": bits, "model_bytes": 448_000 * bits // 32, "psnr_test": 20.0 - bits / 100,
         "ssim_test": 0.8, "eval_s": 1.0} for v, bits in (("fp32", 32), ("fp16", 16), ("int8-weight", 8))]))
    out = tmp_path / "report"
    out.mkdir()
    layers = [{"name": n, "input_sparsity": 0.5} for n in LAYERS]
    weights = [{"name": n, "near_zero": 0.01} for n in LAYERS]
    passes = {"coarse": {"samples_per_ray": 16, "skippable": 0.8, "empty_space": 0.7, "behind_surface": 0.1},
              "fine": {"samples_per_ray": 48, "skippable": 0.6, "empty_space": 0.4, "behind_surface": 0.2}}
    timing = {"view": 8, "pixels": 64, "device": "cpu", "total_s": 1.0,
              "stages_s": {"ray generation": 0.01, "sampling": 0.04, "encoding": 0.1, "MLP": 0.6, "compositing": 0.2,
                           "other": 0.05}}
    runs_analysed = ("exp1", "exp2", "exp4", "deleted_run")
    # Not analyze.py's values, and the stages in reverse: the report must take them from the file.
    stages = ["other", "compositing", "MLP", "encoding", "sampling", "ray generation"]
    definitions = {"near_zero_weight": 0.05, "skippable_weight": 0.01, "pixel_stride": 4, "time_stages": stages}
    (out / "analyses.json").write_text(json.dumps({
        "definitions": definitions,
        "activation_sparsity": {r: layers for r in runs_analysed},
        "weight_sparsity": {r: weights for r in runs_analysed},
        "render_weight_sparsity": {r: {"views": [8], "passes": passes} for r in runs_analysed},
        "time_breakdown": {r: timing for r in runs_analysed},
    }))
    report.main(["--runs", str(runs), "--hw", str(tmp_path / "no_hw"), "--out", str(out)])
    readme = (out / "README.md").read_text()
    ptq = readme.split("## Post-training quantization vs BitNet training", 1)[1]
    assert "| exp1, int8-weight | after training (ptq.py) | 8 | 112 kB | 19.92 | 0.800 |" in ptq
    assert "| exp4 | during training (BitNet b1.58) | 1.58 | 52 kB | 19.00 | 0.800 |" in ptq
    assert "| exp2 | fine | 48 | 60.0% | 40.0% | 20.0% |" in readme
    assert "| experiment | pass | samples per ray | weight < 0.01 (skippable) |" in readme
    assert "below 0.01 change no pixel" in readme and "one pixel of every 4×4 block" in readme
    assert "|w| ≤ 0.05·max|w| of the layer" in readme
    assert ("| experiment | render (1 view) | other | compositing | MLP | encoding | sampling | ray generation |"
            in readme)
    assert ("| exp1 | 1000 ms | 50 ms (5.0%) | 200 ms (20.0%) | 600 ms (60.0%) | 100 ms (10.0%) | 40 ms (4.0%) "
            "| 10 ms (1.0%) |") in readme
    assert "| `coarse.layers.1` | in 50.0% · w 1.0% | in 50.0% · w 1.0% | in 50.0% · w 1.0% |" in readme
    assert f"then `python report.py --runs {runs} --hw {tmp_path / 'no_hw'} --out {out}`." in readme
    assert "deleted_run" not in readme  # only the runs in --runs are reported
    assert "definitions" not in readme  # the thresholds, not an analysis
    assert_images_of(readme, out, {"psnr.png", "pareto.png", "renders.png", "sparsity.png", "time_breakdown.png"})


def test_report_shows_what_analyze_wrote_for_trained_runs(trained_runs, tmp_path):
    import analyze

    out = tmp_path / "report"
    analyze.main(["--runs", str(trained_runs), "--out", str(out), "--device", "cpu"])
    report.main(["--runs", str(trained_runs), "--hw", str(tmp_path / "no_hw"), "--out", str(out)])
    analyses = json.loads((out / "analyses.json").read_text())
    assert set(analyses) == {"definitions", "activation_sparsity", "weight_sparsity", "render_weight_sparsity",
                             "time_breakdown"}
    assert all(set(by_run) == {"bitnerf", "nerf"} for name, by_run in analyses.items() if name != "definitions")
    readme = (out / "README.md").read_text()
    assert "Not computed" not in readme and "| bitnerf | fine | 16 |" in readme
    assert f"`python analyze.py --runs {trained_runs} --out {out} --only time_breakdown`" in readme
    assert "ternary" in readme.split("### Sparsity per layer", 1)[1]
    assert_images_of(readme, out, {"psnr.png", "pareto.png", "renders.png", "sparsity.png", "time_breakdown.png"})


@pytest.mark.parametrize("problem", ["no runs folder", "no finished runs", "hw results without columns",
                                     "analyses without definitions", "a removed option", "failed.json not an object"])
def test_bad_input_is_one_line_and_exit_code_2(runs, tmp_path, capsys, problem):
    args = {"no runs folder": ["--runs", str(tmp_path / "missing")],
            "no finished runs": ["--runs", str(runs / "unfinished")],
            "hw results without columns": ["--runs", str(runs), "--hw", str(tmp_path / "hw")],
            "analyses without definitions": ["--runs", str(runs)],
            "a removed option": ["--runs", str(runs), "--skip-analyses"],
            "failed.json not an object": ["--runs", str(runs)]}[problem]
    (tmp_path / "hw").mkdir()
    (tmp_path / "hw" / "results.csv").write_text("run,arch\nexp1,eyeriss\n")
    if problem == "analyses without definitions":
        (tmp_path / "report").mkdir()
        (tmp_path / "report" / "analyses.json").write_text(json.dumps({"time_breakdown": {}}))  # an older analyze.py's
    if problem == "failed.json not an object":
        (runs / report.FAILED).write_text(json.dumps(["exp3"]))
    with pytest.raises(SystemExit) as exit_info:
        report.main([*args, "--out", str(tmp_path / "report")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    if problem == "analyses without definitions":
        assert f"rerun `python analyze.py --runs {runs} --out {tmp_path / 'report'}`" in lines[0]
    assert not (tmp_path / "report" / "README.md").exists()


def test_report_starts_without_torch():
    # A fresh interpreter: this one has loaded torch already (conftest).
    check = "import report, sys; assert 'torch' not in sys.modules, 'importing report loaded torch'"
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_skipping_section_shows_measured_fractions_and_energy_with_and_without_the_grid(tmp_path):
    runs_dir, hw_dir = tmp_path / "runs", tmp_path / "hw"
    write_run(runs_dir, "exp1")
    grid = write_run(runs_dir, "exp4", precision="ternary-int8", model="bitnerf")
    summary = json.loads((grid / "summary.json").read_text())
    fractions = {"skipped_train_coarse": 0.5, "skipped_train_fine": 0.6, "skipped_render_coarse": 0.7,
                 "skipped_render_fine": 0.8}
    (grid / "summary.json").write_text(json.dumps({**summary, **fractions}))
    write_hw_results(hw_dir, ["exp1", "exp4"])
    with open(hw_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    with open(hw_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*HW_COLUMNS, "energy_without_grid_j"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "energy_without_grid_j": 3 * float(row["energy_per_frame_j"])})
    readme = report.write_report(runs_dir, hw_dir, tmp_path / "out", "report.py").read_text()
    section = readme.split("## Empty-space skipping", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| exp") and "experiment" not in line]
    assert table == ["| exp4 | 50.0% | 60.0% | 70.0% | 80.0% | 56 J | 168 J (3.00×) | 5 J | 15 J (3.00×) |"]
    plain = [(runs_dir / "exp1", json.loads((runs_dir / "exp1" / "summary.json").read_text()))]
    assert report.skipping_section(plain, None) == [
        "No run kept an occupancy grid (`--occupancy-grid`): every sample reached the MLP."]


def test_si_prefixes():
    assert [report.si(v, u) for v, u in ((56.0, "J"), (0.0123, "J"), (1.4e9, "B"), (110344, ""), (0.0, "s"))] == \
        ["56 J", "12.3 mJ", "1.4 GB", "110 k", "0 s"]


def seeds_tables(readme: str) -> tuple[list[list[str]], list[list[str]], str]:
    """The rows of the interval table and of the differences against exp1, and the note after them."""
    section = readme.split("## Seeds and intervals", 1)[1].split("\n## ", 1)[0]
    tables = [[[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()][2:]
              for block in section.strip().split("\n\n") if block.startswith("|")]
    return tables[0], tables[1], section.strip().split("\n\n")[-1]


def test_the_report_gives_intervals_over_seeds_and_marks_differences_that_are_not_significant(tmp_path):
    runs_dir = tmp_path / "runs"
    # exp2 - exp1 by seed: +1, -1, +0.5 (covers zero); exp4 - exp1: -2, -2.1, -1.9 (does not).
    for seed, (exp1, exp2, exp4) in enumerate([(20.0, 21.0, 18.0), (22.0, 21.0, 19.9), (21.0, 21.5, 19.1)]):
        write_run(runs_dir, f"exp1-seed{seed}", psnr=exp1, experiment="exp1", seed=seed)
        write_run(runs_dir, f"exp2-seed{seed}", precision="bf16-amp", psnr=exp2, experiment="exp2", seed=seed)
        write_run(runs_dir, f"exp4-seed{seed}", precision="ternary-int8", model="bitnerf", psnr=exp4,
                  experiment="exp4", seed=seed)
    readme = report.write_report(runs_dir, tmp_path / "hw", tmp_path / "report", "report.py").read_text()
    intervals, differences, note = seeds_tables(readme)
    half_width = 4.302653 * 1.0 / 3 ** 0.5  # exp1's PSNR 20, 22, 21: sd 1, t(0.975, 2)
    assert intervals[0][:3] == ["exp1", "0, 1, 2", f"21.00 ± {half_width:.2f}"]
    by_experiment = {row[0]: row for row in differences}
    assert by_experiment["exp2"][1].endswith("(not significant)") and by_experiment["exp2"][1].startswith("0.17 ± ")
    assert by_experiment["exp4"][1] == "-2.00 ± 0.25"  # differences -2, -2.1, -1.9: sd 0.1
    assert "95% t interval" in note
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 0


def test_with_one_seed_the_report_says_its_differences_carry_no_interval(runs, tmp_path):
    readme = report.write_report(runs, tmp_path / "hw", tmp_path / "report", "report.py").read_text()
    _, differences, note = seeds_tables(readme)
    assert {row[0]: row[1] for row in differences}["exp4"] == "-1.00"
    assert note.startswith("One seed per experiment: these differences carry no interval")


def test_the_difference_table_compares_throughput_only_between_runs_with_the_same_compile_setting(tmp_path):
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, "exp1", samples_per_s=100_000)
    write_run(runs_dir, "exp2", precision="bf16-amp", samples_per_s=150_000)
    write_run(runs_dir, "exp4", precision="ternary-int8", model="bitnerf", samples_per_s=300_000, compiled=True)
    readme = report.write_report(runs_dir, tmp_path / "hw", tmp_path / "report", "report.py").read_text()
    _, differences, _ = seeds_tables(readme)
    samples_per_s = {row[0]: row[3] for row in differences}
    assert samples_per_s == {"exp2": "+50000", "exp4": "n/a (compiled differs)"}


def missing_section(readme: str) -> list[str]:
    """The items of the report's missing experiments, or [] without that section."""
    if "## Missing experiments" not in readme:
        return []
    section = readme.split("## Missing experiments", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("- ")]


def test_the_report_lists_each_missing_experiment_with_why(tmp_path):
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, "exp1")
    (runs_dir / "exp2").mkdir()
    (runs_dir / "exp2" / "checkpoint.pt").write_bytes(b"")  # stopped after a checkpoint
    (runs_dir / "exp3").mkdir()  # refused after its directory was made: the recorded line wins
    (runs_dir / "exp4-seed1").mkdir()  # a seed's run, stopped before its first checkpoint
    write_run(runs_dir, "exp5-seed0", experiment="exp5", seed=0)  # finished under a seed's name
    (runs_dir / "exp5-seed1").mkdir()
    (runs_dir / "exp66").mkdir()  # another experiment's name, not exp6's run
    refused = "error: --device cuda: this GPU (Tesla T4) cannot run exp3"
    (runs_dir / report.FAILED).write_text(json.dumps({"exp3": refused, "exp1": "error: an earlier failure"}))
    readme = report.write_report(runs_dir, tmp_path / "hw", tmp_path / "report", "report.py").read_text()
    assert missing_section(readme) == [
        "- exp2: run directory exp2 without summary.json (the run did not finish; --resume continues it)",
        f"- exp3: {refused}",
        "- exp4: run directory exp4-seed1 without summary.json or a checkpoint (the run stopped before its first"
        " one; --overwrite trains it again)",
        "- exp6: no run directory"]
    assert readme.index("## Missing experiments") < readme.index("## Results")
    assert [row[0] for row in results_table(readme)[1]] == ["exp1", "exp5"]


def test_a_complete_suite_has_no_missing_experiments_section(tmp_path):
    runs_dir = tmp_path / "runs"
    for name in ("exp1", "exp2", "exp3", "exp4", "exp5", "exp6"):
        write_run(runs_dir, name)
    (runs_dir / report.FAILED).write_text(json.dumps({"exp2": "error: a failure since trained again"}))
    readme = report.write_report(runs_dir, tmp_path / "hw", tmp_path / "report", "report.py").read_text()
    assert "Missing experiments" not in readme and "a failure since" not in readme
