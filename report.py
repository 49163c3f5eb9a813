"""The report: one Markdown page comparing every experiment, with plots beside it (it renders on GitHub).

`python report.py [--runs runs] [--hw hw_eval] [--out report]` reads each run directory (summary.json,
metrics.csv, renders/, ptq.json, and the accelerator results hw_eval.py wrote into it, used only while they
are the run's as it is now), and the analyses.json that `analyze.py --out` wrote into the same folder
(default report/); it writes README.md with its PNG plots there, and links hw_eval.py's tables in --hw where
they hold these runs. Each experiment of the suite without a finished run is listed with why: the reason
recorded for it in failed.json in the runs folder (the notebook writes that file), else what its run
directory holds. It reads result files only and runs nothing, so it starts without PyTorch.
The sections are in reporting/ (its __init__ lists them).
"""

import shlex
import sys
import time
from pathlib import Path

import rundir
from files import atomic_write
from reporting import hardware
from reporting.analyses import analyses_section, read_analyses
from reporting.intervals import intervals_section
from reporting.ladder import ladder_plot_section, ladder_points, ladder_section, wire_section
from reporting.plots import pareto_section, psnr_section, renders_section
from reporting.ptq import ptq_section
from reporting.results import results_table
from reporting.runs import FAILED, missing_experiments
from reporting.skipping import skipping_section
from utils import OneLineParser, exit_on_user_error


def write_report(runs_dir: Path, hw_dir: Path, out_dir: Path, command: str) -> Path:
    """Write out_dir/README.md and its plots, with out_dir/analyses.json's analyses; returns the README's path."""
    runs = rundir.find_runs(runs_dir)
    hw_rows, stale = hardware.read_results(runs)
    dense_rows = [row for row in hw_rows if row["design"] == "dense"]
    analyze_command = shlex.join(["python", "analyze.py", "--runs", str(runs_dir), "--out", str(out_dir)])
    report_command = shlex.join(
        ["python", "report.py", "--runs", str(runs_dir), "--hw", str(hw_dir), "--out", str(out_dir)]
    )
    analyses = read_analyses(out_dir, analyze_command)
    missing = missing_experiments(runs_dir, runs)
    ladder = ladder_points(runs, dense_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# NeRF experiments: report",
        "",
        f"Written by `{command}` from {len(runs)} runs in `{runs_dir}`, in experiment order.",
        "",
    ]
    if missing:
        lines += [
            "## Missing experiments",
            "",
            f"The experiments without a finished run ({rundir.SUMMARY}), and why: the line recorded when "
            f"the experiment failed (`{runs_dir / FAILED}`), else what its run directory holds.",
            "",
            *missing,
            "",
        ]
    sections = [
        ["## Results", "", results_table(runs, dense_rows, hardware.not_evaluated_note(runs_dir, stale))],
        ["## Seeds and intervals", "", *intervals_section(runs, dense_rows)],
        ["## Empty-space skipping", "", *skipping_section(runs, dense_rows)],
        pareto_section(runs, dense_rows, out_dir),
        psnr_section(runs, out_dir),
        renders_section(runs, out_dir),
        hardware.energy_section(runs, runs_dir, hw_rows, stale, hw_dir, out_dir),
        ptq_section(runs),
        ladder_section(runs, dense_rows, ladder),
        ladder_plot_section(ladder, dense_rows, out_dir),
        wire_section(runs),
        analyses_section(analyses, runs, out_dir, analyze_command, report_command),
    ]
    for section in sections:
        lines += [*section, ""] if section else []
    path = out_dir / "README.md"
    atomic_write(path, "\n".join(lines).rstrip() + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="report.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the folder of run directories")
    parser.add_argument(
        "--hw",
        type=Path,
        default=Path("hw_eval"),
        help="hw_eval.py's output folder, whose tables the report links where they hold these runs",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("report"),
        help="where README.md and the plots go, and where analyze.py wrote analyses.json",
    )
    start = time.perf_counter()
    with exit_on_user_error():
        args = parser.parse_args(argv)
        command = shlex.join(["python", "report.py", *(sys.argv[1:] if argv is None else argv)])
        path = write_report(args.runs, args.hw, args.out, command)
    print(f"report -> {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
