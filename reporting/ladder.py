"""The precision ladder: every precision point of the suite in one table, the ones trained at that precision
(exp1 fp32, exp2 AMP, exp8 fp8, exp7 int8, exp4 ternary) and the ones quantized after training (ptq.json's
variants of exp1's runs), with quality over seeds, size, throughput and energy per sample on each modelled
accelerator; its Pareto plot; and the bytes the data-parallel runs send per step (exp5, exp6, exp9)."""

import math
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

import rundir
import stats
from accel.results import NOT_EVALUATED, markdown_table, read_mac_energy, read_ptq_results, si
from reporting.intervals import by_seed, compile_settings, difference_cell
from reporting.plots import figure_section, save_figure
from reporting.runs import experiment_groups

# The experiments that train at one precision each, from widest to narrowest (exp3 is exp2's batch, not a precision).
TRAINING_POINTS = ("exp1", "exp2", "exp8", "exp7", "exp4")
# Widths, widest first: a precision label's or ptq variant's first part (bf16-amp -> bf16, int8-weight -> int8).
WIDTHS = ("fp32", "bf16", "fp16", "fp8", "int8", "int4", "ternary")
TRAINING, AFTER_TRAINING = "training", "after training"
MARKERS = {TRAINING: "o", AFTER_TRAINING: "s"}
# The data-parallel runs and what crosses the wire each step.
WIRE_POINTS = {
    "exp5": "fp32 gradients (exp1's NeRF)",
    "exp6": "fp32 gradients (exp4's BitNeRF)",
    "exp9": "bf16-compressed gradients (exp5's NeRF)",
}
NOT_MEASURED = "not measured"


@dataclass
class Point:
    """One precision point: its record by seed (summary.json, or the ptq.json row of exp1's run of that seed), the
    dense design's energies by architecture and seed (µJ per sample with and without the grid, J per frame), and
    the runs that trained it (None: quantized after training)."""

    label: str
    when: str
    width: str
    records: dict[int, dict] = field(default_factory=dict)
    energy: dict[str, dict[int, tuple]] = field(default_factory=dict)
    group: list | None = None

    def values(self, key: str) -> dict[int, float]:
        return {seed: float(record[key]) for seed, record in self.records.items() if record.get(key) is not None}

    def estimate(self, key: str) -> stats.Estimate:
        """The mean of a recorded value over the seeds, with its 95% interval."""
        return stats.mean_interval(list(self.values(key).values()))

    def energy_mean(self, arch: str, index: int) -> float | None:
        """The mean over seeds of one energy (0: µJ/sample, 1: µJ/sample without the grid, 2: J/frame), or None."""
        values = [energies[index] for energies in self.energy.get(arch, {}).values() if energies[index] is not None]
        return sum(values) / len(values) if values else None


def width_of(name: str) -> str:
    return name.split("-")[0]


def present(value) -> bool:
    return value not in (None, "")


def frame_samples(run_dir: Path) -> tuple[int, int]:
    """The samples of a frame the run's MLPs evaluate (its occupancy grid's choice) and every sample of the frame,
    summed over its fields (coarse, fine), from layers.json: each field's first layer sees all its samples."""
    first = {}
    for layer in rundir.read_layers(run_dir):
        first.setdefault(layer["name"].split(".")[0], layer)
    return (
        sum(layer["samples_per_frame"] for layer in first.values()),
        sum(layer.get("samples_per_frame_all", layer["samples_per_frame"]) for layer in first.values()),
    )


def sample_energies(run_dir: Path, row: dict) -> tuple[float | None, float | None, float]:
    """A dense row's µJ per sample with the grid and without it (None where the row cannot tell: results from before
    energy_without_grid_j), and its J per frame; rows from before the per-sample columns are divided here."""
    frame = float(row["energy_per_frame_j"])
    with_grid, without = row.get("energy_per_sample_uj"), row.get("energy_per_sample_without_grid_uj")
    if not present(with_grid) or (not present(without) and present(row.get("energy_without_grid_j"))):
        counted, every = frame_samples(run_dir)
        counted = float(row.get("samples_per_frame") or counted)
        with_grid = with_grid if present(with_grid) else (1e6 * frame / counted if counted else None)
        if not present(without) and present(row.get("energy_without_grid_j")) and every:
            without = 1e6 * float(row["energy_without_grid_j"]) / every
    return (float(with_grid) if present(with_grid) else None, float(without) if present(without) else None, frame)


def add_energy(point: Point, run_dir: Path, seed: int, rows: list[dict]) -> None:
    for row in rows:
        if row.get("design", "dense") == "dense":
            point.energy.setdefault(row["arch"], {})[seed] = sample_energies(run_dir, row)


