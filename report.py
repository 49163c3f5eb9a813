"""The report: one Markdown page comparing every experiment, with plots beside it (it renders on GitHub).

`python report.py [--runs runs] [--hw hw_eval] [--out report]` reads each run directory (summary.json,
metrics.csv, renders/, ptq.json), hw_eval's results.csv and the analyses.json that `analyze.py --out`
wrote into the same folder (both default to report/), and writes README.md with its PNG plots there.
Each experiment of the suite without a finished run is listed with why: the reason recorded for it in
failed.json in the runs folder (the notebook writes that file), else what its run directory holds.
It reads result files only and runs nothing, so it starts without PyTorch.
"""

import csv
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

import configs
import rundir
import stats
from utils import OneLineParser, UserError, atomic_write, exit_on_user_error, read_json

HW_ENERGY_PARTS = {"energy_dram_j": "DRAM", "energy_global_buffer_j": "global buffer",
                   "energy_scratchpad_j": "scratchpad", "energy_mac_j": "MAC", "energy_other_j": "other"}
HW_COLUMNS = ("run", "arch", "energy_per_frame_j", "latency_per_frame_s", *HW_ENERGY_PARTS)
# hw_eval's designs (its results.csv `design` column; a results.csv without it holds dense rows only).
HW_DESIGNS = {"dense": "dense", "gating": "gating", "skipping": "skipping + compressed activations"}
HW_METRICS = {"energy_per_frame_j": ("energy", "J"), "latency_per_frame_s": ("latency", "s"), "edp_j_s": ("EDP", "J·s")}
RENDER_VIEWS = 2  # test views per experiment in the grid of renders
FRAME = f"{rundir.FRAME_WIDTH}×{rundir.FRAME_HEIGHT}"  # the frame hw_eval.py costs
ANALYSES = "analyses.json"
# In --runs: {experiment: why it failed} (its stderr's last line), which notebooks/colab.ipynb writes after training.
FAILED = "failed.json"
SI_PREFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"))


def si(value: float, unit: str = "") -> str:
    """Three significant digits with an SI prefix: si(0.0123, "J") == "12.3 mJ"."""
    for factor, prefix in SI_PREFIXES:
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def save_figure(figure: Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def run_colors(runs) -> dict[str, str]:
    """One colour per run, the same in every plot."""
    return {run_dir.name: f"C{i % 10}" for i, (run_dir, _) in enumerate(runs)}


def read_hw_results(hw_dir: Path) -> list[dict] | None:
    """hw_eval's rows (one per run and architecture), or None when hw_eval has not run (or wrote no rows)."""
    path = hw_dir / "results.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in HW_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} lacks the columns {', '.join(missing)}: rerun hw_eval.py to rewrite it")
        return [{"design": "dense", **row} for row in reader] or None


COMPILED = {True: "yes", False: "no"}


def throughput_ratio(summary: dict, baseline: dict | None) -> str:
    """A run's training samples/s over exp1's, where both ran with the same measured compile setting."""
    if baseline is None:
        return "n/a (no exp1)"
    if summary.get("compiled") is None or summary.get("compiled") != baseline.get("compiled"):
        return (f"not compared (compiled: {COMPILED.get(summary.get('compiled'), 'unknown')},"
                f" exp1 {COMPILED.get(baseline.get('compiled'), 'unknown')})")
    return f"{summary['train_samples_per_s'] / baseline['train_samples_per_s']:.2f}×"


def results_table(runs, hw_rows: list[dict] | None, hw_dir: Path) -> str:
    """The table of every experiment, and the notes that say what its columns mean."""
    archs = list(dict.fromkeys(row["arch"] for row in hw_rows or []))
    hw = {(row["run"], row["arch"]): row for row in hw_rows or []}
    header = ["experiment", "precision", "world size", "global batch (rays)", "steps", "wall time",
              "train samples/s", "compiled", "samples/s vs exp1", "peak memory", "test PSNR (dB)", "test SSIM",
              "parameters", "weight bits", "model size"]
    baseline = next((s for _, s in runs if s["experiment"] == "exp1"), None)
    for arch in archs or [None]:
        prefix = f"{arch} " if arch else ""
        header += [f"{prefix}energy/frame", f"{prefix}latency/frame"]
    rows = []
    for run_dir, s in runs:
        row = [s["experiment"], s["precision"], s["world_size"], s["global_batch_rays"], s["steps"],
               f"{s['wall_s']:.0f} s", si(s["train_samples_per_s"]), COMPILED.get(s.get("compiled"), "unknown"),
               throughput_ratio(s, baseline), si(s["peak_mem_bytes"], "B"),
               f"{s['psnr_test']:.2f}", f"{s['ssim_test']:.3f}", si(s["params"]), f"{s['weight_bits']:g}",
               si(s["model_bytes"], "B")]
        for arch in archs or [None]:
            hw_row = hw.get((run_dir.name, arch))
            row += ([si(float(hw_row["energy_per_frame_j"]), "J"), si(float(hw_row["latency_per_frame_s"]), "s")]
                    if hw_row else ["n/a", "n/a"])
        rows.append(row)
    notes = [
        "- *wall time*: the whole training command (evaluation and video included); *train samples/s*: MLP "
        "queries per second of the optimizer steps; *peak memory*: CUDA's peak allocation, or on the CPU the "
        "process's peak resident set; *model size*: the deployable weights file (BitNeRF: 2-bit packed ternary).",
        "- *compiled*: whether the run's radiance fields were torch.compile'd modules (measured by the run; "
        "*unknown* for runs that predate the record). *samples/s vs exp1* compares only runs with the same "
        "setting: compiling changes throughput by itself, and would be credited to the experiment's axis.",
    ]
    if hw_rows is None:
        notes.append(f"- *n/a*: no hardware results at `{hw_dir / 'results.csv'}`; run `python hw_eval.py` "
                     f"(`make suite` does) and then this report again.")
    else:
        notes.append(f"- Energy and latency per {FRAME} frame on each architecture are AccelForge models of "
                     "the run's layers (`hw_eval.py`), not silicon measurements.")
        if any((run_dir.name, arch) not in hw for run_dir, _ in runs for arch in archs):
            notes.append(f"- *n/a*: the run is missing from `{hw_dir / 'results.csv'}`; rerun `python hw_eval.py`.")
    return markdown_table(header, rows) + "\n\n" + "\n".join(notes)


