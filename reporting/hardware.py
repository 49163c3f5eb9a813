"""The accelerator models' numbers in the report: each run's own hw_eval.py results (only while they are the
run's as it is now), energy per frame by component, and the three designs (dense, gating, skipping) side by
side against dense exp1."""

import math
import os
import shlex
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from accel.results import (
    DESIGN_TITLES,
    ENERGY_PARTS,
    FRAME,
    IDENTITY,
    METRICS,
    NOT_EVALUATED,
    RUN_RESULTS,
    WEIGHTS_MEASURED,
    exp1_row,
    markdown_table,
    percent,
    read_run_results,
    results_csv_identities,
    run_identity,
    si,
)
from reporting.plots import save_figure
from utils import UserError

# The columns of hw_eval.py's rows that the report reads.
HW_COLUMNS = (
    "run",
    "experiment",
    "arch",
    "design",
    "precision",
    "energy_per_frame_j",
    "latency_per_frame_s",
    *ENERGY_PARTS,
)


def read_results(runs) -> tuple[list[dict], list[str]]:
    """Every row of the runs that hw_eval.py costed as they are now, each row's run named by its run directory
    (the runs of a report may be moved or renamed since); and the runs whose hw_eval.json belongs to another
    run or to another layers.json, which are left out."""
    rows, stale = [], []
    for run_dir, summary in runs:
        run_rows = read_run_results(run_dir, summary)
        if run_rows is None:
            if (run_dir / RUN_RESULTS).is_file():
                stale.append(run_dir.name)
            continue
        missing = [c for c in HW_COLUMNS if any(c not in row for row in run_rows)]
        if missing:
            raise UserError(
                f"{run_dir / RUN_RESULTS} lacks the columns {', '.join(missing)}: rerun hw_eval.py to rewrite it"
            )
        rows += [{**row, "run": run_dir.name} for row in run_rows]
    return rows, stale


def not_evaluated_note(runs_dir: Path, stale: list[str]) -> str:
    """What a *not evaluated* cell means, and the command that fills it."""
    command = shlex.join(["python", "hw_eval.py", "--runs", str(runs_dir)])
    note = (
        f"*{NOT_EVALUATED}*: the run directory holds no accelerator results of its own for its layers.json as "
        f"it is now (`{RUN_RESULTS}`, which hw_eval.py writes there): run `{command}` (`make suite` does), then "
        f"this report again."
    )
    if stale:
        note += (
            f" Results left out as stale or another run's (computed for another layers.json or run_id): "
            f"{', '.join(stale)}."
        )
    return note


def energy_section(
    runs, runs_dir: Path, hw_rows: list[dict], stale: list[str], hw_dir: Path, out_dir: Path
) -> list[str]:
    """Energy per frame by component (the dense design), links to hw_eval.py's tables where they hold these
    runs, and the three designs."""
    lines = ["## Energy per frame on modelled accelerators", ""]
    if not hw_rows:
        return lines + [not_evaluated_note(runs_dir, stale)]
    plot_energy(runs, [row for row in hw_rows if row["design"] == "dense"], out_dir / "energy.png")
    archs = list(dict.fromkeys(row["arch"] for row in hw_rows))
    tables = (
        [
            f"[{arch}]({os.path.relpath(hw_dir / f'{arch}.md', out_dir)})"
            for arch in archs
            if (hw_dir / f"{arch}.md").exists()
        ]
        if tables_hold(runs, hw_dir)
        else []
    )
    lines += [
        "![Energy per frame by component, per architecture](energy.png)",
        "",
        f"Energy per {FRAME} frame (dense design), stacked by where it is spent, from `hw_eval.py` "
        "(AccelForge models, not measurements)."
        + (f" Per-architecture tables: {', '.join(tables)}." if tables else ""),
    ]
    return lines + hardware_designs_section(runs, hw_rows, out_dir)


def tables_hold(runs, hw_dir: Path) -> bool:
    """Whether hw_eval.py's tables in hw_dir (those of its last --runs) hold every run of the report as it is now,
    and so may be linked: a stale or missing run there would show numbers that are not the run's."""
    current = [run_identity(run_dir, summary) for run_dir, summary in runs]
    return None not in current and (
        {tuple(identity[key] for key in IDENTITY) for identity in current}
        <= results_csv_identities(hw_dir / "results.csv")
    )


