"""The precision ladder and the bytes on the wire (reporting/ladder.py), from hand-written run directories."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import REPO, hw_rows, write_run

import report
from accel.results import run_identity, write_run_results
from files import write_json

T_975_1 = 12.706205  # t(0.975, 1): the 95% interval of a mean over two seeds is ± t · sd / √2
# Samples of a frame: coarse 400k + fine 600k reach the MLPs (the grid's choice); 1M + 3M without the grid.
LAYERS = [
    ("coarse.layers.0", 400_000, 1_000_000),
    ("coarse.output_head", 400_000, 1_000_000),
    ("fine.layers.0", 600_000, 3_000_000),
]
# exp1's MAC energies by precision (pJ) as hw_eval.py records them, and the architectures' nodes.
MAC_ENERGY = {
    "eyeriss": {"fp32": 4.0, "bf16": 1.5, "fp16": 1.5, "fp8": 0.9, "int8": 0.3, "ternary": 0.05},
    "tpu_v4i": {"fp32": 0.4, "bf16": 0.15, "fp16": 0.15, "fp8": 0.06, "int8": 0.04, "ternary": 0.01},
}
TECH_NODE_NM = {"eyeriss": 65, "tpu_v4i": 7}


def suite_run(runs_dir: Path, experiment: str, seed: int, psnr: float, **summary_fields) -> Path:
    """A finished run of experiment on seed with a layers.json of LAYERS, summary_fields added to its summary.json."""
    precision = {"exp2": "bf16-amp", "exp4": "ternary-int8", "exp6": "ternary-int8", "exp7": "int8", "exp8": "fp8"}.get(
        experiment, "fp32"
    )
    run_dir = write_run(
        runs_dir,
        f"{experiment}-seed{seed}",
        precision=precision,
        experiment=experiment,
        seed=seed,
        psnr=psnr,
        model="bitnerf" if experiment in ("exp4", "exp6") else "nerf",
        world_size=2 if experiment in ("exp5", "exp6", "exp9") else 1,
    )
    layers = [
        {
            "name": name,
            "in_features": 8,
            "out_features": 8,
            "weight_bits": 32,
            "input_bits": 32,
            "output_bits": 32,
            "input_sparsity": 0.5,
            "samples_per_frame": counted,
            "samples_per_frame_all": every,
        }
        for name, counted, every in LAYERS
    ]
    write_json(run_dir / "layers.json", {"samples_per_frame": 1_000_000, "layers": layers})
    summary = json.loads((run_dir / "summary.json").read_text())
    write_json(run_dir / "summary.json", {**summary, "device_name": "cpu", **summary_fields})
    return run_dir


def write_own_results(
    run_dir: Path, rows: list[dict], mac_energy_pj: dict | None = None, ptq_rows: list[dict] | None = None
) -> None:
    """hw_eval.json as hw_eval.py writes it into the run, under the run's identity: its rows, and the MAC energies
    and its PTQ variants' rows (tied to its ptq.json as it is now) where given."""
    summary = json.loads((run_dir / "summary.json").read_text())
    ptq = None if ptq_rows is None else (hashlib.sha256((run_dir / "ptq.json").read_bytes()).hexdigest(), ptq_rows)
    write_run_results(run_dir, run_identity(run_dir, summary), rows, mac_energy_pj, ptq)


def dense_with(rows: list[dict], **columns) -> list[dict]:
    """rows with the dense design's energy without the grid at twice its energy per frame, and columns added."""
    return [
        {
            **row,
            "energy_without_grid_j": 2 * row["energy_per_frame_j"],
            "tech_node_nm": TECH_NODE_NM[row["arch"]],
            **columns,
        }
        for row in rows
    ]


PTQ_VARIANTS = {"fp32": 32, "fp16": 16, "int8-weight": 8, "int8-dynamic": 8, "int4-weight": 4, "ternary": 1.58}


def ptq_json(run_dir: Path, psnr: float) -> None:
    """ptq.json: each variant loses (32 - weight bits)/100 dB against the run, the ternary one 3 dB; the int4 row is
    an older one, without width."""
    rows = [
        {
            "variant": v,
            **({} if v == "int4-weight" else {"width": v.split("-")[0]}),
            "weight_bits": bits,
            "input_bits": 32,
            "model_bytes": int(448_000 * bits / 32),
            "psnr_test": psnr - (3.0 if v == "ternary" else (32 - bits) / 100),
            "ssim_test": 0.8,
        }
        for v, bits in PTQ_VARIANTS.items()
    ]
    write_json(run_dir / "ptq.json", rows)


