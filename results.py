"""docs/results.md and the README's results table, written from a suite's runs: results that cannot go stale.

`python results.py [--runs runs] [--report report] [--out docs/results.md] [--readme README.md]` (`make results`)
reads the finished runs of a suite (summary.json, and the accelerator results hw_eval.py wrote into each run, used
only while they are the run's as it is now) and writes docs/results.md: a stamp (the commit checked out, the date,
the scene, the seeds, the machine), the main table (every experiment: test PSNR with its 95% interval over the
seeds and its difference against exp1 paired by seed, SSIM, training samples/s, model size, energy per frame on
each modelled accelerator), and the report's sections on seeds and intervals, the precision ladder, the bytes on
the wire and empty-space skipping, each built by the report's own functions (reporting/). Where the report holds
its ladder plot (report/ladder.png, `make suite` writes it) the page shows a copy beside it. The README's block
between RESULTS_BEGIN and RESULTS_END becomes the page's block, its links made relative to the README.
Like report.py, it reads result files only and starts without PyTorch.
"""

import datetime
import os
import platform
import re
import shlex
import shutil
import sys
from pathlib import Path

import rundir
import stats
from accel.results import NOT_EVALUATED, markdown_table, si
from files import atomic_write, git_commit
from reporting import hardware
from reporting.intervals import by_seed, difference_cell, intervals_section, missing_cell, seed_measures
from reporting.ladder import TRAINING_POINTS, ladder_points, ladder_section, wire_section
from reporting.runs import experiment_groups
from reporting.skipping import skipping_section
from utils import OneLineParser, UserError, exit_on_user_error

# The block of docs/results.md that the README shows, between these lines in both files.
RESULTS_BEGIN, RESULTS_END = "<!-- results:begin -->", "<!-- results:end -->"
LADDER_PLOT = "ladder.png"  # report.py's precision ladder plot, copied beside docs/results.md
# The interval table's measures the main table leaves out (the wall time is the whole command's, evaluation included).
LEFT_OUT = ("wall_s",)
REPO = Path(__file__).resolve().parent  # the checkout whose commit the page is stamped with


def cpu_model() -> str:
    """This machine's CPU model (/proc/cpuinfo's model name where there is one) and its core count."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), re.MULTILINE)
        name = found.group(1).strip() if found else name
    return f"{os.cpu_count()} CPU cores ({name})"


def machine(runs) -> str:
    """What trained the runs: the GPUs their summaries name (device_name), else this machine's CPU."""
    gpus = sorted({s.get("device_name") for _, s in runs} - {None, "cpu"})
    return ", ".join(gpus) if gpus else f"{cpu_model()}, no GPU"


def code_commits(runs, repo: Path) -> str:
    """The commits that trained the runs (summary.json's commit); where a run predates recording it, repo's
    checkout, which wrote the page, said to be that."""
    recorded = [s.get("commit") for _, s in runs]
    if None not in recorded:
        return ", ".join(sorted(set(recorded)))
    missing = recorded.count(None)
    return f"{git_commit(repo)} (the checkout that wrote this page: {missing} of the runs predate recording theirs)"


def stamp(runs, runs_dir: Path, repo: Path) -> str:
    """One line: where the numbers come from (the commits that trained them, date, scene, seeds, machine)."""
    scenes = ", ".join(dict.fromkeys(str(s.get("scene", "unknown")) for _, s in runs))
    seeds = ", ".join(str(seed) for seed in sorted({s.get("seed", 0) for _, s in runs}))
    finished = max((run_dir / rundir.SUMMARY).stat().st_mtime for run_dir, _ in runs)
    trained = datetime.date.fromtimestamp(finished).isoformat()
    minutes = sum(s.get("wall_s", 0.0) for _, s in runs) / 60
    return (
        f"**Commit {code_commits(runs, repo)}, runs finished {trained}; scene {scenes}; seeds {seeds}; "
        f"{machine(runs)}.** {len(runs)} runs in `{runs_dir}`; their training commands took {minutes:.0f} min "
        f"together."
    )