def plot_energy(runs, hw_rows: list[dict], path: Path) -> None:
    """Per architecture, a bar per evaluated run: energy per frame stacked by component."""
    hw = {(row["run"], row["arch"]): row for row in hw_rows}
    archs = list(dict.fromkeys(row["arch"] for row in hw_rows))
    figure = Figure(figsize=(1.0 + 4.5 * len(archs), 4.2), layout="constrained")
    for axes, arch in zip(figure.subplots(1, len(archs), squeeze=False)[0], archs):
        names = [run_dir.name for run_dir, _ in runs if (run_dir.name, arch) in hw]
        totals = np.zeros(len(names))
        for i, (column, part) in enumerate(ENERGY_PARTS.items()):
            energies = np.array([float(hw[name, arch][column]) for name in names])
            axes.bar(names, energies, bottom=totals, label=part, color=f"C{i}")
            totals += energies
        for x, total in enumerate(totals):
            axes.annotate(si(total, "J"), (x, total), ha="center", va="bottom", fontsize=8)
        # An explicit limit: a zero-height top segment's bar edge would pin the axis to the tallest bar.
        axes.set(
            title=f"{arch}: energy per {FRAME} frame", ylabel="energy per frame (J)", ylim=(0, 1.12 * totals.max())
        )
        axes.tick_params(axis="x", labelrotation=30)
        axes.grid(axis="y", alpha=0.3)
    figure.legend(*axes.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    save_figure(figure, path)


def hw_by_design(hw_rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    return {(row["run"], row["arch"], row["design"]): row for row in hw_rows}


def plot_designs(runs, hw_rows: list[dict], path: Path) -> None:
    """Per architecture, energy and latency per frame of each run under each design (grouped bars), against dense
    exp1."""
    hw = hw_by_design(hw_rows)
    archs = list(dict.fromkeys(row["arch"] for row in hw_rows))
    figure = Figure(figsize=(1.5 + 5.0 * len(archs), 7.0), layout="constrained")
    grid = figure.subplots(2, len(archs), squeeze=False)
    width = 0.8 / len(DESIGN_TITLES)
    for column, arch in enumerate(archs):
        reference = exp1_row(hw_rows, arch)
        names = [run_dir.name for run_dir, _ in runs if (run_dir.name, arch, "dense") in hw]
        for row, metric in enumerate(("energy_per_frame_j", "latency_per_frame_s")):
            axes = grid[row, column]
            for i, (design, title) in enumerate(DESIGN_TITLES.items()):
                values = [
                    float(hw[name, arch, design][metric]) / (float(reference[metric]) if reference else 1.0)
                    if (name, arch, design) in hw
                    else 0.0
                    for name in names
                ]
                axes.bar(np.arange(len(names)) + (i - 1) * width, values, width, label=title, color=f"C{i}")
            axes.axhline(1.0, color="k", linewidth=0.8, linestyle=":")
            label, unit = METRICS[metric]
            axes.set(
                title=f"{arch}: {label} per {FRAME} frame",
                ylabel=f"{label} / dense exp1" if reference else f"{label} ({unit})",
            )
            axes.set_xticks(range(len(names)), names, rotation=30)
            axes.grid(axis="y", alpha=0.3)
    figure.legend(*grid[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    save_figure(figure, path)


def designs_table(runs, hw_rows: list[dict], arch: str) -> str:
    """Energy, latency and EDP of each run under each design on one architecture, as multiples of dense exp1."""
    hw, reference = hw_by_design(hw_rows), exp1_row(hw_rows, arch)

    def cell(row, metric):
        if row is None:
            return "n/a"
        value = float(row[metric])
        return f"{value / float(reference[metric]):.3f}×" if reference else si(value, METRICS[metric][1])

    header = ["experiment", "precision"] + [f"{METRICS[m][0]}, {design}" for m in METRICS for design in DESIGN_TITLES]
    rows = [
        [s["experiment"], s["precision"]]
        + [cell(hw.get((run_dir.name, arch, design)), metric) for metric in METRICS for design in DESIGN_TITLES]
        for run_dir, s in runs
        if (run_dir.name, arch, "dense") in hw
    ]
    return markdown_table(header, rows)


def design_winners(runs, hw_rows: list[dict], arch: str) -> str:
    """Under each design, the precision (and run) with the lowest energy, latency and EDP on the architecture."""
    hw, reference = hw_by_design(hw_rows), exp1_row(hw_rows, arch)
    names = [run_dir.name for run_dir, _ in runs]
    rows = []
    for design, title in DESIGN_TITLES.items():
        candidates = [hw[name, arch, design] for name in names if (name, arch, design) in hw]
        if not candidates:
            continue
        cells = []
        for metric in METRICS:
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
    exp1 = {design: exp1_row(hw_rows, arch, design) for design in DESIGN_TITLES}
    rows = []
    for run_dir, s in runs:
        if s.get("model") != "bitnerf":
            continue
        for design, title in DESIGN_TITLES.items():
            row, reference = hw.get((run_dir.name, arch, design)), exp1[design]
            if row is None or reference is None or not row.get("energy_weights_dense_j"):
                continue
            energy, dense_weights = float(row["energy_per_frame_j"]), float(row["energy_weights_dense_j"])
            advantage, without = (
                float(reference["energy_per_frame_j"]) / energy,
                float(reference["energy_per_frame_j"]) / dense_weights,
            )
            zeros = dense_weights / energy
            share = math.log(zeros) / math.log(advantage) if advantage > 1 and zeros > 0 else float("nan")
            joint = row.get("joint_density_measured") or ""
            rows.append(
                [
                    run_dir.name,
                    title,
                    f"{advantage:.2f}×",
                    f"{without:.2f}×",
                    f"{zeros:.3f}×",
                    "n/a" if math.isnan(share) else percent(share),
                    f"{float(row['weight_density']):.3f}",
                    f"{float(row['effectual_density']):.3f}",
                    f"{float(joint):.3f}" if joint else "not measured",
                ]
            )
    if not rows:
        return None
    return markdown_table(
        [
            "run",
            "design (vs exp1 under the same design)",
            "energy advantage over exp1",
            "with its weights taken as dense",
            "from its zero weights",
            "share of the advantage",
            "weight density",
            "effectual (product, used)",
            "joint (measured)",
        ],
        rows,
    )


def hardware_designs_section(runs, hw_rows: list[dict], out_dir: Path) -> list[str]:
    """The three designs side by side: a grouped bar plot and, per architecture, the table, the winners and
    BitNeRF's zero weights' part."""
    plot_designs(runs, hw_rows, out_dir / "designs.png")
    lines = [
        "",
        "### Sparsity on the accelerator: dense, gating, skipping",
        "",
        "![Energy and latency per frame under each design, against dense exp1](designs.png)",
        "",
        "*dense*: the mapping as AccelForge gives it; *gating*: a zero operand gates its MAC and the operand "
        "reads that feed it (energy saved, cycles not); *skipping*: activations compressed in memory (their "
        "metadata counted), zero MACs skipped, the PE array waiting for its slowest PE (energy and cycles "
        "saved). Densities come from layers.json (input zeros on test rays, BitNeRF's ternary zeros); a run "
        "without weight densities is taken as dense. Every value is a multiple of dense exp1 on the same "
        "architecture. docs/hw_eval.md gives the model and its sources.",
    ]
    for arch in dict.fromkeys(row["arch"] for row in hw_rows):
        lines += [
            "",
            f"#### {arch}",
            "",
            designs_table(runs, hw_rows, arch),
            "",
            "Which precision wins under each design:",
            "",
            design_winners(runs, hw_rows, arch),
        ]
        share = zero_weight_share(runs, hw_rows, arch)
        if share:
            lines += [
                "",
                "How much of BitNeRF's energy advantage comes from its zero weights (its ternary "
                "zeros; the rest is its narrower bits): the advantage over exp1 under the same design, as "
                "measured and with its weights taken as dense; *share*: the zero weights' part of the "
                "advantage, in logarithms:",
                "",
                share,
            ]
    assumed = sorted(
        {row["run"] for row in hw_rows if row.get("weight_density_source", WEIGHTS_MEASURED) != WEIGHTS_MEASURED}
    )
    if assumed:
        lines += [
            "",
            f"Weight densities not in layers.json (trained before they were recorded), taken as dense: "
            f"{', '.join(assumed)}.",
        ]
    return lines