@pytest.fixture
def suite(tmp_path) -> Path:
    """Two seeds of exp1, exp2, exp4, exp5-exp9: exp1 with ptq.json and its own hw_eval.json (per-sample columns, two
    PTQ variants costed, MAC energies), exp2 with an older hw_eval.json (no per-sample columns), the rest without."""
    runs_dir = tmp_path / "runs"
    psnr = {
        "exp1": (20.0, 22.0),
        "exp2": (21.0, 22.5),
        "exp4": (18.0, 20.1),
        "exp7": (19.5, 21.5),
        "exp8": (19.8, 21.9),
        "exp5": (20.0, 21.0),
        "exp6": (18.0, 19.0),
        "exp9": (19.9, 20.8),
    }
    fields = {
        "exp2": {"train_samples_per_s": 500_000},
        "exp7": {"compiled": True},
        "exp8": {"emulated": True},
        "exp4": {"device_name": "NVIDIA H200"},
        "exp5": {"sent_bytes_per_step": 1_000_000},
        "exp9": {"sent_bytes_per_step": 500_000},
        "exp6": {"sent_bytes_per_step": None},
    }
    for experiment, values in psnr.items():
        for seed, value in enumerate(values):
            run_dir = suite_run(runs_dir, experiment, seed, value, **fields.get(experiment, {}))
            if experiment == "exp1":
                ptq_json(run_dir, value)
                costed = [
                    {
                        **row,
                        "variant": v,
                        "precision": f"ptq-{v}",
                        "energy_per_sample_uj": uj + seed,
                        "energy_per_sample_without_grid_uj": (uj + seed) / 2,
                    }
                    for v, uj in (("int8-weight", 10.0), ("ternary", 4.0))
                    for row in dense_with(hw_rows(run_dir))
                    if row["arch"] == "eyeriss"
                ]
                write_own_results(
                    run_dir,
                    dense_with(
                        hw_rows(run_dir), energy_per_sample_uj=50.0, energy_per_sample_without_grid_uj=25.0 + seed
                    ),
                    ptq_rows=costed,
                    mac_energy_pj=MAC_ENERGY,
                )
            if experiment == "exp2":
                write_own_results(run_dir, dense_with(hw_rows(run_dir, {"eyeriss": 40.0, "tpu_v4i": 4.0})))
    return runs_dir


def section(readme: str, title: str) -> str:
    return readme.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table(text: str) -> dict[str, dict[str, str]]:
    """The first Markdown table of text, each row as {column: cell} by its first cell."""
    lines = next(block for block in text.strip().split("\n\n") if block.startswith("|")).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[0]: dict(zip(cells[0], row)) for row in cells[2:]}


def write(runs_dir: Path, tmp_path: Path) -> str:
    return report.write_report(runs_dir, tmp_path / "no_hw", tmp_path / "report", "report.py").read_text()


def test_the_ladder_has_a_row_per_precision_by_width_with_intervals_and_differences_against_exp1(suite, tmp_path):
    rows = table(section(write(suite, tmp_path), "Precision ladder"))
    assert list(rows) == [
        "exp1 fp32",
        "exp1 + fp32",
        "exp2 bf16-amp",
        "exp1 + fp16",
        "exp8 fp8 (emulated)",
        "exp7 int8",
        "exp1 + int8-weight",
        "exp1 + int8-dynamic",
        "exp1 + int4-weight",
        "exp4 ternary-int8",
        "exp1 + ternary",
    ]
    assert "exp3" not in str(rows) and "exp5" not in str(rows)
    exp1, exp2, exp4 = rows["exp1 fp32"], rows["exp2 bf16-amp"], rows["exp4 ternary-int8"]
    assert exp1["test PSNR (dB)"] == f"21.00 ± {T_975_1:.2f}"  # 20, 22: sd √2, over √2
    assert exp1["difference against exp1"] == "— (the reference)" and exp1["seeds"] == "0, 1"
    # exp2 - exp1 by seed: +1, +0.5 (sd √0.125, covers zero); exp4 - exp1: -2, -1.9 (sd √0.005, does not).
    assert exp2["difference against exp1"] == f"0.75 ± {T_975_1 * 0.125**0.5 / 2**0.5:.2f} (not significant)"
    assert exp4["difference against exp1"] == f"-1.95 ± {T_975_1 * 0.005**0.5 / 2**0.5:.2f}"
    assert (exp1["quantized"], exp1["weight bits"], exp1["model size"]) == ("training", "32", "448 kB")
    assert (exp4["weight bits"], exp4["model size"]) == ("1.58", "52 kB")