def training_points(groups: dict, dense_rows: list[dict]) -> list[Point]:
    """A point per experiment trained at its precision, with its runs' own accelerator rows."""
    rows_of = {}
    for row in dense_rows:
        rows_of.setdefault(row["run"], []).append(row)
    points = []
    for experiment in TRAINING_POINTS:
        group = groups.get(experiment)
        if not group:
            continue
        precisions = list(dict.fromkeys(s["precision"] for _, s in group))
        label = f"{experiment} {'/'.join(precisions)}{' (emulated)' if emulated(group) else ''}"
        point = Point(label, TRAINING, width_of(precisions[0]), group=group)
        for run_dir, summary in group:
            point.records[summary.get("seed", 0)] = summary
            add_energy(point, run_dir, summary.get("seed", 0), rows_of.get(run_dir.name, []))
        points.append(point)
    return points


def ptq_points(groups: dict) -> list[Point]:
    """A point per ptq.json variant of exp1's runs, over the seeds whose run holds it, with the variant's rows of
    the run's own hw_eval.json where hw_eval.py costed them for the run and its ptq.json as they are now."""
    points = {}
    for run_dir, summary in groups.get("exp1", []):
        rows = rundir.read_ptq(run_dir)
        if not rows:
            continue
        seed, costed = summary.get("seed", 0), read_ptq_results(run_dir, summary) or []
        for row in rows:
            variant = row["variant"]
            point = points.setdefault(
                variant, Point(f"exp1 + {variant}", AFTER_TRAINING, row.get("width") or width_of(variant))
            )
            point.records[seed] = row
            add_energy(point, run_dir, seed, [r for r in costed if r.get("variant") == variant])
    return list(points.values())


def ladder_points(runs, dense_rows: list[dict]) -> list[Point]:
    """Every precision point, ordered by width (the widest first), training before post-training at one width."""
    groups = experiment_groups(runs)
    points = training_points(groups, dense_rows) + ptq_points(groups)
    return sorted(
        points, key=lambda p: (WIDTHS.index(p.width) if p.width in WIDTHS else len(WIDTHS), p.when != TRAINING)
    )


def device_names(group) -> set:
    return {summary.get("device_name") for _, summary in group}


def emulated(group) -> bool:
    """Whether a run computed its precision in emulation (fp8 on a device without fp8 matmuls)."""
    return any(summary.get("emulated") for _, summary in group)


def throughput_cell(point: Point, reference: list | None) -> str:
    """Training samples/s over the seeds, only where the runs ran on exp1's device with exp1's compile setting."""
    if point.group is None:
        return "—"
    if reference is None:
        return "n/a (no exp1)"
    if device_names(point.group) != device_names(reference):
        return "n/a (other device)"
    if compile_settings(point.group) != compile_settings(reference):
        return "n/a (compiled differs)"
    if emulated(point.group):
        return "n/a (emulated)"
    samples = point.estimate("train_samples_per_s")
    baseline = stats.mean_interval([s["train_samples_per_s"] for _, s in reference]).mean
    return f"{samples.format(0)} ({samples.mean / baseline:.2f}× exp1)"


def energy_cells(point: Point, arch: str) -> list[str]:
    cells = [point.energy_mean(arch, index) for index in range(3)]
    return [
        NOT_EVALUATED if value is None else f"{value:.3g}" if index < 2 else si(value, "J")
        for index, value in enumerate(cells)
    ]


def ladder_table(points: list[Point], archs: list[str], reference: Point | None) -> str:
    header = [
        "point",
        "quantized",
        "seeds",
        "weight bits",
        "test PSNR (dB)",
        "difference against exp1",
        "model size",
        "train samples/s",
    ]
    for arch in archs:
        header += [f"{arch} µJ/sample", f"{arch} µJ/sample without the grid", f"{arch} energy/frame"]
    rows = []
    for point in points:
        psnr, bits = point.values("psnr_test"), point.values("weight_bits")
        if point is reference:
            difference = "— (the reference)"
        elif reference is None:
            difference = "n/a (no exp1)"
        else:
            difference = difference_cell(stats.paired_difference(psnr, reference.values("psnr_test")))
        rows.append(
            [
                point.label,
                point.when,
                ", ".join(str(seed) for seed in point.records),
                f"{sum(bits.values()) / len(bits):.3g}" if bits else "n/a",
                point.estimate("psnr_test").format(2),
                difference,
                si(point.estimate("model_bytes").mean, "B"),
                throughput_cell(point, reference.group if reference else None),
                *(cell for arch in archs for cell in energy_cells(point, arch)),
            ]
        )
    return markdown_table(header, rows)


