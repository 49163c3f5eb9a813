"""analyze.py's analyses.json in the report: sparsity per layer (inputs and weights), volume-rendering weight
sparsity and where the time of rendering an image goes, each with the command that reproduces it."""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from accel.results import markdown_table, percent
from files import read_json
from reporting.plots import run_colors, save_figure
from utils import UserError

ANALYSES = "analyses.json"


def layer_label(name: str) -> str:
    """BitNeRF's Linear sits inside an RMSNormLinear (`coarse.layers.0.linear`); name it as NeRF's layer."""
    return name.removesuffix(".linear")


def plot_sparsity(activation: dict, weight: dict, near_zero_weight: float, runs, path: Path) -> None:
    """Per layer: the fraction of zero inputs, and of near-zero (and ternary zero) weights, a line per run."""
    figure = Figure(figsize=(11, 6.5), layout="constrained")
    inputs_axes, weights_axes = figure.subplots(2, 1, sharex=True)
    colors = run_colors(runs)
    layers = list(
        dict.fromkeys(
            layer_label(layer["name"]) for result in (*activation.values(), *weight.values()) for layer in result
        )
    )
    positions = {name: i for i, name in enumerate(layers)}

    def plot(axes, result, key, **style):
        points = [(positions[layer_label(layer["name"])], layer[key]) for layer in result if key in layer]
        if points:
            axes.plot(*zip(*points), "o", **style, markersize=4)

    for run_name, result in activation.items():
        plot(inputs_axes, result, "input_sparsity", linestyle="-", color=colors[run_name], label=run_name)
    for run_name, result in weight.items():
        color = colors[run_name]
        plot(
            weights_axes,
            result,
            "near_zero",
            linestyle="-",
            color=color,
            label=f"{run_name}: |w| ≤ {near_zero_weight:g}·max|w|",
        )
        plot(weights_axes, result, "ternary_zero", linestyle="--", color=color, label=f"{run_name}: ternary zeros")
    inputs_axes.set(
        title="Input activation sparsity per layer (fraction of exactly-zero inputs, test rays)", ylabel="zero inputs"
    )
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
            parts = [
                f"in {percent(inputs[name])}" if name in inputs else "",
                f"w {percent(weights[name]['near_zero'])}" if name in weights else "",
                f"ternary {percent(ternary)}" if ternary is not None else "",
            ]
            cells.setdefault(name, {})[run_name] = " · ".join(p for p in parts if p)
    rows = [[f"`{name}`", *(by_run.get(run_name, "") for run_name in runs)] for name, by_run in cells.items()]
    return markdown_table(["layer", *runs], rows)


def render_sparsity_table(results: dict, skippable_weight: float) -> str:
    rows = [
        [
            run_name,
            name,
            p["samples_per_ray"],
            percent(p["skippable"]),
            percent(p["empty_space"]),
            percent(p["behind_surface"]),
        ]
        for run_name, result in results.items()
        for name, p in result["passes"].items()
    ]
    return markdown_table(
        [
            "experiment",
            "pass",
            "samples per ray",
            f"weight < {skippable_weight:g} (skippable)",
            "of which empty space",
            "of which behind the surface",
        ],
        rows,
    )


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
    axes.set(
        title="Where the time of rendering one test image goes (torch.profiler)",
        xlabel="share of the render time",
        xlim=(0, 1.15),
    )
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    figure.legend(*axes.get_legend_handles_labels(), loc="outside lower center", ncols=len(stages), fontsize=8)
    save_figure(figure, path)


def time_table(results: dict, stages: list[str]) -> str:
    rows = [
        [
            run_name,
            f"{1e3 * r['total_s']:.0f} ms",
            *(f"{1e3 * r['stages_s'][s]:.0f} ms ({percent(r['stages_s'][s] / r['total_s'])})" for s in stages),
        ]
        for run_name, r in results.items()
    ]
    return markdown_table(["experiment", "render (1 view)", *stages], rows)


def read_analyses(out_dir: Path, analyze_command: str) -> dict | None:
    """analyze.py's analyses.json in out_dir, or None when analyze.py has not written one there."""
    path = out_dir / ANALYSES
    if not path.exists():
        return None
    analyses = read_json(path)
    if not isinstance(analyses, dict) or not isinstance(analyses.get("definitions"), dict):
        raise UserError(
            f"{path} lacks the analyses' definitions (an older analyze.py wrote it): rerun `{analyze_command}`"
        )
    return analyses