def test_throughput_is_shown_only_for_training_points_run_like_exp1(suite, tmp_path):
    rows = table(section(write(suite, tmp_path), "Precision ladder"))
    throughput = {point: row["train samples/s"] for point, row in rows.items()}
    assert throughput["exp1 fp32"] == "250000 ± 0 (1.00× exp1)"
    assert throughput["exp2 bf16-amp"] == "500000 ± 0 (2.00× exp1)"
    assert throughput["exp7 int8"] == "n/a (compiled differs)"
    assert throughput["exp4 ternary-int8"] == "n/a (other device)"
    assert throughput["exp8 fp8 (emulated)"] == "n/a (emulated)"
    assert {throughput[point] for point in rows if point.startswith("exp1 + ")} == {"—"}


def test_post_training_points_come_from_ptq_json_over_exp1_s_seeds(suite, tmp_path):
    rows = table(section(write(suite, tmp_path), "Precision ladder"))
    int8 = rows["exp1 + int8-weight"]
    assert (int8["quantized"], int8["seeds"], int8["weight bits"], int8["model size"]) == (
        "after training",
        "0, 1",
        "8",
        "112 kB",
    )
    assert int8["test PSNR (dB)"] == f"20.76 ± {T_975_1:.2f}"  # 19.76, 21.76
    # Paired with the exp1 run each variant quantized: the same loss on both seeds, an interval of zero.
    assert int8["difference against exp1"] == "-0.24 ± 0.00"
    assert rows["exp1 + ternary"]["difference against exp1"] == "-3.00 ± 0.00"
    assert rows["exp1 + fp32"]["difference against exp1"] == "0.00 ± 0.00 (not significant)"
    assert rows["exp1 + int4-weight"]["weight bits"] == "4"  # an older row without width: ordered by its variant


def test_energy_per_sample_comes_from_each_run_s_own_hw_eval_json(suite, tmp_path):
    # exp2-seed0 holds a copy of exp1-seed0's results (another run's): left out, so exp2 is seed 1's alone.
    (suite / "exp2-seed0" / "hw_eval.json").write_text((suite / "exp1-seed0" / "hw_eval.json").read_text())
    readme = write(suite, tmp_path)
    rows = table(section(readme, "Precision ladder"))
    energy = {
        point: [row[f"eyeriss {column}"] for column in ("µJ/sample", "µJ/sample without the grid", "energy/frame")]
        for point, row in rows.items()
    }
    assert energy["exp1 fp32"] == ["50", "25.5", "56 J"]  # hw_eval.py's per-sample columns (25, 26 over the seeds)
    # An older hw_eval.json: 40 J over the 1M samples the MLPs saw; 80 J without the grid over all 4M.
    assert energy["exp2 bf16-amp"] == ["40", "20", "40 J"]
    # The variants' rows, tied to each run's ptq.json: 10 and 11 µJ over the seeds (4 and 5 for ternary).
    assert energy["exp1 + int8-weight"] == ["10.5", "5.25", "56 J"]
    assert energy["exp1 + ternary"] == ["4.5", "2.25", "56 J"]
    assert energy["exp4 ternary-int8"] == energy["exp1 + fp16"] == ["not evaluated"] * 3
    assert rows["exp1 + ternary"]["tpu_v4i µJ/sample"] == "not evaluated"
    assert rows["exp1 fp32"]["tpu_v4i µJ/sample without the grid"] == "25.5"
    ladder = section(readme, "Precision ladder")
    assert "**energy per sample without the grid**" in ladder and "The plot below uses it, on eyeriss." in ladder
    assert "- eyeriss (65 nm): an fp8 MAC costs 0.9 pJ against 0.3 pJ for an int8 MAC (3.00×)." in ladder
    assert "- tpu_v4i (7 nm): an fp8 MAC costs 0.06 pJ against 0.04 pJ for an int8 MAC (1.50×)." in ladder
    assert "![Test PSNR of each precision point" in readme
    assert (tmp_path / "report" / "ladder.png").stat().st_size > 10_000
    # exp1-seed1's ptq.json evaluated again since hw_eval.py ran: its variants' rows are no longer its own.
    ptq_json(suite / "exp1-seed1", 22.5)
    rows = table(section(write(suite, tmp_path), "Precision ladder"))
    assert rows["exp1 + int8-weight"]["eyeriss µJ/sample"] == "10" and rows["exp1 fp32"]["eyeriss µJ/sample"] == "50"