def mac_energy_lines(runs, dense_rows: list[dict], archs: list[str]) -> list[str]:
    """Per architecture: its technology node and what it charges for an fp8 MAC against an int8 MAC
    (hw_eval.json's mac_energy_pj), or what the results lack."""
    mac_energy = next((pj for run_dir, summary in runs if (pj := read_mac_energy(run_dir, summary))), {})
    lines = []
    for arch in archs:
        node = next(
            (row["tech_node_nm"] for row in dense_rows if row["arch"] == arch and present(row.get("tech_node_nm"))),
            None,
        )
        where = f"{float(node):g} nm" if node is not None else "technology node not recorded"
        pj = mac_energy.get(arch, {})
        if "fp8" in pj and "int8" in pj:
            lines.append(
                f"- {arch} ({where}): an fp8 MAC costs {pj['fp8']:.3g} pJ against {pj['int8']:.3g} pJ for "
                f"an int8 MAC ({pj['fp8'] / pj['int8']:.2f}×)."
            )
        else:
            lines.append(
                f"- {arch} ({where}): MAC energy by precision not in these results (an hw_eval.json from "
                f"before `mac_energy_pj`; rerun hw_eval.py)."
            )
    return lines


def ladder_section(runs, dense_rows: list[dict], points: list[Point]) -> list[str]:
    """The ladder's table, what its columns mean, which energy is fair, and each architecture's MAC energies."""
    lines = ["## Precision ladder", ""]
    if not points:
        return lines + [
            f"No precision point among these runs: no run of {', '.join(TRAINING_POINTS)}, and no "
            f"{rundir.PTQ} in exp1's runs (`python ptq.py runs/exp1`)."
        ]
    archs = ladder_archs(dense_rows, points)
    reference = next((p for p in points if p.when == TRAINING and p.group[0][1]["experiment"] == "exp1"), None)
    lines += [
        ladder_table(points, archs, reference),
        "",
        "- *quantized*: *training*: the experiment trained at that precision; *after training*: `ptq.py` "
        "quantized exp1's trained model (each seed's run). *weight bits*: measured on the stored model.",
        "- Test PSNR: the mean ± the half-width of the 95% t interval over the seeds. Its difference against "
        "exp1 pairs the runs seed by seed (a post-training point with the exp1 run it quantized); *not "
        "significant*: the interval covers zero.",
        "- *train samples/s*: training points only, and only where the runs ran on exp1's device with exp1's "
        "compile setting (compiling alone changes throughput; an emulated precision times its emulation); "
        "in brackets, against exp1.",
    ]
    if not archs:
        return lines + [f"- Energy: {NOT_EVALUATED} (no run holds accelerator results of its own: `hw_eval.py`)."]
    lines += [
        f"- Energy: `hw_eval.py`'s dense design (AccelForge models, the mean over the seeds); *{NOT_EVALUATED}*: "
        "no results of the run's own (a post-training point: for its ptq.json as it is now), or results from "
        "before energy without the grid was recorded. The fair "
        "axis is **energy per sample without the grid**: each run's occupancy grid decides how many samples of "
        "a frame reach its MLP, so energy per frame (and per sample with the grid, fixed costs shared among "
        "fewer samples) also measures the grid the run learnt; without the grid every run evaluates every "
        "sample of the frame, the same count for all. "
        + (
            f"The plot below uses it, on {arch}."
            if (arch := plot_arch(dense_rows, points))
            else "No point has it on the first architecture yet, so there is no plot (rerun `hw_eval.py`)."
        ),
        "",
        "An fp8 MAC against an int8 MAC, and the technology node, per architecture:",
        "",
        *mac_energy_lines(runs, dense_rows, archs),
    ]
    return lines


def ladder_archs(dense_rows: list[dict], points: list[Point]) -> list[str]:
    return list(dict.fromkeys([*(row["arch"] for row in dense_rows), *(arch for p in points for arch in p.energy)]))


def plot_arch(dense_rows: list[dict], points: list[Point]) -> str | None:
    """The architecture the plot costs the points on (the first), or None where no point has energy per sample
    without the grid there."""
    archs = ladder_archs(dense_rows, points)
    return archs[0] if archs and any(point.energy_mean(archs[0], 1) is not None for point in points) else None