def analyses_section(
    analyses: dict | None, runs, out_dir: Path, analyze_command: str, report_command: str
) -> list[str]:
    """The analyses' Markdown (and plots) for the runs in this report, each saying how to rerun it; without
    analyses.json, the command that writes it."""
    if analyses is None:
        return [
            "## Analyses",
            "",
            f"Not computed: run `{analyze_command}` (`make suite` does), then `{report_command}`.",
        ]
    run_names = [run_dir.name for run_dir, _ in runs]
    present = {
        name: {run: result[run] for run in run_names if run in result}
        for name, result in analyses.items()
        if name != "definitions"
    }

    def reproduce(*names):
        return f"Reproduce: `{analyze_command} --only {' '.join(names)}`, then `{report_command}`."

    definitions = analyses["definitions"]
    return [
        "## Analyses",
        "",
        "What an accelerator could skip, and where rendering time goes (after the Accelerating-NeRFs seed).",
        "",
        *layer_sparsity_subsection(present, definitions, runs, out_dir, reproduce),
        *render_sparsity_subsection(present, definitions, reproduce),
        *time_subsection(present, definitions, runs, out_dir, reproduce),
    ]


def not_computed(reproduce, *names) -> list[str]:
    return [f"Not computed for these runs. {reproduce(*names)}", ""]


def layer_sparsity_subsection(present: dict, definitions: dict, runs, out_dir: Path, reproduce) -> list[str]:
    activation, weight = present.get("activation_sparsity", {}), present.get("weight_sparsity", {})
    lines = ["### Sparsity per layer: inputs and weights", ""]
    if not (activation or weight):
        return lines + not_computed(reproduce, "activation_sparsity", "weight_sparsity")
    near_zero = definitions["near_zero_weight"]
    plot_sparsity(activation, weight, near_zero, runs, out_dir / "sparsity.png")
    return lines + [
        "![Input activation and weight sparsity per layer](sparsity.png)",
        "",
        f"*in*: the fraction of exactly-zero inputs of the layer on test rays (layers.json; ReLU outputs "
        f"are what a zero-gating MAC array could skip); *w*: the fraction of weights with "
        f"|w| ≤ {near_zero:g}·max|w| of the layer (BitNeRF: of its latent fp32 weights); "
        f"*ternary*: BitNeRF's exact zeros among the ternary weights its forward pass uses.",
        "",
        sparsity_tables(activation, weight),
        "",
        reproduce("activation_sparsity", "weight_sparsity"),
        "",
    ]


def render_sparsity_subsection(present: dict, definitions: dict, reproduce) -> list[str]:
    lines = ["### Volume-rendering weight sparsity", ""]
    if not present.get("render_weight_sparsity"):
        return lines + not_computed(reproduce, "render_weight_sparsity")
    skippable, stride = definitions["skippable_weight"], definitions["pixel_stride"]
    views = sorted({v for result in present["render_weight_sparsity"].values() for v in result["views"]})
    return lines + [
        f"Samples whose compositing weight w = T·α is below {skippable:g} change no pixel "
        f"visibly: empty-space skipping and early ray termination exist to skip them. *Empty space*: the "
        f"ray is still transparent there (T ≥ {skippable:g}) but nothing is there; *behind "
        f"the surface*: the transmittance T has fallen below {skippable:g}, what early ray "
        f"termination skips. Test view(s) {', '.join(map(str, views))}, one pixel of "
        f"every {stride}×{stride} block.",
        "",
        render_sparsity_table(present["render_weight_sparsity"], skippable),
        "",
        reproduce("render_weight_sparsity"),
        "",
    ]


def time_subsection(present: dict, definitions: dict, runs, out_dir: Path, reproduce) -> list[str]:
    lines = ["### Where the time of rendering an image goes", ""]
    if not present.get("time_breakdown"):
        return lines + not_computed(reproduce, "time_breakdown")
    results = present["time_breakdown"]
    plot_time_breakdown(results, definitions["time_stages"], runs, out_dir / "time_breakdown.png")
    first = next(iter(results.values()))
    return lines + [
        "![Time breakdown of rendering one test image](time_breakdown.png)",
        "",
        f"One {first['pixels']}-pixel test view rendered in eval mode on `{first['device']}` under "
        f"torch.profiler, with ranges around nerf.py's stages: *MLP* is the radiance field less its "
        f"positional encoding; *other* is the rest (chunking, sorting the fine samples). Timings on a "
        f"shared machine are indicative.",
        "",
        time_table(results, definitions["time_stages"]),
        "",
        reproduce("time_breakdown"),
        "",
    ]