def test_without_accelerator_results_the_ladder_says_not_evaluated_and_draws_no_plot(suite, tmp_path):
    for path in suite.glob("*/hw_eval.json"):
        path.unlink()
    readme = write(suite, tmp_path)
    ladder = section(readme, "Precision ladder")
    assert "Energy: not evaluated" in ladder and "µJ" not in ladder
    assert "ladder.png" not in readme and not (tmp_path / "report" / "ladder.png").exists()


def test_older_results_without_energy_without_the_grid_give_energy_per_frame_and_per_sample_only(tmp_path):
    runs_dir = tmp_path / "runs"
    run_dir = suite_run(runs_dir, "exp1", 0, 20.0)
    write_own_results(run_dir, hw_rows(run_dir))  # no energy_without_grid_j, no per-sample columns, no MAC energies
    readme = write(runs_dir, tmp_path)
    row = table(section(readme, "Precision ladder"))["exp1 fp32"]
    assert [row[f"eyeriss {c}"] for c in ("µJ/sample", "µJ/sample without the grid", "energy/frame")] == [
        "56",
        "not evaluated",
        "56 J",
    ]
    assert row["test PSNR (dB)"] == "20.00" and row["train samples/s"] == "250000 (1.00× exp1)"  # one seed
    assert "- eyeriss (technology node not recorded): MAC energy by precision not in these results" in readme
    assert "No point has it on the first architecture yet, so there is no plot" in readme
    assert "ladder.png" not in readme


def test_the_wire_table_gives_bytes_per_step_against_exp5_and_psnr_paired_with_exp5(suite, tmp_path):
    rows = table(section(write(suite, tmp_path), "Bytes on the wire"))
    assert list(rows) == ["exp5", "exp6", "exp9"]
    assert [rows["exp5"][c] for c in ("sent per step", "against exp5", "difference against exp5")] == [
        "1 MB",
        "1.00×",
        "— (the reference)",
    ]
    assert [rows["exp9"][c] for c in ("sent per step", "against exp5", "world size")] == ["500 kB", "0.50×", "2"]
    # exp9 - exp5 by seed: -0.1, -0.2 (sd √0.005: an interval of ± 0.64, which covers zero).
    assert rows["exp9"]["difference against exp5"] == f"-0.15 ± {T_975_1 * 0.005**0.5 / 2**0.5:.2f} (not significant)"
    assert [rows["exp6"][c] for c in ("sent per step", "against exp5")] == ["not measured", "not measured"]
    assert rows["exp6"]["difference against exp5"] == "-2.00 ± 0.00"


def test_a_few_runs_shrink_the_sections_without_failing(tmp_path):
    runs_dir = tmp_path / "runs"
    suite_run(runs_dir, "exp3", 0, 20.0)  # not a precision point
    readme = write(runs_dir, tmp_path)
    assert "No precision point among these runs" in section(readme, "Precision ladder")
    assert "No data-parallel run (exp5, exp6, exp9)" in section(readme, "Bytes on the wire")
    suite_run(runs_dir, "exp2", 0, 21.0)
    suite_run(runs_dir, "exp9", 0, 20.5, sent_bytes_per_step=500_000)
    readme = write(runs_dir, tmp_path)
    row = table(section(readme, "Precision ladder"))["exp2 bf16-amp"]
    assert (row["difference against exp1"], row["train samples/s"]) == ("n/a (no exp1)", "n/a (no exp1)")
    wire = table(section(readme, "Bytes on the wire"))["exp9"]
    assert (wire["sent per step"], wire["against exp5"], wire["difference against exp5"]) == (
        "500 kB",
        "n/a (no exp5)",
        "n/a (no exp5)",
    )


def test_the_report_with_the_ladder_starts_and_writes_without_torch(suite, tmp_path):
    code = (
        f"import sys, report; report.main(['--runs', {str(suite)!r}, '--hw', {str(tmp_path / 'no_hw')!r}, "
        f"'--out', {str(tmp_path / 'out')!r}]); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "## Precision ladder" in (tmp_path / "out" / "README.md").read_text()
    assert (tmp_path / "out" / "ladder.png").is_file()