def plot_ladder(points: list[Point], arch: str, path: Path) -> None:
    """Test PSNR (mean with its interval) against energy per sample without the grid on arch and against model
    size, both log scale: a marker per point (circle: trained so, square: after training), the Pareto front dashed."""
    figure = Figure(figsize=(13, 4.8), layout="constrained")
    by_energy, by_size = figure.subplots(1, 2, sharey=True)
    costs = (
        (by_energy, lambda p: p.energy_mean(arch, 1), f"{arch} energy per sample without the grid (µJ)", ""),
        (by_size, lambda p: p.estimate("model_bytes").mean, "model size (bytes)", "B"),
    )
    colors = colormaps["tab10" if len(points) <= 10 else "tab20"]
    for axes, cost, label, unit in costs:
        drawn = []
        for i, point in enumerate(points):
            x = cost(point)
            if x is None:
                continue
            y = point.estimate("psnr_test")
            axes.errorbar(
                x,
                y.mean,
                yerr=y.half_width,
                fmt=MARKERS[point.when],
                color=colors(i),
                capsize=3,
                label=f"{point.label} ({point.when})",
            )
            if axes is by_energy:  # model sizes coincide (AMP and fp8 keep fp32 weights): the legend names them
                axes.annotate(point.label, (x, y.mean), xytext=(4, 4), textcoords="offset points", fontsize=7)
            drawn.append((x, y.mean))
        front = [drawn[i] for i in stats.pareto_front(drawn)]
        if front:
            axes.step(*zip(*front), where="post", color="k", linewidth=0.8, linestyle="--", label="Pareto front")
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _, unit=unit: si(x, unit)))
        axes.xaxis.set_minor_formatter(
            FuncFormatter(
                lambda x, _, unit=unit: (
                    si(x, unit) if x > 0 and round(x / 10 ** math.floor(math.log10(x))) in (2, 5) else ""
                )
            )
        )  # 2 and 5 of each decade: labels that fit
        axes.set(xlabel=label, title=f"test PSNR against {label.split(' (')[0]}")
        axes.grid(alpha=0.3, which="both")
    by_energy.set_ylabel("test PSNR (dB)")
    figure.legend(*by_size.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    save_figure(figure, path)


def ladder_plot_section(points: list[Point], dense_rows: list[dict], out_dir: Path) -> list[str]:
    """The ladder's Pareto plot, or nothing where no point has energy per sample without the grid (its axis)."""
    arch = plot_arch(dense_rows, points)
    if arch is None:
        return []
    plot_ladder(points, arch, out_dir / "ladder.png")
    return figure_section(
        "Precision ladder: quality against energy and size",
        "ladder.png",
        "Test PSNR of each precision point against energy per sample without the grid and against model size",
        f"Each precision point at its mean test PSNR over seeds with its 95% interval, against {arch}'s energy "
        "per sample without the grid (dense design; a point without it is left out of that panel) and against "
        "its model size. Circles trained at their precision, squares were quantized after training; the dashed "
        "line joins the points no other beats on both cost and PSNR (the Pareto front).",
    )


def wire_section(runs) -> list[str]:
    """Bytes each data-parallel run sends per optimizer step against exp5's, and its test PSNR against exp5's."""
    groups = experiment_groups(runs)
    lines = ["## Bytes on the wire", ""]
    present_groups = {name: groups[name] for name in WIRE_POINTS if name in groups}
    if not present_groups:
        return lines + [f"No data-parallel run ({', '.join(WIRE_POINTS)}) among these runs."]
    reference = groups.get("exp5")

    def sent(run_dir, summary):
        return summary.get("sent_bytes_per_step")

    reference_sent = list(by_seed(reference, sent).values()) if reference else []
    reference_psnr = by_seed(reference, lambda d, s: s["psnr_test"]) if reference else {}
    rows = []
    for name, group in present_groups.items():
        sent_bytes = list(by_seed(group, sent).values())
        mean_sent = sum(sent_bytes) / len(sent_bytes) if sent_bytes else None
        ratio = (
            "n/a (no exp5)"
            if reference is None
            else NOT_MEASURED
            if mean_sent is None or not reference_sent
            else f"{mean_sent / (sum(reference_sent) / len(reference_sent)):.2f}×"
        )
        psnr = by_seed(group, lambda d, s: s["psnr_test"])
        difference = (
            "— (the reference)"
            if name == "exp5"
            else "n/a (no exp5)"
            if reference is None
            else difference_cell(stats.paired_difference(psnr, reference_psnr))
        )
        rows.append(
            [
                name,
                WIRE_POINTS[name],
                ", ".join(str(s.get("seed", 0)) for _, s in group),
                ", ".join(str(w) for w in dict.fromkeys(s["world_size"] for _, s in group)),
                NOT_MEASURED if mean_sent is None else si(mean_sent, "B"),
                ratio,
                stats.mean_interval(list(psnr.values())).format(2),
                difference,
            ]
        )
    return lines + [
        markdown_table(
            [
                "experiment",
                "what crosses the wire",
                "seeds",
                "world size",
                "sent per step",
                "against exp5",
                "test PSNR (dB)",
                "difference against exp5",
            ],
            rows,
        ),
        "",
        "*sent per step*: the gradient payload rank 0 handed to all-reduce per optimizer step (the mean "
        "over the seeds), counted by the run from the tensors (`sent_bytes_per_step`; a ring all-reduce "
        "puts about 2(n-1)/n times that on the wire from each of n ranks); *not measured*: a run from "
        "before it was recorded. "
        "The PSNR difference pairs each run with exp5's run of the same seed; *not significant*: its 95% "
        "interval covers zero.",
    ]