def psnr_curve(run_dir: Path, summary: dict) -> list[tuple[int, float, float]]:
    """(step, wall seconds, PSNR) at every evaluation, ending with the final one. The evaluations render
    validation views where the scene has them (psnr_val; the final one on all of them), else test views."""
    rows = rundir.read_metrics(run_dir)
    held_out = [(r, r.get("psnr_val") or r["psnr_test"]) for r in rows]
    curve = [(int(r["step"]), float(r["wall_s"]), float(psnr)) for r, psnr in held_out if psnr]
    end_wall = next((float(r["wall_s"]) for r in rows if int(r["step"]) == summary["steps"]), summary["wall_s"])
    return curve + [(summary["steps"], end_wall, summary.get("psnr_val", summary["psnr_test"]))]


SKIPPED_FRACTIONS = {"skipped_train_coarse": "training, coarse", "skipped_train_fine": "training, fine",
                     "skipped_render_coarse": "rendering, coarse", "skipped_render_fine": "rendering, fine"}


def skipping_section(runs, dense_rows: list[dict] | None) -> list[str]:
    """Empty-space skipping, per experiment (the mean over its seeds): the measured fractions of samples that
    skipped the MLP, and the dense design's energy per frame with them and with every sample evaluated."""
    groups = {name: members for name, members in experiment_groups(runs).items()
              if any(k in s for _, s in members for k in SKIPPED_FRACTIONS)}
    if not groups:
        return ["No run kept an occupancy grid (`--occupancy-grid`): every sample reached the MLP."]
    hw = {(row["run"], row["arch"]): row for row in dense_rows or [] if row.get("energy_without_grid_j")}
    archs = list(dict.fromkeys(arch for _, arch in hw))
    header = ["experiment", *(f"skipped in {label}" for label in SKIPPED_FRACTIONS.values())]
    for arch in archs:
        header += [f"{arch} energy/frame", "without the grid"]
    rows = []
    for name, members in groups.items():
        row = [name] + [f"{np.mean([s.get(k, 0.0) for _, s in members]):.1%}" for k in SKIPPED_FRACTIONS]
        for arch in archs:
            cells = [hw[(d.name, arch)] for d, _ in members if (d.name, arch) in hw]
            if not cells:
                row += ["n/a", "n/a"]
                continue
            with_grid = np.mean([float(c["energy_per_frame_j"]) for c in cells])
            without = np.mean([float(c["energy_without_grid_j"]) for c in cells])
            row += [si(with_grid, "J"), f"{si(without, 'J')} ({without / with_grid:.2f}×)"]
        rows.append(row)
    return [markdown_table(header, rows), "",
            "Measured by each run: the fraction of the MLP queries its occupancy grid skipped over the training "
            "rays (`skipped_train_*`) and over the final render of the test views (`skipped_render_*`, early "
            "ray termination included). Energy per frame is hw_eval's dense design on the samples the run "
            "evaluated, and on every sample of the frame (*without the grid*, in brackets its ratio)."]


def missing_experiments(runs_dir: Path, runs) -> list[str]:
    """A Markdown item per experiment of the suite (configs.AXES) without a finished run, saying why."""
    path = runs_dir / FAILED
    failed = read_json(path) if path.is_file() else {}
    if not isinstance(failed, dict) or not all(isinstance(reason, str) for reason in failed.values()):
        raise UserError(f"{path}: expected an object of experiment names and reasons, as the notebook writes it")
    finished = {summary["experiment"] for _, summary in runs}
    items = []
    for name in configs.AXES:
        if name in finished:
            continue
        # The run directories it would have: NAME, or NAME-seedS for each seed of --seeds.
        dirs = sorted(d for d in runs_dir.iterdir() if d.is_dir() and re.fullmatch(rf"{name}(-seed\d+)?", d.name))
        if name in failed:
            why = failed[name]
        elif not dirs:
            why = "no run directory"
        elif any((d / rundir.CHECKPOINT).is_file() for d in dirs):
            why = (f"run directory {', '.join(d.name for d in dirs)} without {rundir.SUMMARY} (the run did not finish;"
                   f" --resume continues it)")
        else:
            why = (f"run directory {', '.join(d.name for d in dirs)} without {rundir.SUMMARY} or a checkpoint (the run"
                   f" stopped before its first one; --overwrite trains it again)")
        items.append(f"- {name}: {why}")
    return items


def experiment_groups(runs) -> dict[str, list[tuple[Path, dict]]]:
    """The runs of each experiment, in run order: the seeds of one experiment (--seeds) share its name."""
    groups = {}
    for run_dir, summary in runs:
        groups.setdefault(summary["experiment"], []).append((run_dir, summary))
    return groups


