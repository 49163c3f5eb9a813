"""The report's plots that are sections of their own (held-out PSNR during training, test renders, quality
against cost), and saving any figure; the hardware and analyses sections draw theirs beside their tables."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from matplotlib.figure import Figure

import rundir
import stats
from files import atomic_write
from reporting.intervals import by_seed, seed_measures
from reporting.runs import experiment_groups

RENDER_VIEWS = 2  # test views per experiment in the grid of renders


def save_figure(figure: Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def run_colors(runs) -> dict[str, str]:
    """One colour per run, the same in every plot."""
    return {run_dir.name: f"C{i % 10}" for i, (run_dir, _) in enumerate(runs)}


def psnr_curve(run_dir: Path, summary: dict) -> list[tuple[int, float, float]]:
    """(step, wall seconds, PSNR) at every evaluation, ending with the final one. The evaluations render
    validation views where the scene has them (psnr_val; the final one on all of them), else test views."""
    rows = rundir.read_metrics(run_dir)
    held_out = [(r, r.get("psnr_val") or r["psnr_test"]) for r in rows]
    curve = [(int(r["step"]), float(r["wall_s"]), float(psnr)) for r, psnr in held_out if psnr]
    end_wall = next((float(r["wall_s"]) for r in rows if int(r["step"]) == summary["steps"]), summary["wall_s"])
    return curve + [(summary["steps"], end_wall, summary.get("psnr_val", summary["psnr_test"]))]


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


def plot_pareto(runs, dense_rows: list[dict], path: Path) -> None:
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
            axes.errorbar(
                x.mean,
                y.mean,
                xerr=x.half_width,
                yerr=y.half_width,
                fmt="o",
                color=f"C{i % 10}",
                label=experiment,
                capsize=3,
            )
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


def figure_section(title: str, image: str, alt: str, text: str) -> list[str]:
    """A section of one plot and what it shows."""
    return [f"## {title}", "", f"![{alt}]({image})", "", text]


def pareto_section(runs, dense_rows: list[dict], out_dir: Path) -> list[str]:
    plot_pareto(runs, dense_rows, out_dir / "pareto.png")
    return figure_section(
        "Quality against cost",
        "pareto.png",
        "Test PSNR against energy per frame, training time and model size",
        "Each experiment at its mean over seeds, with 95% intervals where it has several; the dashed line joins the "
        "experiments that no other beats on both cost and PSNR (the Pareto front). Energy is the dense design's "
        "(`hw_eval.py`).",
    )


def psnr_section(runs, out_dir: Path) -> list[str]:
    plot_psnr(runs, out_dir / "psnr.png")
    return figure_section(
        "Held-out PSNR during training",
        "psnr.png",
        "Held-out PSNR against steps, rays seen and wall time",
        "Periodic evaluations render the first validation views where the scene has them, else the first test "
        "views (`eval_views`); the last point of each run is the final evaluation on every one of those views "
        "(validation or test). Against rays seen, experiments with other batch sizes (exp3) line up with the rest.",
    )


def renders_section(runs, out_dir: Path) -> list[str]:
    views = plot_renders(runs, out_dir / "renders.png")
    if not views:
        return ["## Test renders and depth maps", "", "No test view was rendered by every run (`renders/rgb_*.png`)."]
    return figure_section(
        "Test renders and depth maps",
        "renders.png",
        "Test renders and depth maps",
        f"Test view(s) {', '.join(str(int(v)) for v in views)}: the ground truth on top, then each experiment's "
        f"render and depth map (turbo colour map, near red, far blue); each row gives the run's test PSNR on every "
        f"test view.",
    )