def main_table(runs, dense_rows: list[dict]) -> str:
    """Every experiment: its precision, seeds, and the interval table's measures (reporting.intervals), with test
    PSNR's difference against exp1 paired seed by seed and the model size beside them."""
    groups = experiment_groups(runs)
    measures = {key: measure for key, measure in seed_measures(dense_rows).items() if key not in LEFT_OUT}
    reference = groups.get("exp1")
    psnr = measures["psnr_test"][2]
    rest = [label for key, (label, _, _) in measures.items() if key not in ("psnr_test", "ssim_test")]
    header = [
        "experiment",
        "precision",
        "seeds",
        "test PSNR (dB)",
        "test PSNR vs exp1",
        measures["ssim_test"][0],
        "model size",
        *rest,
    ]
    rows = []
    for experiment, group in groups.items():
        cells = {}
        for key, (_, digits, value) in measures.items():
            values = list(by_seed(group, value).values())
            cells[key] = stats.mean_interval(values).format(digits) if values else missing_cell(key)
        if reference is None:
            versus = "n/a (no exp1)"
        elif experiment == "exp1":
            versus = "—"
        else:
            versus = difference_cell(stats.paired_difference(by_seed(group, psnr), by_seed(reference, psnr)))
        sizes = [s["model_bytes"] for _, s in group if s.get("model_bytes") is not None]
        rows.append(
            [
                experiment,
                "/".join(dict.fromkeys(s["precision"] for _, s in group)),
                ", ".join(str(s.get("seed", 0)) for _, s in group),
                cells.pop("psnr_test"),
                versus,
                cells.pop("ssim_test"),
                si(sum(sizes) / len(sizes), "B") if sizes else "n/a",
                *cells.values(),
            ]
        )
    return markdown_table(header, rows)


def in_db(difference: stats.Estimate | None) -> str:
    """A PSNR difference in prose: +0.18 ± 0.28 dB, not significant."""
    if difference is None:
        return "no common seed"
    if difference.half_width is None:
        return f"{difference.mean:+.2f} dB, one seed"
    return f"{difference.mean:+.2f} ± {difference.half_width:.2f} dB" + (
        ", not significant" if difference.covers_zero else ""
    )


def reading(runs, dense_rows: list[dict]) -> list[str]:
    """Which precision wins on quality, on model size and on energy per frame, and by how much against exp1: the
    experiments that train at one precision each (reporting.ladder.TRAINING_POINTS), read off the main table."""
    groups = experiment_groups(runs)
    points = [name for name in TRAINING_POINTS if name in groups]
    if not points or "exp1" not in groups:
        return []

    def label(name: str) -> str:
        return f"{name} ({'/'.join(dict.fromkeys(s['precision'] for _, s in groups[name]))})"

    def mean(name: str, value) -> float | None:
        values = list(by_seed(groups[name], value).values())
        return sum(values) / len(values) if values else None

    def versus_exp1(name: str) -> stats.Estimate | None:
        return stats.paired_difference(by_seed(groups[name], psnr), by_seed(groups["exp1"], psnr))

    measures = seed_measures(dense_rows)
    psnr = measures["psnr_test"][2]
    best = max(points, key=lambda name: mean(name, psnr))
    significant = [
        f"{name} {in_db(d)}"
        for name in groups
        if name != "exp1" and (d := versus_exp1(name)) is not None and d.covers_zero is False
    ]
    lines = [
        f"- **Quality**: the precision with the highest mean test PSNR is {label(best)}, {mean(best, psnr):.2f} dB"
        + ("." if best == "exp1" else f" (against exp1: {in_db(versus_exp1(best))}).")
        + f" Different from exp1 beyond the seeds' spread: {', '.join(significant) or 'none'}."
    ]

    def size(name: str) -> float | None:
        return mean(name, lambda run_dir, summary: summary.get("model_bytes"))

    smallest = min((name for name in points if size(name)), key=size, default=None)
    if smallest is not None and size("exp1"):
        lines.append(
            f"- **Model size**: the smallest is {label(smallest)}'s, {si(size(smallest), 'B')}, "
            f"{size('exp1') / size(smallest):.1f}× smaller than exp1's {si(size('exp1'), 'B')}."
        )
    energy = []
    for key, (_, digits, value) in measures.items():
        costed = [name for name in points if key.startswith("energy:") and mean(name, value) is not None]
        if costed and mean("exp1", value):
            least = min(costed, key=lambda name: mean(name, value))
            energy.append(
                f"on {key.split(':', 1)[1]} {label(least)}, {mean(least, value):.{digits}f} J, "
                f"{mean(least, value) / mean('exp1', value):.2f}× exp1's"
            )
    if energy:
        lines.append(
            f"- **Energy per frame** (each run with its own occupancy grid; per sample without the grid: the "
            f"precision ladder): the least {'; '.join(energy)}."
        )
    return lines


