import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

import configs
import report
from accel.results import si
from reporting.runs import FAILED
from reporting.skipping import skipping_section

LAYERS = ["coarse.layers.0", "coarse.layers.1", "coarse.output_head"]
REPO = Path(__file__).resolve().parents[1]


def write_run(
    runs_dir: Path,
    name: str,
    precision: str = "fp32",
    model: str = "nerf",
    world_size: int = 1,
    psnr: float = 20.0,
    samples_per_s: int = 250000,
    compiled: bool | None = False,
    experiment: str | None = None,
    seed: int = 0,
    with_run_id: bool = True,
    input_sparsity: float = 0.5,
) -> Path:
    """A finished run directory as train.run writes it, with made-up numbers and 8x8 renders of test views 8 and 9;
    its run_id is its folder and name (with_run_id False: a summary from before run_id was recorded)."""
    run_dir = runs_dir / name
    (run_dir / "renders").mkdir(parents=True)
    summary = {
        "experiment": experiment or name,
        "seed": seed,
        "model": model,
        "precision": precision,
        "world_size": world_size,
        "global_batch_rays": 256,
        "steps": 20,
        "wall_s": 12.5,
        "train_s": 10.0,
        "train_samples_per_s": samples_per_s,
        "peak_mem_bytes": 1_400_000_000,
        "psnr_test": psnr,
        "ssim_test": 0.8,
        "psnr_test_per_view": [psnr, psnr],
        "params": 110344,
        "weight_bits": 1.58 if model == "bitnerf" else 32,
        "checkpoint_bytes": 1_300_000,
        "model_bytes": 52_000 if model == "bitnerf" else 448_000,
        "scene": "builtin",
        "device": "cpu",
        "torch_version": "2.5.0",
        **({} if compiled is None else {"compiled": compiled}),
        **({"run_id": f"{runs_dir.name}/{name}"} if with_run_id else {}),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "wall_s", "loss", "psnr_train", "grad_norm", "lr", "samples_per_s", "psnr_test"])
        writer.writerow([10, 5.0, 0.02, 17.0, 0.1, 1e-3, 250000, psnr - 3.0])
        writer.writerow([20, 9.0, 0.01, 19.0, 0.1, 5e-4, 250000, ""])
    layers = [
        {
            "name": n,
            "in_features": 8,
            "out_features": 8,
            "weight_bits": 32,
            "input_bits": 32,
            "output_bits": 32,
            "input_sparsity": input_sparsity,
            "samples_per_frame": 1000,
        }
        for n in LAYERS
    ]
    (run_dir / "layers.json").write_text(json.dumps({"samples_per_frame": 1000, "layers": layers}))
    rng = np.random.default_rng(0)
    for view in (8, 9):
        for kind in ("rgb", "gt", "depth"):
            iio.imwrite(run_dir / "renders" / f"{kind}_{view:03d}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return run_dir


# Dense energy (J) and latency (s) per frame by architecture; the gating and skipping designs cost a share of it,
# and each component a share of that.
HW_ENERGY, HW_LATENCY = {"eyeriss": 56.0, "tpu_v4i": 5.0}, 0.012
DESIGN_SHARE = {"dense": 1.0, "gating": 0.8, "skipping": 0.5}
PART_SHARE = {"dram": 0.4, "global_buffer": 0.2, "scratchpad": 0.2, "mac": 0.15, "other": 0.05}
# The numbers of a suite that other runs must never show: "777" appears in every one of them as the report writes it.
FOREIGN_ENERGY, FOREIGN_LATENCY = {"eyeriss": 777.0, "tpu_v4i": 0.777}, 0.0777


def run_identity(run_dir: Path) -> dict:
    """What hw_eval.py ties a run's results to (the contract, written out here): summary.json's run_id (without one,
    layers.json's sha256) and the sha256 of the layers.json it costed."""
    layers_sha256 = hashlib.sha256((run_dir / "layers.json").read_bytes()).hexdigest()
    run_id = json.loads((run_dir / "summary.json").read_text()).get("run_id") or layers_sha256
    return {"run_id": run_id, "layers_sha256": layers_sha256}


def hw_rows(run_dir: Path, energy: dict = HW_ENERGY, latency: float = HW_LATENCY) -> list[dict]:
    """hw_eval.py's rows of one run: one per architecture and design."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = []
    for arch, dense in energy.items():
        for design, share in DESIGN_SHARE.items():
            joules = share * dense
            rows.append(
                {
                    "run": run_dir.name,
                    "experiment": summary["experiment"],
                    "arch": arch,
                    "design": design,
                    "precision": summary["precision"],
                    "energy_per_frame_j": joules,
                    "latency_per_frame_s": latency,
                    "edp_j_s": joules * latency,
                    **{f"energy_{part}_j": part_share * joules for part, part_share in PART_SHARE.items()},
                    "macs_per_frame": 1e12,
                    "zero_gating_saving_frac": 0.1,
                    "weight_density": 1.0,
                    "effectual_density": 0.5,
                    "joint_density_measured": "",
                    "energy_weights_dense_j": joules,
                    "weight_density_source": "measured",
                    **run_identity(run_dir),
                }
            )
    return rows


def write_hw_results(hw_dir: Path, rows_by_run: dict[Path, list[dict]]) -> None:
    """What hw_eval.py --out hw_dir writes for these runs: the aggregate results.csv, and into each run directory
    its own rows with the identity they were computed for."""
    rows = [row for run_rows in rows_by_run.values() for row in run_rows]
    hw_dir.mkdir(exist_ok=True)
    with open(hw_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for run_dir, run_rows in rows_by_run.items():
        (run_dir / "hw_eval.json").write_text(json.dumps({**run_identity(run_dir), "rows": run_rows}))


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
    write_hw_results(tmp_path / "hw", {runs / name: hw_rows(runs / name) for name in ("exp1", "exp2", "exp4")})
    out = tmp_path / "report"
    report.main(["--runs", str(runs), "--hw", str(tmp_path / "hw"), "--out", str(out)])
    readme = (out / "README.md").read_text()
    header, rows = results_table(readme)
    assert [row[0] for row in rows] == ["exp1", "exp2", "exp4"]
    assert header[:3] == ["experiment", "precision", "world size"]
    assert {"eyeriss energy/frame", "eyeriss latency/frame", "tpu_v4i energy/frame", "tpu_v4i latency/frame"} <= set(
        header
    )
    assert all(len(row) == len(header) and all(cell and cell != "n/a" for cell in row) for row in rows)
    exp4 = dict(zip(header, rows[2]))
    assert exp4["precision"] == "ternary-int8" and exp4["weight bits"] == "1.58" and exp4["model size"] == "52 kB"
    assert exp4["test PSNR (dB)"] == "19.00" and exp4["eyeriss energy/frame"] == "56 J"
    assert exp4["tpu_v4i latency/frame"] == "12 ms" and exp4["peak memory"] == "1.4 GB"
    assert_images_of(readme, out, {"psnr.png", "pareto.png", "renders.png", "energy.png", "designs.png"})
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
        "exp1": ("no", "1.00×"),
        "exp2": ("no", "2.00×"),
        "exp4": ("no", "0.40×"),
        "exp3": ("yes", "not compared (compiled: yes, exp1 no)"),
        "exp5": ("unknown", "not compared (compiled: unknown, exp1 no)"),
    }


def test_runs_without_hardware_results_are_not_evaluated_with_a_note(runs, tmp_path):
    out = tmp_path / "report"
    report.main(["--runs", str(runs), "--hw", str(tmp_path / "no_hw"), "--out", str(out)])
    readme = (out / "README.md").read_text()
    header, rows = results_table(readme)
    assert header[-2:] == ["energy/frame", "latency/frame"]
    assert all(row[-2:] == ["not evaluated", "not evaluated"] and all(row[:-2]) for row in rows)
    assert f"run `python hw_eval.py --runs {runs}`" in readme
    assert_images_of(readme, out, {"psnr.png", "pareto.png", "renders.png"})


# --- Accelerator results belong to their run -------------------------------------------------------------


def hardware_cells(readme: str) -> dict[str, list[str]]:
    """Each run's energy and latency cells in the results table."""
    header, rows = results_table(readme)
    columns = [i for i, title in enumerate(header) if title.endswith(("energy/frame", "latency/frame"))]
    return {row[0]: [row[i] for i in columns] for row in rows}


def test_a_report_of_other_runs_with_the_suite_s_names_shows_none_of_the_suite_s_numbers(tmp_path):
    # The suite in runs/, evaluated into hw/. Another scene's runs in other/ carry the same names: exp1 with the
    # very same layers.json but a run_id of its own and exp2 from before run_id with other layers, each holding
    # a copy of the suite's results of its name (copied folders), and exp4 with nothing.
    suite, other, hw = tmp_path / "runs", tmp_path / "other", tmp_path / "hw"
    for name in ("exp1", "exp2", "exp4"):
        write_run(suite, name)
    write_run(other, "exp1", psnr=25.0)
    write_run(other, "exp2", psnr=25.0, with_run_id=False, input_sparsity=0.3)
    write_run(other, "exp4", psnr=25.0)
    write_hw_results(
        hw, {suite / name: hw_rows(suite / name, FOREIGN_ENERGY, FOREIGN_LATENCY) for name in ("exp1", "exp2", "exp4")}
    )
    for name in ("exp1", "exp2"):
        shutil.copy(suite / name / "hw_eval.json", other / name / "hw_eval.json")
    out = tmp_path / "report"
    report.main(["--runs", str(other), "--hw", str(hw), "--out", str(out)])
    readme = (out / "README.md").read_text()
    assert "777" not in readme and "77.7" not in readme
    assert hardware_cells(readme) == {name: ["not evaluated"] * 2 for name in ("exp1", "exp2", "exp4")}
    assert_images_of(readme, out, {"psnr.png", "pareto.png", "renders.png"})


def test_results_of_an_older_layers_json_are_stale_and_a_run_without_results_is_not_evaluated(tmp_path):
    runs_dir, hw = tmp_path / "runs", tmp_path / "hw"
    write_run(runs_dir, "exp1")
    write_run(runs_dir, "exp2", precision="bf16-amp")
    write_run(runs_dir, "exp4", precision="ternary-int8", model="bitnerf")
    write_hw_results(
        hw,
        {
            runs_dir / "exp1": hw_rows(runs_dir / "exp1"),
            runs_dir / "exp4": hw_rows(runs_dir / "exp4", FOREIGN_ENERGY, FOREIGN_LATENCY),
        },
    )
    # After hw_eval.py ran: exp4 resumed for more steps (the same run_id, its layers.json measured again), and
    # exp1's directory moved (still the same run, with its own results); exp2 was never evaluated.
    layers = json.loads((runs_dir / "exp4" / "layers.json").read_text())
    layers["layers"][0]["input_sparsity"] = 0.25
    (runs_dir / "exp4" / "layers.json").write_text(json.dumps(layers))
    (runs_dir / "exp1").rename(runs_dir / "exp1-moved")
    out = tmp_path / "report"
    readme = report.write_report(runs_dir, hw, out, "report.py").read_text()
    assert "777" not in readme and "77.7" not in readme
    assert hardware_cells(readme) == {
        "exp1": ["56 J", "12 ms", "5 J", "12 ms"],
        "exp2": ["not evaluated"] * 4,
        "exp4": ["not evaluated"] * 4,
    }
    assert_images_of(readme, out, {"psnr.png", "pareto.png", "renders.png", "energy.png", "designs.png"})
    designs = readme.split("#### eyeriss", 1)[1]
    assert "| exp1 | fp32 | 1.000× | 0.800× | 0.500×" in designs and "| exp4 |" not in designs


def test_a_report_of_seed_runs_beside_a_suite_evaluated_under_the_experiment_names_writes_itself(tmp_path):
    suite, seeds, hw, out = tmp_path / "runs", tmp_path / "seeds", tmp_path / "hw", tmp_path / "report"
    seed_runs = [
        write_run(seeds, f"{name}-seed{seed}", experiment=name, seed=seed, psnr=20.0 + seed)
        for name in ("exp1", "exp2")
        for seed in (0, 1)
    ]
    write_hw_results(
        hw,
        {write_run(suite, name): hw_rows(suite / name, FOREIGN_ENERGY, FOREIGN_LATENCY) for name in ("exp1", "exp2")},
    )
    readme = report.write_report(seeds, hw, out, "report.py").read_text()
    assert "777" not in readme and "77.7" not in readme
    assert set(map(tuple, hardware_cells(readme).values())) == {("not evaluated", "not evaluated")}
    # Once hw_eval.py has costed the seeds themselves, their own numbers are shown, with intervals over the seeds.
    write_hw_results(tmp_path / "hw_seeds", {run_dir: hw_rows(run_dir) for run_dir in seed_runs})
    readme = report.write_report(seeds, hw, out, "report.py").read_text()
    assert set(map(tuple, hardware_cells(readme).values())) == {("56 J", "12 ms", "5 J", "12 ms")}
    intervals, _, _ = seeds_tables(readme)
    assert [row[-2:] for row in intervals] == [["56.000 ± 0.000", "5.000 ± 0.000"]] * 2
    assert_images_of(readme, out, {"psnr.png", "pareto.png", "renders.png", "energy.png", "designs.png"})


def test_ptq_results_and_stored_analyses_are_rendered(runs, tmp_path):
    (runs / "exp1" / "ptq.json").write_text(
        json.dumps(
            [
                {
                    "variant": v,
                    "weight_bits": bits,
                    "model_bytes": 448_000 * bits // 32,
                    "psnr_test": 20.0 - bits / 100,
                    "ssim_test": 0.8,
                    "eval_s": 1.0,
                }
                for v, bits in (("fp32", 32), ("fp16", 16), ("int8-weight", 8))
            ]
        )
    )
    out = tmp_path / "report"
    out.mkdir()
    layers = [{"name": n, "input_sparsity": 0.5} for n in LAYERS]
    weights = [{"name": n, "near_zero": 0.01} for n in LAYERS]
    passes = {
        "coarse": {"samples_per_ray": 16, "skippable": 0.8, "empty_space": 0.7, "behind_surface": 0.1},
        "fine": {"samples_per_ray": 48, "skippable": 0.6, "empty_space": 0.4, "behind_surface": 0.2},
    }
    timing = {
        "view": 8,
        "pixels": 64,
        "device": "cpu",
        "total_s": 1.0,
        "stages_s": {
            "ray generation": 0.01,
            "sampling": 0.04,
            "encoding": 0.1,
            "MLP": 0.6,
            "compositing": 0.2,
            "other": 0.05,
        },
    }
    runs_analysed = ("exp1", "exp2", "exp4", "deleted_run")
    # Not analyze.py's values, and the stages in reverse: the report must take them from the file.
    stages = ["other", "compositing", "MLP", "encoding", "sampling", "ray generation"]
    definitions = {"near_zero_weight": 0.05, "skippable_weight": 0.01, "pixel_stride": 4, "time_stages": stages}
    (out / "analyses.json").write_text(
        json.dumps(
            {
                "definitions": definitions,
                "activation_sparsity": {r: layers for r in runs_analysed},
                "weight_sparsity": {r: weights for r in runs_analysed},
                "render_weight_sparsity": {r: {"views": [8], "passes": passes} for r in runs_analysed},
                "time_breakdown": {r: timing for r in runs_analysed},
            }
        )
    )
    report.main(["--runs", str(runs), "--hw", str(tmp_path / "no_hw"), "--out", str(out)])
    readme = (out / "README.md").read_text()
    ptq = readme.split("## Post-training quantization vs BitNet training", 1)[1]
    assert "| exp1, int8-weight | after training (ptq.py) | 8 | 112 kB | 19.92 | 0.800 |" in ptq
    assert "| exp4 | during training (BitNet b1.58) | 1.58 | 52 kB | 19.00 | 0.800 |" in ptq
    assert "| exp2 | fine | 48 | 60.0% | 40.0% | 20.0% |" in readme
    assert "| experiment | pass | samples per ray | weight < 0.01 (skippable) |" in readme
    assert "below 0.01 change no pixel" in readme and "one pixel of every 4×4 block" in readme
    assert "|w| ≤ 0.05·max|w| of the layer" in readme
    assert (
        "| experiment | render (1 view) | other | compositing | MLP | encoding | sampling | ray generation |" in readme
    )
    assert (
        "| exp1 | 1000 ms | 50 ms (5.0%) | 200 ms (20.0%) | 600 ms (60.0%) | 100 ms (10.0%) | 40 ms (4.0%) "
        "| 10 ms (1.0%) |"
    ) in readme
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
    assert set(analyses) == {
        "definitions",
        "activation_sparsity",
        "weight_sparsity",
        "render_weight_sparsity",
        "time_breakdown",
    }
    assert all(set(by_run) == {"bitnerf", "nerf"} for name, by_run in analyses.items() if name != "definitions")
    readme = (out / "README.md").read_text()
    assert "Not computed" not in readme and "| bitnerf | fine | 16 |" in readme
    assert f"`python analyze.py --runs {trained_runs} --out {out} --only time_breakdown`" in readme
    assert "ternary" in readme.split("### Sparsity per layer", 1)[1]
    assert_images_of(readme, out, {"psnr.png", "pareto.png", "renders.png", "sparsity.png", "time_breakdown.png"})


@pytest.mark.parametrize(
    "problem",
    [
        "no runs folder",
        "no finished runs",
        "a run's hw results without columns",
        "a run's hw results not hw_eval.py's",
        "analyses without definitions",
        "a removed option",
        "failed.json not an object",
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(runs, tmp_path, capsys, problem):
    args = {
        "no runs folder": ["--runs", str(tmp_path / "missing")],
        "no finished runs": ["--runs", str(runs / "unfinished")],
        "a removed option": ["--runs", str(runs), "--skip-analyses"],
    }.get(problem, ["--runs", str(runs)])
    if problem == "a run's hw results without columns":
        (runs / "exp1" / "hw_eval.json").write_text(
            json.dumps({**run_identity(runs / "exp1"), "rows": [{"run": "exp1", "arch": "eyeriss"}]})
        )
    if problem == "a run's hw results not hw_eval.py's":
        (runs / "exp1" / "hw_eval.json").write_text(json.dumps([{"run": "exp1"}]))
    if problem == "analyses without definitions":
        (tmp_path / "report").mkdir()
        (tmp_path / "report" / "analyses.json").write_text(json.dumps({"time_breakdown": {}}))  # an older analyze.py's
    if problem == "failed.json not an object":
        (runs / FAILED).write_text(json.dumps(["exp3"]))
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
    fractions = {
        "skipped_train_coarse": 0.5,
        "skipped_train_fine": 0.6,
        "skipped_render_coarse": 0.7,
        "skipped_render_fine": 0.8,
    }
    (grid / "summary.json").write_text(json.dumps({**summary, **fractions}))
    write_hw_results(
        hw_dir,
        {
            run_dir: [{**row, "energy_without_grid_j": 3 * row["energy_per_frame_j"]} for row in hw_rows(run_dir)]
            for run_dir in (runs_dir / "exp1", grid)
        },
    )
    readme = report.write_report(runs_dir, hw_dir, tmp_path / "out", "report.py").read_text()
    section = readme.split("## Empty-space skipping", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| exp") and "experiment" not in line]
    assert table == ["| exp4 | 50.0% | 60.0% | 70.0% | 80.0% | 56 J | 168 J (3.00×) | 5 J | 15 J (3.00×) |"]
    plain = [(runs_dir / "exp1", json.loads((runs_dir / "exp1" / "summary.json").read_text()))]
    assert skipping_section(plain, []) == [
        "No run kept an occupancy grid (`--occupancy-grid`): every sample reached the MLP."
    ]


def test_si_prefixes():
    assert [si(v, u) for v, u in ((56.0, "J"), (0.0123, "J"), (1.4e9, "B"), (110344, ""), (0.0, "s"))] == [
        "56 J",
        "12.3 mJ",
        "1.4 GB",
        "110 k",
        "0 s",
    ]


def seeds_tables(readme: str) -> tuple[list[list[str]], list[list[str]], str]:
    """The rows of the interval table and of the differences against exp1, and the note after them."""
    section = readme.split("## Seeds and intervals", 1)[1].split("\n## ", 1)[0]
    tables = [
        [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()][2:]
        for block in section.strip().split("\n\n")
        if block.startswith("|")
    ]
    return tables[0], tables[1], section.strip().split("\n\n")[-1]


def test_the_report_gives_intervals_over_seeds_and_marks_differences_that_are_not_significant(tmp_path):
    runs_dir = tmp_path / "runs"
    # exp2 - exp1 by seed: +1, -1, +0.5 (covers zero); exp4 - exp1: -2, -2.1, -1.9 (does not).
    for seed, (exp1, exp2, exp4) in enumerate([(20.0, 21.0, 18.0), (22.0, 21.0, 19.9), (21.0, 21.5, 19.1)]):
        write_run(runs_dir, f"exp1-seed{seed}", psnr=exp1, experiment="exp1", seed=seed)
        write_run(runs_dir, f"exp2-seed{seed}", precision="bf16-amp", psnr=exp2, experiment="exp2", seed=seed)
        write_run(
            runs_dir,
            f"exp4-seed{seed}",
            precision="ternary-int8",
            model="bitnerf",
            psnr=exp4,
            experiment="exp4",
            seed=seed,
        )
    readme = report.write_report(runs_dir, tmp_path / "hw", tmp_path / "report", "report.py").read_text()
    intervals, differences, note = seeds_tables(readme)
    half_width = 4.302653 * 1.0 / 3**0.5  # exp1's PSNR 20, 22, 21: sd 1, t(0.975, 2)
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
    (runs_dir / FAILED).write_text(json.dumps({"exp3": refused, "exp1": "error: an earlier failure"}))
    readme = report.write_report(runs_dir, tmp_path / "hw", tmp_path / "report", "report.py").read_text()
    assert missing_section(readme) == [
        "- exp2: run directory exp2 without summary.json (the run did not finish; --resume continues it)",
        f"- exp3: {refused}",
        "- exp4: run directory exp4-seed1 without summary.json or a checkpoint (the run stopped before its first"
        " one; --overwrite trains it again)",
        *(f"- {name}: no run directory" for name in list(configs.AXES)[5:]),
    ]  # exp6 and any later experiment
    assert readme.index("## Missing experiments") < readme.index("## Results")
    assert [row[0] for row in results_table(readme)[1]] == ["exp1", "exp5"]


def test_a_complete_suite_has_no_missing_experiments_section(tmp_path):
    runs_dir = tmp_path / "runs"
    for name in configs.AXES:
        write_run(runs_dir, name)
    (runs_dir / FAILED).write_text(json.dumps({"exp2": "error: a failure since trained again"}))
    readme = report.write_report(runs_dir, tmp_path / "hw", tmp_path / "report", "report.py").read_text()
    assert "Missing experiments" not in readme and "a failure since" not in readme