def plot_psnr(runs, path: Path) -> None:
    """Test PSNR of each experiment against steps, rays seen and wall time: the mean over its seeds, with
    the 95% interval as a band where it has several."""
    figure = Figure(figsize=(15, 4.2), layout="constrained")
    by_step, by_rays, by_wall = figure.subplots(1, 3, sharey=True)
    for i, (experiment, group) in enumerate(experiment_groups(runs).items()):
        curves = [psnr_curve(run_dir, summary) for run_dir, summary in group]
        length = min(len(curve) for curve in curves)  # equal for seeds of one configuration
        estimates = [stats.mean_interval([curve[k][2] for curve in curves]) for k in range(length)]
        psnr = np.array([e.mean for e in estimates])
        steps = np.array([curves[0][k][0] for k in range(length)])
        walls = np.array([np.mean([curve[k][1] for curve in curves]) for k in range(length)])
        label = f"{experiment} ({group[0][1]['precision']}{f', {len(group)} seeds' if len(group) > 1 else ''})"
        for axes, x in ((by_step, steps), (by_rays, steps * group[0][1]["global_batch_rays"]), (by_wall, walls)):
            axes.plot(x, psnr, "o-", color=f"C{i % 10}", label=label, markersize=4)
            if len(group) > 1:
                half = np.array([e.half_width for e in estimates])
                axes.fill_between(x, psnr - half, psnr + half, color=f"C{i % 10}", alpha=0.2, linewidth=0)
    # The periodic evaluations render validation views where the scene has them; the last point is the test views.
    by_step.set(title="Held-out PSNR against optimizer steps", xlabel="step", ylabel="val, then final test PSNR (dB)")
    by_rays.set(title="Held-out PSNR against rays seen", xlabel="training rays seen")
    by_wall.set(title="Held-out PSNR against wall time", xlabel="wall time since the run started (s)")
    for axes in (by_step, by_rays, by_wall):
        axes.grid(alpha=0.3)
    figure.legend(*by_step.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    save_figure(figure, path)


# What the interval tables and the Pareto plot compare: summary field -> (label, decimals).
SEED_METRICS = {"psnr_test": ("test PSNR (dB)", 2), "ssim_test": ("test SSIM", 3),
                "train_samples_per_s": ("train samples/s", 0), "wall_s": ("wall time (s)", 0)}


def by_seed(group, value) -> dict[int, float]:
    """value(run_dir, summary) of each run of one experiment, by seed; runs where it is None are left out."""
    values = {summary.get("seed", 0): value(run_dir, summary) for run_dir, summary in group}
    return {seed: v for seed, v in values.items() if v is not None}


def seed_measures(dense_rows: list[dict] | None) -> dict[str, tuple[str, int, object]]:
    """Every measure of the interval tables: label, decimals and how to read it from a run."""
    hw = {(row["run"], row["arch"]): float(row["energy_per_frame_j"]) for row in dense_rows or []}
    measures = {field: (label, digits, lambda run_dir, s, field=field: s[field])
                for field, (label, digits) in SEED_METRICS.items()}
    for arch in dict.fromkeys(row["arch"] for row in dense_rows or []):
        measures[f"energy:{arch}"] = (f"{arch} energy/frame (J)", 3,
                                      lambda run_dir, s, arch=arch: hw[run_dir.name, arch]
                                      if (run_dir.name, arch) in hw else None)
    return measures


def compile_settings(group) -> set:
    """The measured `compiled` of an experiment's runs (None for a summary from before it was recorded)."""
    return {summary.get("compiled") for _, summary in group}


def intervals_section(runs, dense_rows: list[dict] | None) -> list[str]:
    """Each experiment's mean and 95% t interval over its seeds, and its difference from exp1 paired seed
    by seed, marked where the interval covers zero."""
    groups, measures = experiment_groups(runs), seed_measures(dense_rows)
    most_seeds = max(len(group) for group in groups.values())
    rows = []
    for experiment, group in groups.items():
        cells = []
        for label, digits, value in measures.values():
            values = list(by_seed(group, value).values())
            cells.append(stats.mean_interval(values).format(digits) if values else "n/a")
        rows.append([experiment, ", ".join(str(s.get("seed", 0)) for _, s in group), *cells])
    lines = [markdown_table(["experiment", "seeds", *(label for label, _, _ in measures.values())], rows), ""]
    reference = groups.get("exp1")
    if reference is None:
        return lines + ["No exp1 runs: no differences against it."]
    rows = []
    for experiment, group in groups.items():
        if experiment == "exp1":
            continue
        cells = []
        for key, (label, digits, value) in measures.items():
            if key == "train_samples_per_s" and compile_settings(group) != compile_settings(reference):
                cells.append("n/a (compiled differs)")  # throughput compares only like with like
                continue
            difference = stats.paired_difference(by_seed(group, value), by_seed(reference, value))
            cells.append("n/a" if difference is None else
                         f"{difference.format(digits)}{' (not significant)' if difference.covers_zero else ''}"
                         if difference.half_width is not None else f"{difference.mean:+.{digits}f}")
        rows.append([experiment, *cells])
    lines += [markdown_table(["difference against exp1", *(label for label, _, _ in measures.values())], rows), ""]
    if most_seeds < 2:
        lines.append("One seed per experiment: these differences carry no interval and may be noise. "
                     "`make suite SEEDS=3` runs every experiment on seeds 0, 1 and 2 and gives intervals.")
    else:
        lines.append("Mean ± the half-width of the 95% t interval over the seeds. Each difference pairs an "
                     "experiment's run with exp1's run of the same seed; *not significant*: its interval covers zero.")
    return lines


def plot_pareto(runs, dense_rows: list[dict] | None, path: Path) -> None:
    """Test PSNR against energy per frame (a panel per architecture), training time and model size: each
    experiment a point with its 95% intervals, the Pareto front (lower cost, higher PSNR) drawn."""
    groups, measures = experiment_groups(runs), seed_measures(dense_rows)
    costs = [(key, label) for key, (label, _, _) in measures.items() if key.startswith("energy:")]
    costs += [("train_s", "training time (s)"), ("model_bytes", "model size (bytes)")]
    figure = Figure(figsize=(4.2 * len(costs) + 1.0, 4.0), layout="constrained")
    for axes, (key, label) in zip(figure.subplots(1, len(costs), squeeze=False)[0], costs):
        cost_of = measures[key][2] if key in measures else (lambda run_dir, s, key=key: s.get(key))
        points = []
        for i, (experiment, group) in enumerate(groups.items()):
            cost = list(by_seed(group, cost_of).values())
            if not cost:
                continue
            x, y = stats.mean_interval(cost), stats.mean_interval([s["psnr_test"] for _, s in group])
            axes.errorbar(x.mean, y.mean, xerr=x.half_width, yerr=y.half_width, fmt="o", color=f"C{i % 10}",
                          label=experiment, capsize=3)
            points.append((x.mean, y.mean))
        front = [points[i] for i in stats.pareto_front(points)]
        if front:
            axes.step(*zip(*front), where="post", color="k", linewidth=0.8, linestyle="--", label="Pareto front")
        axes.set(xlabel=label, ylabel="test PSNR (dB)", title=f"test PSNR against {label.split(' (')[0]}")
        axes.grid(alpha=0.3)
    figure.legend(*axes.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    save_figure(figure, path)


def render_views(run_dir: Path) -> list[str]:
    return sorted(p.stem.removeprefix("rgb_") for p in (run_dir / rundir.RENDERS).glob("rgb_*.png"))


def plot_renders(runs, path: Path) -> list[str]:
    """Ground truth, then each experiment's render and depth map, for the first test views all runs rendered.

    Returns the views shown (none: no plot).
    """
    views = sorted(set.intersection(*(set(render_views(run_dir)) for run_dir, _ in runs)))[:RENDER_VIEWS]
    if not views:
        return []
    cell = 1.7
    figure = Figure(figsize=(cell * 2 * len(views) + 1.0, cell * (len(runs) + 1)), layout="constrained")
    grid = figure.subplots(len(runs) + 1, 2 * len(views), squeeze=False)
    for axes in grid.flat:
        axes.set_xticks([])
        axes.set_yticks([])
    first_run = runs[0][0]
    for i, view in enumerate(views):
        grid[0, 2 * i].imshow(iio.imread(first_run / rundir.RENDERS / f"gt_{view}.png"))
        grid[0, 2 * i].set_title(f"view {int(view)}", fontsize=9)
        grid[0, 2 * i + 1].set_title(f"view {int(view)} depth", fontsize=9)
        grid[0, 2 * i + 1].set_axis_off()
        for row, (run_dir, _) in enumerate(runs, start=1):
            grid[row, 2 * i].imshow(iio.imread(run_dir / rundir.RENDERS / f"rgb_{view}.png"))
            grid[row, 2 * i + 1].imshow(iio.imread(run_dir / rundir.RENDERS / f"depth_{view}.png"))
    grid[0, 0].set_ylabel("ground truth", fontsize=9)
    for row, (run_dir, summary) in enumerate(runs, start=1):
        grid[row, 0].set_ylabel(f"{run_dir.name}\n{summary['psnr_test']:.2f} dB", fontsize=9)
    save_figure(figure, path)
    return views


def plot_energy(runs, hw_rows: list[dict], path: Path) -> None:
    """Per architecture, a bar per run: energy per frame stacked by component."""
    hw = {(row["run"], row["arch"]): row for row in hw_rows}
    archs = list(dict.fromkeys(row["arch"] for row in hw_rows))
    figure = Figure(figsize=(1.0 + 4.5 * len(archs), 4.2), layout="constrained")
    for axes, arch in zip(figure.subplots(1, len(archs), squeeze=False)[0], archs):
        names = [run_dir.name for run_dir, _ in runs if (run_dir.name, arch) in hw]
        totals = np.zeros(len(names))
        for i, (column, part) in enumerate(HW_ENERGY_PARTS.items()):
            energies = np.array([float(hw[name, arch][column]) for name in names])
            axes.bar(names, energies, bottom=totals, label=part, color=f"C{i}")
            totals += energies
        for x, total in enumerate(totals):
            axes.annotate(si(total, "J"), (x, total), ha="center", va="bottom", fontsize=8)
        # An explicit limit: a zero-height top segment's bar edge would pin the axis to the tallest bar.
        axes.set(title=f"{arch}: energy per {FRAME} frame", ylabel="energy per frame (J)",
                 ylim=(0, 1.12 * totals.max()))
        axes.tick_params(axis="x", labelrotation=30)
        axes.grid(axis="y", alpha=0.3)
    figure.legend(*axes.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    save_figure(figure, path)


def hw_by_design(hw_rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    return {(row["run"], row["arch"], row["design"]): row for row in hw_rows}


def dense_reference(hw_rows: list[dict], arch: str) -> dict | None:
    """Dense exp1 on the architecture: what every design is compared with."""
    return next((row for row in hw_rows if row["arch"] == arch and row["design"] == "dense"
                 and row.get("experiment") == "exp1"), None)


def plot_designs(runs, hw_rows: list[dict], path: Path) -> None:
    """Per architecture, energy and latency per frame of each run under each design (grouped bars), against dense exp1."""
    hw = hw_by_design(hw_rows)
    archs = list(dict.fromkeys(row["arch"] for row in hw_rows))
    figure = Figure(figsize=(1.5 + 5.0 * len(archs), 7.0), layout="constrained")
    grid = figure.subplots(2, len(archs), squeeze=False)
    width = 0.8 / len(HW_DESIGNS)
    for column, arch in enumerate(archs):
        reference = dense_reference(hw_rows, arch)
        names = [run_dir.name for run_dir, _ in runs if (run_dir.name, arch, "dense") in hw]
        for row, metric in enumerate(("energy_per_frame_j", "latency_per_frame_s")):
            axes = grid[row, column]
            for i, (design, title) in enumerate(HW_DESIGNS.items()):
                values = [float(hw[name, arch, design][metric]) / (float(reference[metric]) if reference else 1.0)
                          if (name, arch, design) in hw else 0.0 for name in names]
                axes.bar(np.arange(len(names)) + (i - 1) * width, values, width, label=title, color=f"C{i}")
            axes.axhline(1.0, color="k", linewidth=0.8, linestyle=":")
            label, unit = HW_METRICS[metric]
            axes.set(title=f"{arch}: {label} per {FRAME} frame",
                     ylabel=f"{label} / dense exp1" if reference else f"{label} ({unit})")
            axes.set_xticks(range(len(names)), names, rotation=30)
            axes.grid(axis="y", alpha=0.3)
    figure.legend(*grid[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    save_figure(figure, path)


def designs_table(runs, hw_rows: list[dict], arch: str) -> str:
    """Energy, latency and EDP of each run under each design on one architecture, as multiples of dense exp1."""
    hw, reference = hw_by_design(hw_rows), dense_reference(hw_rows, arch)

    def cell(row, metric):
        if row is None:
            return "n/a"
        value = float(row[metric])
        return f"{value / float(reference[metric]):.3f}×" if reference else si(value, HW_METRICS[metric][1])

    header = ["experiment", "precision"] + [f"{HW_METRICS[m][0]}, {design}" for m in HW_METRICS for design in HW_DESIGNS]
    rows = [[s["experiment"], s["precision"]] + [cell(hw.get((run_dir.name, arch, design)), metric)
                                                for metric in HW_METRICS for design in HW_DESIGNS]
            for run_dir, s in runs if (run_dir.name, arch, "dense") in hw]
    return markdown_table(header, rows)


def design_winners(runs, hw_rows: list[dict], arch: str) -> str:
    """Under each design, the precision (and run) with the lowest energy, latency and EDP on the architecture."""
    hw, reference = hw_by_design(hw_rows), dense_reference(hw_rows, arch)
    names = [run_dir.name for run_dir, _ in runs]
    rows = []
    for design, title in HW_DESIGNS.items():
        candidates = [hw[name, arch, design] for name in names if (name, arch, design) in hw]
        if not candidates:
            continue
        cells = []
        for metric in HW_METRICS:
            best = min(candidates, key=lambda row: float(row[metric]))
            ratio = f", {float(best[metric]) / float(reference[metric]):.3f}× dense exp1" if reference else ""
            cells.append(f"{best['precision']} ({best['run']}{ratio})")
        rows.append([title, *cells])
    return markdown_table(["design", "lowest energy", "lowest latency", "lowest EDP"], rows)


def zero_weight_share(runs, hw_rows: list[dict], arch: str) -> str | None:
    """How much of each BitNeRF run's energy advantage over exp1 (under the same design) comes from its zero
    weights: the advantage with its weights as measured, and with every weight taken as dense (hw_eval's
    energy_weights_dense_j), whose ratio is the zero weights' part."""
    hw = hw_by_design(hw_rows)
    exp1 = {design: next((row for row in hw_rows if row["arch"] == arch and row["design"] == design
                          and row.get("experiment") == "exp1"), None) for design in HW_DESIGNS}
    rows = []
    for run_dir, s in runs:
        if s.get("model") != "bitnerf":
            continue
        for design, title in HW_DESIGNS.items():
            row, reference = hw.get((run_dir.name, arch, design)), exp1[design]
            if row is None or reference is None or not row.get("energy_weights_dense_j"):
                continue
            energy, dense_weights = float(row["energy_per_frame_j"]), float(row["energy_weights_dense_j"])
            advantage, without = float(reference["energy_per_frame_j"]) / energy, float(reference["energy_per_frame_j"]) / dense_weights
            zeros = dense_weights / energy
            share = math.log(zeros) / math.log(advantage) if advantage > 1 and zeros > 0 else float("nan")
            joint = row.get("joint_density_measured") or ""
            rows.append([run_dir.name, title, f"{advantage:.2f}×", f"{without:.2f}×", f"{zeros:.3f}×",
                         "n/a" if math.isnan(share) else percent(share),
                         f"{float(row['weight_density']):.3f}", f"{float(row['effectual_density']):.3f}",
                         f"{float(joint):.3f}" if joint else "not measured"])
    if not rows:
        return None
    return markdown_table(["run", "design (vs exp1 under the same design)", "energy advantage over exp1",
                           "with its weights taken as dense", "from its zero weights", "share of the advantage",
                           "weight density", "effectual (product, used)", "joint (measured)"], rows)


def hardware_designs_section(runs, hw_rows: list[dict], out_dir: Path) -> list[str]:
    """The three designs side by side: a grouped bar plot and, per architecture, the table, the winners and
    BitNeRF's zero weights' part."""
    if not any(row["design"] != "dense" for row in hw_rows):
        return ["", "The gating and skipping designs are not in this results.csv (an older hw_eval.py wrote it): "
                "rerun `python hw_eval.py`, then this report."]
    plot_designs(runs, hw_rows, out_dir / "designs.png")
    lines = ["", "### Sparsity on the accelerator: dense, gating, skipping", "",
             "![Energy and latency per frame under each design, against dense exp1](designs.png)", "",
             "*dense*: the mapping as AccelForge gives it; *gating*: a zero operand gates its MAC and the operand "
             "reads that feed it (energy saved, cycles not); *skipping*: activations compressed in memory (their "
             "metadata counted), zero MACs skipped, the PE array waiting for its slowest PE (energy and cycles "
             "saved). Densities come from layers.json (input zeros on test rays, BitNeRF's ternary zeros); a run "
             "without weight densities is taken as dense. Every value is a multiple of dense exp1 on the same "
             "architecture. README.md, \"Accelerator evaluation\", gives the model and its sources."]
    for arch in dict.fromkeys(row["arch"] for row in hw_rows):
        lines += ["", f"#### {arch}", "", designs_table(runs, hw_rows, arch), "",
                  "Which precision wins under each design:", "", design_winners(runs, hw_rows, arch)]
        share = zero_weight_share(runs, hw_rows, arch)
        if share:
            lines += ["", "How much of BitNeRF's energy advantage comes from its zero weights (its ternary "
                      "zeros; the rest is its narrower bits): the advantage over exp1 under the same design, as "
                      "measured and with its weights taken as dense; *share*: the zero weights' part of the "
                      "advantage, in logarithms:", "", share]
    assumed = sorted({row["run"] for row in hw_rows if row.get("weight_density_source", "measured") != "measured"})
    if assumed:
        lines += ["", f"Weight densities not in layers.json (trained before they were recorded), taken as dense: "
                  f"{', '.join(assumed)}."]
    return lines


def ptq_table(runs) -> str | None:
    """Post-training quantization variants (ptq.py) beside the runs that trained BitNeRF, or None without ptq.json."""
    rows = []
    for run_dir, _ in runs:
        if (run_dir / rundir.PTQ).exists():
            rows += [[f"{run_dir.name}, {v['variant']}", "after training (ptq.py)", f"{v['weight_bits']:g}",
                      si(v["model_bytes"], "B"), f"{v['psnr_test']:.2f}", f"{v['ssim_test']:.3f}"]
                     for v in read_json(run_dir / rundir.PTQ)]
    if not rows:
        return None
    rows += [[run_dir.name, "during training (BitNet b1.58)", f"{s['weight_bits']:g}", si(s["model_bytes"], "B"),
              f"{s['psnr_test']:.2f}", f"{s['ssim_test']:.3f}"] for run_dir, s in runs if s["model"] == "bitnerf"]
    return markdown_table(["model", "quantized", "weight bits", "model size", "test PSNR (dB)", "test SSIM"], rows)


def layer_label(name: str) -> str:
    """BitNeRF's Linear sits inside an RMSNormLinear (`coarse.layers.0.linear`); name it as NeRF's layer."""
    return name.removesuffix(".linear")


def plot_sparsity(activation: dict, weight: dict, near_zero_weight: float, runs, path: Path) -> None:
    """Per layer: the fraction of zero inputs, and of near-zero (and ternary zero) weights, a line per run."""
    figure = Figure(figsize=(11, 6.5), layout="constrained")
    inputs_axes, weights_axes = figure.subplots(2, 1, sharex=True)
    colors = run_colors(runs)
    layers = list(dict.fromkeys(layer_label(layer["name"]) for result in (*activation.values(), *weight.values())
                                for layer in result))
    positions = {name: i for i, name in enumerate(layers)}

    def plot(axes, result, key, **style):
        points = [(positions[layer_label(layer["name"])], layer[key]) for layer in result if key in layer]
        if points:
            axes.plot(*zip(*points), "o", **style, markersize=4)

    for run_name, result in activation.items():
        plot(inputs_axes, result, "input_sparsity", linestyle="-", color=colors[run_name], label=run_name)
    for run_name, result in weight.items():
        color = colors[run_name]
        plot(weights_axes, result, "near_zero", linestyle="-", color=color,
             label=f"{run_name}: |w| ≤ {near_zero_weight:g}·max|w|")
        plot(weights_axes, result, "ternary_zero", linestyle="--", color=color, label=f"{run_name}: ternary zeros")
    inputs_axes.set(title="Input activation sparsity per layer (fraction of exactly-zero inputs, test rays)",
                    ylabel="zero inputs")
    weights_axes.set(title="Weight sparsity per layer", ylabel="zero or near-zero weights")
    weights_axes.set_xticks(range(len(layers)), layers, rotation=35, ha="right")
    for axes in (inputs_axes, weights_axes):
        axes.set_ylim(-0.03, 1.03)
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="upper left", ncols=2)
    save_figure(figure, path)


def sparsity_tables(activation: dict, weight: dict) -> str:
    """A table of layers against runs: zero inputs, and near-zero weights with BitNeRF's ternary zeros."""
    runs = list(dict.fromkeys([*activation, *weight]))
    cells: dict[str, dict[str, str]] = {}
    for run_name in runs:
        inputs = {layer_label(layer["name"]): layer["input_sparsity"] for layer in activation.get(run_name, [])}
        weights = {layer_label(layer["name"]): layer for layer in weight.get(run_name, [])}
        for name in dict.fromkeys([*inputs, *weights]):
            ternary = weights.get(name, {}).get("ternary_zero")
            parts = [f"in {percent(inputs[name])}" if name in inputs else "",
                     f"w {percent(weights[name]['near_zero'])}" if name in weights else "",
                     f"ternary {percent(ternary)}" if ternary is not None else ""]
            cells.setdefault(name, {})[run_name] = " · ".join(p for p in parts if p)
    rows = [[f"`{name}`", *(by_run.get(run_name, "") for run_name in runs)] for name, by_run in cells.items()]
    return markdown_table(["layer", *runs], rows)


def render_sparsity_table(results: dict, skippable_weight: float) -> str:
    rows = [[run_name, name, p["samples_per_ray"], percent(p["skippable"]), percent(p["empty_space"]),
             percent(p["behind_surface"])]
            for run_name, result in results.items() for name, p in result["passes"].items()]
    return markdown_table(["experiment", "pass", "samples per ray", f"weight < {skippable_weight:g} (skippable)",
                           "of which empty space", "of which behind the surface"], rows)


def plot_time_breakdown(results: dict, stages: list[str], runs, path: Path) -> None:
    """A horizontal bar per run: the share of each rendering stage, with the render's total time."""
    names = [run_dir.name for run_dir, _ in runs if run_dir.name in results][::-1]
    figure = Figure(figsize=(9, 1.2 + 0.45 * len(names)), layout="constrained")
    axes = figure.subplots()
    left = np.zeros(len(names))
    for i, stage in enumerate(stages):
        shares = np.array([results[n]["stages_s"][stage] / results[n]["total_s"] for n in names])
        axes.barh(names, shares, left=left, label=stage, color=f"C{i}")
        left += shares
    for y, name in enumerate(names):
        axes.annotate(f" {1e3 * results[name]['total_s']:.0f} ms", (left[y], y), va="center", fontsize=8)
    axes.set(title="Where the time of rendering one test image goes (torch.profiler)",
             xlabel="share of the render time", xlim=(0, 1.15))
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    figure.legend(*axes.get_legend_handles_labels(), loc="outside lower center", ncols=len(stages), fontsize=8)
    save_figure(figure, path)


def time_table(results: dict, stages: list[str]) -> str:
    rows = [[run_name, f"{1e3 * r['total_s']:.0f} ms",
             *(f"{1e3 * r['stages_s'][s]:.0f} ms ({percent(r['stages_s'][s] / r['total_s'])})" for s in stages)]
            for run_name, r in results.items()]
    return markdown_table(["experiment", "render (1 view)", *stages], rows)


def read_analyses(out_dir: Path, analyze_command: str) -> dict | None:
    """analyze.py's analyses.json in out_dir, or None when analyze.py has not written one there."""
    path = out_dir / ANALYSES
    if not path.exists():
        return None
    analyses = read_json(path)
    if not isinstance(analyses, dict) or not isinstance(analyses.get("definitions"), dict):
        raise UserError(f"{path} lacks the analyses' definitions (an older analyze.py wrote it):"
                        f" rerun `{analyze_command}`")
    return analyses


def analyses_section(analyses: dict, runs, out_dir: Path, analyze_command: str, report_command: str) -> list[str]:
    """The analyses' Markdown (and plots) for the runs in this report; each says how to rerun it."""
    run_names = [run_dir.name for run_dir, _ in runs]
    definitions = analyses["definitions"]
    near_zero, skippable, stride = (definitions[k] for k in ("near_zero_weight", "skippable_weight", "pixel_stride"))
    present = {name: {run: result[run] for run in run_names if run in result}
               for name, result in analyses.items() if name != "definitions"}

    def command(*names):
        return f"Reproduce: `{analyze_command} --only {' '.join(names)}`, then `{report_command}`."

    def missing(*names):
        return f"Not computed for these runs. {command(*names)}"

    lines = ["## Analyses", "",
             "What an accelerator could skip, and where rendering time goes (after the Accelerating-NeRFs seed).", ""]
    activation, weight = present.get("activation_sparsity", {}), present.get("weight_sparsity", {})
    lines += ["### Sparsity per layer: inputs and weights", ""]
    if activation or weight:
        plot_sparsity(activation, weight, near_zero, runs, out_dir / "sparsity.png")
        lines += ["![Input activation and weight sparsity per layer](sparsity.png)", "",
                  f"*in*: the fraction of exactly-zero inputs of the layer on test rays (layers.json; ReLU outputs "
                  f"are what a zero-gating MAC array could skip); *w*: the fraction of weights with "
                  f"|w| ≤ {near_zero:g}·max|w| of the layer (BitNeRF: of its latent fp32 weights); "
                  f"*ternary*: BitNeRF's exact zeros among the ternary weights its forward pass uses.", "",
                  sparsity_tables(activation, weight), "", command("activation_sparsity", "weight_sparsity"), ""]
    else:
        lines += [missing("activation_sparsity", "weight_sparsity"), ""]

    lines += ["### Volume-rendering weight sparsity", ""]
    if present.get("render_weight_sparsity"):
        views = sorted({v for result in present["render_weight_sparsity"].values() for v in result["views"]})
        lines += [f"Samples whose compositing weight w = T·α is below {skippable:g} change no pixel "
                  f"visibly: empty-space skipping and early ray termination exist to skip them. *Empty space*: the "
                  f"ray is still transparent there (T ≥ {skippable:g}) but nothing is there; *behind "
                  f"the surface*: the transmittance T has fallen below {skippable:g}, what early ray "
                  f"termination skips. Test view(s) {', '.join(map(str, views))}, one pixel of "
                  f"every {stride}×{stride} block.", "",
                  render_sparsity_table(present["render_weight_sparsity"], skippable), "",
                  command("render_weight_sparsity"), ""]
    else:
        lines += [missing("render_weight_sparsity"), ""]

    lines += ["### Where the time of rendering an image goes", ""]
    if present.get("time_breakdown"):
        results = present["time_breakdown"]
        plot_time_breakdown(results, definitions["time_stages"], runs, out_dir / "time_breakdown.png")
        first = next(iter(results.values()))
        lines += ["![Time breakdown of rendering one test image](time_breakdown.png)", "",
                  f"One {first['pixels']}-pixel test view rendered in eval mode on `{first['device']}` under "
                  f"torch.profiler, with ranges around nerf.py's stages: *MLP* is the radiance field less its "
                  f"positional encoding; *other* is the rest (chunking, sorting the fine samples). Timings on a "
                  f"shared machine are indicative.", "", time_table(results, definitions["time_stages"]), "",
                  command("time_breakdown"), ""]
    else:
        lines += [missing("time_breakdown"), ""]
    return lines


def write_report(runs_dir: Path, hw_dir: Path, out_dir: Path, command: str) -> Path:
    """Write out_dir/README.md and its plots, with out_dir/analyses.json's analyses; returns the README's path."""
    runs = rundir.find_runs(runs_dir)
    hw_rows = read_hw_results(hw_dir)
    dense_rows = [row for row in hw_rows if row["design"] == "dense"] if hw_rows else None
    analyze_command = shlex.join(["python", "analyze.py", "--runs", str(runs_dir), "--out", str(out_dir)])
    analyses = read_analyses(out_dir, analyze_command)
    missing = missing_experiments(runs_dir, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# NeRF experiments: report", "",
             f"Written by `{command}` from {len(runs)} runs in `{runs_dir}`, in experiment order.", ""]
    if missing:
        lines += ["## Missing experiments", "",
                  f"The experiments without a finished run ({rundir.SUMMARY}), and why: the line recorded when "
                  f"the experiment failed (`{runs_dir / FAILED}`), else what its run directory holds.", "",
                  *missing, ""]
    lines += ["## Results", "", results_table(runs, dense_rows, hw_dir), "",
              "## Seeds and intervals", "", *intervals_section(runs, dense_rows), "",
              "## Empty-space skipping", "", *skipping_section(runs, dense_rows), "",
              "## Quality against cost", ""]
    plot_pareto(runs, dense_rows, out_dir / "pareto.png")
    lines += ["![Test PSNR against energy per frame, training time and model size](pareto.png)", "",
              "Each experiment at its mean over seeds, with 95% intervals where it has several; the dashed line "
              "joins the experiments that no other beats on both cost and PSNR (the Pareto front). Energy is the "
              "dense design's (`hw_eval.py`).", "",
              "## Held-out PSNR during training", ""]
    plot_psnr(runs, out_dir / "psnr.png")
    lines += ["![Held-out PSNR against steps, rays seen and wall time](psnr.png)", "",
              "Periodic evaluations render the first validation views where the scene has them, else the first "
              "test views (`eval_views`); the last point of each run is the final evaluation on every one of those views (validation or test). Against rays seen, experiments with other batch sizes "
              "(exp3) line up with the rest.", "",
              "## Test renders and depth maps", ""]
    views = plot_renders(runs, out_dir / "renders.png")
    lines += (["![Test renders and depth maps](renders.png)", "",
               f"Test view(s) {', '.join(str(int(v)) for v in views)}: the ground truth on top, then each experiment's "
               f"render and depth map (turbo colour map, near red, far blue); each row gives the run's test PSNR on "
               f"every test view."] if views else ["No test view was rendered by every run (`renders/rgb_*.png`)."])
    lines += ["", "## Energy per frame on modelled accelerators", ""]
    if hw_rows:
        plot_energy(runs, dense_rows, out_dir / "energy.png")
        archs = list(dict.fromkeys(row["arch"] for row in hw_rows))
        tables = [f"[{arch}]({os.path.relpath(hw_dir / f'{arch}.md', out_dir)})" for arch in archs
                  if (hw_dir / f"{arch}.md").exists()]
        lines += ["![Energy per frame by component, per architecture](energy.png)", "",
                  f"Energy per {FRAME} frame (dense design), stacked by where it is spent, from `hw_eval.py` "
                  "(AccelForge models, not measurements)."
                  + (f" Per-architecture tables: {', '.join(tables)}." if tables else "")]
        lines += hardware_designs_section(runs, hw_rows, out_dir)
    else:
        lines += [f"n/a: no hardware results at `{hw_dir / 'results.csv'}`; run `python hw_eval.py`, then this report."]
    ptq = ptq_table(runs)
    if ptq:
        lines += ["", "## Post-training quantization vs BitNet training", "",
                  "The same question answered two ways: quantize a trained NeRF (`python ptq.py runs/exp1`), or train "
                  "BitNeRF's ternary weights from the start (exp4).", "", ptq]
    report_command = shlex.join(["python", "report.py", "--runs", str(runs_dir), "--hw", str(hw_dir),
                                 "--out", str(out_dir)])
    if analyses is None:
        lines += ["", "## Analyses", "", f"Not computed: run `{analyze_command}` (`make suite` does), then "
                  f"`{report_command}`."]
    else:
        lines += ["", *analyses_section(analyses, runs, out_dir, analyze_command, report_command)]
    path = out_dir / "README.md"
    atomic_write(path, "\n".join(lines).rstrip() + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="report.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the folder of run directories")
    parser.add_argument("--hw", type=Path, default=Path("hw_eval"), help="hw_eval.py's output folder")
    parser.add_argument("--out", type=Path, default=Path("report"),
                        help="where README.md and the plots go, and where analyze.py wrote analyses.json")
    start = time.perf_counter()
    with exit_on_user_error():
        args = parser.parse_args(argv)
        command = shlex.join(["python", "report.py", *(sys.argv[1:] if argv is None else argv)])
        path = write_report(args.runs, args.hw, args.out, command)
    print(f"report -> {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