def table_notes(dense_rows: list[dict], plot: bool) -> list[str]:
    notes = [
        "Mean ± the half-width of the 95% t interval over the seeds; *vs exp1*: the difference paired seed by "
        "seed, *not significant* where its interval covers zero. Samples/s are this machine's (MLP queries per "
        "second of training; a compiled run's compile time left out). Energy: `hw_eval.py`'s dense design per "
        "800×800 frame, an AccelForge model, not a measurement"
        + ("." if dense_rows else f" (*{NOT_EVALUATED}*: no run holds accelerator results of its own).")
    ]
    if plot:
        notes += ["", f"![Test PSNR against energy per sample and model size, per precision]({LADDER_PLOT})"]
    return notes


def results_page(runs_dir: Path, report_dir: Path, out: Path, command: str, repo: Path) -> str:
    """docs/results.md's text; copies the report's ladder plot beside out where the report has one."""
    runs = rundir.find_runs(runs_dir)
    hw_rows, _ = hardware.read_results(runs)
    dense_rows = [row for row in hw_rows if row["design"] == "dense"]
    plot = (report_dir / LADDER_PLOT).is_file()
    if plot:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report_dir / LADDER_PLOT, out.parent / LADDER_PLOT)
    header = (
        f"Written by `{command}` from the runs of a suite and its report: do not edit by hand. `make suite` "
        "(or `make suite SEEDS=3 DATA=...`), then `make results`, rewrites this page and the README's table "
        "(the block between the markers below)."
    )
    lines = [
        "# Results",
        "",
        header,
        "",
        RESULTS_BEGIN,
        stamp(runs, runs_dir, repo),
        "",
        main_table(runs, dense_rows),
        "",
        *reading(runs, dense_rows),
        "",
        *table_notes(dense_rows, plot),
        RESULTS_END,
        "",
        "## Seeds and intervals",
        "",
        *intervals_section(runs, dense_rows),
        "",
        *ladder_section(runs, dense_rows, ladder_points(runs, dense_rows)),
        "",
        *wire_section(runs),
        "",
        "## Empty-space skipping",
        "",
        *skipping_section(runs, dense_rows),
    ]
    return "\n".join(lines).rstrip() + "\n"


def block(text: str, where: str) -> str:
    """The lines between RESULTS_BEGIN and RESULTS_END (excluded), or a UserError naming where."""
    begin, end = text.find(RESULTS_BEGIN), text.find(RESULTS_END)
    if begin < 0 or end < begin:
        raise UserError(f"{where} has no block between {RESULTS_BEGIN} and {RESULTS_END}")
    return text[begin + len(RESULTS_BEGIN) : end].strip("\n")


def readme_block(results_text: str, results_dir: str = "docs") -> str:
    """The README's block: docs/results.md's, its relative links made relative to the README (in results_dir's
    parent)."""
    return re.sub(
        r"\]\((?![a-z]+:|#|/)([^)\s]+)\)",
        lambda m: f"]({results_dir}/{m.group(1)})",
        block(results_text, "docs/results.md"),
    )


def replace_block(readme_text: str, new_block: str) -> str:
    """readme_text with its block replaced by new_block."""
    block(readme_text, "README.md")  # refuses a README without markers
    begin, end = readme_text.index(RESULTS_BEGIN) + len(RESULTS_BEGIN), readme_text.index(RESULTS_END)
    return readme_text[:begin] + "\n" + new_block + "\n" + readme_text[end:]


def write_results(runs_dir: Path, report_dir: Path, out: Path, readme: Path, command: str) -> None:
    """Write out (docs/results.md) from the runs, then the README's block from it."""
    text = results_page(runs_dir, report_dir, out, command, REPO)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    if not readme.is_file():
        raise UserError(f"no {readme}: pass --readme")
    relative = Path(os.path.relpath(out.resolve().parent, readme.resolve().parent)).as_posix()
    new_block = readme_block(text, relative) if relative != "." else block(text, str(out))
    atomic_write(readme, replace_block(readme.read_text(), new_block))


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="results.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the suite's folder of run directories")
    parser.add_argument(
        "--report",
        type=Path,
        default=Path("report"),
        help="report.py's output folder, whose ladder plot the page shows",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"), help="the page to write")
    parser.add_argument(
        "--readme",
        type=Path,
        default=Path("README.md"),
        help="the README whose results block is replaced by the page's",
    )
    with exit_on_user_error():
        args = parser.parse_args(argv)
        command = shlex.join(["python", "results.py", *(sys.argv[1:] if argv is None else argv)])
        write_results(args.runs, args.report, args.out, args.readme, command)
    print(f"results -> {args.out}, {args.readme}")


if __name__ == "__main__":
    main()
